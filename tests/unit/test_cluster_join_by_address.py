"""``kv cluster join HOST:PORT`` on real in-process nodes: a new node started with
``KV_AUTO_JOIN=wait`` answers HELLO with its id while it waits, is admitted under that id, learns
of it from its seeds and joins; an address that does not answer, a node serving a cluster of its
own, or a member are refused with one line saying why, before any change is made."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import gevent
import pytest
from cluster import InProcessCluster, free_port, start_cluster
from gevent.server import StreamServer
from polling import wait_until
from raw_connection import RawConnection

from client import protocol
from client.cli_cluster import cluster_command
from client.client import Client, NodeIdentity
from client.errors import NodeUnreachableError
from client.protocol import FrameDecoder, HelloReply, Op, Status
from service.membership import MemberState

pytestmark = pytest.mark.unit


def epoch(cluster: InProcessCluster) -> int:
    return cluster.nodes["node1"].membership.record.epoch


@contextmanager
def node_of_no_cluster(node_id: str) -> Iterator[str]:
    """A stand-in for a node that is no member of any cluster: it answers HELLO with ``node_id`` and
    TOPOLOGY with NOT_A_MEMBER, as a node that serves no record does. Yields its address."""

    def serve(sock: socket.socket, _: object) -> None:
        decoder = FrameDecoder()
        while data := sock.recv(65536):
            for frame in decoder.feed(data):
                if frame.code == Op.HELLO:
                    hello = HelloReply(protocol.PROTOCOL_VERSION, node_id, 1024, 1 << 20, 2 << 20)
                    sock.sendall(protocol.encode_frame(frame.request_id, Status.OK, protocol.encode_hello_reply(hello)))
                else:
                    sock.sendall(
                        protocol.encode_error(frame.request_id, Status.NOT_A_MEMBER, f"{node_id} serves nothing")
                    )

    server = StreamServer(("127.0.0.1", 0), serve)
    server.start()
    try:
        yield f"127.0.0.1:{server.server_port}"
    finally:
        server.stop(timeout=1)


def identify(client: Client, address: str) -> NodeIdentity | None:
    try:
        return client.identify(address)
    except NodeUnreachableError:
        return None


def test_a_node_waiting_to_be_added_is_joined_by_its_address_and_becomes_normal(tmp_path: Path) -> None:
    cluster = start_cluster(tmp_path, 3, n=2, w=2, r=1, partitions=64)
    starting: gevent.Greenlet | None = None
    try:
        with cluster.running_client() as client:
            for i in range(200):
                client.put(b"k%d" % i, b"v%d" % i)
        cluster.add_joining("node4", ["node1", "node2"], KV_AUTO_JOIN="wait")
        starting = gevent.spawn(cluster.start, "node4")  # returns once it is added and serves
        address = cluster.address("node4")
        admin = Client([cluster.address("node1")], timeout=3.0, connect_timeout=0.5)
        try:
            # While it waits, it says who it is and that it serves no cluster, and nothing else.
            identity = wait_until(lambda: identify(admin, address), 10, message="node4 to answer HELLO")
            assert (identity.node_id, identity.cluster_id) == ("node4", None)
            raw = RawConnection(address)
            raw.hello()
            reply = raw.call(2, protocol.Get(b"k1"))
            assert reply.code == Status.NOT_A_MEMBER
            assert "kv cluster join" in protocol.decode_error(Status.NOT_A_MEMBER, reply.body).message
            raw.send(b"\x00\x00\x00\x01garbage")  # a malformed frame ends that connection only
            raw.read_until_closed()
            assert identify(admin, address) == identity
            assert not starting.ready()  # nobody added it yet

            line, code = cluster_command(admin, ["join", address])
            assert code == 0 and "node4 joining" in line, line
            starting.get(timeout=20)  # it read the record that admits it from a seed, and started
            nodes = ("node1", "node2", "node3", "node4")
            wait_until(
                lambda: all(cluster.nodes[node].membership.record.epoch == 3 for node in nodes),
                30,
                message="every node at epoch 3 (node4 normal)",
            )
            member = cluster.nodes["node1"].membership.record.member("node4")
            assert member is not None and member.state is MemberState.NORMAL
            assert f"{member.host}:{member.port}" == address
            assert cluster.nodes["node4"].store.live_keys > 0
            for i in range(200):
                assert admin.get(b"k%d" % i, r=2) == b"v%d" % i
        finally:
            admin.close()
    finally:
        if starting is not None:
            starting.kill()
        cluster.stop_all()


def test_join_by_address_admits_the_node_under_the_id_it_gives(tmp_path: Path) -> None:
    cluster = start_cluster(tmp_path, 3, n=2, w=2, r=1, partitions=64)
    try:
        with cluster.running_client() as client, node_of_no_cluster("node7") as address:
            line, code = cluster_command(client, ["join", address])
            assert code == 0 and line.startswith("OK epoch 2:") and "node7 joining" in line, line
            wait_until(lambda: epoch(cluster) == 2, 10, message="epoch 2 on node1")
            member = cluster.nodes["node1"].membership.record.member("node7")
            assert member is not None and member.state is MemberState.JOINING
            assert f"{member.host}:{member.port}" == address
            # Asked again, it is a member now: refused, and nothing changes.
            line, code = cluster_command(client, ["join", address])
            assert code == 2 and line.startswith("ERROR node7 is already a member of cluster") and "joining" in line
            assert epoch(cluster) == 2
    finally:
        cluster.stop_all()


def test_join_by_address_refuses_a_member_a_silent_address_and_a_node_of_its_own_cluster(tmp_path: Path) -> None:
    cluster = start_cluster(tmp_path / "main", 3, n=2, w=2, r=1, partitions=64)
    other = start_cluster(tmp_path / "other", 1, partitions=64, cluster_name="other")
    try:
        with cluster.running_client() as client:
            line, code = cluster_command(client, ["join", cluster.address("node2")])
            assert code == 2 and line.startswith("ERROR node2 is already a member of cluster kv-"), line
            assert "(normal, at 127.0.0.1:" in line and "\n" not in line, line

            silent = f"127.0.0.1:{free_port()}"
            line, code = cluster_command(client, ["join", silent])
            assert code == 2 and line.startswith(f"ERROR {silent} does not answer"), line
            assert line.endswith(f"kv cluster join NODE={silent}") and "\n" not in line, line

            line, code = cluster_command(client, ["join", other.address("node1")])
            assert code == 2 and line.startswith("ERROR node1 at 127.0.0.1:"), line
            assert "serves a cluster of its own (other-" in line and "KV_AUTO_JOIN=true" in line, line

            line, code = cluster_command(client, ["join", "=127.0.0.1:5000"])
            assert code == 2 and line.startswith("usage: kv cluster"), line
            line, code = cluster_command(client, ["join", "127.0.0.1:port"])
            assert code == 2 and line.startswith("ERROR") and "usage: kv cluster" in line, line
            # The named form still works, and refuses a member too.
            line, code = cluster_command(client, ["join", f"node3={cluster.address('node3')}"])
            assert code == 2 and line.startswith("ERROR node3 is already a member"), line
            assert epoch(cluster) == 1  # nothing above changed the membership
    finally:
        other.stop_all()
        cluster.stop_all()


def test_kv_cluster_help_names_both_forms_of_join_and_exits_0(tmp_path: Path) -> None:
    cluster = start_cluster(tmp_path, 2, partitions=64)
    try:
        with cluster.running_client() as client:
            text, code = cluster_command(client, ["--help"])
        assert code == 0 and "join HOST:PORT " in text and "join NODE=HOST:PORT " in text, text
    finally:
        cluster.stop_all()
