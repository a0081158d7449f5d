"""One client must not exhaust a node: connection slots, handshake and idle timeouts, and the bytes a
connection may hold, against real in-process nodes over raw sockets."""

from __future__ import annotations

import socket as stdlib_socket
import struct
from collections.abc import Callable

import gevent
import pytest
from cluster import InProcessCluster, LogSink
from gevent import socket
from polling import wait_until
from raw_connection import FakeNode, HeldCommits

from client import protocol
from client.client import Client
from client.connection import Connection
from client.errors import TooManyConnectionsError
from client.protocol import Frame, Status
from service import server

SLOTS = 8
HANDSHAKE_MS = 300


def error_of(frame: Frame) -> protocol.ErrorReply:
    return protocol.decode_error(Status(frame.code), frame.body)


def sample(cluster: InProcessCluster, name: str, labels: dict[str, str] | None = None, node_id: str = "node1") -> float:
    return cluster.node(node_id).metrics.registry.get_sample_value(name, labels or {}) or 0.0


def fill_client_slots(cluster: InProcessCluster, connect, count: int = SLOTS, node_id: str = "node1") -> list:
    """``count`` connections that each completed HELLO and then say nothing."""
    holders = [connect(cluster.address(node_id)) for _ in range(count)]
    for holder in holders:
        holder.hello()
    return holders


def serves_a_new_client(address: str) -> bool:
    with Client(address, timeout=1.0, connect_timeout=0.5) as client:
        client.put("probe", b"served")
        return client.get("probe") == b"served"


# --- a connection over the limit is told so --------------------------------------------------------


def test_the_ninth_connection_gets_too_many_connections_as_the_reply_to_its_hello(
    make_cluster: Callable[..., InProcessCluster], connect
) -> None:
    cluster = make_cluster(1, KV_MAX_CONNECTIONS=str(SLOTS))
    fill_client_slots(cluster, connect)
    ninth = connect(cluster.addresses[0])
    ninth.request(41, protocol.Hello(client_name="ninth"))
    frames = ninth.read_until_closed()
    assert [(frame.request_id, frame.code) for frame in frames] == [(41, Status.TOO_MANY_CONNECTIONS)]
    assert f"{SLOTS} client connections" in error_of(frames[0]).message


def test_a_client_that_only_reads_gets_too_many_connections_with_request_id_0(
    make_cluster: Callable[..., InProcessCluster], connect
) -> None:
    cluster = make_cluster(1, KV_MAX_CONNECTIONS=str(SLOTS))
    fill_client_slots(cluster, connect)
    frames = connect(cluster.addresses[0]).read_until_closed()
    assert [(frame.request_id, frame.code) for frame in frames] == [(0, Status.TOO_MANY_CONNECTIONS)]


def test_the_client_library_reports_too_many_connections(
    make_cluster: Callable[..., InProcessCluster], connect
) -> None:
    cluster = make_cluster(1, KV_MAX_CONNECTIONS=str(SLOTS))
    fill_client_slots(cluster, connect)
    with Client(cluster.addresses[0], timeout=2.0) as client, pytest.raises(TooManyConnectionsError) as refused:
        client.get("anything")
    assert f"{SLOTS} client connections" in refused.value.message


def test_refused_connections_are_counted_and_logged_without_a_line_each(
    make_cluster: Callable[..., InProcessCluster], connect, log_sink: LogSink
) -> None:
    cluster = make_cluster(1, KV_MAX_CONNECTIONS=str(SLOTS))
    fill_client_slots(cluster, connect)
    for attempt in range(20):
        refused = connect(cluster.addresses[0])
        refused.request(attempt + 1, protocol.Hello(client_name="flood"))
        assert [frame.code for frame in refused.read_until_closed()] == [Status.TOO_MANY_CONNECTIONS]
    assert sample(cluster, "kv_connections_refused_total") == 20
    lines = log_sink.events("connection_refused")
    assert 1 <= len(lines) <= 2, lines  # the first at once; the rest summed up at most once a second
    assert lines[0]["level"] == "warning" and lines[0]["limit"] == SLOTS


def test_an_id_0_error_fails_every_request_waiting_on_the_connection() -> None:
    """A frame with request id 0 is about the connection: the client library fails everything
    pending on it with that error, instead of "closed the connection"."""
    seen: list[Frame] = []

    def script(number: int, frame: Frame) -> bytes | None:
        seen.append(frame)
        return protocol.encode_error(0, Status.TOO_MANY_CONNECTIONS, "go away") if len(seen) == 2 else b""

    node = FakeNode(script)
    try:
        connection = Connection("127.0.0.1", node.port)
        connection.connect()
        first, second = connection.send(protocol.Ping()), connection.send(protocol.Ping())
        for pending in (first, second):
            with pytest.raises(TooManyConnectionsError, match="go away"):
                pending.get(timeout=2)
    finally:
        node.close()


# --- connections that never finish the handshake free their slots ---------------------------------


@pytest.mark.parametrize(
    "opening",
    [b"", b"\x00\x00\x00"],  # an idle connection; one that sent 3 bytes of a frame
    ids=["idle", "three-bytes"],
)
def test_connections_that_never_say_hello_do_not_lock_out_a_new_client(
    make_cluster: Callable[..., InProcessCluster], connect, log_sink: LogSink, opening: bytes
) -> None:
    cluster = make_cluster(1, KV_MAX_CONNECTIONS=str(SLOTS), KV_HANDSHAKE_TIMEOUT_MS=str(HANDSHAKE_MS))
    squatters = [connect(cluster.addresses[0]) for _ in range(SLOTS)]
    for squatter in squatters:
        squatter.send(opening)
    wait_until(lambda: serves_a_new_client(cluster.addresses[0]), timeout=5, message="a new client to be served")
    for squatter in squatters:
        assert squatter.read_until_closed() == []  # closed by the node, nothing said
    assert sample(cluster, "kv_connections_closed_total", {"reason": "handshake_timeout"}) == SLOTS
    assert log_sink.events("handshake_timeout")


def test_a_frame_left_half_sent_after_hello_is_closed_after_the_handshake_timeout(
    make_cluster: Callable[..., InProcessCluster], connect
) -> None:
    cluster = make_cluster(1, KV_HANDSHAKE_TIMEOUT_MS=str(HANDSHAKE_MS))
    stalled = connect(cluster.addresses[0])
    stalled.hello()
    stalled.send(protocol.encode_request(2, protocol.Ping())[:5])
    assert stalled.read_until_closed(timeout=5) == []
    assert sample(cluster, "kv_connections_closed_total", {"reason": "frame_timeout"}) == 1


def test_a_peer_is_admitted_while_every_client_slot_is_taken(
    make_cluster: Callable[..., InProcessCluster], connect
) -> None:
    """node2 restarts while node1's client slots are full: it must still reach node1, see it up, and
    replicate to it directly rather than through hints."""
    cluster = make_cluster(2, KV_MAX_CONNECTIONS=str(SLOTS), KV_HANDSHAKE_TIMEOUT_MS="5000")  # N=2, W=2
    fill_client_slots(cluster, connect)
    cluster.restart("node2")
    cluster.settle()
    with Client(cluster.address("node2"), timeout=2.0) as client:
        client.put("through-node2", b"replicated")
    stored = cluster.node("node1").storage.get(b"through-node2")
    assert stored is not None and stored.value == b"replicated"
    assert cluster.node("node2").store.pending_hints() == 0


def test_a_client_claiming_to_be_a_node_gets_only_the_peer_allowance(
    make_cluster: Callable[..., InProcessCluster], connect
) -> None:
    cluster = make_cluster(2, KV_MAX_CONNECTIONS=str(SLOTS))
    fill_client_slots(cluster, connect)
    codes = []
    for attempt in range(server.PEER_LINKS_PER_MEMBER + 1):
        liar = connect(cluster.address("node1"))
        codes.append(liar.call(attempt + 1, protocol.Hello(client_name="node:node2")).code)
    # node2's own link holds one of its links already
    assert codes.count(Status.OK) == server.PEER_LINKS_PER_MEMBER - 1
    assert codes[-2:] == [Status.TOO_MANY_CONNECTIONS] * 2


# --- idle connections --------------------------------------------------------------------------------


def test_an_idle_connection_is_closed_and_a_busy_one_is_not(
    make_cluster: Callable[..., InProcessCluster], connect
) -> None:
    cluster = make_cluster(1, KV_IDLE_TIMEOUT_S="1", KV_REQUEST_TIMEOUT_MS="10000", KV_LOG_COMMANDS="false")
    held = HeldCommits(cluster.node("node1"))
    idle, busy = connect(cluster.addresses[0]), connect(cluster.addresses[0])
    idle.hello()
    busy.hello()
    busy.request(2, protocol.Put(b"slow", b"write"))  # in flight until released
    assert idle.read_until_closed(timeout=5) == []
    assert sample(cluster, "kv_connections_closed_total", {"reason": "idle_timeout"}) == 1
    held.release()
    assert busy.read_frame().code == Status.OK
    assert busy.call(3, protocol.Ping()).code == Status.OK  # still open


# --- bytes a connection may hold -----------------------------------------------------------------------

SMALL_FRAMES = {
    "KV_MAX_VALUE_BYTES": str(64 * 1024),
    "KV_CLIENT_OUTPUT_LIMIT_MB": "2",
    "KV_CLIENT_OUTPUT_TIMEOUT_S": "1",
    "KV_LOG_COMMANDS": "false",
}
VALUE = b"v" * (64 * 1024)


def never_reading(address: str) -> socket.socket:
    """A connection that completes HELLO and then reads nothing more, with a tiny receive window."""
    sock = socket.socket(stdlib_socket.AF_INET, stdlib_socket.SOCK_STREAM)
    sock.setsockopt(stdlib_socket.SOL_SOCKET, stdlib_socket.SO_RCVBUF, 4096)
    host, port = address.rsplit(":", 1)
    sock.connect((host, int(port)))
    sock.sendall(protocol.encode_request(1, protocol.Hello(client_name="never-reads")))
    decoder = protocol.FrameDecoder()
    while not decoder.feed(sock.recv(4096)):
        pass
    return sock


def get_burst(count: int, key: bytes = b"big") -> bytes:
    return b"".join(protocol.encode_request(i + 2, protocol.Get(key)) for i in range(count))


def test_a_client_that_never_reads_is_disconnected_while_another_is_served(
    make_cluster: Callable[..., InProcessCluster], log_sink: LogSink
) -> None:
    cluster = make_cluster(1, **SMALL_FRAMES)
    address = cluster.addresses[0]
    with Client(address, timeout=2.0) as client:
        client.put("big", VALUE)
        attacker = never_reading(address)
        sender = gevent.spawn(attacker.sendall, get_burst(1000))  # 64 MiB of replies, never read
        limit = 2 * 1024 * 1024
        held: list[float] = []

        def disconnected() -> bool:
            held.append(sample(cluster, "kv_connection_buffered_bytes"))
            assert client.get("big") == VALUE  # another client is served meanwhile
            return bool(log_sink.events("client_output_limit"))

        wait_until(disconnected, timeout=10, message="the client that never reads to be disconnected")
    line = log_sink.events("client_output_limit")[0]
    assert line["level"] == "warning" and line["bytes"] > 0 and line["limit"] == limit
    assert "peer" in line
    assert max(held) <= limit + 2 * cluster.config.max_frame_bytes
    assert sample(cluster, "kv_connections_closed_total", {"reason": "output_limit"}) == 1
    wait_until(lambda: sample(cluster, "kv_connection_buffered_bytes") == 0, message="its buffers to be dropped")
    sender.kill()
    attacker.close()


def test_requests_a_client_left_behind_are_not_run(make_cluster: Callable[..., InProcessCluster]) -> None:
    """A client sends 2,000 GETs at once and leaves without reading: the node stops at the first
    reply it cannot deliver instead of reading and encoding the 2,000 values for nobody."""
    cluster = make_cluster(1, **SMALL_FRAMES)
    address = cluster.addresses[0]
    with Client(address) as client:
        client.put("big", VALUE)
    attacker = never_reading(address)
    attacker.sendall(get_burst(2000))  # 30 KB: the node reads it all at once
    gets = lambda: sample(cluster, "kv_requests_total", {"op": "GET", "status": "OK"})  # noqa: E731
    wait_until(lambda: gets() > 0, message="the node to start answering")
    attacker.setsockopt(stdlib_socket.SOL_SOCKET, stdlib_socket.SO_LINGER, struct.pack("ii", 1, 0))
    attacker.close()  # reset: every later send fails
    wait_until(lambda: sample(cluster, "kv_connections") == 0, message="the node to drop the connection")
    assert gets() < 500


def test_inline_gets_count_toward_the_bytes_in_flight(make_cluster: Callable[..., InProcessCluster], connect) -> None:
    """PUTs held in flight fill the connection's bytes; a GET pipelined behind them, which the node
    would answer at once from its own store, waits for room like any other request."""
    cluster = make_cluster(1, **SMALL_FRAMES)
    with Client(cluster.addresses[0]) as client:
        client.put("small", b"x")
    held = HeldCommits(cluster.node("node1"))
    connection = connect(cluster.addresses[0])
    connection.hello()
    puts = [protocol.encode_request(100 + i, protocol.Put(f"k{i}".encode(), VALUE)) for i in range(40)]  # 2.5 MiB
    connection.send(b"".join(puts) + protocol.encode_request(7, protocol.Get(b"small")))
    committer = cluster.node("node1").store.committer
    in_flight = wait_until(lambda: sum(held.batches) + committer.pending, message="PUTs in flight")
    wait_until(lambda: sum(held.batches) + committer.pending == in_flight, message="the PUTs in flight to settle")
    assert in_flight < 40  # the connection's bytes ran out before every PUT started
    connection.sock.settimeout(0.2)
    with pytest.raises(TimeoutError):
        connection.sock.recv(1)  # and the GET behind them is not answered either
    held.release()
    replies = connection.read_frames(41)
    assert {frame.request_id for frame in replies} == {7, *range(100, 140)}


def test_inline_requests_count_toward_the_requests_in_flight(
    make_cluster: Callable[..., InProcessCluster], connect, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(server, "MAX_IN_FLIGHT_PER_CONNECTION", 2)
    cluster = make_cluster(1, KV_LOG_COMMANDS="false")
    held = HeldCommits(cluster.node("node1"))
    connection = connect(cluster.addresses[0])
    connection.hello()
    connection.send(
        protocol.encode_request(2, protocol.Put(b"a", b"1"))
        + protocol.encode_request(3, protocol.Put(b"b", b"2"))
        + protocol.encode_request(4, protocol.Get(b"a"))
    )
    committer = cluster.node("node1").store.committer
    wait_until(lambda: sum(held.batches) + committer.pending == 2, message="both PUTs in flight")
    connection.sock.settimeout(0.2)
    with pytest.raises(TimeoutError):
        connection.sock.recv(1)  # the GET waits for a slot
    held.release()
    assert sorted(frame.request_id for frame in connection.read_frames(3)) == [2, 3, 4]


# --- error messages --------------------------------------------------------------------------------


def test_errors_about_a_dead_peer_stay_short_and_flat(make_cluster: Callable[..., InProcessCluster]) -> None:
    cluster = make_cluster(2, KV_LOG_COMMANDS="false")  # N=2, W=2: every write needs node2
    cluster.stop("node2")
    node1 = cluster.node("node1")
    messages = []
    with Client(cluster.address("node1"), timeout=2.0) as client:
        client.refresh_topology()
        for i in range(30):
            node1.detector.heartbeat("node2")  # keep it suspect at worst, so every write tries it
            try:
                client.put(f"k{i}", b"v", w=2)
            except Exception as exc:  # UNAVAILABLE, or UNREACHABLE once node1's only link fails
                messages.append(str(exc))
    peer_error = node1.peers["node2"].last_error
    assert messages
    for message in [*messages, peer_error]:
        assert len(message.encode()) <= protocol.MAX_ERROR_MESSAGE_BYTES, message
        assert message.count("unreachable") <= 1, message
        assert message.count("cannot connect") <= 1, message
