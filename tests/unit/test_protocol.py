"""The wire protocol: request and reply round trips, stream framing, and robustness against bad bytes."""

from __future__ import annotations

import contextlib
import itertools
from dataclasses import replace

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from client import errors, protocol
from client.protocol import (
    DEFAULT_MAX_FRAME_BYTES,
    DEFAULT_MAX_KEY_BYTES,
    DEFAULT_MAX_VALUE_BYTES,
    DIGEST_SIZE,
    HEADER,
    MAX_REQUEST_ID,
    QUORUM_STATUSES,
    Delete,
    Digests,
    ErrorReply,
    Frame,
    FrameDecoder,
    Get,
    Hello,
    HelloReply,
    HintedPut,
    KeyVersion,
    Members,
    MemberView,
    NodeAddress,
    Op,
    OversizeFrameError,
    PartitionKeys,
    PartitionKeysReply,
    PartitionRecords,
    PartitionRecordsReply,
    PeerClockOffset,
    PeerState,
    Ping,
    ProtocolError,
    Put,
    Record,
    Repair,
    RepairProgress,
    RepairReply,
    ReplicaGet,
    ReplicaPut,
    Request,
    RequestWindow,
    Stats,
    StatsReply,
    Status,
    Topology,
    TopologyReply,
    Version,
)

# --- strategies ------------------------------------------------------------------------------------

u8 = st.integers(0, 0xFF)
u16 = st.integers(0, 0xFFFF)
u32 = st.integers(0, 0xFFFFFFFF)
u64 = st.integers(0, 2**64 - 1)
request_ids = st.integers(0, MAX_REQUEST_ID)
keys = st.binary(max_size=300)
values = st.binary(max_size=2000)
# At most 60 characters of at most 4 UTF-8 bytes each: always fits a str8 field (255 bytes).
short_text = st.text(alphabet=st.characters(codec="utf-8"), max_size=60)
versions = st.builds(Version, u64, short_text)
records = st.builds(Record, versions, st.none() | values)
tombstones = st.builds(Record, versions, st.none())

requests: st.SearchStrategy[Request] = st.one_of(
    st.builds(Hello, u8, u8, short_text),
    st.builds(Ping, st.booleans()),
    st.builds(Get, keys, u8),
    st.builds(Put, keys, values, u8, u64),
    st.builds(Delete, keys, u8, u64),
    st.builds(Topology, st.booleans()),
    st.builds(ReplicaGet, keys, st.booleans()),
    st.builds(ReplicaPut, keys, records),
    st.builds(ReplicaPut, keys, tombstones),
    st.builds(HintedPut, keys, records, short_text),
    st.builds(HintedPut, keys, records, short_text, st.integers(1, 2**64 - 1)),
    st.builds(Digests, st.lists(u16, max_size=40).map(tuple)),
    st.builds(PartitionKeys, u16, keys),
    st.builds(
        protocol.Identify,
        st.builds(
            protocol.PeerIdentity,
            short_text,
            short_text,
            short_text,
            short_text,
            u16,
            u64,
            st.binary(min_size=8, max_size=8),
        ),
    ),
    st.just(protocol.MembershipRecord()),
    st.builds(protocol.Epoch, u64),
    st.builds(PartitionRecords, u16, keys),
    st.builds(protocol.ClusterJoin, short_text, short_text, u16, st.booleans()),
    st.builds(protocol.ClusterLeave, short_text, st.booleans()),
    st.builds(protocol.StreamDone, u64, short_text),
    st.builds(protocol.ClusterRemove, short_text, st.booleans()),
    st.just(Repair()),
    st.just(Members()),
    st.just(Stats()),
)
EMPTY_BODY_REQUESTS = (Ping, Topology, protocol.MembershipRecord, Repair, Members, Stats)
OPTIONAL_FLAGS = {
    Ping: "membership",
    Topology: "epoch",
    protocol.ClusterJoin: "forwarded",
    protocol.ClusterLeave: "forwarded",
    protocol.ClusterRemove: "forwarded",
}
"""Requests that end in a flags byte only when their one flag is set, by the flag's field."""


EPOCH_BYTES = 8
"""HINTED_PUT's optional trailing epoch (a ``u64``, present only when not 0)."""


def optional_tail(request: Request) -> int:
    """Bytes at the end of ``request``'s body without which it is still a valid request: a set
    optional flags byte, or HINTED_PUT's epoch."""
    if isinstance(request, HintedPut):
        return EPOCH_BYTES if request.epoch else 0
    return 1 if type(request) in OPTIONAL_FLAGS and flagged(request) == request else 0


def flagged(request: Request) -> Request:
    """``request`` with its optional flag set (``request`` itself if it has none)."""
    field = OPTIONAL_FLAGS.get(type(request))
    return request if field is None else replace(request, **{field: True})


OP_CODES = {op.value for op in Op}


def decode_stream(decoder: FrameDecoder, chunks: list[bytes]) -> list[Frame]:
    """Every frame the decoder yields while fed ``chunks`` one at a time."""
    frames: list[Frame] = []
    for chunk in chunks:
        frames += decoder.feed(chunk)
    return frames


def split_at(data: bytes, cuts: list[int]) -> list[bytes]:
    """``data`` cut at the given offsets (clamped, sorted, duplicates allowed: empty chunks too)."""
    points = sorted(min(max(cut, 0), len(data)) for cut in cuts)
    bounds = [0, *points, len(data)]
    return [data[start:end] for start, end in itertools.pairwise(bounds)]


def round_trip(request_id: int, request: Request) -> tuple[Frame, Request]:
    decoder = FrameDecoder()
    frames = decoder.feed(protocol.encode_request(request_id, request))
    assert len(frames) == 1
    assert decoder.buffered == 0
    return frames[0], protocol.decode_request(frames[0])


# --- requests --------------------------------------------------------------------------------------


@given(request_ids, requests)
def test_every_request_round_trips(request_id: int, request: Request) -> None:
    frame, decoded = round_trip(request_id, request)
    op, body = protocol.request_body(request)
    assert frame == Frame(request_id, op, body)
    assert decoded == request
    assert type(decoded) is type(request)


@given(request_ids, keys, tombstones)
def test_tombstone_replica_put_stays_a_tombstone(request_id: int, key: bytes, record: Record) -> None:
    _, decoded = round_trip(request_id, ReplicaPut(key, record))
    assert isinstance(decoded, ReplicaPut)
    assert decoded.record.value is None
    assert decoded.record.is_tombstone
    assert decoded.record.version == record.version


def test_empty_value_is_not_a_tombstone() -> None:
    record = Record(Version(7, "node1"), b"")
    _, decoded = round_trip(1, ReplicaPut(b"k", record))
    assert isinstance(decoded, ReplicaPut)
    assert decoded.record.value == b""
    assert not decoded.record.is_tombstone


def test_default_frame_limit_carries_a_max_size_put() -> None:
    request = Put(b"k" * DEFAULT_MAX_KEY_BYTES, b"v" * DEFAULT_MAX_VALUE_BYTES, 0)
    encoded = protocol.encode_request(1, request)
    assert len(encoded) <= DEFAULT_MAX_FRAME_BYTES
    assert FrameDecoder().feed(encoded)[0].code == Op.PUT


def test_default_frame_limit_carries_a_max_size_replica_put_from_a_long_node_id() -> None:
    node_id = "n" * 64  # the longest id service.config.NODE_ID_PATTERN accepts
    record = Record(Version(2**64 - 1, node_id), b"v" * DEFAULT_MAX_VALUE_BYTES)
    encoded = protocol.encode_request(1, ReplicaPut(b"k" * DEFAULT_MAX_KEY_BYTES, record))
    frames = FrameDecoder().feed(encoded)  # a peer decodes with the same limit
    assert frames[0].code == Op.REPLICA_PUT


def test_encoding_a_non_request_is_a_type_error() -> None:
    with pytest.raises(TypeError):
        protocol.request_body("PING")  # type: ignore[arg-type]


# --- fixed bytes: the wire format must not drift ---------------------------------------------------


def test_ping_bytes_are_pinned() -> None:
    assert protocol.encode_request(1, Ping()) == bytes.fromhex("00000005 00000001 02")


def test_get_bytes_are_pinned() -> None:
    # length 9 | request id 7 | GET | quorum 2 | key length 1 | "k"
    assert protocol.encode_request(7, Get(b"k", 2)) == bytes.fromhex("00000009 00000007 03 02 0001 6b")


def test_tombstone_replica_put_bytes_are_pinned() -> None:
    encoded = protocol.encode_request(0x0102, ReplicaPut(b"a", Record(Version(1, "n"), None)))
    expected = bytes.fromhex(
        "00000017 00000102 11"  # length 23 | request id 0x102 | REPLICA_PUT
        "0001 61"  # key "a"
        "01"  # flags: tombstone
        "0000000000000001 01 6e"  # version: timestamp 1, node id "n"
        "00000000"  # empty value
    )
    assert encoded == expected
    assert protocol.decode_request(FrameDecoder().feed(expected)[0]) == ReplicaPut(b"a", Record(Version(1, "n"), None))


def test_unavailable_error_bytes_are_pinned() -> None:
    encoded = protocol.encode_error(3, Status.UNAVAILABLE, "no", acked=1, required=2)
    # length 11 | request id 3 | UNAVAILABLE | acked 1 | required 2 | message "no"
    assert encoded == bytes.fromhex("0000000b 00000003 20 01 02 0002 6e6f")


def test_put_with_after_bytes_are_pinned() -> None:
    encoded = protocol.encode_request(7, Put(b"k", b"v", 2, after=0x0102030405060708))
    expected = bytes.fromhex(
        "00000016 00000007 04"  # length 22 | request id 7 | PUT
        "02"  # quorum 2
        "0102030405060708"  # after: the highest timestamp the client has seen
        "0001 6b"  # key "k"
        "00000001 76"  # value "v"
    )
    assert encoded == expected
    assert protocol.decode_request(FrameDecoder().feed(expected)[0]) == Put(b"k", b"v", 2, 0x0102030405060708)


def test_delete_with_after_bytes_are_pinned() -> None:
    encoded = protocol.encode_request(7, Delete(b"k", 1, after=0xFFFFFFFFFFFFFFFF))
    # length 17 | request id 7 | DELETE | quorum 1 | after 2^64-1 | key "k"
    assert encoded == bytes.fromhex("00000011 00000007 05 01 ffffffffffffffff 0001 6b")


def test_get_reply_with_version_bytes_are_pinned() -> None:
    encoded = protocol.encode_response(4, Status.OK, protocol.encode_value(Version(0x0102, "n"), b"v"))
    expected = bytes.fromhex(
        "00000014 00000004 00"  # length 20 | request id 4 | OK
        "0000000000000102 01 6e"  # version: timestamp 0x102, node id "n"
        "00000001 76"  # value "v"
    )
    assert encoded == expected
    frame = FrameDecoder().feed(expected)[0]
    assert protocol.decode_value(frame.body) == (Version(0x0102, "n"), b"v")


def test_hinted_put_bytes_are_pinned() -> None:
    request = HintedPut(b"a", Record(Version(1, "n"), b"v"), "own")
    expected = bytes.fromhex(
        "0000001c 00000102 12"  # length 28 | request id 0x102 | HINTED_PUT
        "0001 61"  # key "a"
        "00"  # flags: a value
        "0000000000000001 01 6e"  # version: timestamp 1, node id "n"
        "00000001 76"  # value "v"
        "03 6f776e"  # owner "own"
    )
    assert protocol.encode_request(0x0102, request) == expected
    assert protocol.decode_request(FrameDecoder().feed(expected)[0]) == request
    # With the epoch its sender routes by: a trailing u64, present only when not 0.
    at_epoch = HintedPut(b"a", Record(Version(1, "n"), b"v"), "own", 5)
    with_epoch = bytes.fromhex("00000024") + expected[4:] + bytes.fromhex("0000000000000005")
    assert protocol.encode_request(0x0102, at_epoch) == with_epoch
    assert protocol.decode_request(FrameDecoder().feed(with_epoch)[0]) == at_epoch
    zero = bytes.fromhex("00000024") + expected[4:] + bytes(8)
    with pytest.raises(protocol.ProtocolError, match="HINTED_PUT without an epoch"):
        protocol.decode_request(FrameDecoder().feed(zero)[0])


def test_op_and_status_codes_are_pinned() -> None:
    assert {op.name: op.value for op in Op} == {
        "HELLO": 0x01,
        "PING": 0x02,
        "GET": 0x03,
        "PUT": 0x04,
        "DELETE": 0x05,
        "TOPOLOGY": 0x06,
        "AUTH_START": 0x07,
        "AUTH_FINISH": 0x08,
        "USER_SET": 0x09,
        "USERS": 0x0A,
        "REPLICA_GET": 0x10,
        "REPLICA_PUT": 0x11,
        "HINTED_PUT": 0x12,
        "DIGESTS": 0x13,
        "PARTITION_KEYS": 0x14,
        "IDENTIFY": 0x15,
        "MEMBERSHIP": 0x16,
        "EPOCH": 0x17,
        "PARTITION_RECORDS": 0x18,
        "STREAM_DONE": 0x19,
        "CLUSTER_JOIN": 0x28,
        "CLUSTER_LEAVE": 0x29,
        "CLUSTER_REMOVE": 0x2A,
        "REPAIR": 0x20,
        "MEMBERS": 0x21,
        "STATS": 0x22,
    }
    assert {state.name: state.value for state in PeerState} == {"UP": 0, "SUSPECT": 1, "DOWN": 2}
    assert {status.name: status.value for status in Status} == {
        "OK": 0x00,
        "NOT_FOUND": 0x01,
        "BAD_REQUEST": 0x10,
        "KEY_TOO_LARGE": 0x11,
        "VALUE_TOO_LARGE": 0x12,
        "FRAME_TOO_LARGE": 0x13,
        "UNSUPPORTED_VERSION": 0x14,
        "TOO_MANY_CONNECTIONS": 0x15,
        "CLOCK_SKEW": 0x16,
        "AUTH_REQUIRED": 0x17,
        "AUTH_FAILED": 0x18,
        "FORBIDDEN": 0x19,
        "MEMBERSHIP_CHANGED": 0x1A,
        "NOT_A_MEMBER": 0x1B,
        "CHANGE_IN_PROGRESS": 0x1D,
        "UNAVAILABLE": 0x20,
        "TIMEOUT": 0x21,
        "INTERNAL_ERROR": 0x30,
        "STORAGE_FULL": 0x31,
        "REPLICA_BEHIND": 0x32,
        "TLS_REQUIRED": 0x33,
        "PARTITION_NOT_HERE": 0x34,
    }
    assert [status for status in Status if status.is_error] == [status for status in Status if status >= 0x10]


# --- replies ---------------------------------------------------------------------------------------


@given(st.builds(HelloReply, u8, short_text, u32, u32, u32))
def test_hello_reply_round_trips(reply: HelloReply) -> None:
    assert protocol.decode_hello_reply(protocol.encode_hello_reply(reply)) == reply


node_addresses = st.builds(NodeAddress, short_text, short_text, u16)


@given(st.builds(TopologyReply, u8, u8, u8, u16, st.lists(node_addresses, max_size=8).map(tuple)))
def test_topology_reply_round_trips(reply: TopologyReply) -> None:
    assert protocol.decode_topology_reply(protocol.encode_topology_reply(reply)) == reply


@given(versions)
def test_version_reply_round_trips(version: Version) -> None:
    assert protocol.decode_version(protocol.encode_version(version)) == version


@given(versions, values)
def test_value_reply_round_trips(version: Version, value: bytes) -> None:
    assert protocol.decode_value(protocol.encode_value(version, value)) == (version, value)


@given(records)
def test_record_reply_round_trips(record: Record) -> None:
    decoded = protocol.decode_record(protocol.encode_record(record))
    assert decoded == record
    assert decoded.is_tombstone == (record.value is None)


digests = st.binary(min_size=DIGEST_SIZE, max_size=DIGEST_SIZE)
key_versions = st.builds(KeyVersion, keys, versions, st.booleans())


@settings(max_examples=50)
@given(st.lists(digests, max_size=50))
def test_digests_reply_round_trips(reply: list[bytes]) -> None:
    assert protocol.decode_digests_reply(protocol.encode_digests_reply(reply)) == reply


@settings(max_examples=50)
@given(st.builds(PartitionKeysReply, st.lists(key_versions, max_size=20).map(tuple), keys))
def test_partition_keys_reply_round_trips(reply: PartitionKeysReply) -> None:
    assert protocol.decode_partition_keys_reply(protocol.encode_partition_keys_reply(reply)) == reply


@given(st.builds(PartitionRecordsReply, st.lists(st.tuples(keys, records), max_size=20).map(tuple), keys))
def test_partition_records_reply_round_trips_and_sizes_its_entries(reply: PartitionRecordsReply) -> None:
    body = protocol.encode_partition_records_reply(reply)
    assert protocol.decode_partition_records_reply(body) == reply
    envelope = 4 + 2 + len(reply.cursor)
    assert len(body) == envelope + sum(protocol.record_entry_size(key, record) for key, record in reply.entries)


@settings(max_examples=50)
@given(st.builds(RepairReply, u32, u32, u32, st.lists(short_text, max_size=20).map(tuple)))
def test_repair_reply_round_trips(reply: RepairReply) -> None:
    assert protocol.decode_repair_reply(protocol.encode_repair_reply(reply)) == reply


member_views = st.builds(MemberView, short_text, st.sampled_from(PeerState), u64, u32, u8)


@settings(max_examples=50)
@given(st.lists(member_views, max_size=20))
def test_members_reply_round_trips(reply: list[MemberView]) -> None:
    decoded = protocol.decode_members_reply(protocol.encode_members_reply(reply))
    assert decoded == reply
    assert all(type(member.state) is PeerState for member in decoded)


i64 = st.integers(-(2**63), 2**63 - 1)
stats_replies = st.builds(
    StatsReply,
    node_id=short_text,
    wall_ms=u64,
    uptime_ms=u64,
    flags=st.integers(0, 255),
    live_keys=u64,
    disk_bytes=u64,
    disk_used_bytes=u64,
    storage_limit_bytes=u64,
    hints=u64,
    requests=st.builds(RequestWindow, u32, u32, u32, u32, u32),
    members=st.lists(member_views, max_size=8).map(tuple),
    clock_offsets=st.lists(st.builds(PeerClockOffset, short_text, i64), max_size=8).map(tuple),
    repair=st.builds(RepairProgress, st.booleans(), u64, u64, u32, u32, u32, u32),
)


@settings(max_examples=50)
@given(stats_replies)
def test_stats_reply_round_trips(reply: StatsReply) -> None:
    decoded = protocol.decode_stats_reply(protocol.encode_stats_reply(reply))
    assert decoded == reply
    assert all(type(member.state) is PeerState for member in decoded.members)


@given(stats_replies, st.integers(0, 400))
def test_a_truncated_stats_reply_is_a_protocol_error(reply: StatsReply, cut: int) -> None:
    body = protocol.encode_stats_reply(reply)
    with pytest.raises(ProtocolError):
        protocol.decode_stats_reply(body[: min(cut, len(body) - 1)])
    with pytest.raises(ProtocolError, match=r"unexpected bytes|body ends"):
        protocol.decode_stats_reply(body + b"\x00")


def test_request_window_rates_are_per_second_of_the_window() -> None:
    window = RequestWindow(window_ms=2500, requests=500, p99_us=10, client_requests=100, client_p99_us=20)
    assert window.per_second == 200.0
    assert window.client_per_second == 40.0
    assert RequestWindow(0, 0, 0, 0, 0).per_second == 0.0


def test_unknown_peer_state_is_a_protocol_error() -> None:
    body = protocol.encode_members_reply([MemberView("n", PeerState.UP, 0, 0)])
    bad = body.replace(b"\x01n\x00", b"\x01n\x03")
    assert bad != body
    with pytest.raises(ProtocolError, match="peer state 3"):
        protocol.decode_members_reply(bad)


def test_unknown_key_flags_in_a_listing_are_a_protocol_error() -> None:
    body = protocol.encode_partition_keys_reply(PartitionKeysReply((KeyVersion(b"k", Version(1, "n"), False),), b""))
    assert body[-3] == 0  # the entry's flags, before the empty cursor
    with pytest.raises(ProtocolError, match="flags"):
        protocol.decode_partition_keys_reply(body[:-3] + b"\x02" + body[-2:])


@pytest.mark.parametrize("flags", [b"\x00", b"\x02"])
def test_a_change_request_takes_only_the_forwarded_flag_and_only_when_set(flags: bytes) -> None:
    plain = protocol.encode_request(1, protocol.ClusterLeave("node4"))
    assert protocol.encode_request(1, protocol.ClusterLeave("node4", forwarded=True)) != plain
    frame = FrameDecoder().feed(plain[:3] + bytes([plain[3] + 1]) + plain[4:] + flags)[0]
    with pytest.raises(ProtocolError, match="CLUSTER_LEAVE"):
        protocol.decode_request(frame)


error_statuses = st.sampled_from([status for status in Status if status.is_error])


@given(request_ids, error_statuses, st.text(alphabet=st.characters(codec="utf-8"), max_size=200), u8, u8)
def test_error_reply_round_trips(request_id: int, status: Status, message: str, acked: int, required: int) -> None:
    frames = FrameDecoder().feed(protocol.encode_error(request_id, status, message, acked, required))
    assert len(frames) == 1
    frame = frames[0]
    assert frame.request_id == request_id
    assert Status(frame.code) is status
    reply = protocol.decode_error(Status(frame.code), frame.body)
    if status in QUORUM_STATUSES:
        assert reply == ErrorReply(status, message, acked, required)
    else:
        assert reply == ErrorReply(status, message, None, None)


@pytest.mark.parametrize(
    ("status", "error_class"),
    [(Status.UNAVAILABLE, errors.UnavailableError), (Status.TIMEOUT, errors.RequestTimeoutError)],
)
def test_quorum_error_reaches_the_client_with_acked_and_required(
    status: Status, error_class: type[errors.QuorumError]
) -> None:
    frame = FrameDecoder().feed(protocol.encode_error(9, status, "1 of 2 replicas answered", acked=1, required=2))[0]
    error = errors.error_from_reply(protocol.decode_error(Status(frame.code), frame.body))
    assert type(error) is error_class
    assert (error.acked, error.required, error.message) == (1, 2, "1 of 2 replicas answered")


def test_quorum_error_without_counts_sends_zeros() -> None:
    frame = FrameDecoder().feed(protocol.encode_error(1, Status.TIMEOUT, "slow"))[0]
    assert protocol.decode_error(Status.TIMEOUT, frame.body) == ErrorReply(Status.TIMEOUT, "slow", 0, 0)


def test_error_from_reply_maps_every_error_status() -> None:
    for status in Status:
        if status.is_error:
            error = errors.error_from_reply(ErrorReply(status, "m"))
            assert error.code == status.name
            assert error.message == "m"


# --- stream framing --------------------------------------------------------------------------------


@given(
    st.lists(st.tuples(request_ids, requests), min_size=1, max_size=6),
    st.lists(st.integers(0, 20_000), max_size=20),
)
def test_frames_split_at_any_boundaries_decode_identically(
    messages: list[tuple[int, Request]], cuts: list[int]
) -> None:
    stream = b"".join(protocol.encode_request(request_id, request) for request_id, request in messages)
    expected = FrameDecoder().feed(stream)
    assert len(expected) == len(messages)
    decoder = FrameDecoder()
    assert decode_stream(decoder, split_at(stream, cuts)) == expected
    assert decoder.buffered == 0
    assert [protocol.decode_request(frame) for frame in expected] == [request for _, request in messages]


@settings(max_examples=30)
@given(st.lists(st.tuples(request_ids, requests), min_size=1, max_size=3))
def test_frames_fed_byte_by_byte_decode_identically(messages: list[tuple[int, Request]]) -> None:
    stream = b"".join(protocol.encode_request(request_id, request) for request_id, request in messages)
    decoder = FrameDecoder()
    frames: list[Frame] = []
    for index in range(len(stream)):
        frames += decoder.feed(stream[index : index + 1])
    assert frames == FrameDecoder().feed(stream)
    assert [(frame.request_id, protocol.decode_request(frame)) for frame in frames] == messages
    assert decoder.buffered == 0


@given(request_ids, requests, st.data())
def test_partial_frame_waits_for_more_bytes(request_id: int, request: Request, data: st.DataObject) -> None:
    encoded = protocol.encode_request(request_id, request)
    cut = data.draw(st.integers(0, len(encoded) - 1))
    decoder = FrameDecoder()
    assert decoder.feed(encoded[:cut]) == []
    assert decoder.buffered == cut
    assert decoder.feed(encoded[cut:]) == [Frame(request_id, *protocol.request_body(request))]
    assert decoder.buffered == 0


def test_frame_at_the_limit_is_accepted_and_one_byte_over_is_not() -> None:
    limit = 100
    at_limit = protocol.encode_frame(5, Op.PUT, b"x" * (limit - HEADER.size))
    assert len(at_limit) == limit
    assert FrameDecoder(limit).feed(at_limit) == [Frame(5, Op.PUT, b"x" * (limit - HEADER.size))]
    with pytest.raises(OversizeFrameError):
        FrameDecoder(limit).feed(protocol.encode_frame(5, Op.PUT, b"x" * (limit - HEADER.size + 1)))


@given(request_ids, st.integers(0, 0xFF), st.integers(HEADER.size, 1 << 20), st.data())
def test_length_over_the_limit_raises_frame_too_large_with_the_request_id(
    request_id: int, code: int, limit: int, data: st.DataObject
) -> None:
    length = data.draw(st.integers(limit - 3, 0xFFFFFFFF), label="length")  # length field + 4 > limit
    with pytest.raises(OversizeFrameError) as caught:
        FrameDecoder(limit).feed(HEADER.pack(length, request_id, code))  # raised from the header alone
    assert caught.value.request_id == request_id
    assert caught.value.length == length + 4
    assert caught.value.limit == limit


def test_frame_too_large_after_a_good_frame_reports_the_offending_request_id() -> None:
    good = protocol.encode_request(1, Ping())
    huge = HEADER.pack(DEFAULT_MAX_FRAME_BYTES, 42, Op.PUT)
    decoder = FrameDecoder()
    assert decoder.feed(good + huge) == [Frame(1, Op.PING, b"")]
    with pytest.raises(OversizeFrameError) as caught:
        decoder.feed(b"")
    assert caught.value.request_id == 42
    assert isinstance(caught.value, ProtocolError)


@pytest.mark.parametrize("bad_header", [HEADER.pack(0xFFFFFFFF, 7, Op.GET), HEADER.pack(2, 7, Op.GET)])
def test_frames_before_a_bad_header_are_returned_whatever_the_split_then_the_next_feed_raises(
    bad_header: bytes,
) -> None:
    # Found by the fuzzer (tests/fuzz, target "frames"): fed in one piece, a frame followed by an
    # oversize or undersize header was lost with the error; fed in pieces, it was returned first.
    good = protocol.encode_request(3, Get(b"foo"))
    for pieces in ([good + bad_header], [good, bad_header], [good[:5], good[5:] + bad_header[:2], bad_header[2:]]):
        decoder = FrameDecoder()
        frames: list[Frame] = []
        with pytest.raises(ProtocolError):
            for piece in [*pieces, b""]:
                frames += decoder.feed(piece)
        assert frames == [Frame(3, Op.GET, protocol.request_body(Get(b"foo"))[1])]


@pytest.mark.parametrize("length", [0, 1, 2, 3, 4])
def test_length_shorter_than_the_header_is_a_protocol_error(length: int) -> None:
    with pytest.raises(ProtocolError) as caught:
        FrameDecoder().feed(HEADER.pack(length, 1, Op.PING) + b"\x00" * 16)
    assert not isinstance(caught.value, OversizeFrameError)


@given(st.integers(0, 0xFF).filter(lambda code: code not in OP_CODES), st.binary(max_size=64))
def test_unknown_op_code_is_a_protocol_error(code: int, body: bytes) -> None:
    with pytest.raises(ProtocolError, match="unknown op code"):
        protocol.decode_request(Frame(1, code, body))


# --- robustness: bad bytes raise ProtocolError and nothing else ------------------------------------


@given(st.binary(max_size=512), st.integers(HEADER.size, 4096), st.lists(st.integers(0, 512), max_size=8))
def test_random_bytes_raise_only_protocol_error_from_the_decoder(data: bytes, limit: int, cuts: list[int]) -> None:
    decoder = FrameDecoder(limit)
    try:
        frames = decode_stream(decoder, split_at(data, cuts))
    except ProtocolError:
        return
    # Whatever was accepted is well formed and accounts for every byte.
    assert all(len(frame.body) + HEADER.size <= limit for frame in frames)
    assert sum(len(frame.body) + HEADER.size for frame in frames) + decoder.buffered == len(data)


@given(request_ids, st.integers(0, 0xFF), st.binary(max_size=300))
def test_arbitrary_frames_raise_only_protocol_error_from_decode_request(
    request_id: int, code: int, body: bytes
) -> None:
    try:
        request = protocol.decode_request(Frame(request_id, code, body))
    except ProtocolError:
        return
    # Anything accepted is canonical: it encodes back to the same op and body.
    assert protocol.request_body(request) == (code, body)


@given(error_statuses, st.binary(max_size=300))
def test_arbitrary_reply_bodies_raise_only_protocol_error(status: Status, body: bytes) -> None:
    decoders = [
        protocol.decode_hello_reply,
        protocol.decode_topology_reply,
        protocol.decode_version,
        protocol.decode_value,
        protocol.decode_record,
        protocol.decode_digests_reply,
        protocol.decode_partition_keys_reply,
        protocol.decode_partition_records_reply,
        protocol.decode_repair_reply,
        protocol.decode_members_reply,
        protocol.decode_identify_reply,
        protocol.decode_membership_reply,
        protocol.decode_epoch_reply,
        protocol.decode_ping_reply,
        lambda raw: protocol.decode_error(status, raw),
    ]
    for decode in decoders:
        with contextlib.suppress(ProtocolError):
            decode(body)


@given(request_ids, requests.filter(lambda r: not isinstance(r, EMPTY_BODY_REQUESTS)), st.data())
def test_truncated_bodies_are_protocol_errors(request_id: int, request: Request, data: st.DataObject) -> None:
    op, body = protocol.request_body(request)
    # Cut just before an optional field, what is left is the same request without it.
    whole = len(body) - optional_tail(request)
    cut = data.draw(st.integers(0, whole - 1))
    with pytest.raises(ProtocolError):
        protocol.decode_request(Frame(request_id, op, body[:cut]))


@given(request_ids, requests, st.binary(min_size=1, max_size=16))
def test_trailing_bytes_are_protocol_errors(request_id: int, request: Request, extra: bytes) -> None:
    op, body = protocol.request_body(request)
    assume(body + extra != protocol.request_body(flagged(request))[1])  # the optional flags byte, set
    # HINTED_PUT's optional epoch: 8 more bytes, not all 0, are one.
    assume(not (isinstance(request, HintedPut) and not request.epoch and len(extra) == EPOCH_BYTES and any(extra)))
    with pytest.raises(ProtocolError):
        protocol.decode_request(Frame(request_id, op, body + extra))


def test_non_utf8_text_is_a_protocol_error() -> None:
    with pytest.raises(ProtocolError, match="UTF-8"):
        protocol.decode_request(Frame(1, Op.HELLO, b"\x01\x01\x02\xff\xfe"))


def test_tombstone_carrying_a_value_is_a_protocol_error() -> None:
    body = b"\x01" + protocol.encode_version(Version(1, "n")) + b"\x00\x00\x00\x01x"
    with pytest.raises(ProtocolError, match="tombstone"):
        protocol.decode_record(body)


@pytest.mark.parametrize("flags", [0x02, 0x80, 0xFF])
def test_unknown_record_flags_are_a_protocol_error(flags: int) -> None:
    body = bytes([flags]) + protocol.encode_version(Version(1, "n")) + b"\x00\x00\x00\x00"
    with pytest.raises(ProtocolError, match="flags"):
        protocol.decode_record(body)


def test_a_replica_put_reply_says_nothing_when_stored_and_the_newer_version_when_not() -> None:
    assert protocol.encode_replica_put_reply(None) == b""
    assert protocol.decode_replica_put_reply(b"") is None
    newer = Version(0x0102, "node2")
    assert protocol.decode_replica_put_reply(protocol.encode_replica_put_reply(newer)) == newer


def test_a_ping_reply_carries_the_wall_clock_and_the_storage_full_flag() -> None:
    reply = protocol.PingReply(0x019AC1E2F3A0, protocol.PING_FLAG_STORAGE_FULL)
    assert protocol.decode_ping_reply(protocol.encode_ping_reply(reply)) == reply
    assert reply.storage_full
    assert not reply.catching_up
    assert not protocol.PingReply(1).storage_full
    assert protocol.PingReply(1, protocol.PING_FLAG_CATCHING_UP).catching_up
    with pytest.raises(ProtocolError):
        protocol.decode_ping_reply(b"")


def test_a_replica_get_says_whether_a_store_behind_may_answer_and_nothing_else() -> None:
    (frame,) = protocol.FrameDecoder().feed(protocol.encode_request(7, ReplicaGet(b"k", behind_ok=True)))
    assert frame.body == b"\x00\x01k\x01"
    assert protocol.decode_request(frame) == ReplicaGet(b"k", True)
    (frame,) = protocol.FrameDecoder().feed(protocol.encode_frame(7, protocol.Op.REPLICA_GET, b"\x00\x01k\x02"))
    with pytest.raises(ProtocolError, match="flags"):
        protocol.decode_request(frame)


def test_a_members_entry_carries_the_store_flags_its_node_last_reported() -> None:
    member = MemberView("node1", PeerState.UP, 1, 0, protocol.PING_FLAG_STORAGE_FULL)
    (decoded,) = protocol.decode_members_reply(protocol.encode_members_reply([member]))
    assert decoded.storage_full
    assert not decoded.catching_up
    assert not MemberView("node1", PeerState.UP, 1, 0).storage_full
