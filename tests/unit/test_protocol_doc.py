"""``client/PROTOCOL.md``'s byte examples, read from the document itself, are what the code sends.

Every example in the document's "Byte examples" section is a line starting ``->`` (a request) or
``<-`` (a reply) followed by its bytes in hex. ``EXAMPLES`` says, for each such line, what the code
encodes for it; the test reads the hex from the document, so a change to either side shows up,
and a documented example with no entry here fails too (none goes unchecked).
"""

from __future__ import annotations

import pytest
from protocol_examples import documented_examples

from client import protocol
from client.protocol import (
    Delete,
    Digests,
    FrameDecoder,
    Get,
    Hello,
    HelloReply,
    HintedPut,
    KeyVersion,
    MemberView,
    PartitionKeys,
    PartitionKeysReply,
    PartitionRecords,
    PartitionRecordsReply,
    PeerClockOffset,
    PeerState,
    Ping,
    PingReply,
    Put,
    Record,
    RepairProgress,
    RepairReply,
    ReplicaPut,
    Request,
    RequestWindow,
    Stats,
    StatsReply,
    Status,
    Version,
)

DOC_TIMESTAMP = 0x01A2B3C4D5E60000
DOC_DIGEST = bytes.fromhex("0123456789abcdef")


def reply(request_id: int, body: bytes) -> bytes:
    return protocol.encode_response(request_id, Status.OK, body)


REQUESTS: dict[str, tuple[int, Request]] = {
    'HELLO id=1, versions 1..1, client "kv-cli"': (1, Hello(1, 1, "kv-cli")),
    "PING id=2": (2, Ping()),
    'PUT id=3, quorum 0 (node default W), after 0x01a2b3c4d5e60000, key "foo", value "bar"': (
        3,
        Put(b"foo", b"bar", 0, DOC_TIMESTAMP),
    ),
    'GET id=4, quorum 0, key "foo"': (4, Get(b"foo", 0)),
    'DELETE id=5, quorum 1, after 0, key "foo"': (5, Delete(b"foo", 1, 0)),
    'REPLICA_PUT id=8, key "foo", flags 01 (tombstone), version (0x01a2b3c4d5e60001, "node2"), empty value': (
        8,
        ReplicaPut(b"foo", Record(Version(DOC_TIMESTAMP + 1, "node2"), None)),
    ),
    'HINTED_PUT id=9: key "foo", flags 00, version (0x01a2b3c4d5e60002, "node1"), value "baz", for owner "node2"': (
        9,
        HintedPut(b"foo", Record(Version(DOC_TIMESTAMP + 2, "node1"), b"baz"), "node2"),
    ),
    'HINTED_PUT id=12: the same at epoch 5, for owner "node4"': (
        12,
        HintedPut(b"foo", Record(Version(DOC_TIMESTAMP + 2, "node1"), b"baz"), "node4", 5),
    ),
    "DIGESTS id=10, 2 partitions: 7, 4095": (10, Digests((7, 4095))),
    "PARTITION_KEYS id=11, partition 7, cursor empty": (11, PartitionKeys(7)),
    "PARTITION_RECORDS id=15, partition 7, cursor empty": (15, PartitionRecords(7)),
    "STATS id=14": (14, Stats()),
    'AUTH_START id=2, mechanism "SCRAM-SHA-256", client-first "n,,n=alice,r=fyko+d2lbbFgONRv9qkxdawL"': (
        2,
        protocol.AuthStart(b"n,,n=alice,r=fyko+d2lbbFgONRv9qkxdawL"),
    ),
    "PING id=20, flags 01 (with membership)": (20, Ping(membership=True)),
    'IDENTIFY id=21: cluster "kv-0123456789abcdef", node "node3", identity "00112233445566778899aabbccddeeff", '
    "node3:5000, epoch 3, digest 01 23 45 67 89 ab cd ef": (
        21,
        protocol.Identify(
            protocol.PeerIdentity(
                "kv-0123456789abcdef", "node3", "00112233445566778899aabbccddeeff", "node3", 5000, 3, DOC_DIGEST
            )
        ),
    ),
    "MEMBERSHIP id=22": (22, protocol.MembershipRecord()),
    "TOPOLOGY id=23, flags 01 (with epoch)": (23, protocol.Topology(epoch=True)),
    "EPOCH id=24, epoch 3": (24, protocol.Epoch(3)),
    'CLUSTER_JOIN id=27, node "node4" at "node4":5000': (27, protocol.ClusterJoin("node4", "node4", 5000)),
    'CLUSTER_LEAVE id=28, node "node4"': (28, protocol.ClusterLeave("node4")),
    'CLUSTER_REMOVE id=29, node "node4"': (29, protocol.ClusterRemove("node4")),
    'CLUSTER_LEAVE id=31, node "node4", flags 01 (forwarded to the claimant)': (
        31,
        protocol.ClusterLeave("node4", forwarded=True),
    ),
    'STREAM_DONE id=30, epoch 5, node "node2"': (30, protocol.StreamDone(5, "node2")),
    'AUTH_FINISH id=3, client-final "c=biws,r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,'
    'p=v0X8v3Bz2T0CJGbJQyF0X+HI4Ts="': (
        3,
        protocol.AuthFinish(b"c=biws,r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,p=v0X8v3Bz2T0CJGbJQyF0X+HI4Ts="),
    ),
}

DOC_WALL_MS = 0x019AC1E2F3A0
STATS_EXAMPLE = StatsReply(
    node_id="node1",
    wall_ms=DOC_WALL_MS,
    uptime_ms=3_600_000,
    flags=0,
    live_keys=1000,
    disk_bytes=1 << 20,
    disk_used_bytes=48 << 10,
    storage_limit_bytes=4 << 30,
    hints=12,
    requests=RequestWindow(window_ms=10_000, requests=5000, p99_us=850, client_requests=4000, client_p99_us=1200),
    members=(MemberView("node1", PeerState.UP, DOC_WALL_MS, 0),),
    clock_offsets=(PeerClockOffset("node2", -1500),),
    repair=RepairProgress(
        running=True,
        started_ms=DOC_WALL_MS,
        finished_ms=0,
        partitions_total=2730,
        partitions_compared=1365,
        keys_differing=3,
        keys_copied=1,
    ),
)

REPLIES: dict[str, bytes] = {
    'OK id=1: version 1, node "node1", max key 1024, max value 1048576, max frame 1050624': reply(
        1, protocol.encode_hello_reply(HelloReply(1, "node1", 1024, 1048576, 1050624))
    ),
    "OK id=2: wall clock 0x019ac1e2f3a0 ms, flags 00": reply(2, protocol.encode_ping_reply(PingReply(0x019AC1E2F3A0))),
    'OK id=3: stored as version (timestamp 0x01a2b3c4d5e60000, node "node2")': reply(
        3, protocol.encode_version(Version(DOC_TIMESTAMP, "node2"))
    ),
    'OK id=4: version (0x01a2b3c4d5e60000, "node2"), value "bar"': reply(
        4, protocol.encode_value(Version(DOC_TIMESTAMP, "node2"), b"bar")
    ),
    "or NOT_FOUND id=4": protocol.encode_response(4, Status.NOT_FOUND),
    'UNAVAILABLE id=5: acked 1, required 2, "no"': protocol.encode_error(
        5, Status.UNAVAILABLE, "no", acked=1, required=2
    ),
    'OK id=7 to REPLICA_GET: flags 00, version (0x01a2b3c4d5e60000, "node2"), value "bar"': reply(
        7, protocol.encode_record(Record(Version(DOC_TIMESTAMP, "node2"), b"bar"))
    ),
    "OK id=10: 2 digests (partition 7 empty, partition 4095 00 01 .. 0f)": reply(
        10, protocol.encode_digests_reply([bytes(16), bytes(range(16))])
    ),
    'OK id=11: 1 key: "foo", version (0x01a2b3c4d5e60000, "node2"), tombstone; cursor empty (last page)': reply(
        11,
        protocol.encode_partition_keys_reply(
            PartitionKeysReply((KeyVersion(b"foo", Version(DOC_TIMESTAMP, "node2"), True),), b"")
        ),
    ),
    'OK id=15: 1 record: "foo", flags 00, version (0x01a2b3c4d5e60000, "node2"), value "bar"; cursor empty '
    "(last page)": reply(
        15,
        protocol.encode_partition_records_reply(
            PartitionRecordsReply(((b"foo", Record(Version(DOC_TIMESTAMP, "node2"), b"bar")),), b"")
        ),
    ),
    "OK id=12 to REPAIR: 1365 partitions compared, 3 keys differed, 3 copied, no peer missed": reply(
        12, protocol.encode_repair_reply(RepairReply(1365, 3, 3, ()))
    ),
    "OK id=13 to MEMBERS: node2 up since 0x019ac1e2f3a0 ms, 12 hints held for it, flags 01 (storage full)": reply(
        13,
        protocol.encode_members_reply(
            [MemberView("node2", PeerState.UP, 0x019AC1E2F3A0, 12, protocol.PING_FLAG_STORAGE_FULL)]
        ),
    ),
    "OK id=14 to STATS: node1 at 0x019ac1e2f3a0 ms, up 1 h, 1000 keys, 1 MiB on disk, 48 KiB in use, 4 GiB limit, "
    "12 hints; 5000 requests in 10 s, p99 850 us, 4000 client ones, p99 1200 us; node1 up since 0x019ac1e2f3a0; "
    "node2's clock 1.5 ms behind; a repair running since 0x019ac1e2f3a0, 1365 of 2730 partitions compared, "
    "3 keys differing, 1 copied": reply(14, protocol.encode_stats_reply(STATS_EXAMPLE)),
    'OK id=2 to AUTH_START: server-first "r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,'
    's=QSXCR+Q6sek8bf92,i=4096"': reply(
        2, protocol.encode_auth_start_reply(b"r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,s=QSXCR+Q6sek8bf92,i=4096")
    ),
    'OK id=3 to AUTH_FINISH: user "alice", role 2 (readwrite), server-final "v=rmF9pqV8S7suAoZWja4dJRkFsKQ="': reply(
        3,
        protocol.encode_auth_reply(
            protocol.AuthReply("alice", protocol.Role.READWRITE, b"v=rmF9pqV8S7suAoZWja4dJRkFsKQ=")
        ),
    ),
    'FORBIDDEN id=4: "REPAIR is not allowed for alice"': protocol.encode_error(
        4, Status.FORBIDDEN, "REPAIR is not allowed for alice"
    ),
    "OK id=20: wall clock 0x019ac1e2f3a0 ms, flags 00, membership epoch 3, digest 01 23 45 67 89 ab cd ef": reply(
        20, protocol.encode_ping_reply(PingReply(DOC_WALL_MS, 0, protocol.MembershipVersion(3, DOC_DIGEST)))
    ),
    'OK id=21 to IDENTIFY: node "node1", identity "ffeeddccbbaa99887766554433221100", node1:5000, epoch 3, '
    "the same digest; accepted": reply(
        21,
        protocol.encode_identify_reply(
            protocol.IdentifyReply(
                protocol.PeerIdentity(
                    "kv-0123456789abcdef", "node1", "ffeeddccbbaa99887766554433221100", "node1", 5000, 3, DOC_DIGEST
                ),
                True,
            )
        ),
    ),
    'OK id=23 to TOPOLOGY: N 2, R 1, W 2, 4096 partitions, 1 node: "node1" at "h1":5000; epoch 3, '
    'cluster "kv-0123456789abcdef", node1 normal': reply(
        23,
        protocol.encode_topology_reply(
            protocol.TopologyReply(
                2,
                1,
                2,
                4096,
                (protocol.NodeAddress("node1", "h1", 5000),),
                protocol.TopologyMembership(3, "kv-0123456789abcdef", (protocol.MemberStateCode.NORMAL,)),
            )
        ),
    ),
    "OK id=24 to EPOCH: the node's epoch is 4": reply(24, protocol.encode_epoch_reply(4)),
    'MEMBERSHIP_CHANGED id=25 to a GET: "epoch 4"': protocol.encode_error(25, Status.MEMBERSHIP_CHANGED, "epoch 4"),
    'NOT_A_MEMBER id=26 to a PUT: "refused"': protocol.encode_error(26, Status.NOT_A_MEMBER, "refused"),
    'CHANGE_IN_PROGRESS id=28 to CLUSTER_LEAVE: "node5 is joining"': protocol.encode_error(
        28, Status.CHANGE_IN_PROGRESS, "node5 is joining"
    ),
}

DOCUMENTED = documented_examples()


def test_every_documented_example_is_checked_and_every_check_is_documented() -> None:
    assert set(DOCUMENTED) == set(REQUESTS) | set(REPLIES)
    assert all(DOCUMENTED.values()), "an example with no bytes under it"


@pytest.mark.parametrize("heading", sorted(REQUESTS))
def test_a_documented_request_is_what_the_code_encodes_and_decodes_back(heading: str) -> None:
    request_id, request = REQUESTS[heading]
    assert protocol.encode_request(request_id, request) == DOCUMENTED[heading]
    (frame,) = FrameDecoder().feed(DOCUMENTED[heading])
    assert frame.request_id == request_id
    assert protocol.decode_request(frame) == request


@pytest.mark.parametrize("heading", sorted(REPLIES))
def test_a_documented_reply_is_what_the_code_encodes(heading: str) -> None:
    assert REPLIES[heading] == DOCUMENTED[heading]
