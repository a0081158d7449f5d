"""One client must not exhaust a node, against real containers: the node's memory (its process's
VmRSS) under pipelined 1 MiB GETs from a client that never reads, and, with KV_MAX_CONNECTIONS=8,
connections that never say HELLO, a full node's TOO_MANY_CONNECTIONS, and a peer restarted meanwhile."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import pytest
from polling import wait_until

from client import protocol
from client.connection import Connection
from client.protocol import Status

if TYPE_CHECKING:
    from containers import Cluster

    from client.client import Client

TARGET = "node1"
MB = 1024 * 1024
VALUE = b"m" * MB
ATTACK_SECONDS = 3.0
PEAK_GROWTH_MB = 100
"""The most the node may grow during a flood: before the fix 1,000 GETs took it past 1 GB."""
SETTLED_GROWTH_MB = 16
"""How far above its starting RSS the node must come back once the client has gone."""


def rss_mb(cluster: Cluster, node: str) -> float:
    """The node process's resident memory: VmRSS of PID 1 in its container."""
    container = cluster.containers[node].get_wrapped_container()
    result = container.exec_run(["cat", "/proc/1/status"])
    assert result.exit_code == 0, result.output
    line = next(line for line in result.output.decode().splitlines() if line.startswith("VmRSS:"))
    return int(line.split()[1]) / 1024


def key_for(kv: Client, cluster: Cluster, *, held_by_target: bool) -> str:
    """A key whose primary is ``TARGET`` (its GETs are local reads), or one ``TARGET`` does not
    hold at all (its GETs are coordinated: a REPLICA_GET to another node each)."""
    owners = cluster.node_of_address(kv)
    for i in range(10_000):
        key = f"flood-{i}"
        replicas = [owners[address] for address in kv.where(key)]
        if (replicas[0] == TARGET) if held_by_target else (TARGET not in replicas):
            return key
    raise AssertionError("no such key among 10,000")


@pytest.fixture
def attacker(cluster: Cluster) -> Iterator[Callable[[bytes, int], socket.socket]]:
    """Opens connections to ``TARGET`` that say HELLO, send a burst of GETs and never read again."""
    opened: list[socket.socket] = []

    def open_attack(key: bytes, count: int) -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connect: a small window
        sock.settimeout(5.0)
        sock.connect(("127.0.0.1", cluster.ports[TARGET]))
        opened.append(sock)
        sock.sendall(protocol.encode_request(1, protocol.Hello(client_name="never-reads")))
        decoder = protocol.FrameDecoder()
        while not decoder.feed(sock.recv(4096)):
            pass
        sock.sendall(b"".join(protocol.encode_request(i + 2, protocol.Get(key)) for i in range(count)))
        return sock

    yield open_attack
    for sock in opened:
        sock.close()


@pytest.mark.parametrize(
    ("count", "held_by_target"),
    [(100, True), (1000, True), (100, False), (1000, False)],
    ids=["100-local-reads", "1000-local-reads", "100-coordinated", "1000-coordinated"],
)
def test_a_client_that_never_reads_cannot_grow_the_node(
    cluster: Cluster, kv: Client, attacker: Callable[[bytes, int], socket.socket], count: int, held_by_target: bool
) -> None:
    key = key_for(kv, cluster, held_by_target=held_by_target)
    kv.put(key, VALUE)
    assert kv.get(key) == VALUE
    before = rss_mb(cluster, TARGET)
    sock = attacker(key.encode(), count)
    peak = before
    served = 0
    deadline = time.monotonic() + ATTACK_SECONDS
    with cluster.client(timeout=3.0) as other:
        for _ in range(100):
            peak = max(peak, rss_mb(cluster, TARGET))
            assert other.get(key) == VALUE  # another client is served throughout
            served += 1
            if time.monotonic() > deadline:
                break
    sock.close()
    settled = wait_until(
        lambda: (rss := rss_mb(cluster, TARGET)) <= before + SETTLED_GROWTH_MB and rss,
        20.0,
        interval=0.5,
        message=f"{TARGET}'s memory to come back near {before:.0f} MB",
    )
    print(
        f"\nRSS of {TARGET}, {count} pipelined GETs of 1 MiB never read "
        f"({'local reads' if held_by_target else 'coordinated'}): "
        f"before {before:.0f} MB, peak during {peak:.0f} MB, after the client left {settled:.0f} MB; "
        f"{served} GETs of another client served meanwhile"
    )
    assert peak <= before + PEAK_GROWTH_MB


ENV = {"KV_MAX_CONNECTIONS": "8", "KV_HANDSHAKE_TIMEOUT_MS": "1000"}


def test_slots_free_themselves_and_a_restarted_peer_gets_in_while_they_are_full(
    cluster_factory: Callable[..., Any],
) -> None:
    with cluster_factory("slots", ENV) as slots:
        # Eight connections that never say HELLO, and eight that sent 3 bytes of one: each is
        # closed after the handshake timeout, and the node serves a new client.
        for opening in (b"", b"\x00\x00\x00"):
            only_peer_links(slots)
            squatters = [slots.raw(TARGET) for _ in range(8)]
            for squatter in squatters:
                squatter.send(opening)
            for squatter in squatters:
                assert squatter.wait_closed_by_peer(timeout=10) == b""
                squatter.close()
            assert slots.ping(TARGET)

        only_peer_links(slots)
        holders = [slots.raw(TARGET) for _ in range(8)]
        try:
            for holder in holders:
                holder.hello()
            ninth = slots.raw(TARGET)
            ninth.send(protocol.encode_request(9, protocol.Hello(client_name="ninth")))
            frames = protocol.FrameDecoder().feed(ninth.wait_closed_by_peer())
            assert [(frame.request_id, frame.code) for frame in frames] == [(9, Status.TOO_MANY_CONNECTIONS)]

            # node2 restarts while node1's client slots are all taken: it must reach node1 and see
            # it up (start waits for every node to see every peer up), and write to it directly.
            slots.kill("node2")
            slots.start("node2")
            key = next(f"k{i}" for i in range(10_000) if _replicas(slots, f"k{i}") == {TARGET, "node2"})
            through_node2 = Connection("127.0.0.1", slots.ports["node2"])
            through_node2.connect()
            try:
                through_node2.call(protocol.Put(key.encode(), b"direct", quorum=2))
            finally:
                through_node2.close()
            assert slots.sample("node2", "kv_replica_writes_total", 0, peer=TARGET, status="ok") == 1
            assert slots.sample("node2", "kv_hints_stored_total", 0, owner=TARGET) == 0
        finally:
            for holder in holders:
                holder.close()
        record = wait_until(lambda: slots.local_record(TARGET, key), 10, message="node1 to answer again")
        assert record.value == b"direct"
        events = {line["event"] for line in slots.log_lines(TARGET)}
        assert {"handshake_timeout", "connection_refused"} <= events
        assert slots.sample(TARGET, "kv_connections_refused_total") >= 1
        assert slots.sample(TARGET, "kv_connections_closed_total", reason="handshake_timeout") == 16


def only_peer_links(cluster: Cluster) -> None:
    """Wait until the target holds no connection but its two peers' links (a client's close takes
    a moment to reach it)."""
    wait_until(lambda: cluster.sample(TARGET, "kv_connections") == 2, 10.0, message="only the peer links open")


def _replicas(cluster: Cluster, key: str) -> set[str]:
    from client.ring import Ring

    ring = Ring(list(cluster.node_ids), 4096)
    return set(ring.preference_list(key.encode(), 2))
