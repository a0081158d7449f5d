"""The Client against three in-process nodes: commands, routing, pipelines, status and failover."""

from __future__ import annotations

import socket as stdlib_socket
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from cluster import DEFAULT_SETTINGS, InProcessCluster, configure_logging, free_port
from gevent import socket
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from polling import wait_until
from raw_connection import FakeNode

from client import protocol
from client.address import format_address
from client.client import Client, Limits, none_reachable
from client.connection import Connection
from client.errors import (
    BadRequestError,
    InvalidArgumentError,
    InvalidArgumentTypeError,
    KeyTooLargeError,
    NodeUnreachableError,
    TooManyConnectionsError,
    UnavailableError,
    ValueTooLargeError,
)
from client.policies import PrimaryOnly
from client.protocol import Frame, Status
from client.ring import Ring
from service.config import load_config
from service.node import Node


def key_with_primary(cluster: InProcessCluster, node_id: str, prefix: str = "key") -> str:
    """A key whose primary replica is ``node_id``."""
    for i in range(10_000):
        key = f"{prefix}-{i}"
        if cluster.replicas_of(key)[0] == node_id:
            return key
    raise AssertionError(f"no key with primary {node_id}")


class CountingConnection(Connection):
    """A Connection that records every request the client sends."""

    sent: list[protocol.Request] = []

    def _send(self, request: protocol.Request):
        CountingConnection.sent.append(request)
        return super()._send(request)


@pytest.fixture
def counting() -> type[CountingConnection]:
    CountingConnection.sent = []
    return CountingConnection


# --- commands --------------------------------------------------------------------------------------


def test_put_get_delete_round_trip(cluster: InProcessCluster) -> None:
    client = cluster.client()
    version = client.put("greeting", "hello")
    assert version.node_id in cluster.node_ids
    assert client.get("greeting") == b"hello"
    assert client.get(b"greeting") == b"hello"

    newer = client.put(b"greeting", b"bonjour")
    assert newer > version
    assert client.get("greeting") == b"bonjour"

    deleted = client.delete("greeting")
    assert deleted > newer
    assert client.get("greeting") is None


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("text", "naïve café ☕"),
        (b"\x00\xff binary key", bytes(range(256))),
        ("empty", b""),
        ("newlines", b"line1\nline2\r\n"),
    ],
)
def test_values_come_back_byte_for_byte(cluster: InProcessCluster, key: bytes | str, value: bytes | str) -> None:
    client = cluster.client()
    client.put(key, value)
    expected = value.encode() if isinstance(value, str) else value
    assert client.get(key) == expected
    if expected == b"":
        assert client.get(key) is not None  # an empty value exists; it is not a missing key


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    pairs=st.dictionaries(
        st.binary(max_size=100) | st.text(max_size=40).map(str.encode),  # b"" and "" are one key: compare bytes
        st.binary(max_size=3000) | st.text(max_size=100),
        min_size=1,
        max_size=6,
    ),
    as_text=st.booleans(),
)
def test_random_keys_and_values_round_trip(
    cluster: InProcessCluster, pairs: dict[bytes, bytes | str], as_text: bool
) -> None:
    client = cluster.client()
    for key, value in pairs.items():
        text_key = key.decode("utf-8", errors="ignore") if as_text else None
        client.put(text_key if text_key is not None and text_key.encode() == key else key, value)
    for key, value in pairs.items():
        assert client.get(key) == (value.encode() if isinstance(value, str) else value)
    with client.pipeline() as pipeline:
        for key in pairs:
            pipeline.get(key)
        assert pipeline.execute() == [value.encode() if isinstance(value, str) else value for value in pairs.values()]


def test_missing_key_is_none_and_deleting_it_is_fine(cluster: InProcessCluster) -> None:
    client = cluster.client()
    assert client.get("never-written") is None
    client.delete("never-written")
    assert client.get("never-written") is None


def test_every_replica_holds_an_acknowledged_write(cluster: InProcessCluster) -> None:
    client = cluster.client()
    version = client.put("replicated", "v")  # W=2=N: both replicas acked
    for node_id in cluster.replicas_of("replicated"):
        assert cluster.node(node_id).storage.get(b"replicated") == protocol.Record(version, b"v"), node_id
    for node_id in set(cluster.node_ids) - set(cluster.replicas_of("replicated")):
        assert cluster.node(node_id).storage.get(b"replicated") is None, node_id


# --- routing ---------------------------------------------------------------------------------------


def test_where_lists_the_preference_list_primary_first(cluster: InProcessCluster) -> None:
    client = cluster.client()
    ring = Ring(cluster.node_ids, cluster.config.partitions)
    primaries = set()
    for i in range(30):
        key = f"where-{i}"
        owners = ring.preference_list(key.encode(), 2)
        assert client.where(key) == [cluster.address(node_id) for node_id in owners]
        primaries.add(owners[0])
    assert primaries == set(cluster.node_ids)  # the keys spread over every node


def requests_served(cluster: InProcessCluster, node_id: str, op: str) -> float:
    registry = cluster.node(node_id).metrics.registry
    return registry.get_sample_value("kv_requests_total", {"op": op, "status": "OK"}) or 0.0


def test_requests_go_to_the_keys_primary(cluster: InProcessCluster) -> None:
    client = cluster.client()
    for primary in cluster.node_ids:
        key = key_with_primary(cluster, primary)
        before = {node_id: requests_served(cluster, node_id, "PUT") for node_id in cluster.node_ids}
        client.put(key, "v")
        client.get(key)
        after = {node_id: requests_served(cluster, node_id, "PUT") for node_id in cluster.node_ids}
        assert {node_id: after[node_id] - before[node_id] for node_id in cluster.node_ids} == {
            node_id: 1.0 if node_id == primary else 0.0 for node_id in cluster.node_ids
        }, key
    assert [requests_served(cluster, node_id, "GET") for node_id in cluster.node_ids] == [1.0, 1.0, 1.0]


def test_topology_matches_the_cluster(cluster: InProcessCluster) -> None:
    topology = cluster.client().topology()
    assert (topology.n, topology.read_quorum, topology.write_quorum) == (2, 1, 2)
    assert [node.node_id for node in topology.nodes] == cluster.node_ids


def test_a_single_seed_is_enough(cluster: InProcessCluster) -> None:
    client = Client([cluster.addresses[1]], timeout=3.0)
    try:
        client.put("one-seed", "v")
        assert client.get("one-seed") == b"v"
        assert client.where("one-seed") == [cluster.address(node_id) for node_id in cluster.replicas_of("one-seed")]
    finally:
        client.close()


# --- pipelines -------------------------------------------------------------------------------------


def test_pipeline_of_500_puts_then_500_gets_keeps_order(make_cluster: Callable[..., InProcessCluster]) -> None:
    # The three nodes share one event loop: 500 writes at once keep a peer busy past the default
    # 1 s request timeout's stall threshold on a loaded machine, and it would be taken for stalled.
    cluster = make_cluster(3, KV_REQUEST_TIMEOUT_MS="8000")
    client = cluster.client(timeout=20.0)
    with client.pipeline() as pipe:
        for i in range(500):
            pipe.put(f"pipe-{i}", f"value-{i}")
        assert len(pipe) == 500
        versions = pipe.execute()
    assert len(versions) == 500
    assert all(isinstance(version, protocol.Version) for version in versions)

    with client.pipeline() as pipe:
        for i in range(500):
            pipe.get(f"pipe-{i}")
        values = pipe.execute()
    assert values == [f"value-{i}".encode() for i in range(500)]


def test_pipeline_returns_errors_in_place_when_asked(cluster: InProcessCluster) -> None:
    client = cluster.client()
    client.put("present", "here")
    with client.pipeline() as pipe:
        pipe.get("present").put("too-many", "v", w=3).get("absent")
        results = pipe.execute(raise_on_error=False)
    assert results[0] == b"here"
    assert isinstance(results[1], BadRequestError)
    assert results[2] is None

    with client.pipeline() as pipe:
        pipe.put("too-many", "v", w=3)
        with pytest.raises(BadRequestError, match="exceeds N=2"):
            pipe.execute()


# --- status and failover ---------------------------------------------------------------------------


def test_status_reports_all_up_then_one_down(cluster: InProcessCluster) -> None:
    client = cluster.client()
    assert [(node.node_id, node.address, node.up) for node in client.status()] == [
        (node_id, cluster.address(node_id), True) for node_id in cluster.node_ids
    ]
    cluster.stop("node2")
    assert {node.node_id: node.up for node in client.status()} == {"node1": True, "node2": False, "node3": True}


def fallback_of(cluster: InProcessCluster, key: str) -> str:
    """The node after the key's N replicas in its partition's ranking: where its hints go."""
    ring = cluster.ring()
    return ring.partition_owners(ring.partition(key.encode()))[cluster.config.n]


def test_with_a_replica_down_reads_and_quorum_writes_go_on_through_a_hint(cluster: InProcessCluster) -> None:
    client = cluster.client()
    key = key_with_primary(cluster, "node1")
    client.put(key, "before")
    cluster.stop("node1")
    cluster.settle()  # every node has seen node1 fail: its return will be a change, and wake the handoff
    [survivor] = [node_id for node_id in cluster.replicas_of(key) if node_id != "node1"]
    holder = fallback_of(cluster, key)
    assert holder not in ("node1", survivor)

    assert client.get(key) == b"before"  # R=1: the other replica answers
    version = client.put(key, "after")  # W=2 of N=2 with one replica down: the hint is the second ack
    assert client.get(key) == b"after"
    assert cluster.node(survivor).storage.get(key.encode()) == protocol.Record(version, b"after")

    holding = cluster.node(holder).storage
    assert holding.get(key.encode()) is None  # held for node1, not served as the holder's own data
    assert holding.pending_hints() == 1
    assert holding.hint_counts() == {"node1": 1}
    [hint] = holding.hints_for("node1", 10)
    assert (hint.key, hint.record) == (key.encode(), protocol.Record(version, b"after"))

    # node1 comes back: the holder sees it up and hands the write over, then forgets the hint
    restarted = cluster.start("node1")
    cluster.settle()
    wait_until(
        lambda: (
            restarted.storage.get(key.encode()) == protocol.Record(version, b"after") and holding.pending_hints() == 0
        ),
        timeout=5.0,
        message="the hint to be delivered to node1 and dropped",
    )


def test_a_quorum_write_is_unavailable_when_no_fallback_is_left(cluster: InProcessCluster) -> None:
    client = cluster.client()
    key = key_with_primary(cluster, "node1")
    client.put(key, "before")
    holder = fallback_of(cluster, key)
    cluster.stop("node1")
    cluster.stop(holder)

    with pytest.raises(UnavailableError) as caught:
        client.put(key, "after")  # W=2: node1 is down and its only fallback too
    # the quorum is lost as soon as node1's write and hint fail, whether or not the survivor's fsync is done
    assert caught.value.required == 2
    assert caught.value.acked in (0, 1)
    assert f"{caught.value.acked} of 2 required replicas acked" in caught.value.message
    assert "node1" in caught.value.message
    assert "no fallback node took a hint" in caught.value.message

    version = client.put(key, "after", w=1)
    assert client.get(key) == b"after"
    [survivor] = [node_id for node_id in cluster.replicas_of(key) if node_id != "node1"]
    assert cluster.node(survivor).storage.get(key.encode()).version == version


def test_a_long_key_is_written_through_a_hint_too(cluster: InProcessCluster) -> None:
    client = cluster.client()
    key = key_with_primary(cluster, "node1", prefix="k" * 500)
    cluster.stop("node1")
    version = client.put(key, "v")
    assert cluster.node(fallback_of(cluster, key)).storage.hint_counts() == {"node1": 1}
    assert version.timestamp > 0


def test_writes_carry_the_highest_timestamp_the_client_has_seen(
    cluster: InProcessCluster, counting: type[CountingConnection]
) -> None:
    client = Client(cluster.addresses, connection_factory=counting)
    try:
        first = client.put("a", "1")
        second = client.put("b", "2")  # another key, maybe another coordinator
        client.delete("c")
        client.get("a")
        sent = [request for request in counting.sent if isinstance(request, protocol.Put | protocol.Delete)]
        assert [request.after for request in sent] == [0, first.timestamp, second.timestamp]
        assert second > first
    finally:
        client.close()


def test_a_read_moves_the_clients_timestamp_forward(
    cluster: InProcessCluster, counting: type[CountingConnection]
) -> None:
    writer = cluster.client()
    version = writer.put("seen", "by the reader")
    reader = Client(cluster.addresses, connection_factory=counting)
    try:
        assert reader.get("seen") == b"by the reader"
        later = reader.put("other", "v")
        [put] = [request for request in counting.sent if isinstance(request, protocol.Put)]
        assert put.after == version.timestamp
        assert later.timestamp > version.timestamp
    finally:
        reader.close()


def test_members_is_the_first_reachable_nodes_view(cluster: InProcessCluster) -> None:
    client = cluster.client()
    viewer, members = client.members()
    assert viewer == "node1"
    assert [(member.node_id, member.state, member.hints) for member in members] == [
        (node_id, protocol.PeerState.UP, 0) for node_id in cluster.node_ids
    ]
    cluster.stop("node1")
    cluster.settle()
    viewer, members = client.members()
    assert viewer == "node2"  # node1 is unreachable: the next seed answers
    states = {member.node_id: member.state for member in members}
    assert states["node1"] is not protocol.PeerState.UP
    assert states["node3"] is protocol.PeerState.UP


def test_repair_runs_a_round_on_the_named_node(cluster: InProcessCluster) -> None:
    client = cluster.client()
    client.put("repaired", "v")
    owner = cluster.replicas_of("repaired")[0]
    result = client.repair(owner)
    ring = cluster.ring()
    shared = sum(
        1 for p in range(ring.partitions) if owner in ring.partition_owners(p)[: cluster.config.n]
    )  # each shared with the one other replica (N=2)
    assert result == protocol.RepairReply(shared, 0, 0, ())


def test_a_restarted_primary_serves_again(cluster: InProcessCluster) -> None:
    client = cluster.client()
    key = key_with_primary(cluster, "node2")
    client.put(key, "v1")
    cluster.restart("node2")
    assert client.get(key) == b"v1"
    assert {node.node_id: node.up for node in client.status()} == dict.fromkeys(cluster.node_ids, True)


def test_unreachable_cluster_raises_a_one_line_error() -> None:
    addresses = [f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"]
    client = Client(addresses, connect_timeout=0.5)
    try:
        with pytest.raises(NodeUnreachableError) as caught:
            client.get("k")
    finally:
        client.close()
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith("no node reachable")
    assert all(address in message for address in addresses)
    assert caught.value.code == "UNREACHABLE"


def test_bad_seed_addresses_are_rejected_up_front() -> None:
    with pytest.raises(ValueError, match="no node addresses"):
        Client(" , ")
    with pytest.raises(ValueError, match="invalid port"):
        Client("127.0.0.1:99999")


# --- arguments -------------------------------------------------------------------------------------

BAD_QUORUMS = [
    (256, InvalidArgumentError, "=256 exceeds N=2"),  # too big for the quorum byte, and above N
    (3, InvalidArgumentError, "=3 exceeds N=2"),
    (-1, InvalidArgumentError, "=-1: a request waits for 1 to N replicas"),
    (0, InvalidArgumentError, "=0: a request waits for 1 to N replicas"),
    ("2", InvalidArgumentTypeError, "must be an int or None, not str"),
    (2.0, InvalidArgumentTypeError, "must be an int or None, not float"),
    (True, InvalidArgumentTypeError, "must be an int or None, not bool"),
]


@pytest.mark.parametrize(("quorum", "error", "message"), BAD_QUORUMS)
def test_a_bad_quorum_is_the_librarys_own_error_and_sends_nothing(
    cluster: InProcessCluster,
    counting: type[CountingConnection],
    quorum: object,
    error: type[BadRequestError],
    message: str,
) -> None:
    client = Client(cluster.addresses, connection_factory=counting)
    try:
        client.topology()
        counting.sent.clear()
        calls = [
            lambda: client.put("k", "v", w=quorum),  # type: ignore[arg-type]
            lambda: client.delete("k", w=quorum),  # type: ignore[arg-type]
            lambda: client.get("k", r=quorum),  # type: ignore[arg-type]
            lambda: client.pipeline().put("k", "v", w=quorum).execute(),  # type: ignore[arg-type]
            lambda: client.pipeline().get("k", r=quorum).execute(),  # type: ignore[arg-type]
            lambda: client.pipeline().delete("k", w=quorum).execute(),  # type: ignore[arg-type]
        ]
        for call in calls:
            with pytest.raises(error, match=message) as caught:
                call()
            assert caught.value.code == "BAD_REQUEST"
            assert isinstance(caught.value, ValueError if error is InvalidArgumentError else TypeError)
        assert counting.sent == []
        assert client.put("k", "v", w=2) and client.get("k", r=2) == b"v"  # 1..N is fine
    finally:
        client.close()


def test_a_fresh_client_refuses_w_256_before_encoding_it(cluster: InProcessCluster) -> None:
    client = Client(cluster.addresses)
    try:
        with pytest.raises(InvalidArgumentError, match="w=256 exceeds N=2"):
            client.put("k", "v", w=256)
    finally:
        client.close()


@pytest.mark.parametrize(
    ("key", "value", "error", "message"),
    [
        (5, "v", InvalidArgumentTypeError, "key must be bytes or str, not int"),
        (None, "v", InvalidArgumentTypeError, "key must be bytes or str, not NoneType"),
        ("k", 5, InvalidArgumentTypeError, "value must be bytes or str, not int"),  # not five zero bytes
        ("k", None, InvalidArgumentTypeError, "value must be bytes or str, not NoneType"),
        ("k", ["v"], InvalidArgumentTypeError, "value must be bytes or str, not list"),
        ("\udcff", "v", InvalidArgumentError, "key is not valid UTF-8 text"),
        ("k", "a\ud800b", InvalidArgumentError, "value is not valid UTF-8 text .* at index 1"),
    ],
)
def test_a_key_or_value_of_the_wrong_kind_is_the_librarys_own_error(
    cluster: InProcessCluster, key: object, value: object, error: type[BadRequestError], message: str
) -> None:
    client = cluster.client()
    with pytest.raises(error, match=message):
        client.put(key, value)  # type: ignore[arg-type]
    with pytest.raises(error, match=message):
        client.pipeline().put(key, value)  # type: ignore[arg-type]
    if "key" in message:
        for call in (client.get, client.delete, client.where, client.pipeline().get, client.pipeline().delete):
            with pytest.raises(error, match=message):
                call(key)  # type: ignore[operator]


def test_bytes_like_keys_and_values_are_their_bytes(cluster: InProcessCluster) -> None:
    client = cluster.client()
    client.put(bytearray(b"ba"), memoryview(b"mv"))
    assert client.get(b"ba") == b"mv"
    assert client.get(memoryview(b"ba")) == b"mv"


@pytest.mark.parametrize(
    ("options", "error", "message"),
    [
        ({"timeout": 0}, InvalidArgumentError, "timeout=0: must be a positive"),
        ({"timeout": -1.0}, InvalidArgumentError, "timeout=-1.0"),
        ({"timeout": float("nan")}, InvalidArgumentError, "timeout=nan"),
        ({"connect_timeout": float("inf")}, InvalidArgumentError, "connect_timeout=inf"),
        ({"timeout": "5"}, InvalidArgumentTypeError, "timeout must be a number of seconds, not str"),
        ({"client_name": "x" * 256}, InvalidArgumentError, "client_name is longer than 255 bytes"),
        ({"client_name": 7}, InvalidArgumentTypeError, "client_name must be a str"),
        ({"nodes": 5000}, InvalidArgumentTypeError, "nodes must be a str"),
        ({"nodes": [b"127.0.0.1:5000"]}, InvalidArgumentTypeError, "nodes must be a str"),
        ({"nodes": "127.0.0.1:notaport"}, InvalidArgumentError, "invalid port"),
    ],
)
def test_bad_client_options_are_refused_up_front(options: dict[str, object], error: type, message: str) -> None:
    arguments: dict[str, object] = {"nodes": "127.0.0.1:5000", **options}
    with pytest.raises(error, match=message):
        Client(**arguments)  # type: ignore[arg-type]


def test_an_unknown_node_id_is_the_librarys_own_error(cluster: InProcessCluster) -> None:
    client = cluster.client()
    with pytest.raises(InvalidArgumentError, match="unknown node id 'node9'; the nodes are node1, node2, node3"):
        client.node_address("node9")
    with pytest.raises(InvalidArgumentError, match="unknown node id 'node9'"):
        client.repair("node9")
    with pytest.raises(InvalidArgumentError, match="invalid port"):
        client.call_node("127.0.0.1:99999", protocol.Ping())


# --- limits ----------------------------------------------------------------------------------------


def test_oversize_key_and_value_are_refused_without_a_request(
    cluster: InProcessCluster, counting: type[CountingConnection]
) -> None:
    client = Client(cluster.addresses, connection_factory=counting)
    try:
        client.get("warm-up")  # learns the limits from HELLO
        counting.sent.clear()
        with pytest.raises(KeyTooLargeError, match="1025 bytes exceeds the limit of 1024"):
            client.get("k" * 1025)
        with pytest.raises(KeyTooLargeError):
            client.put("k" * 1025, "v")
        with pytest.raises(KeyTooLargeError):
            client.delete("k" * 70_000)
        with pytest.raises(ValueTooLargeError, match="exceeds the limit of 1048576"):
            client.put("k", b"v" * (1024 * 1024 + 1))
        assert counting.sent == []
        client.put("k" * 1024, b"v" * (1024 * 1024))  # exactly the limits is fine
        assert client.get("k" * 1024) == b"v" * (1024 * 1024)
    finally:
        client.close()


def test_limits_are_those_the_nodes_announce(make_cluster: Callable[..., InProcessCluster]) -> None:
    cluster = make_cluster(1, KV_MAX_KEY_BYTES="100", KV_MAX_VALUE_BYTES="2000", KV_MAX_FRAME_BYTES="5000")
    client = cluster.client()
    assert client.limits == Limits(max_key_bytes=100, max_value_bytes=2000, max_frame_bytes=5000)


def test_primary_only_routing_has_no_failover_and_does_not_redial_at_once(cluster: InProcessCluster) -> None:
    client = cluster.client()
    client.routing = PrimaryOnly()
    down, up = key_with_primary(cluster, "node1", "down"), key_with_primary(cluster, "node2", "up")
    client.put(down, "v")
    cluster.stop("node1")
    with pytest.raises(NodeUnreachableError, match="no node reachable"):
        client.get(down)  # its other replica, node2 or node3, is up, but the plan holds the primary alone
    with pytest.raises(NodeUnreachableError, match=r"is down; next dial within"):
        client.get(down)  # node1 failed just now: not dialled again yet
    client.put(up, "v")
    assert client.get(up) == b"v"


def test_a_fresh_client_refuses_a_key_too_long_for_the_protocol(cluster: InProcessCluster) -> None:
    client = Client(cluster.addresses)
    try:
        with pytest.raises(KeyTooLargeError):
            client.get("k" * 70_000)
    finally:
        client.close()


def test_a_fresh_client_refuses_an_oversize_value_locally(cluster: InProcessCluster) -> None:
    client = Client(cluster.addresses)
    try:
        with pytest.raises(ValueTooLargeError):
            client.put("k", b"v" * (2 * 1024 * 1024))
    finally:
        client.close()


# --- IPv6 ------------------------------------------------------------------------------------------


def ipv6_loopback_listener() -> socket.socket:
    """A listening gevent socket on [::1], port 0; the test is skipped where there is no IPv6 loopback."""
    if not stdlib_socket.has_ipv6:
        pytest.skip("Python was built without IPv6")
    sock = socket.socket(stdlib_socket.AF_INET6, stdlib_socket.SOCK_STREAM)
    try:
        sock.bind(("::1", 0))
    except OSError:
        sock.close()
        pytest.skip("this machine has no IPv6 loopback")
    sock.listen(128)
    return sock


@pytest.fixture
def ipv6_nodes(tmp_path: Path) -> Iterator[dict[str, int]]:
    """Two in-process nodes listening on [::1] (N=2, W=2, R=1); yields each node's port."""
    configure_logging()
    listeners = {node_id: ipv6_loopback_listener() for node_id in ("node1", "node2")}
    ports = {node_id: sock.getsockname()[1] for node_id, sock in listeners.items()}
    peers = ",".join(f"{node_id}={format_address('::1', port)}" for node_id, port in ports.items())
    nodes: list[Node] = []
    try:
        for node_id, listener in listeners.items():
            environ = {
                **DEFAULT_SETTINGS,
                "KV_NODE_ID": node_id,
                "KV_PEERS": peers,
                "KV_HOST": "::1",
                "KV_PORT": str(ports[node_id]),
                "KV_HTTP_PORT": "0",
                "KV_DATA_DIR": str(tmp_path / node_id),
            }
            node = Node(load_config(environ), listener=listener)
            node.start()
            nodes.append(node)
        yield ports
    finally:
        for node in nodes:
            node.stop()
        for listener in listeners.values():
            listener.close()


def test_a_client_reaches_nodes_on_ipv6_by_a_bracketed_seed(ipv6_nodes: dict[str, int]) -> None:
    """The seed's address comes back from HELLO, and node2's from TOPOLOGY: both keep their brackets."""
    client = Client(f"[::1]:{ipv6_nodes['node1']}", timeout=3.0)
    try:
        client.put("over-ipv6", "v")
        assert client.get("over-ipv6") == b"v"
        expected = {f"[::1]:{port}" for port in ipv6_nodes.values()}
        assert set(client.where("over-ipv6")) == expected  # N=2 of 2: both nodes, by their bracketed addresses
        assert {node.address for node in client.status() if node.up} == expected
    finally:
        client.close()


def test_a_connection_the_node_closed_while_unused_is_dialled_again_not_failed() -> None:
    """A node closes idle connections (KV_IDLE_TIMEOUT_S); a client that has not run since finds
    out only when its next request fails. It dials that node once more before giving up on it."""

    def script(number: int, frame: Frame) -> bytes | None:
        if frame.code == protocol.Op.TOPOLOGY:
            return node.topology_reply(frame.request_id)
        if number == 1:
            return None  # closed under the request, as an idle timeout does
        return protocol.encode_response(frame.request_id, Status.NOT_FOUND)

    node = FakeNode(script)
    try:
        with Client(node.address, timeout=2.0) as client:
            assert client.get("k") is None
        assert node.connections == 2
    finally:
        node.close()


def test_when_every_node_refuses_for_too_many_connections_the_error_says_so() -> None:
    refused = [TooManyConnectionsError("a is full"), TooManyConnectionsError("b is full")]
    error = none_reachable(refused)
    assert isinstance(error, TooManyConnectionsError) and error.code == "TOO_MANY_CONNECTIONS"
    assert error.message == "no node reachable: a is full; b is full"
    mixed = none_reachable([refused[0], NodeUnreachableError("c: connection refused")])
    assert type(mixed) is NodeUnreachableError


def test_a_node_that_accepts_but_never_answers_hello_counts_as_unreachable() -> None:
    """A paused node's kernel still accepts connections; its HELLO never comes. That must fail over
    like a refused connection (NodeUnreachableError), not end the request with a TIMEOUT."""
    listener = stdlib_socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    try:
        connection = Connection("127.0.0.1", listener.getsockname()[1], connect_timeout=0.2)
        with pytest.raises(NodeUnreachableError, match=r"did not answer HELLO within 0\.2 s"):
            connection.connect()
    finally:
        listener.close()


def test_a_ring_refreshed_while_a_request_waits_on_a_node_leaves_the_plan_its_other_nodes(
    cluster: InProcessCluster,
) -> None:
    key = key_with_primary(cluster, "node1")
    second = cluster.replicas_of(key)[1]
    client: Client

    class RefreshedMeanwhile(Connection):
        """Dialling node1 fails after another greenlet's refresh dropped the plan's next node."""

        def connect(self) -> None:
            if f"{self.host}:{self.port}" == cluster.address("node1") and second in client._addresses:
                client._addresses = {n: a for n, a in client._addresses.items() if n != second}
            super().connect()

    client = Client(cluster.addresses, connection_factory=RefreshedMeanwhile, connect_timeout=0.5)
    try:
        client.put("learn the ring", "v")
        cluster.stop("node1")
        for slot in client._slots.values():  # node1 is dialled again, as after an idle close
            slot.close()
        version = client.put(key, "written by the next node of the plan")
        assert version.node_id == second
    finally:
        client.close()
