"""The wire protocol: frames, operations, status codes and message bodies, over bytes only.

This module owns the byte layout described in ``client/PROTOCOL.md`` and nothing else: no sockets,
no clocks, no I/O. ``FrameDecoder`` turns a byte stream into frames (a partial frame is normal and
simply waits for more bytes). Each request class encodes and decodes its own body and is registered
in ``REQUEST_TYPES`` by op code; the ``encode_*``/``decode_*`` functions do the same for replies.
Every decoding failure raises ``ProtocolError`` or one of its subclasses, never ``struct.error``,
``IndexError`` or ``UnicodeDecodeError``.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass
from enum import IntEnum
from typing import ClassVar, NamedTuple, Self

from client.address import format_address

PROTOCOL_VERSION = 1
"""The only version this code speaks. HELLO negotiates it; a later version adds ops, never reshapes."""

HEADER = struct.Struct(">IIB")
"""length (bytes after this field), request id, code (an Op in a request, a Status in a response)."""
LENGTH_FIELD_SIZE = 4
MIN_FRAME_LENGTH = HEADER.size - LENGTH_FIELD_SIZE  # request id + code: a frame with an empty body
CODE_OFFSET = HEADER.size - 1

FRAME_OVERHEAD = 1024
"""Bytes a frame may need beyond its key and value: header, length prefixes, quorum and flag bytes,
node ids (up to 255 bytes each in a version or a hint), and a PARTITION_KEYS page's envelope (its
cursor is a storage key of up to 510 bytes). The default frame limit is max value + max key + this,
so a maximum-size key and value fit in every op that carries them, one key per page at worst."""

DEFAULT_MAX_KEY_BYTES = 1024
DEFAULT_MAX_VALUE_BYTES = 1024 * 1024
DEFAULT_MAX_FRAME_BYTES = DEFAULT_MAX_VALUE_BYTES + DEFAULT_MAX_KEY_BYTES + FRAME_OVERHEAD

MAX_REQUEST_ID = 0xFFFFFFFF
CONNECTION_REQUEST_ID = 0
"""Never a request's id: an error frame the node sends with it is about the whole connection (for
example TOO_MANY_CONNECTIONS before the node closes it), not a reply to one request."""

MAX_ERROR_MESSAGE_BYTES = 512
"""The longest error message a node sends: enough to name every failed replica with a short reason,
and small enough that no reply can be bloated by a message built from other messages."""
MAX_KEY_FIELD = 0xFFFF  # keys carry a u16 length, so no configuration can allow a longer key


class Op(IntEnum):
    """Request codes. 0x01-0x0F are client operations (0x07-0x0A authentication and users),
    0x10-0x1F node-to-node replica operations, 0x20-0x2F administration."""

    HELLO = 0x01
    PING = 0x02
    GET = 0x03
    PUT = 0x04
    DELETE = 0x05
    TOPOLOGY = 0x06
    AUTH_START = 0x07
    AUTH_FINISH = 0x08
    USER_SET = 0x09
    USERS = 0x0A
    REPLICA_GET = 0x10
    REPLICA_PUT = 0x11
    HINTED_PUT = 0x12
    DIGESTS = 0x13
    PARTITION_KEYS = 0x14
    IDENTIFY = 0x15
    MEMBERSHIP = 0x16
    EPOCH = 0x17
    PARTITION_RECORDS = 0x18
    STREAM_DONE = 0x19
    CLUSTER_JOIN = 0x28
    CLUSTER_LEAVE = 0x29
    CLUSTER_REMOVE = 0x2A
    REPAIR = 0x20
    MEMBERS = 0x21
    STATS = 0x22


class Status(IntEnum):
    """Response codes. 0x00-0x0F are answers, 0x10 and up are errors that carry a message."""

    OK = 0x00
    NOT_FOUND = 0x01
    BAD_REQUEST = 0x10
    KEY_TOO_LARGE = 0x11
    VALUE_TOO_LARGE = 0x12
    FRAME_TOO_LARGE = 0x13
    UNSUPPORTED_VERSION = 0x14
    TOO_MANY_CONNECTIONS = 0x15
    CLOCK_SKEW = 0x16
    AUTH_REQUIRED = 0x17
    AUTH_FAILED = 0x18
    FORBIDDEN = 0x19
    MEMBERSHIP_CHANGED = 0x1A
    NOT_A_MEMBER = 0x1B
    CHANGE_IN_PROGRESS = 0x1D
    UNAVAILABLE = 0x20
    TIMEOUT = 0x21
    INTERNAL_ERROR = 0x30
    STORAGE_FULL = 0x31
    REPLICA_BEHIND = 0x32
    TLS_REQUIRED = 0x33
    PARTITION_NOT_HERE = 0x34

    @property
    def is_error(self) -> bool:
        return self >= Status.BAD_REQUEST


QUORUM_STATUSES = frozenset({Status.UNAVAILABLE, Status.TIMEOUT})
"""Errors whose body also says how many replicas acked and how many were required."""


class ProtocolError(Exception):
    """Bytes that do not follow the protocol."""


class OversizeFrameError(ProtocolError):
    """A frame announced a length over the limit. The stream cannot be trusted past this point."""

    def __init__(self, request_id: int, length: int, limit: int) -> None:
        super().__init__(f"frame of {length} bytes exceeds the limit of {limit} bytes")
        self.request_id = request_id
        self.length = length
        self.limit = limit


class Frame(NamedTuple):
    request_id: int
    code: int
    body: bytes


class Version(NamedTuple):
    """A write's version: hybrid logical clock timestamp, then the writing node's id.

    Tuple order is version order: the higher timestamp wins and the node id breaks ties.
    """

    timestamp: int
    node_id: str


class Record(NamedTuple):
    """What a replica holds for a key: a value, or a tombstone (``value is None``), and its version."""

    version: Version
    value: bytes | None

    @property
    def is_tombstone(self) -> bool:
        return self.value is None


# --- framing ---------------------------------------------------------------------------------------


def encode_frame(request_id: int, code: int, body: bytes = b"") -> bytes:
    return HEADER.pack(len(body) + MIN_FRAME_LENGTH, request_id, code) + body


def frame_code(encoded: bytes) -> int:
    """The op or status code of an encoded frame."""
    return encoded[CODE_OFFSET]


class FrameDecoder:
    """Incremental frame parser: feed it whatever the socket returned, get back complete frames."""

    def __init__(self, max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES) -> None:
        self.max_frame_bytes = max_frame_bytes
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[Frame]:
        """Append ``data`` and return every frame now complete; keep any partial frame buffered.

        Raises ``OversizeFrameError`` for a frame over the limit and ``ProtocolError`` for a length
        too short to hold a header. Either way the stream is unusable afterwards. The frames complete
        before the bad header are returned first, and the next call (``feed(b"")`` will do) raises:
        so what a reader gets never depends on how the bytes were split into reads.
        """
        buffer = self._buffer
        buffer += data
        frames: list[Frame] = []
        offset = 0
        available = len(buffer)
        while available - offset >= HEADER.size:
            length, request_id, code = HEADER.unpack_from(buffer, offset)
            if length < MIN_FRAME_LENGTH or length + LENGTH_FIELD_SIZE > self.max_frame_bytes:
                if frames:  # the bad header stays first in the buffer, for the next call to raise on
                    break
                if length < MIN_FRAME_LENGTH:
                    raise ProtocolError(f"frame length {length} is shorter than the {MIN_FRAME_LENGTH}-byte header")
                raise OversizeFrameError(request_id, length + LENGTH_FIELD_SIZE, self.max_frame_bytes)
            end = offset + LENGTH_FIELD_SIZE + length
            if end > available:
                break
            frames.append(Frame(request_id, code, bytes(buffer[offset + HEADER.size : end])))
            offset = end
        if offset:
            del buffer[:offset]
        return frames

    @property
    def buffered(self) -> int:
        """Bytes held for a frame that is not complete yet."""
        return len(self._buffer)


# --- body fields -----------------------------------------------------------------------------------

_U8 = struct.Struct(">B")
_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")
_I64 = struct.Struct(">q")


class BodyReader:
    """Reads fields from a frame body; any underflow or bad text becomes ``ProtocolError``."""

    __slots__ = ("_data", "_offset")

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._offset = 0

    def take(self, size: int) -> bytes:
        end = self._offset + size
        if end > len(self._data):
            raise ProtocolError(f"body ends after {len(self._data)} bytes, field needs {end}")
        chunk = self._data[self._offset : end]
        self._offset = end
        return chunk

    def _unpack(self, fmt: struct.Struct) -> int:
        value: int = fmt.unpack(self.take(fmt.size))[0]
        return value

    def u8(self) -> int:
        return self._unpack(_U8)

    def u16(self) -> int:
        return self._unpack(_U16)

    def u32(self) -> int:
        return self._unpack(_U32)

    def u64(self) -> int:
        return self._unpack(_U64)

    def i64(self) -> int:
        return self._unpack(_I64)

    def fields(self, fmt: struct.Struct) -> tuple[int, ...]:
        """Several integers at once, laid out as ``fmt``."""
        values: tuple[int, ...] = fmt.unpack(self.take(fmt.size))
        return values

    def bytes16(self) -> bytes:
        return self.take(self.u16())

    def bytes32(self) -> bytes:
        return self.take(self.u32())

    def str8(self) -> str:
        raw = self.take(self.u8())
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ProtocolError(f"text field is not UTF-8: {raw!r}") from exc

    def str16(self) -> str:
        return self.take(self.u16()).decode("utf-8", errors="replace")

    def version(self) -> Version:
        return Version(self.u64(), self.str8())

    @property
    def remaining(self) -> int:
        """Bytes not read yet: an optional trailing field is there when this is not 0."""
        return len(self._data) - self._offset

    def end(self) -> None:
        if self._offset != len(self._data):
            raise ProtocolError(f"{len(self._data) - self._offset} unexpected bytes after the last field")


def _str8(text: str) -> bytes:
    raw = text.encode("utf-8")
    if len(raw) > 0xFF:
        raise ValueError(f"text field longer than 255 bytes: {text[:40]!r}...")
    return _U8.pack(len(raw)) + raw


def _bytes16(data: bytes) -> bytes:
    if len(data) > MAX_KEY_FIELD:
        raise ValueError(f"field of {len(data)} bytes does not fit a u16 length")
    return _U16.pack(len(data)) + data


def _bytes32(data: bytes) -> bytes:
    return _U32.pack(len(data)) + data


def _version(version: Version) -> bytes:
    return _U64.pack(version.timestamp) + _str8(version.node_id)


# --- requests --------------------------------------------------------------------------------------
#
# One dataclass per op. Each names its op code (``OP``), encodes its own body (``encode``) and reads
# it back (``decode``), and ``REQUEST_TYPES`` maps codes to classes: adding an op is one class and
# one table entry here, and one case in the node's request handler.

DEFAULT_QUORUM = 0
"""A quorum byte of 0 means "use the node's configured R or W"."""

_TOMBSTONE_FLAG = 0x01


def _record_body(record: Record) -> bytes:
    flags = _TOMBSTONE_FLAG if record.value is None else 0
    return _U8.pack(flags) + _version(record.version) + _bytes32(record.value or b"")


def _read_record(reader: BodyReader) -> Record:
    flags = reader.u8()
    if flags & ~_TOMBSTONE_FLAG:
        raise ProtocolError(f"unknown record flags 0x{flags:02x}")
    version = reader.version()
    value = reader.bytes32()
    if flags & _TOMBSTONE_FLAG:
        if value:
            raise ProtocolError("a tombstone record carries a value")
        return Record(version, None)
    return Record(version, value)


class _EmptyBody:
    """The codec of a request that carries no fields."""

    __slots__ = ()

    def encode(self) -> bytes:
        return b""

    @classmethod
    def decode(cls, reader: BodyReader) -> Self:
        return cls()


@dataclass(frozen=True, slots=True)
class Hello:
    """The first request on a connection: the protocol versions the client speaks, and its name."""

    OP: ClassVar[Op] = Op.HELLO
    min_version: int = PROTOCOL_VERSION
    max_version: int = PROTOCOL_VERSION
    client_name: str = ""

    def encode(self) -> bytes:
        return _U8.pack(self.min_version) + _U8.pack(self.max_version) + _str8(self.client_name)

    @classmethod
    def decode(cls, reader: BodyReader) -> Hello:
        return cls(reader.u8(), reader.u8(), reader.str8())


PING_WITH_MEMBERSHIP = 0x01
"""In PING's optional flags byte: the reply also carries the node's membership epoch and digest
(members send it with their heartbeats; an empty PING gets the reply version 1 began with)."""


@dataclass(frozen=True, slots=True)
class Ping:
    """Are you there? An OK reply says the node serves requests. ``membership``: ask for the
    node's membership epoch and digest too (``PingReply.membership``)."""

    OP: ClassVar[Op] = Op.PING
    membership: bool = False

    def encode(self) -> bytes:
        return _U8.pack(PING_WITH_MEMBERSHIP) if self.membership else b""

    @classmethod
    def decode(cls, reader: BodyReader) -> Ping:
        return cls(_optional_flags(reader, PING_WITH_MEMBERSHIP, "PING") != 0)


def _optional_flags(reader: BodyReader, known: int, op: str) -> int:
    """An optional trailing flags byte (absent: 0); ``ProtocolError`` for a bit not in ``known``."""
    if not reader.remaining:
        return 0
    flags = reader.u8()
    if flags & ~known:
        raise ProtocolError(f"unknown {op} flags 0x{flags:02x}")
    if not flags:  # one encoding per request: no flags is an empty body
        raise ProtocolError(f"{op} without flags has an empty body, not a 0 flags byte")
    return flags


class Role(IntEnum):
    """A user's role, as USER_SET, USERS and AUTH_FINISH's reply carry it. Each role may run the
    ops of the one before it and more (``service.roles``); ``PEER`` is a member of the cluster,
    authenticated by the cluster secret, never a user's role."""

    NONE = 0  # in USER_SET: remove the user
    READ = 1
    READWRITE = 2
    ADMIN = 3
    PEER = 4


SCRAM_SHA_256 = "SCRAM-SHA-256"
"""The one authentication mechanism (RFC 5802, RFC 7677): AUTH_START and AUTH_FINISH carry its
messages, so no password crosses the wire."""


@dataclass(frozen=True, slots=True)
class AuthStart:
    """The first SASL step: the mechanism and SCRAM's client-first message (user name and nonce)."""

    OP: ClassVar[Op] = Op.AUTH_START
    client_first: bytes
    mechanism: str = SCRAM_SHA_256

    def encode(self) -> bytes:
        return _str8(self.mechanism) + _bytes16(self.client_first)

    @classmethod
    def decode(cls, reader: BodyReader) -> AuthStart:
        mechanism = reader.str8()
        return cls(reader.bytes16(), mechanism)


@dataclass(frozen=True, slots=True)
class AuthFinish:
    """The second SASL step: SCRAM's client-final message (the nonces and the client's proof)."""

    OP: ClassVar[Op] = Op.AUTH_FINISH
    client_final: bytes

    def encode(self) -> bytes:
        return _bytes16(self.client_final)

    @classmethod
    def decode(cls, reader: BodyReader) -> AuthFinish:
        return cls(reader.bytes16())


@dataclass(frozen=True, slots=True)
class UserSet:
    """Adds, changes (``role`` and ``verifier``) or removes (``role`` 0, empty ``verifier``) a user.
    ``version`` (Unix ms) orders changes: a node keeps the highest it has seen for each user."""

    OP: ClassVar[Op] = Op.USER_SET
    version: int
    user: str
    role: int
    verifier: str = ""

    def encode(self) -> bytes:
        raw = self.verifier.encode("utf-8")
        return _U64.pack(self.version) + _str8(self.user) + _U8.pack(self.role) + _bytes16(raw)

    @classmethod
    def decode(cls, reader: BodyReader) -> UserSet:
        version, user, role = reader.u64(), reader.str8(), reader.u8()
        raw = reader.bytes16()
        try:
            return cls(version, user, role, raw.decode("ascii"))
        except UnicodeDecodeError:
            raise ProtocolError("a verifier is ASCII text") from None


@dataclass(frozen=True, slots=True)
class Users(_EmptyBody):
    """Asks for the users a node knows, with their roles."""

    OP: ClassVar[Op] = Op.USERS


@dataclass(frozen=True, slots=True)
class Get:
    OP: ClassVar[Op] = Op.GET
    key: bytes
    quorum: int = DEFAULT_QUORUM

    def encode(self) -> bytes:
        return _U8.pack(self.quorum) + _bytes16(self.key)

    @classmethod
    def decode(cls, reader: BodyReader) -> Get:
        quorum = reader.u8()
        return cls(reader.bytes16(), quorum)


@dataclass(frozen=True, slots=True)
class Put:
    OP: ClassVar[Op] = Op.PUT
    key: bytes
    value: bytes
    quorum: int = DEFAULT_QUORUM
    after: int = 0  # the highest timestamp the client has seen; the write is stamped above it

    def encode(self) -> bytes:
        return _U8.pack(self.quorum) + _U64.pack(self.after) + _bytes16(self.key) + _bytes32(self.value)

    @classmethod
    def decode(cls, reader: BodyReader) -> Put:
        quorum, after = reader.u8(), reader.u64()
        key = reader.bytes16()
        return cls(key, reader.bytes32(), quorum, after)


@dataclass(frozen=True, slots=True)
class Delete:
    OP: ClassVar[Op] = Op.DELETE
    key: bytes
    quorum: int = DEFAULT_QUORUM
    after: int = 0

    def encode(self) -> bytes:
        return _U8.pack(self.quorum) + _U64.pack(self.after) + _bytes16(self.key)

    @classmethod
    def decode(cls, reader: BodyReader) -> Delete:
        quorum, after = reader.u8(), reader.u64()
        return cls(reader.bytes16(), quorum, after)


TOPOLOGY_WITH_EPOCH = 0x01
"""In TOPOLOGY's optional flags byte: the reply also carries the membership epoch, the cluster id and
each member's state (an empty TOPOLOGY gets the reply version 1 began with)."""


@dataclass(frozen=True, slots=True)
class Topology:
    """Asks for the ring: N, R, W, the partition count and every member's address; with ``epoch``,
    also the membership epoch, the cluster id and each member's state."""

    OP: ClassVar[Op] = Op.TOPOLOGY
    epoch: bool = False

    def encode(self) -> bytes:
        return _U8.pack(TOPOLOGY_WITH_EPOCH) if self.epoch else b""

    @classmethod
    def decode(cls, reader: BodyReader) -> Topology:
        return cls(_optional_flags(reader, TOPOLOGY_WITH_EPOCH, "TOPOLOGY") != 0)


REPLICA_GET_BEHIND_OK = 0x01
"""In REPLICA_GET's flags: answer even if this node's store is behind."""


@dataclass(frozen=True, slots=True)
class ReplicaGet:
    """A replica's own record for ``key``. A node whose store may lack acknowledged writes (full, or
    catching up) refuses it with REPLICA_BEHIND unless ``behind_ok``: the coordinator knows, and has
    no better replica left to ask."""

    OP: ClassVar[Op] = Op.REPLICA_GET
    key: bytes
    behind_ok: bool = False

    def encode(self) -> bytes:
        return _bytes16(self.key) + _U8.pack(REPLICA_GET_BEHIND_OK if self.behind_ok else 0)

    @classmethod
    def decode(cls, reader: BodyReader) -> ReplicaGet:
        key = reader.bytes16()
        flags = reader.u8()
        if flags & ~REPLICA_GET_BEHIND_OK:
            raise ProtocolError(f"unknown REPLICA_GET flags 0x{flags:02x}")
        return cls(key, bool(flags))


@dataclass(frozen=True, slots=True)
class ReplicaPut:
    OP: ClassVar[Op] = Op.REPLICA_PUT
    key: bytes
    record: Record

    def encode(self) -> bytes:
        return _bytes16(self.key) + _record_body(self.record)

    @classmethod
    def decode(cls, reader: BodyReader) -> ReplicaPut:
        key = reader.bytes16()
        return cls(key, _read_record(reader))


@dataclass(frozen=True, slots=True)
class HintedPut:
    """A write for ``owner``, held by the receiving node until ``owner`` can take it. ``epoch``: the
    membership epoch the sender routes by (an optional trailing ``u64``; 0: not said), so that a
    node that has not heard of ``owner`` yet, a member admitted at a newer epoch, still holds it."""

    OP: ClassVar[Op] = Op.HINTED_PUT
    key: bytes
    record: Record
    owner: str
    epoch: int = 0

    def encode(self) -> bytes:
        body = _bytes16(self.key) + _record_body(self.record) + _str8(self.owner)
        return body + _U64.pack(self.epoch) if self.epoch else body

    @classmethod
    def decode(cls, reader: BodyReader) -> HintedPut:
        key = reader.bytes16()
        record = _read_record(reader)
        owner = reader.str8()
        if not reader.remaining:
            return cls(key, record, owner)
        epoch = reader.u64()
        if not epoch:  # one encoding per request: no epoch is no trailing field
            raise ProtocolError("HINTED_PUT without an epoch has no epoch field, not a 0")
        return cls(key, record, owner, epoch)


@dataclass(frozen=True, slots=True)
class Digests:
    OP: ClassVar[Op] = Op.DIGESTS
    partitions: tuple[int, ...]

    def encode(self) -> bytes:
        return _U16.pack(len(self.partitions)) + b"".join(_U16.pack(p) for p in self.partitions)

    @classmethod
    def decode(cls, reader: BodyReader) -> Digests:
        return cls(tuple(reader.u16() for _ in range(reader.u16())))


@dataclass(frozen=True, slots=True)
class PartitionKeys:
    """One page of a partition's keys and versions, starting after ``cursor`` (empty: the start)."""

    OP: ClassVar[Op] = Op.PARTITION_KEYS
    partition: int
    cursor: bytes = b""

    def encode(self) -> bytes:
        return _U16.pack(self.partition) + _bytes16(self.cursor)

    @classmethod
    def decode(cls, reader: BodyReader) -> PartitionKeys:
        partition = reader.u16()
        return cls(partition, reader.bytes16())


MEMBERSHIP_DIGEST_BYTES = 8
"""A membership record's digest on the wire (``service.membership.DIGEST_BYTES``)."""


@dataclass(frozen=True, slots=True)
class PeerIdentity:
    """Who a node is, as members tell each other when a link opens (IDENTIFY): its cluster, id,
    identity (random, minted on its first start), the address it believes it has, and the epoch and
    digest of the membership record it holds."""

    cluster_id: str
    node_id: str
    identity: str
    host: str
    port: int
    epoch: int
    digest: bytes

    def encode(self) -> bytes:
        if len(self.digest) != MEMBERSHIP_DIGEST_BYTES:
            raise ValueError(f"a membership digest is {MEMBERSHIP_DIGEST_BYTES} bytes")
        return (
            _str8(self.cluster_id)
            + _str8(self.node_id)
            + _str8(self.identity)
            + _str8(self.host)
            + _U16.pack(self.port)
            + _U64.pack(self.epoch)
            + self.digest
        )

    @classmethod
    def read(cls, reader: BodyReader) -> PeerIdentity:
        cluster_id, node_id, identity, host = reader.str8(), reader.str8(), reader.str8(), reader.str8()
        return cls(
            cluster_id, node_id, identity, host, reader.u16(), reader.u64(), reader.take(MEMBERSHIP_DIGEST_BYTES)
        )


@dataclass(frozen=True, slots=True)
class Identify:
    """A member's first request on a link to another member: who it is. The answer says who the
    receiver is and whether it accepts the sender (``IdentifyReply``)."""

    OP: ClassVar[Op] = Op.IDENTIFY
    sender: PeerIdentity

    def encode(self) -> bytes:
        return self.sender.encode()

    @classmethod
    def decode(cls, reader: BodyReader) -> Identify:
        return cls(PeerIdentity.read(reader))


@dataclass(frozen=True, slots=True)
class MembershipRecord(_EmptyBody):
    """Asks a member for the membership record it holds (a peer pulls it when a heartbeat shows an
    epoch or digest other than its own)."""

    OP: ClassVar[Op] = Op.MEMBERSHIP


@dataclass(frozen=True, slots=True)
class Epoch:
    """Tells the node the membership epoch this client's ring was built from (0: none yet); the node
    answers with its own, and later answers this connection's GET, PUT and DELETE with
    MEMBERSHIP_CHANGED once, when its epoch has moved past it."""

    OP: ClassVar[Op] = Op.EPOCH
    epoch: int

    def encode(self) -> bytes:
        return _U64.pack(self.epoch)

    @classmethod
    def decode(cls, reader: BodyReader) -> Epoch:
        return cls(reader.u64())


@dataclass(frozen=True, slots=True)
class PartitionRecords:
    """One page of a partition's records (key, version, value or tombstone), starting after
    ``cursor`` (empty: the start): what a new owner streams a partition with. Members only."""

    OP: ClassVar[Op] = Op.PARTITION_RECORDS
    partition: int
    cursor: bytes = b""

    def encode(self) -> bytes:
        return _U16.pack(self.partition) + _bytes16(self.cursor)

    @classmethod
    def decode(cls, reader: BodyReader) -> PartitionRecords:
        partition = reader.u16()
        return cls(partition, reader.bytes16())


@dataclass(frozen=True, slots=True)
class StreamDone:
    """Tells a leaving member that ``node_id`` holds every partition it receives in the change of
    membership epoch ``epoch``: once every receiver has said so, the leaving member makes the
    epoch that removes it. Members only; sent again until that epoch arrives."""

    OP: ClassVar[Op] = Op.STREAM_DONE
    epoch: int
    node_id: str

    def encode(self) -> bytes:
        return _U64.pack(self.epoch) + _str8(self.node_id)

    @classmethod
    def decode(cls, reader: BodyReader) -> StreamDone:
        return cls(reader.u64(), reader.str8())


CHANGE_FORWARDED = 0x01
"""In CLUSTER_JOIN's, CLUSTER_LEAVE's and CLUSTER_REMOVE's optional flags byte: a member passed the
request on to the node it takes for the claimant. That node makes the change if it takes itself
for the claimant too, refuses it if not, and never passes it on again (so a request cannot bounce
between two nodes that disagree on the claimant)."""


def _forwarded_flag(forwarded: bool) -> bytes:
    return _U8.pack(CHANGE_FORWARDED) if forwarded else b""


def _forwarded(reader: BodyReader, op: str) -> bool:
    return _optional_flags(reader, CHANGE_FORWARDED, op) != 0


@dataclass(frozen=True, slots=True)
class ClusterJoin:
    """Asks a member to admit ``node_id``, reached at ``host``:``port``, as a joining member (a new
    epoch). Admin; a joining node started with ``KV_AUTO_JOIN`` sends it to its seeds itself. The
    reply is the record with the node in it (MEMBERSHIP's reply); CHANGE_IN_PROGRESS while another
    change runs. ``forwarded``: sent on by a member to the claimant (``CHANGE_FORWARDED``)."""

    OP: ClassVar[Op] = Op.CLUSTER_JOIN
    node_id: str
    host: str
    port: int
    forwarded: bool = False

    def encode(self) -> bytes:
        return _str8(self.node_id) + _str8(self.host) + _U16.pack(self.port) + _forwarded_flag(self.forwarded)

    @classmethod
    def decode(cls, reader: BodyReader) -> ClusterJoin:
        return cls(reader.str8(), reader.str8(), reader.u16(), _forwarded(reader, "CLUSTER_JOIN"))


@dataclass(frozen=True, slots=True)
class ClusterLeave:
    """Asks a member to decommission ``node_id`` (a live member): it becomes ``leaving``, its
    partitions stream to their new owners, then it leaves. Admin; the reply is the new record.
    ``forwarded`` as in ``ClusterJoin``."""

    OP: ClassVar[Op] = Op.CLUSTER_LEAVE
    node_id: str
    forwarded: bool = False

    def encode(self) -> bytes:
        return _str8(self.node_id) + _forwarded_flag(self.forwarded)

    @classmethod
    def decode(cls, reader: BodyReader) -> ClusterLeave:
        return cls(reader.str8(), _forwarded(reader, "CLUSTER_LEAVE"))


@dataclass(frozen=True, slots=True)
class ClusterRemove:
    """Asks a member to remove ``node_id`` (a dead member) at once; the new owners of its replicas
    stream them from the surviving copies. Admin; the reply is the new record. ``forwarded`` as in
    ``ClusterJoin``."""

    OP: ClassVar[Op] = Op.CLUSTER_REMOVE
    node_id: str
    forwarded: bool = False

    def encode(self) -> bytes:
        return _str8(self.node_id) + _forwarded_flag(self.forwarded)

    @classmethod
    def decode(cls, reader: BodyReader) -> ClusterRemove:
        return cls(reader.str8(), _forwarded(reader, "CLUSTER_REMOVE"))


@dataclass(frozen=True, slots=True)
class Repair(_EmptyBody):
    """Asks the node to run one anti-entropy round with all its peers now."""

    OP: ClassVar[Op] = Op.REPAIR


@dataclass(frozen=True, slots=True)
class Members(_EmptyBody):
    """Asks for the node's failure-detector view of the cluster."""

    OP: ClassVar[Op] = Op.MEMBERS


@dataclass(frozen=True, slots=True)
class Stats(_EmptyBody):
    """Asks for the node's own figures (``StatsReply``): keys, disk, hints, recent requests, its view
    of the cluster and the progress of anti-entropy. What the dashboard shows of each node."""

    OP: ClassVar[Op] = Op.STATS


Request = (
    Hello | Ping | Get | Put | Delete | Topology | AuthStart | AuthFinish | UserSet | Users
    | ReplicaGet | ReplicaPut | HintedPut
    | Digests | PartitionKeys | PartitionRecords | Identify | MembershipRecord | Epoch | StreamDone
    | ClusterJoin | ClusterLeave | ClusterRemove | Repair | Members | Stats
)  # fmt: skip

REQUEST_TYPES: dict[int, type[Request]] = {
    request_type.OP: request_type
    for request_type in (
        Hello, Ping, Get, Put, Delete, Topology, AuthStart, AuthFinish, UserSet, Users,
        ReplicaGet, ReplicaPut, HintedPut,
        Digests, PartitionKeys, PartitionRecords, Identify, MembershipRecord, Epoch, StreamDone,
        ClusterJoin, ClusterLeave, ClusterRemove, Repair, Members, Stats,
    )
}  # fmt: skip
"""Op code -> request class: the one table ``decode_request`` reads."""


def request_body(request: Request) -> tuple[Op, bytes]:
    """The op code and body bytes of ``request``; ``TypeError`` if it is not a request."""
    try:
        op = request.OP
    except AttributeError:
        raise TypeError(f"not a request: {request!r}") from None
    return op, request.encode()


def encode_request(request_id: int, request: Request) -> bytes:
    op, body = request_body(request)
    return encode_frame(request_id, op, body)


_GET_HEAD = struct.Struct(">BH")  # quorum, key length
_PUT_HEAD = struct.Struct(">BQH")  # quorum, after, key length
_GET_CODE = int(Op.GET)  # plain ints: comparing with an IntEnum member costs more, on every request
_PUT_CODE = int(Op.PUT)


def _decode_get(body: bytes) -> Get | None:
    """GET without ``BodyReader``: the commonest request gets the cheapest path. ``None`` if the
    body is malformed, for the general decoder to describe."""
    if len(body) >= _GET_HEAD.size:
        quorum, key_length = _GET_HEAD.unpack_from(body)
        if _GET_HEAD.size + key_length == len(body):
            return Get(body[_GET_HEAD.size :], quorum)
    return None


def _decode_put(body: bytes) -> Put | None:
    """PUT without ``BodyReader``; ``None`` if malformed."""
    if len(body) >= _PUT_HEAD.size + _U32.size:
        quorum, after, key_length = _PUT_HEAD.unpack_from(body)
        value_at = _PUT_HEAD.size + key_length + _U32.size
        if value_at <= len(body):
            (value_length,) = _U32.unpack_from(body, value_at - _U32.size)
            if value_at + value_length == len(body):
                return Put(body[_PUT_HEAD.size : value_at - _U32.size], body[value_at:], quorum, after)
    return None


def decode_request(frame: Frame) -> Request:
    """The typed request in ``frame``. Raises ``ProtocolError`` for an unknown op or a bad body."""
    code = frame.code
    fast: Request | None = None
    if code == _GET_CODE:
        fast = _decode_get(frame.body)
    elif code == _PUT_CODE:
        fast = _decode_put(frame.body)
    if fast is not None:
        return fast
    request_type = REQUEST_TYPES.get(code)
    if request_type is None:
        raise ProtocolError(f"unknown op code 0x{code:02x}")
    reader = BodyReader(frame.body)
    request = request_type.decode(reader)
    reader.end()
    return request


_OP_NAMES = {op.value: op.name for op in Op}
_STATUS_NAMES = {status.value: status.name for status in Status}


def op_name(code: int) -> str:
    """The op's name, or its code in hex if unknown (a dict lookup: this runs on every request)."""
    return _OP_NAMES.get(code) or f"0x{code:02x}"


def status_name(code: int) -> str:
    return _STATUS_NAMES.get(code) or f"0x{code:02x}"


# --- responses -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class HelloReply:
    version: int
    node_id: str
    max_key_bytes: int
    max_value_bytes: int
    max_frame_bytes: int


@dataclass(frozen=True, slots=True)
class NodeAddress:
    node_id: str
    host: str
    port: int

    @property
    def address(self) -> str:
        return format_address(self.host, self.port)


@dataclass(frozen=True, slots=True)
class TopologyReply:
    n: int  # replicas per key (N)
    read_quorum: int  # R
    write_quorum: int  # W
    partitions: int
    nodes: tuple[NodeAddress, ...]
    membership: TopologyMembership | None = None  # asked for with TOPOLOGY's epoch flag


class MemberStateCode(IntEnum):
    """A member's part in the ring, on the wire (``service.membership.MemberState``)."""

    NORMAL = 0
    JOINING = 1
    LEAVING = 2


@dataclass(frozen=True, slots=True)
class TopologyMembership:
    """What TOPOLOGY adds when asked: the epoch of the record the ring comes from, the cluster id,
    and each node's state, in the order of ``TopologyReply.nodes``."""

    epoch: int
    cluster_id: str
    states: tuple[MemberStateCode, ...]


@dataclass(frozen=True, slots=True)
class ErrorReply:
    status: Status
    message: str
    acked: int | None = None
    required: int | None = None


def encode_response(request_id: int, status: Status, body: bytes = b"") -> bytes:
    return encode_frame(request_id, status, body)


def encode_error(
    request_id: int, status: Status, message: str, acked: int | None = None, required: int | None = None
) -> bytes:
    """An error response. UNAVAILABLE and TIMEOUT also carry ``acked`` and ``required``. The message
    is clipped to ``MAX_ERROR_MESSAGE_BYTES`` (``clip_message``)."""
    raw = clip_message(message).encode("utf-8")
    body = _U16.pack(len(raw)) + raw
    if status in QUORUM_STATUSES:
        body = _U8.pack(acked or 0) + _U8.pack(required or 0) + body
    return encode_frame(request_id, status, body)


def clip_message(message: str, max_bytes: int = MAX_ERROR_MESSAGE_BYTES) -> str:
    """``message`` if its UTF-8 takes at most ``max_bytes``; else as much of it as fits with "..."
    appended, cut between characters, never inside one."""
    raw = message.encode("utf-8")
    if len(raw) <= max_bytes:
        return message
    return raw[: max(0, max_bytes - 3)].decode("utf-8", errors="ignore") + "..."


def decode_error(status: Status, body: bytes) -> ErrorReply:
    reader = BodyReader(body)
    acked = required = None
    if status in QUORUM_STATUSES:
        acked, required = reader.u8(), reader.u8()
    message = reader.str16()
    reader.end()
    return ErrorReply(status, message, acked, required)


def encode_hello_reply(reply: HelloReply) -> bytes:
    return (
        _U8.pack(reply.version)
        + _str8(reply.node_id)
        + _U32.pack(reply.max_key_bytes)
        + _U32.pack(reply.max_value_bytes)
        + _U32.pack(reply.max_frame_bytes)
    )


def decode_hello_reply(body: bytes) -> HelloReply:
    reader = BodyReader(body)
    reply = HelloReply(reader.u8(), reader.str8(), reader.u32(), reader.u32(), reader.u32())
    reader.end()
    return reply


def encode_topology_reply(reply: TopologyReply) -> bytes:
    parts = [
        _U8.pack(reply.n),
        _U8.pack(reply.read_quorum),
        _U8.pack(reply.write_quorum),
        _U16.pack(reply.partitions),
        _U16.pack(len(reply.nodes)),
    ]
    for node in reply.nodes:
        parts += [_str8(node.node_id), _str8(node.host), _U16.pack(node.port)]
    if reply.membership is not None:
        if len(reply.membership.states) != len(reply.nodes):
            raise ValueError("a topology's states must match its nodes, one each")
        parts += [_U64.pack(reply.membership.epoch), _str8(reply.membership.cluster_id)]
        parts += [_U8.pack(state) for state in reply.membership.states]
    return b"".join(parts)


def decode_topology_reply(body: bytes) -> TopologyReply:
    """TOPOLOGY's reply, with its membership fields when they are there (asked with the epoch flag)."""
    reader = BodyReader(body)
    n, read_quorum, write_quorum, partitions = reader.u8(), reader.u8(), reader.u8(), reader.u16()
    nodes = tuple(NodeAddress(reader.str8(), reader.str8(), reader.u16()) for _ in range(reader.u16()))
    membership = None
    if reader.remaining:
        epoch, cluster_id = reader.u64(), reader.str8()
        states = []
        for _ in nodes:
            code = reader.u8()
            try:
                states.append(MemberStateCode(code))
            except ValueError:
                raise ProtocolError(f"unknown member state {code}") from None
        membership = TopologyMembership(epoch, cluster_id, tuple(states))
    reader.end()
    return TopologyReply(n, read_quorum, write_quorum, partitions, nodes, membership)


@dataclass(frozen=True, slots=True)
class IdentifyReply:
    """IDENTIFY's OK reply: who the receiver is, and whether it accepts the sender as the member it
    claims to be (``reason`` says why not)."""

    receiver: PeerIdentity
    accepted: bool
    reason: str = ""


def encode_identify_reply(reply: IdentifyReply) -> bytes:
    raw = clip_message(reply.reason).encode("utf-8")
    return reply.receiver.encode() + _U8.pack(1 if reply.accepted else 0) + _U16.pack(len(raw)) + raw


def decode_identify_reply(body: bytes) -> IdentifyReply:
    reader = BodyReader(body)
    receiver = PeerIdentity.read(reader)
    accepted = reader.u8()
    if accepted > 1:
        raise ProtocolError(f"IDENTIFY's verdict is 0 or 1, not {accepted}")
    raw = reader.bytes16()
    reader.end()
    if len(raw) > MAX_ERROR_MESSAGE_BYTES:
        raise ProtocolError(f"IDENTIFY's reason is at most {MAX_ERROR_MESSAGE_BYTES} bytes, not {len(raw)}")
    try:
        reason = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ProtocolError("IDENTIFY's reason is not UTF-8") from None
    return IdentifyReply(receiver, bool(accepted), reason)


def encode_membership_reply(record: bytes) -> bytes:
    """MEMBERSHIP's OK reply: the record as ``value``-typed canonical JSON (``service.membership``)."""
    return _bytes32(record)


def decode_membership_reply(body: bytes) -> bytes:
    reader = BodyReader(body)
    record = reader.bytes32()
    reader.end()
    return record


def encode_epoch_reply(epoch: int) -> bytes:
    return _U64.pack(epoch)


def decode_epoch_reply(body: bytes) -> int:
    reader = BodyReader(body)
    epoch = reader.u64()
    reader.end()
    return epoch


def encode_version(version: Version) -> bytes:
    """Body of an OK reply to PUT or DELETE: the version the write was stored under."""
    return _version(version)


def decode_version(body: bytes) -> Version:
    reader = BodyReader(body)
    version = reader.version()
    reader.end()
    return version


def encode_replica_put_reply(newer: Version | None) -> bytes:
    """Body of an OK reply to REPLICA_PUT: empty when the record was stored (or the replica already
    held that very version), else the newer version the replica holds, so that a coordinator can
    stamp its write again above it instead of acknowledging a write that lost."""
    return b"" if newer is None else _version(newer)


def decode_replica_put_reply(body: bytes) -> Version | None:
    return decode_version(body) if body else None


PING_FLAG_STORAGE_FULL = 0x01
"""In a PING reply's (and a MEMBERS entry's) flags: the node's store refuses writes (a full disk or
storage limit). It may lack writes acknowledged meanwhile, so it is not read from either."""
PING_FLAG_CATCHING_UP = 0x02
"""In a PING reply's (and a MEMBERS entry's) flags: the node's store takes writes again after it was
full, but the writes held for it as hints meanwhile have not all arrived: it is not read from."""
STORE_FLAGS = PING_FLAG_STORAGE_FULL | PING_FLAG_CATCHING_UP


class StoreFlagged:
    """What the store flags in a message's ``flags`` field say (PING replies, MEMBERS entries)."""

    __slots__ = ()
    flags: int

    @property
    def storage_full(self) -> bool:
        return bool(self.flags & PING_FLAG_STORAGE_FULL)

    @property
    def catching_up(self) -> bool:
        return bool(self.flags & PING_FLAG_CATCHING_UP)


@dataclass(frozen=True, slots=True)
class MembershipVersion:
    """The epoch and digest of a node's membership record, as its PING reply carries them."""

    epoch: int
    digest: bytes


@dataclass(frozen=True, slots=True)
class PingReply(StoreFlagged):
    """Body of an OK reply to PING: the node's wall clock, for peers to measure their clock offset,
    its store flags (``PING_FLAG_STORAGE_FULL``, ``PING_FLAG_CATCHING_UP``), and, when asked with
    ``PING_WITH_MEMBERSHIP``, its membership epoch and digest."""

    wall_ms: int  # Unix milliseconds when the node answered
    flags: int = 0
    membership: MembershipVersion | None = None


def encode_ping_reply(reply: PingReply) -> bytes:
    body = _U64.pack(reply.wall_ms) + _U8.pack(reply.flags)
    if reply.membership is not None:
        if len(reply.membership.digest) != MEMBERSHIP_DIGEST_BYTES:
            raise ValueError(f"a membership digest is {MEMBERSHIP_DIGEST_BYTES} bytes")
        body += _U64.pack(reply.membership.epoch) + reply.membership.digest
    return body


def decode_ping_reply(body: bytes) -> PingReply:
    reader = BodyReader(body)
    wall_ms, flags = reader.u64(), reader.u8()
    membership = None
    if reader.remaining:
        membership = MembershipVersion(reader.u64(), reader.take(MEMBERSHIP_DIGEST_BYTES))
    reader.end()
    return PingReply(wall_ms, flags, membership)


def encode_value(version: Version, value: bytes) -> bytes:
    """Body of an OK reply to GET: the value and the version it was written with."""
    return _version(version) + _bytes32(value)


def decode_value(body: bytes) -> tuple[Version, bytes]:
    reader = BodyReader(body)
    version = reader.version()
    value = reader.bytes32()
    reader.end()
    return version, value


def encode_record(record: Record) -> bytes:
    """Body of an OK reply to REPLICA_GET."""
    return _record_body(record)


def decode_record(body: bytes) -> Record:
    reader = BodyReader(body)
    record = _read_record(reader)
    reader.end()
    return record


# --- anti-entropy and administration replies ------------------------------------------------------

DIGEST_SIZE = 16


@dataclass(frozen=True, slots=True)
class KeyVersion:
    """A key as a partition listing shows it: its version, and whether the record is a tombstone."""

    key: bytes
    version: Version
    tombstone: bool


@dataclass(frozen=True, slots=True)
class PartitionKeysReply:
    entries: tuple[KeyVersion, ...]
    cursor: bytes  # pass back to get the next page; empty when this page is the last


@dataclass(frozen=True, slots=True)
class PartitionRecordsReply:
    entries: tuple[tuple[bytes, Record], ...]  # (key, record), in the partition's key order
    cursor: bytes  # pass back to get the next page; empty when this page is the last


@dataclass(frozen=True, slots=True)
class RepairReply:
    partitions: int  # partitions compared with a peer
    differing: int  # keys found to differ
    repaired: int  # keys copied, in either direction
    failed_peers: tuple[str, ...]  # peers that could not be compared


class PeerState(IntEnum):
    UP = 0
    SUSPECT = 1
    DOWN = 2


@dataclass(frozen=True, slots=True)
class MemberView(StoreFlagged):
    node_id: str
    state: PeerState
    since_ms: int  # wall-clock milliseconds when the node entered this state; 0 if never seen
    hints: int  # writes held here for that node
    flags: int = 0  # its store flags as last heard: PING_FLAG_STORAGE_FULL, PING_FLAG_CATCHING_UP


def encode_digests_reply(digests: list[bytes]) -> bytes:
    return _U16.pack(len(digests)) + b"".join(digests)


def decode_digests_reply(body: bytes) -> list[bytes]:
    reader = BodyReader(body)
    digests = [reader.take(DIGEST_SIZE) for _ in range(reader.u16())]
    reader.end()
    return digests


def listing_size(key: bytes, version: Version) -> int:
    """Bytes one key takes in a PARTITION_KEYS reply: key, version and flags."""
    return _U16.size + len(key) + _U64.size + _U8.size + len(version.node_id.encode()) + _U8.size


def encode_partition_keys_reply(reply: PartitionKeysReply) -> bytes:
    parts = [_U32.pack(len(reply.entries))]
    for entry in reply.entries:
        parts += [_bytes16(entry.key), _version(entry.version), _U8.pack(_TOMBSTONE_FLAG if entry.tombstone else 0)]
    parts.append(_bytes16(reply.cursor))
    return b"".join(parts)


def record_entry_size(key: bytes, record: Record) -> int:
    """Bytes one record takes in a PARTITION_RECORDS reply: key, flags, version and value."""
    value = len(record.value) if record.value is not None else 0
    return _U16.size + len(key) + _U8.size + _U64.size + _U8.size + len(record.version.node_id.encode()) + 4 + value


def encode_partition_records_reply(reply: PartitionRecordsReply) -> bytes:
    parts = [_U32.pack(len(reply.entries))]
    for key, record in reply.entries:
        parts += [_bytes16(key), _record_body(record)]
    parts.append(_bytes16(reply.cursor))
    return b"".join(parts)


def decode_partition_records_reply(body: bytes) -> PartitionRecordsReply:
    reader = BodyReader(body)
    entries = []
    for _ in range(reader.u32()):
        key = reader.bytes16()
        entries.append((key, _read_record(reader)))
    cursor = reader.bytes16()
    reader.end()
    return PartitionRecordsReply(tuple(entries), cursor)


def decode_partition_keys_reply(body: bytes) -> PartitionKeysReply:
    reader = BodyReader(body)
    entries = []
    for _ in range(reader.u32()):
        key = reader.bytes16()
        version = reader.version()
        flags = reader.u8()
        if flags & ~_TOMBSTONE_FLAG:
            raise ProtocolError(f"unknown key flags 0x{flags:02x}")
        entries.append(KeyVersion(key, version, bool(flags & _TOMBSTONE_FLAG)))
    cursor = reader.bytes16()
    reader.end()
    return PartitionKeysReply(tuple(entries), cursor)


def encode_repair_reply(reply: RepairReply) -> bytes:
    return (
        _U32.pack(reply.partitions)
        + _U32.pack(reply.differing)
        + _U32.pack(reply.repaired)
        + _U8.pack(len(reply.failed_peers))
        + b"".join(_str8(peer) for peer in reply.failed_peers)
    )


def decode_repair_reply(body: bytes) -> RepairReply:
    reader = BodyReader(body)
    partitions, differing, repaired = reader.u32(), reader.u32(), reader.u32()
    failed = tuple(reader.str8() for _ in range(reader.u8()))
    reader.end()
    return RepairReply(partitions, differing, repaired, failed)


def _members_body(members: Sequence[MemberView]) -> bytes:
    parts = [_U16.pack(len(members))]
    for member in members:
        parts += [
            _str8(member.node_id),
            _U8.pack(member.state),
            _U64.pack(member.since_ms),
            _U32.pack(member.hints),
            _U8.pack(member.flags),
        ]
    return b"".join(parts)


def _read_members(reader: BodyReader) -> list[MemberView]:
    members = []
    for _ in range(reader.u16()):
        node_id, state = reader.str8(), reader.u8()
        try:
            peer_state = PeerState(state)
        except ValueError:
            raise ProtocolError(f"unknown peer state {state}") from None
        members.append(MemberView(node_id, peer_state, reader.u64(), reader.u32(), reader.u8()))
    return members


def encode_members_reply(members: list[MemberView]) -> bytes:
    return _members_body(members)


def decode_members_reply(body: bytes) -> list[MemberView]:
    reader = BodyReader(body)
    members = _read_members(reader)
    reader.end()
    return members


# --- STATS ----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RequestWindow:
    """The requests a node answered over a recent window, and their latency.

    ``p99_us`` and ``client_p99_us`` are 0 when the window holds no such request. "Client" requests are
    GET, PUT and DELETE; the others are replica traffic, heartbeats and administration.
    """

    window_ms: int  # how long the window is
    requests: int  # requests answered in it, every op
    p99_us: int  # their 99th-percentile latency, microseconds
    client_requests: int  # GET, PUT and DELETE answered in it
    client_p99_us: int

    @property
    def per_second(self) -> float:
        return self.requests * 1000 / self.window_ms if self.window_ms else 0.0

    @property
    def client_per_second(self) -> float:
        return self.client_requests * 1000 / self.window_ms if self.window_ms else 0.0


@dataclass(frozen=True, slots=True)
class RepairProgress:
    """The node's anti-entropy round: the one running, or else the last one (all 0 before the first).

    ``partitions_total`` counts a partition once per peer it is compared with; peers down when the
    round started are not counted.
    """

    running: bool
    started_ms: int  # Unix ms the round started; 0 if no round ran yet
    finished_ms: int  # Unix ms it finished; 0 while it runs
    partitions_total: int  # partition comparisons the round will make
    partitions_compared: int  # of those, made so far
    keys_differing: int  # keys found to differ so far
    keys_copied: int  # keys copied so far, either direction


REPAIR_FLAG_RUNNING = 0x01


@dataclass(frozen=True, slots=True)
class PeerClockOffset:
    node_id: str
    offset_us: int  # the peer's wall clock minus this node's, microseconds


@dataclass(frozen=True, slots=True)
class StatsReply(StoreFlagged):
    """Body of an OK reply to STATS: one node's figures, as the dashboard shows them."""

    node_id: str
    wall_ms: int  # the node's wall clock when it answered, Unix ms
    uptime_ms: int  # since the node started
    flags: int  # its store's flags, as in PING's reply (``storage_full``, ``catching_up``)
    live_keys: int  # keys whose newest record is a value
    disk_bytes: int  # bytes its store's files take on disk
    disk_used_bytes: int  # bytes of the store in use (LMDB pages)
    storage_limit_bytes: int  # the most the store may grow to (KV_STORAGE_LIMIT_MB)
    hints: int  # writes held here for other nodes
    requests: RequestWindow
    members: tuple[MemberView, ...]  # its failure detector's view, itself first, as MEMBERS
    clock_offsets: tuple[PeerClockOffset, ...]  # peers whose clock offset it has measured
    repair: RepairProgress
    streams_pending: int = 0  # partitions still to stream into this node for a membership change


_STATS_FIGURES = struct.Struct(">QQBQQQQQ")
"""wall clock, uptime, flags, live keys, bytes on disk, bytes in use, storage limit, hints."""
_REQUEST_WINDOW = struct.Struct(">IIIII")
"""window ms, requests, p99 us, client requests, client p99 us."""
_REPAIR_PROGRESS = struct.Struct(">BQQIIII")
"""flags, started, finished, comparisons planned, made, keys differing, keys copied."""


def encode_stats_reply(reply: StatsReply) -> bytes:
    window, repair = reply.requests, reply.repair
    parts = [
        _str8(reply.node_id),
        _STATS_FIGURES.pack(
            reply.wall_ms,
            reply.uptime_ms,
            reply.flags,
            reply.live_keys,
            reply.disk_bytes,
            reply.disk_used_bytes,
            reply.storage_limit_bytes,
            reply.hints,
        ),
        _REQUEST_WINDOW.pack(
            window.window_ms, window.requests, window.p99_us, window.client_requests, window.client_p99_us
        ),
        _members_body(reply.members),
        _U16.pack(len(reply.clock_offsets)),
        *(_str8(offset.node_id) + _I64.pack(offset.offset_us) for offset in reply.clock_offsets),
        _REPAIR_PROGRESS.pack(
            REPAIR_FLAG_RUNNING if repair.running else 0,
            repair.started_ms,
            repair.finished_ms,
            repair.partitions_total,
            repair.partitions_compared,
            repair.keys_differing,
            repair.keys_copied,
        ),
    ]
    if reply.streams_pending:  # a u32 after the rest, only while the node streams (older nodes never send it)
        parts.append(_U32.pack(reply.streams_pending))
    return b"".join(parts)


def decode_stats_reply(body: bytes) -> StatsReply:
    reader = BodyReader(body)
    node_id = reader.str8()
    wall_ms, uptime_ms, flags, live_keys, disk_bytes, disk_used, limit, hints = reader.fields(_STATS_FIGURES)
    window = RequestWindow(*reader.fields(_REQUEST_WINDOW))
    members = tuple(_read_members(reader))
    offsets = tuple(PeerClockOffset(reader.str8(), reader.i64()) for _ in range(reader.u16()))
    repair_flags, *progress = reader.fields(_REPAIR_PROGRESS)
    if repair_flags & ~REPAIR_FLAG_RUNNING:
        raise ProtocolError(f"unknown repair flags 0x{repair_flags:02x}")
    repair = RepairProgress(bool(repair_flags & REPAIR_FLAG_RUNNING), *progress)
    streams_pending = 0
    if reader.remaining:
        streams_pending = reader.u32()
        if streams_pending == 0:  # sent only when not 0: one encoding per reply
            raise ProtocolError("STATS carries streams pending only when there are some")
    reader.end()
    return StatsReply(
        node_id,
        wall_ms,
        uptime_ms,
        flags,
        live_keys,
        disk_bytes,
        disk_used,
        limit,
        hints,
        window,
        members,
        offsets,
        repair,
        streams_pending,
    )


# --- authentication and users ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AuthReply:
    """AUTH_FINISH's OK reply: who the connection is now, its role's code, and SCRAM's server-final
    message, by which the client checks that the node holds the user's verifier."""

    user: str
    role: int
    server_final: bytes


def encode_auth_start_reply(server_first: bytes) -> bytes:
    return _bytes16(server_first)


def decode_auth_start_reply(body: bytes) -> bytes:
    reader = BodyReader(body)
    server_first = reader.bytes16()
    reader.end()
    return server_first


def encode_auth_reply(reply: AuthReply) -> bytes:
    return _str8(reply.user) + _U8.pack(reply.role) + _bytes16(reply.server_final)


def decode_auth_reply(body: bytes) -> AuthReply:
    reader = BodyReader(body)
    reply = AuthReply(reader.str8(), reader.u8(), reader.bytes16())
    reader.end()
    return reply


@dataclass(frozen=True, slots=True)
class UserView:
    """A user as USERS lists it: name, role code, and the version of the last change made with
    USER_SET (0: as the users file has it)."""

    user: str
    role: int
    version: int


def encode_user_set_reply(applied: bool) -> bytes:
    return _U8.pack(1 if applied else 0)


def decode_user_set_reply(body: bytes) -> bool:
    reader = BodyReader(body)
    applied = reader.u8()
    reader.end()
    if applied > 1:
        raise ProtocolError(f"USER_SET's reply is 0 or 1, not {applied}")
    return bool(applied)


def encode_users_reply(users: Sequence[UserView]) -> bytes:
    return _U16.pack(len(users)) + b"".join(
        _str8(user.user) + _U8.pack(user.role) + _U64.pack(user.version) for user in users
    )


def decode_users_reply(body: bytes) -> list[UserView]:
    reader = BodyReader(body)
    users = [UserView(reader.str8(), reader.u8(), reader.u64()) for _ in range(reader.u16())]
    reader.end()
    return users
