"""Valid encodings that every fuzz corpus starts from: each request type and each reply body.

Coverage-guided fuzzing finds deep paths much faster from inputs that already parse, and the live
fuzz mutates well-formed frames so that most of what it sends gets past framing into the decoders
and the handler. ``client/PROTOCOL.md``'s byte examples come first, then one or more values of every
request class in ``REQUEST_TYPES`` and of every reply that has a ``decode_*`` function. ``corpus``
lays them out as each atheris target reads its input.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from protocol_examples import documented_examples, documented_requests

from client import protocol
from client.protocol import (
    HelloReply,
    KeyVersion,
    MemberView,
    NodeAddress,
    PartitionKeysReply,
    PeerState,
    PingReply,
    Record,
    RepairReply,
    Request,
    Status,
    TopologyReply,
    Version,
)
from fuzz import properties

TIMESTAMP = 0x01A2B3C4D5E60000  # an HLC timestamp in 2024, as in PROTOCOL.md's examples
VERSION = Version(TIMESTAMP, "node2")
VALUE_RECORD = Record(VERSION, b"bar")
TOMBSTONE = Record(Version(TIMESTAMP + 1, "node1"), None)


def requests(key_prefix: bytes = b"fuzz:") -> list[Request]:
    """At least one value of every request class, keys starting ``key_prefix``."""
    key = key_prefix + b"k"
    found = [
        protocol.Hello(1, 1, "fuzz"),
        protocol.Hello(0, 9, ""),
        protocol.Ping(),
        protocol.Get(key),
        protocol.Get(key, 2),
        protocol.Put(key, b"value", 0, TIMESTAMP),
        protocol.Put(key_prefix + b"empty", b"", 1, 0),
        protocol.Delete(key, 0, TIMESTAMP),
        protocol.Topology(),
        protocol.ReplicaGet(key),
        protocol.ReplicaPut(key, VALUE_RECORD),
        protocol.ReplicaPut(key, TOMBSTONE),
        protocol.HintedPut(key, VALUE_RECORD, "node3"),
        protocol.Digests((0, 7, 63)),
        protocol.PartitionKeys(7),
        protocol.PartitionKeys(7, key),
        protocol.PartitionRecords(7),
        protocol.PartitionRecords(7, key),
        protocol.ReplicaGet(key, True),
        protocol.Repair(),
        protocol.Members(),
        protocol.Stats(),
        protocol.AuthStart(b"n,,n=alice,r=rOprNGfwEbeRWgbNEkqO"),
        protocol.AuthFinish(
            b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
        ),
        protocol.UserSet(TIMESTAMP, "alice", protocol.Role.READWRITE, "SCRAM-SHA-256$4096:c2FsdA==$a2V5$a2V5"),
        protocol.UserSet(TIMESTAMP, "bob", protocol.Role.NONE),
        protocol.Users(),
        protocol.Ping(membership=True),
        protocol.Topology(epoch=True),
        protocol.Identify(IDENTITY),
        protocol.MembershipRecord(),
        protocol.Epoch(3),
        protocol.StreamDone(5, "node2"),
        protocol.ClusterJoin("node4", "node4", 5000),
        protocol.ClusterLeave("node4"),
        protocol.ClusterRemove("node4"),
    ]
    missing = set(protocol.REQUEST_TYPES.values()) - {type(request) for request in found}
    assert not missing, f"no seed for {sorted(cls.__name__ for cls in missing)}"
    return found


IDENTITY = protocol.PeerIdentity(
    "kv-0123456789abcdef", "node3", "00112233445566778899aabbccddeeff", "node3", 5000, 3, bytes(range(8))
)


def request_frames(key_prefix: bytes = b"fuzz:") -> list[bytes]:
    """Encoded request frames: the documented ones, then one for each of ``requests()``."""
    encoded = [protocol.encode_request(index + 1, request) for index, request in enumerate(requests(key_prefix))]
    return documented_requests() + encoded


def reply_bodies() -> dict[str, list[bytes]]:
    """Valid bodies for each reply decoder, by the decoder's name in ``properties.REPLY_DECODERS``."""
    error = protocol.encode_error(1, Status.BAD_REQUEST, "bad")[protocol.HEADER.size :]
    quorum_error = protocol.encode_error(1, Status.UNAVAILABLE, "no", 1, 2)[protocol.HEADER.size :]
    return {
        "hello": [protocol.encode_hello_reply(HelloReply(1, "node1", 1024, 1 << 20, (1 << 20) + 2048))],
        "topology": [
            protocol.encode_topology_reply(
                TopologyReply(2, 1, 2, 4096, (NodeAddress("node1", "10.0.0.1", 5000), NodeAddress("n2", "::1", 1)))
            ),
            protocol.encode_topology_reply(
                TopologyReply(
                    2,
                    1,
                    2,
                    4096,
                    (NodeAddress("node1", "10.0.0.1", 5000),),
                    protocol.TopologyMembership(3, "kv-0123456789abcdef", (protocol.MemberStateCode.LEAVING,)),
                )
            ),
        ],
        "version": [protocol.encode_version(VERSION)],
        "value": [protocol.encode_value(VERSION, b"bar")],
        "record": [protocol.encode_record(VALUE_RECORD), protocol.encode_record(TOMBSTONE)],
        "replica_put": [protocol.encode_replica_put_reply(None), protocol.encode_replica_put_reply(VERSION)],
        "ping": [
            protocol.encode_ping_reply(PingReply(0x019AC1E2F3A0, protocol.PING_FLAG_STORAGE_FULL)),
            protocol.encode_ping_reply(PingReply(0x019AC1E2F3A0, 0, protocol.MembershipVersion(3, bytes(8)))),
        ],
        "digests": [protocol.encode_digests_reply([bytes(16), bytes(range(16))])],
        "partition_keys": [
            protocol.encode_partition_keys_reply(
                PartitionKeysReply((KeyVersion(b"foo", VERSION, True), KeyVersion(b"", VERSION, False)), b"foo")
            )
        ],
        "partition_records": [
            protocol.encode_partition_records_reply(
                protocol.PartitionRecordsReply(((b"foo", VALUE_RECORD), (b"", TOMBSTONE)), b"foo")
            )
        ],
        "repair": [protocol.encode_repair_reply(RepairReply(1365, 3, 3, ("node3",)))],
        "members": [protocol.encode_members_reply([MemberView("node2", PeerState.DOWN, 0x019AC1E2F3A0, 12, 1)])],
        "stats": [
            protocol.encode_stats_reply(
                protocol.StatsReply(
                    "node1",
                    0x019AC1E2F3A0,
                    3_600_000,
                    0,
                    1000,
                    1 << 20,
                    48 << 10,
                    4 << 30,
                    12,
                    protocol.RequestWindow(10_000, 5000, 850, 4000, 1200),
                    (MemberView("node1", PeerState.UP, 0x019AC1E2F3A0, 0),),
                    (protocol.PeerClockOffset("node2", -1500),),
                    protocol.RepairProgress(True, 0x019AC1E2F3A0, 0, 2730, 1365, 3, 1),
                )
            )
        ],
        "auth_start": [
            protocol.encode_auth_start_reply(b"r=rOprNGfwEbeRWgbNEkqO%hvYD,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096")
        ],
        "auth": [
            protocol.encode_auth_reply(
                protocol.AuthReply("alice", protocol.Role.READWRITE, b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=")
            )
        ],
        "user_set": [protocol.encode_user_set_reply(True), protocol.encode_user_set_reply(False)],
        "users": [protocol.encode_users_reply([protocol.UserView("alice", protocol.Role.ADMIN, 0)])],
        "identify": [
            protocol.encode_identify_reply(protocol.IdentifyReply(IDENTITY, True)),
            protocol.encode_identify_reply(protocol.IdentifyReply(IDENTITY, False, "not a member")),
        ],
        "membership": [protocol.encode_membership_reply(b'{"format":1}')],
        "epoch": [protocol.encode_epoch_reply(3)],
        "error": [error],
        "quorum_error": [quorum_error],
    }


def frame_streams() -> list[bytes]:
    """Byte streams of several frames: the whole documented session, and each documented frame."""
    examples = list(documented_examples().values())
    return [b"".join(examples), *examples]


# --- the corpora of the atheris targets (``fuzz.codec``) ------------------------------------------

DEFAULT_CORPUS = Path(__file__).resolve().parents[2] / ".fuzz" / "corpus"
"""Where each atheris target keeps its corpus unless told otherwise (git ignores ``.fuzz/``)."""


def corpus(target: str) -> list[bytes]:
    """Valid inputs for ``target``, in the layout its check reads (``properties``' docstring)."""
    if target == "frames":
        # One chunk of 256 bytes; chunks of 1-4 bytes; the 64-byte frame limit in 16-byte chunks.
        prefixes = (b"\x00\xff", b"\x03\x00\x01\x02\x03", b"\x80\x0f")
        return [prefix + stream for stream in frame_streams() for prefix in prefixes]
    if target == "requests":
        return [frame[protocol.CODE_OFFSET :] for frame in request_frames()]
    if target == "replies":
        return [
            bytes([properties.REPLY_NAMES.index(name)]) + body
            for name, bodies in reply_bodies().items()
            for body in bodies
        ]
    raise ValueError(f"unknown target {target!r}: choose from {', '.join(properties.CHECKS)}")


def write_corpus(target: str, directory: Path) -> None:
    """``corpus(target)`` as files in ``directory`` (made if missing), named by content."""
    directory.mkdir(parents=True, exist_ok=True)
    for seed in corpus(target):
        (directory / f"seed-{hashlib.sha1(seed).hexdigest()}").write_bytes(seed)
