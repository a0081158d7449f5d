"""The protocol server over raw gevent sockets: handshake, pipelining, bad input, shutdown, logging."""

from __future__ import annotations

import struct
import time
from collections.abc import Callable

import gevent
import pytest
from cluster import InProcessCluster, LogSink
from gevent.event import Event
from polling import wait_until
from raw_connection import READ_TIMEOUT, HeldCommits, RawConnection

from client import protocol
from client.errors import BadRequestError
from client.protocol import Frame, Op, Status
from service.server import InFlight

SMALL_LIMITS = {"KV_MAX_KEY_BYTES": "16", "KV_MAX_VALUE_BYTES": "64"}


@pytest.fixture
def node1(make_cluster: Callable[..., InProcessCluster]) -> InProcessCluster:
    """One node (N=W=R=1) with a 16-byte key limit and a 64-byte value limit."""
    return make_cluster(1, **SMALL_LIMITS)


def error_of(frame: Frame) -> protocol.ErrorReply:
    return protocol.decode_error(Status(frame.code), frame.body)


def assert_usable(connection: RawConnection, request_id: int = 999) -> None:
    reply = connection.call(request_id, protocol.Ping())
    assert reply.code == Status.OK


def assert_node_serves(address: str) -> None:
    """A fresh connection negotiates and stores and reads a key."""
    connection = RawConnection(address)
    try:
        connection.hello()
        written = connection.call(2, protocol.Put(b"alive", b"yes"))
        assert written.code == Status.OK
        reply = connection.call(3, protocol.Get(b"alive"))
        assert (reply.code, protocol.decode_value(reply.body)) == (
            Status.OK,
            (protocol.decode_version(written.body), b"yes"),
        )
    finally:
        connection.close()


# --- handshake -------------------------------------------------------------------------------------


def test_hello_reports_the_version_node_and_limits(node1: InProcessCluster, connect) -> None:
    connection = connect(node1.addresses[0])
    reply = protocol.decode_hello_reply(connection.hello(request_id=42).body)
    assert reply.version == protocol.PROTOCOL_VERSION
    assert reply.node_id == "node1"
    assert (reply.max_key_bytes, reply.max_value_bytes) == (16, 64)
    assert reply.max_frame_bytes == 16 + 64 + protocol.FRAME_OVERHEAD


def test_unsupported_version_range_is_refused_and_a_correct_hello_follows(node1: InProcessCluster, connect) -> None:
    connection = connect(node1.addresses[0])
    future = protocol.PROTOCOL_VERSION + 1
    reply = connection.call(7, protocol.Hello(min_version=future, max_version=future + 3))
    assert reply.code == Status.UNSUPPORTED_VERSION
    assert f"{future}-{future + 3}" in error_of(reply).message

    # the connection stays open and unnegotiated until a HELLO it can accept
    connection.hello(request_id=8)
    assert connection.call(9, protocol.Put(b"k", b"v")).code == Status.OK


def test_a_version_range_around_the_supported_one_is_accepted(node1: InProcessCluster, connect) -> None:
    connection = connect(node1.addresses[0])
    reply = connection.call(1, protocol.Hello(min_version=0, max_version=200))
    assert reply.code == Status.OK
    assert protocol.decode_hello_reply(reply.body).version == protocol.PROTOCOL_VERSION


def test_a_request_before_hello_is_refused_and_the_connection_closed(node1: InProcessCluster, connect) -> None:
    connection = connect(node1.addresses[0])
    connection.request(5, protocol.Get(b"k"))
    connection.request(6, protocol.Ping())  # never answered: the node stops reading after the refusal
    frames = connection.read_until_closed()
    assert [(frame.request_id, frame.code) for frame in frames] == [(5, Status.BAD_REQUEST)]
    assert "HELLO" in error_of(frames[0]).message
    assert_node_serves(node1.addresses[0])


# --- pipelining ------------------------------------------------------------------------------------


def test_hundred_pipelined_requests_in_one_write_are_all_answered_by_id(cluster: InProcessCluster, connect) -> None:
    with cluster.running_client() as client:
        for i in range(50):
            client.put(f"pre-{i}", f"value-{i}")
    connection = connect(cluster.addresses[0])
    burst = [protocol.encode_request(1, protocol.Hello())]  # HELLO in the same write as what follows
    expected: dict[int, tuple[Status, bytes | None]] = {}
    for i in range(50):
        put_id, get_id = 1000 + 2 * i, 1001 + 2 * i
        burst.append(protocol.encode_request(put_id, protocol.Put(f"new-{i}".encode(), f"new-value-{i}".encode())))
        burst.append(protocol.encode_request(get_id, protocol.Get(f"pre-{i}".encode())))
        expected[put_id] = (Status.OK, None)
        expected[get_id] = (Status.OK, f"value-{i}".encode())
    connection.send(b"".join(burst))

    assert connection.read_frame().request_id == 1
    replies = {frame.request_id: frame for frame in connection.read_frames(100)}
    assert sorted(replies) == sorted(expected)
    for request_id, (status, value) in expected.items():
        frame = replies[request_id]
        assert frame.code == status, (request_id, frame)
        if value is not None:
            version, stored = protocol.decode_value(frame.body)
            assert stored == value
            assert version.node_id in cluster.node_ids
        else:
            assert protocol.decode_version(frame.body).node_id == "node1"
    with cluster.running_client() as client:
        assert [client.get(f"new-{i}") for i in range(50)] == [f"new-value-{i}".encode() for i in range(50)]


def test_topology_reply_describes_the_cluster(cluster: InProcessCluster, connect) -> None:
    connection = connect(cluster.addresses[1])
    connection.hello()
    reply = connection.call(2, protocol.Topology())
    topology = protocol.decode_topology_reply(reply.body)
    assert (topology.n, topology.read_quorum, topology.write_quorum) == (2, 1, 2)
    assert topology.partitions == cluster.config.partitions
    assert [node.address for node in topology.nodes] == cluster.addresses
    assert [node.node_id for node in topology.nodes] == cluster.node_ids


# --- bad input -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "data", "frame_too_large"),
    [
        ("http request", b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", True),
        ("all ones", b"\xff" * 32, True),
        ("short length", struct.pack(">IIB", 2, 77, Op.PING), False),
        ("zero length", b"\x00" * 16, False),
        ("2 GiB length", struct.pack(">IIB", 1 << 31, 77, Op.PUT) + b"\x00" * 16, True),
    ],
)
def test_bad_framing_closes_only_that_connection(
    node1: InProcessCluster, connect, name: str, data: bytes, frame_too_large: bool
) -> None:
    address = node1.addresses[0]
    bystander = connect(address)
    bystander.hello()
    victim = connect(address)
    victim.hello()

    victim.send(data)
    frames = victim.read_until_closed()
    if frame_too_large:
        assert [frame.code for frame in frames] == [Status.FRAME_TOO_LARGE], name
        assert "exceeds the limit" in error_of(frames[0]).message
    else:
        assert frames == [], name

    assert_usable(bystander)
    assert_node_serves(address)


@pytest.mark.parametrize("frame_too_large", [False, True])
def test_requests_before_bad_framing_in_the_same_write_are_answered_then_the_connection_closes(
    node1: InProcessCluster, connect, frame_too_large: bool
) -> None:
    # Found by the fuzzer: the frame decoder dropped the complete frames that shared a read with
    # a bad header, so what a client got back depended on how TCP split its bytes.
    victim = connect(node1.addresses[0])
    bad = struct.pack(">IIB", 1 << 31, 77, Op.PUT) if frame_too_large else struct.pack(">IIB", 2, 77, Op.PING)
    victim.send(
        protocol.encode_request(1, protocol.Hello(client_name="raw-test"))
        + protocol.encode_request(2, protocol.Ping())
        + protocol.encode_request(3, protocol.Get(b"absent"))
        + bad
    )
    frames = victim.read_until_closed()
    codes = [(frame.request_id, frame.code) for frame in frames]
    expected = [(1, Status.OK), (2, Status.OK), (3, Status.NOT_FOUND)]
    if frame_too_large:
        expected.append((77, Status.FRAME_TOO_LARGE))
    assert codes == expected
    assert_node_serves(node1.addresses[0])


def test_bad_framing_before_hello_also_closes_only_that_connection(node1: InProcessCluster, connect) -> None:
    victim = connect(node1.addresses[0])
    victim.send(b"\x00\x00\x00\x01garbage")
    assert victim.read_until_closed() == []
    assert_node_serves(node1.addresses[0])


def test_a_frame_split_across_writes_is_reassembled(node1: InProcessCluster, connect) -> None:
    connection = connect(node1.addresses[0])
    connection.hello()
    encoded = protocol.encode_request(3, protocol.Put(b"split", b"in pieces"))
    for i in range(len(encoded)):
        connection.send(encoded[i : i + 1])
        gevent.sleep(0)
    assert connection.read_frame().code == Status.OK
    assert protocol.decode_value(connection.call(4, protocol.Get(b"split")).body)[1] == b"in pieces"


def test_oversize_key_and_value_are_refused_and_the_connection_stays_usable(node1: InProcessCluster, connect) -> None:
    connection = connect(node1.addresses[0])
    connection.hello()
    cases = [
        (protocol.Get(b"k" * 17), Status.KEY_TOO_LARGE),
        (protocol.Put(b"k" * 17, b"v"), Status.KEY_TOO_LARGE),
        (protocol.Delete(b"k" * 17), Status.KEY_TOO_LARGE),
        (protocol.Put(b"k", b"v" * 65), Status.VALUE_TOO_LARGE),
    ]
    for request_id, (request, status) in enumerate(cases, start=10):
        reply = connection.call(request_id, request)
        assert reply.code == status, request
        assert "exceeds the limit" in error_of(reply).message
    assert connection.call(20, protocol.Get(b"k")).code == Status.NOT_FOUND  # the refused PUT stored nothing
    # exactly at the limits is fine
    assert connection.call(21, protocol.Put(b"k" * 16, b"v" * 64)).code == Status.OK
    assert protocol.decode_value(connection.call(22, protocol.Get(b"k" * 16)).body)[1] == b"v" * 64


@pytest.mark.parametrize(
    ("code", "body"),
    [
        (Op.GET, b""),  # no quorum byte
        (Op.GET, b"\x00\x00\x05ab"),  # key length 5, 2 bytes follow
        (Op.PUT, b"\x00\x00\x01k\x00\x00\x00\x01v"),  # the old layout: no `after` field
        (Op.PUT, b"\x00" + bytes(8) + b"\x00\x01k"),  # no value length
        (Op.PUT, b"\x00" + bytes(8) + b"\x00\x01k\x00\x00\x00\x01vEXTRA"),  # trailing bytes
        (Op.DELETE, b"\x00" + bytes(8) + b"\x00\x01k\x00"),  # trailing byte
        (Op.DELETE, b"\x00\x00\x01k"),  # the old layout: no `after` field
        (Op.HINTED_PUT, b"\x00\x01k\x00" + bytes(8) + b"\x01n\x00\x00\x00\x00"),  # no owner
        (Op.DIGESTS, b"\x00\x02\x00\x07"),  # two partitions announced, one sent
        (Op.PARTITION_KEYS, b"\x00\x07"),  # no cursor
        (Op.REPAIR, b"\x00"),  # REPAIR has an empty body
        (Op.MEMBERS, b"\x00"),  # MEMBERS has an empty body
        (Op.HELLO, b"\x01"),  # after HELLO, a second HELLO with a bad body
        (0x7F, b""),  # unknown op
        (Op.REPLICA_PUT, b"\x00\x01k\x04"),  # unknown record flags
    ],
)
def test_a_malformed_body_gets_bad_request_and_the_connection_stays_usable(
    node1: InProcessCluster, connect, code: int, body: bytes
) -> None:
    connection = connect(node1.addresses[0])
    connection.hello()
    connection.send(protocol.encode_frame(31, code, body))
    reply = connection.read_frame()
    assert (reply.request_id, reply.code) == (31, Status.BAD_REQUEST)
    assert error_of(reply).message
    assert_usable(connection)


def test_a_malformed_hello_body_before_negotiation_gets_bad_request(node1: InProcessCluster, connect) -> None:
    connection = connect(node1.addresses[0])
    connection.send(protocol.encode_frame(1, Op.HELLO, b"\x01"))
    assert connection.read_frame().code == Status.BAD_REQUEST
    connection.hello(request_id=2)
    assert_usable(connection)


def test_a_quorum_above_n_is_a_bad_request(cluster: InProcessCluster, connect) -> None:
    connection = connect(cluster.addresses[0])
    connection.hello()
    for request_id, request in enumerate(
        [protocol.Get(b"k", quorum=3), protocol.Put(b"k", b"v", quorum=3), protocol.Delete(b"k", quorum=255)],
        start=2,
    ):
        reply = connection.call(request_id, request)
        assert reply.code == Status.BAD_REQUEST, request
        assert "exceeds N=2" in error_of(reply).message
    assert connection.call(9, protocol.Put(b"k", b"v", quorum=2)).code == Status.OK
    assert connection.call(10, protocol.Get(b"k", quorum=2)).code == Status.OK


# --- shutdown and restart --------------------------------------------------------------------------


def put_burst(first: int, count: int) -> bytes:
    return b"".join(
        protocol.encode_request(100 + i, protocol.Put(f"drain-{i}".encode(), f"v{i}".encode()))
        for i in range(first, first + count)
    )


def start_stop_with_writes_in_flight(cluster: InProcessCluster, connection: RawConnection, count: int):
    """Send ``count`` PUTs, hold their commit, start stopping the node; returns the stopping greenlet."""
    address = cluster.addresses[0]
    held = HeldCommits(cluster.node("node1"))
    connection.hello()
    connection.send(put_burst(0, count))
    committer = cluster.node("node1").store.committer
    wait_until(lambda: sum(held.batches) + committer.pending == count, message=f"all {count} writes in flight")
    stopper = gevent.spawn(cluster.stop, "node1")
    wait_until(lambda: refuses_connections(address), message="the stopping node to refuse connections")
    assert not stopper.ready(), "stop must wait for the requests in flight"
    assert connection.frames == []
    return stopper, held


def test_graceful_stop_finishes_requests_in_flight(node1: InProcessCluster, connect) -> None:
    connection = connect(node1.addresses[0])
    stopper, held = start_stop_with_writes_in_flight(node1, connection, 50)
    held.release()

    frames = connection.read_until_closed()
    stopper.get(timeout=READ_TIMEOUT)
    assert sorted(frame.request_id for frame in frames) == [100 + i for i in range(50)]
    assert {frame.code for frame in frames} == {Status.OK}

    restarted = node1.start("node1")
    for i in range(50):
        assert restarted.storage.get(f"drain-{i}".encode()).value == f"v{i}".encode(), i


def test_graceful_stop_delivers_replies_while_the_client_keeps_sending(node1: InProcessCluster, connect) -> None:
    connection = connect(node1.addresses[0])
    stopper, held = start_stop_with_writes_in_flight(node1, connection, 50)
    connection.request(7, protocol.Ping())  # a pipelining client does not know the node is draining
    held.release()
    stopper.get(timeout=READ_TIMEOUT)

    frames = connection.read_until_closed()
    assert sorted(frame.request_id for frame in frames) == [100 + i for i in range(50)]


def refuses_connections(address: str) -> bool:
    try:
        RawConnection(address).close()
    except OSError:
        return True
    return False


def test_stop_during_a_pipelined_burst_keeps_every_acknowledged_write(node1: InProcessCluster, connect) -> None:
    address = node1.addresses[0]
    connection = connect(address)
    connection.hello()
    connection.send(put_burst(0, 100))
    first = connection.read_frame()  # the first burst is being served
    connection.send(put_burst(100, 100))  # the second may or may not be read before the stop
    stopper = gevent.spawn(node1.stop, "node1")
    frames = [first, *connection.read_until_closed()]
    stopper.get(timeout=READ_TIMEOUT)

    statuses = {frame.code for frame in frames}
    assert statuses == {Status.OK}, f"a draining node must finish requests, not fail them: {statuses}"
    acked = [frame.request_id - 100 for frame in frames]
    assert len(set(acked)) == len(acked)

    node = node1.start("node1")
    for i in acked:
        stored = node.storage.get(f"drain-{i}".encode())
        assert stored is not None and stored.value == f"v{i}".encode(), i
    assert_node_serves(address)


def test_a_restarted_node_keeps_every_acknowledged_write(cluster: InProcessCluster) -> None:
    with cluster.running_client() as client:
        versions = {f"key-{i}": client.put(f"key-{i}", f"value-{i}") for i in range(60)}
        client.delete("key-0")
    cluster.stop("node2")
    node = cluster.start("node2")

    held = [key for key in versions if "node2" in cluster.replicas_of(key)]
    assert held, "node2 holds some of the keys"
    for key in held:
        stored = node.storage.get(key.encode())
        assert stored is not None, key
        if key == "key-0":
            assert stored.value is None  # the tombstone survived too
        else:
            assert stored == protocol.Record(versions[key], f"value-{key[4:]}".encode())
    # the clock resumes above every stored version
    assert node.clock.last >= max(versions[key].timestamp for key in held)
    with cluster.running_client() as client:
        assert client.get("key-1") == b"value-1"
        assert client.get("key-0") is None


def test_stop_does_not_wait_for_a_connection_accepted_just_before_it(node1: InProcessCluster, connect) -> None:
    # The race, made deterministic: the handler of an accepted connection starts only once the stop
    # has begun (in the cluster's teardown this happens by chance and costs KV_DRAIN_TIMEOUT_S).
    node = node1.node("node1")
    stream = node.server._server
    serve = stream._handle
    handler_may_start = Event()
    accepted: list[object] = []

    def late_serve(sock, address) -> None:
        accepted.append(address)
        handler_may_start.wait()
        serve(sock, address)

    stream._handle = late_serve
    idle = connect(node1.addresses[0])  # an idle client, as a peer's monitor connection is
    wait_until(lambda: accepted, message="the connection to be accepted")

    node1.running.discard("node1")  # stopped here, not by the teardown
    stopper = gevent.spawn(node.stop)
    try:
        wait_until(lambda: refuses_connections(node1.addresses[0]), message="the stop to begin")
        handler_may_start.set()
        stopper.join(timeout=0.5)  # the drain timeout is 2 s; nothing is in flight
        assert stopper.ready(), "stop waited for an idle connection"
    finally:
        idle.close()
        stopper.get(timeout=READ_TIMEOUT)


def test_stop_refuses_new_connections(node1: InProcessCluster) -> None:
    node1.stop("node1")
    with pytest.raises(OSError):
        RawConnection(node1.addresses[0])


# --- command log -----------------------------------------------------------------------------------


def test_every_client_command_is_logged_as_one_json_line(cluster: InProcessCluster, log_sink: LogSink) -> None:
    with cluster.running_client() as client:
        client.put("logged-key", "v")
        client.get("logged-key")
        client.get("absent-key")
        client.delete("logged-key")
    wait_until(lambda: len(log_sink.events("command")) >= 4, message="four command lines")

    commands = [(entry["op"], entry["key"], entry["status"]) for entry in log_sink.events("command")]
    assert commands == [
        ("PUT", "logged-key", "OK"),
        ("GET", "logged-key", "OK"),
        ("GET", "absent-key", "NOT_FOUND"),
        ("DELETE", "logged-key", "OK"),
    ]  # replica traffic between nodes is not logged
    for entry in log_sink.events("command"):
        assert isinstance(entry["duration_ms"], int | float) and entry["duration_ms"] >= 0
        assert entry["level"] == "info"
        assert "timestamp" in entry and "conn_id" in entry
    assert log_sink.events("request_failed") == []


def test_a_binary_key_is_logged_escaped(node1: InProcessCluster, connect, log_sink: LogSink) -> None:
    connection = connect(node1.addresses[0])
    connection.hello()
    connection.call(2, protocol.Put(b"\xff\nkey", b"v"))
    entries = wait_until(lambda: log_sink.events("command"))
    assert entries[0]["key"] == "\\xff\nkey"
    assert "\n" not in next(line for line in log_sink.lines if '"command"' in line)


def test_commands_are_not_logged_when_log_commands_is_off(make_cluster, log_sink: LogSink) -> None:
    quiet = make_cluster(3, KV_LOG_COMMANDS="false")
    with quiet.running_client() as client:
        client.put("quiet", "v")
        assert client.get("quiet") == b"v"
        client.delete("quiet")
    assert log_sink.events("node_started"), "the node log itself still works"
    assert log_sink.events("command") == []


# --- anti-entropy and administration ops -----------------------------------------------------------


def ok_body(connection: RawConnection, request_id: int, request: protocol.Request) -> bytes:
    reply = connection.call(request_id, request)
    assert reply.code == Status.OK, (request, error_of(reply) if reply.code >= Status.BAD_REQUEST else reply)
    return reply.body


def shared_partitions(cluster: InProcessCluster, a: str, b: str) -> list[int]:
    ring = cluster.ring()
    return [p for p in range(ring.partitions) if {a, b} <= set(ring.partition_owners(p)[: cluster.config.n])]


def test_digests_over_the_wire_are_the_stores_and_agree_between_replicas(cluster: InProcessCluster, connect) -> None:
    with cluster.running_client() as client:
        for i in range(40):
            client.put(f"digest-{i}", f"v{i}")
        client.delete("digest-0")
    everything = tuple(range(cluster.config.partitions))
    replies = {}
    for node_id in cluster.node_ids:
        connection = connect(cluster.address(node_id))
        connection.hello()
        replies[node_id] = protocol.decode_digests_reply(ok_body(connection, 2, protocol.Digests(everything)))
        assert replies[node_id] == cluster.node(node_id).storage.digests(everything)
        assert protocol.decode_digests_reply(ok_body(connection, 3, protocol.Digests(()))) == []
        picked = (5, 0, 5)
        assert protocol.decode_digests_reply(ok_body(connection, 4, protocol.Digests(picked))) == [
            replies[node_id][p] for p in picked
        ]
    shared = shared_partitions(cluster, "node1", "node2")
    assert [replies["node1"][p] for p in shared] == [replies["node2"][p] for p in shared]
    assert any(replies["node1"][p] != bytes(protocol.DIGEST_SIZE) for p in shared)


def test_partition_keys_lists_keys_versions_and_tombstones_page_by_page(cluster: InProcessCluster, connect) -> None:
    with cluster.running_client() as client:
        versions = {f"listed-{i}".encode(): client.put(f"listed-{i}", "v") for i in range(60)}
        deleted = client.delete("listed-0")
    versions[b"listed-0"] = deleted
    node = cluster.node("node1")
    ring = cluster.ring()
    partition = ring.partition(next(key for key in versions if "node1" in cluster.replicas_of(key)))
    expected_keys = {key for key in versions if ring.partition(key) == partition}

    connection = connect(cluster.address("node1"))
    connection.hello()
    reply = protocol.decode_partition_keys_reply(ok_body(connection, 2, protocol.PartitionKeys(partition)))
    assert reply.cursor == b""  # one page holds them all
    assert {entry.key for entry in reply.entries} == expected_keys
    for entry in reply.entries:
        assert entry.version == versions[entry.key]
        assert entry.tombstone == (entry.key == b"listed-0")

    # a cursor from the store continues after its key; an empty one means the page was the last
    first_page = node.store.partition_keys(partition, b"", limit_bytes=1)
    page, cursor = first_page.entries, first_page.cursor
    assert len(page) == 1
    rest = []
    if cursor:
        rest = protocol.decode_partition_keys_reply(
            ok_body(connection, 3, protocol.PartitionKeys(partition, cursor))
        ).entries
    assert [page[0].key, *(entry.key for entry in rest)] == [entry.key for entry in reply.entries]


def test_partition_numbers_out_of_range_are_bad_requests(cluster: InProcessCluster, connect) -> None:
    partitions = cluster.config.partitions
    connection = connect(cluster.addresses[0])
    connection.hello()
    for request_id, request in enumerate(
        [
            protocol.Digests((0, partitions)),
            protocol.Digests((0xFFFF,)),
            protocol.PartitionKeys(partitions),
            protocol.PartitionKeys(0xFFFF, b"cursor"),
        ],
        start=2,
    ):
        reply = connection.call(request_id, request)
        assert reply.code == Status.BAD_REQUEST, request
        assert error_of(reply).message == f"partitions are numbered 0 to {partitions - 1}"
    assert ok_body(connection, 9, protocol.PartitionKeys(partitions - 1)) is not None  # the last one is fine
    assert_usable(connection)


def test_members_is_the_nodes_failure_detector_view(cluster: InProcessCluster, connect) -> None:
    before_stop_ms = int(time.time() * 1000)
    connection = connect(cluster.address("node1"))
    connection.hello()
    members = protocol.decode_members_reply(ok_body(connection, 2, protocol.Members()))
    assert [(m.node_id, m.state, m.hints) for m in members] == [(n, protocol.PeerState.UP, 0) for n in cluster.node_ids]
    assert all(0 < m.since_ms <= before_stop_ms + 1 for m in members)

    cluster.stop("node3")
    cluster.settle()
    members = protocol.decode_members_reply(ok_body(connection, 3, protocol.Members()))
    node3 = next(m for m in members if m.node_id == "node3")
    assert node3.state is protocol.PeerState.SUSPECT
    assert before_stop_ms - 50 <= node3.since_ms <= int(time.time() * 1000) + 50  # it changed just now


def test_repair_runs_a_round_and_reports_it(cluster: InProcessCluster, connect) -> None:
    connection = connect(cluster.address("node2"))
    connection.hello()
    reply = protocol.decode_repair_reply(ok_body(connection, 2, protocol.Repair()))
    expected = len(shared_partitions(cluster, "node2", "node1")) + len(shared_partitions(cluster, "node2", "node3"))
    assert reply == protocol.RepairReply(expected, 0, 0, ())


def test_a_lone_node_has_nothing_to_repair_and_only_itself_as_member(node1: InProcessCluster, connect) -> None:
    connection = connect(node1.addresses[0])
    connection.hello()
    assert protocol.decode_repair_reply(ok_body(connection, 2, protocol.Repair())) == protocol.RepairReply(0, 0, 0, ())
    [member] = protocol.decode_members_reply(ok_body(connection, 3, protocol.Members()))
    assert (member.node_id, member.state, member.hints) == ("node1", protocol.PeerState.UP, 0)


def test_a_hinted_put_is_held_then_handed_to_its_owner(cluster: InProcessCluster, connect) -> None:
    cluster.stop("node3")
    cluster.settle()
    holder = cluster.node("node1")
    record = protocol.Record(protocol.Version(holder.clock.now(), "node2"), b"for node3")
    connection = connect(cluster.address("node1"))
    connection.hello()
    assert ok_body(connection, 2, protocol.HintedPut(b"hinted", record, "node3")) == b""

    assert holder.storage.get(b"hinted") is None
    assert [(hint.key, hint.record) for hint in holder.storage.hints_for("node3", 10)] == [(b"hinted", record)]
    members = protocol.decode_members_reply(ok_body(connection, 3, protocol.Members()))
    assert {m.node_id: m.hints for m in members} == {"node1": 0, "node2": 0, "node3": 1}

    owner = cluster.start("node3")
    cluster.settle()
    wait_until(
        lambda: owner.storage.get(b"hinted") == record and holder.storage.pending_hints() == 0,
        message="the hint to be delivered and dropped",
    )


def test_hinted_put_checks_key_and_value_limits(node1: InProcessCluster, connect) -> None:
    connection = connect(node1.addresses[0])
    connection.hello()
    version = protocol.Version(1, "node9")
    cases = [
        (protocol.HintedPut(b"k" * 17, protocol.Record(version, b"v"), "node9"), Status.KEY_TOO_LARGE),
        (protocol.HintedPut(b"k" * 17, protocol.Record(version, None), "node9"), Status.KEY_TOO_LARGE),
        (protocol.HintedPut(b"k", protocol.Record(version, b"v" * 65), "node9"), Status.VALUE_TOO_LARGE),
    ]
    for request_id, (request, status) in enumerate(cases, start=2):
        assert connection.call(request_id, request).code == status, request
    assert node1.node("node1").storage.pending_hints() == 0
    # Within the limits, a hint is still refused for an owner that is not another member (a lone
    # node has none): nothing would ever take it (issue 9's live fuzz found such hints kept).
    within = protocol.HintedPut(b"k" * 16, protocol.Record(version, b"v" * 64), "node9")
    assert connection.call(9, within).code == Status.BAD_REQUEST
    assert node1.node("node1").storage.hint_counts() == {}


def test_a_node_that_fsyncs_periodically_keeps_acknowledged_writes_across_a_restart(
    make_cluster: Callable[..., InProcessCluster],
) -> None:
    cluster = make_cluster(1, KV_FSYNC="periodic")
    assert cluster.node("node1").storage.syncs_on_commit is False
    with cluster.running_client() as client:
        for i in range(100):
            client.put(f"periodic-{i}", f"v{i}")
    restarted = cluster.restart("node1")
    for i in range(100):
        assert restarted.storage.get(f"periodic-{i}".encode()).value == f"v{i}".encode(), i


# --- requests in flight on one connection -----------------------------------------------------------


def test_in_flight_runs_at_most_its_limit_and_join_waits_for_all() -> None:
    in_flight = InFlight(2)
    gates = [Event() for _ in range(3)]
    finished: list[int] = []

    def request(index: int) -> None:
        gates[index].wait()
        finished.append(index)

    in_flight.spawn(request, 0)
    in_flight.spawn(request, 1)
    assert len(in_flight) == 2
    third = gevent.spawn(in_flight.spawn, request, 2)  # the reader, blocked: the limit is reached
    gevent.sleep(0.01)
    assert not third.dead and len(in_flight) == 2
    gates[1].set()
    third.join(timeout=1)
    assert third.dead and finished == [1]  # a slot freed, so the third started
    joiner = gevent.spawn(in_flight.join)
    gevent.sleep(0.01)
    assert not joiner.dead  # two still running
    gates[0].set()
    gates[2].set()
    joiner.join(timeout=1)
    assert joiner.dead and sorted(finished) == [0, 1, 2] and len(in_flight) == 0


def test_a_request_that_raises_still_frees_its_slot() -> None:
    in_flight = InFlight(1)

    def failing() -> None:
        raise RuntimeError("a bug the hub reports")

    in_flight.spawn(failing)
    with gevent.Timeout(1):
        in_flight.join()  # the failed request counts as finished
        in_flight.spawn(lambda: None)  # and its slot is free again
        in_flight.join()
    assert len(in_flight) == 0


def test_a_local_read_that_fails_moves_off_the_reading_greenlet_and_holds_up_nothing(
    cluster: InProcessCluster, connect
) -> None:
    """A GET answered from this node's store runs in the greenlet reading the connection; if that
    read fails, the GET must wait on another replica, in a greenlet of its own, while the requests
    behind it on the connection are answered."""
    key = next(f"k{i}" for i in range(1000) if "node1" in cluster.replicas_of(f"k{i}"))
    with cluster.running_client() as client:
        client.put(key, "from both replicas")
    local = cluster.node("node1").store

    def failing_read(read_key: bytes):
        raise OSError("bad sector")

    local.read = failing_read
    connection = connect(cluster.address("node1"))
    connection.hello()
    connection.send(
        protocol.encode_request(2, protocol.Get(key.encode())) + protocol.encode_request(3, protocol.Ping())
    )
    first, second = connection.read_frames(2)
    assert (first.request_id, first.code) == (3, Status.OK)  # the PING behind it did not wait
    assert second.request_id == 2 and second.code == Status.OK
    assert protocol.decode_value(second.body)[1] == b"from both replicas"  # from the other replica


def test_a_hint_for_a_node_that_is_not_another_member_is_refused(cluster: InProcessCluster) -> None:
    """Found by the live fuzz: hints for made-up owners were stored, and kept for the hint window."""
    record = protocol.Record(protocol.Version(1 << 16, "node2"), b"v")
    with cluster.running_client() as kv:
        for owner in ("node9", "node1"):  # not a member; the receiving node itself
            with pytest.raises(BadRequestError, match="not another member"):
                kv.call_node(cluster.address("node1"), protocol.HintedPut(b"k", record, owner))
    assert cluster.node("node1").store.pending_hints() == 0
