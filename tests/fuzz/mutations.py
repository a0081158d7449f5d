"""Frames for the live fuzz: valid requests, mutations of them, and random bytes; pure and seeded.

``FrameSource.next()`` gives the bytes of one "frame" to send. Most are a valid request of a random
type (fresh keys, values and versions each time, so a PUT stores something and a GET finds it) put
through one of ``MUTATIONS``: bytes and bits changed anywhere, the length field, op code or request
id replaced by edge values, a truncation, a duplicate, a splice of two frames, bytes inserted into or
cut out of the body, a body field overwritten with an edge value. After a change inside the body the
length field is usually set right again, so that the frame gets past framing into the request
decoders and the handler rather than only ending its connection. Some frames are left valid, and
some are random bytes. The same seed gives the same sequence.
"""

from __future__ import annotations

import random
import struct
from collections.abc import Callable

from client import protocol
from client.protocol import HEADER, LENGTH_FIELD_SIZE, Op, Record, Request, Version

KEYS = 64
"""Distinct keys the valid requests use, so that reads, writes and deletes meet each other."""

INTERESTING = {
    1: [0, 1, 0x7F, 0x80, 0xFF],
    2: [0, 1, 0x7FFF, 0x8000, 0xFFFF],
    4: [0, 1, 4, 5, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF],
    8: [0, 1, 0x7FFFFFFFFFFFFFFF, 0xFFFFFFFFFFFFFFFF],
}
"""Edge values per field width, in bytes (AFL's "interesting values", by the same reasoning)."""


class FrameSource:
    """Seeded generator of frames to send; ``counts`` tallies how each frame was made."""

    def __init__(self, seed: int, *, max_frame_bytes: int = protocol.DEFAULT_MAX_FRAME_BYTES) -> None:
        self.rng = random.Random(seed)
        self.max_frame_bytes = max_frame_bytes
        self.counts: dict[str, int] = {}
        self._mutations: list[Callable[[bytes], bytes]] = [
            self.flip_bits,
            self.set_bytes,
            self.set_length,
            self.set_op,
            self.set_request_id,
            self.truncate,
            self.duplicate,
            self.splice,
            self.insert_bytes,
            self.delete_bytes,
            self.set_body_field,
        ]

    def _count(self, kind: str) -> None:
        self.counts[kind] = self.counts.get(kind, 0) + 1

    # --- valid requests ---------------------------------------------------------------------------

    def key(self) -> bytes:
        return b"fuzz:%d" % self.rng.randrange(KEYS)

    def value(self) -> bytes:
        size = self.rng.choice([0, 1, 10, 100, 1000, 4000]) if self.rng.random() < 0.98 else 200_000
        return self.rng.randbytes(size)

    def version(self) -> Version:
        # Near the time this fuzz was written, so valid versions do not push clocks: mutations do that.
        return Version((1_750_000_000_000 << 16) + self.rng.randrange(1 << 40), self.rng.choice(["node1", "node2"]))

    def request(self) -> Request:
        """A valid request of a random type."""
        rng = self.rng
        record = Record(self.version(), None if rng.random() < 0.3 else self.value())
        choices: list[Request] = [
            protocol.Hello(1, 1, "fuzz"),
            protocol.Ping(),
            protocol.Get(self.key(), rng.choice([0, 0, 1, 2])),
            protocol.Put(self.key(), self.value(), rng.choice([0, 0, 1, 2])),
            protocol.Delete(self.key(), rng.choice([0, 1])),
            protocol.Topology(),
            protocol.ReplicaGet(self.key()),
            protocol.ReplicaPut(self.key(), record),
            protocol.HintedPut(self.key(), record, rng.choice(["node1", "node2", "node3", "stranger"])),
            protocol.Digests(tuple(rng.randrange(64) for _ in range(rng.randrange(5)))),
            protocol.PartitionKeys(rng.randrange(64), rng.choice([b"", self.key()])),
            protocol.PartitionRecords(rng.randrange(64), rng.choice([b"", self.key()])),
            protocol.Members(),
        ]
        if rng.random() < 0.01:  # a whole anti-entropy round: rarely, it is the costliest request
            return protocol.Repair()
        return rng.choice(choices)

    def valid_frame(self) -> bytes:
        return protocol.encode_request(self.rng.randrange(1 << 32), self.request())

    # --- what to send -----------------------------------------------------------------------------

    def next(self) -> bytes:
        """The bytes of one frame: mutated (most), valid, or random."""
        roll = self.rng.random()
        if roll < 0.15:
            self._count("valid")
            return self.valid_frame()
        if roll < 0.25:
            self._count("random")
            return self.random_bytes()
        mutation = self.rng.choice(self._mutations)
        self._count(mutation.__name__)
        return mutation(self.valid_frame())

    def random_bytes(self) -> bytes:
        if self.rng.random() < 0.5:  # a well-framed frame with a random op and body
            body = self.rng.randbytes(self.rng.randrange(64))
            return protocol.encode_frame(self.rng.randrange(1 << 32), self.rng.randrange(256), body)
        return self.rng.randbytes(self.rng.randrange(1, 64))

    def fix_length(self, frame: bytes) -> bytes:
        """``frame`` with its length field made right again, most of the time."""
        if len(frame) < LENGTH_FIELD_SIZE or self.rng.random() < 0.2:
            return frame
        return struct.pack(">I", len(frame) - LENGTH_FIELD_SIZE) + frame[LENGTH_FIELD_SIZE:]

    # --- mutations: each takes a valid frame and returns the bytes to send -----------------------

    def flip_bits(self, frame: bytes) -> bytes:
        data = bytearray(frame)
        for _ in range(self.rng.randint(1, 4)):
            data[self.rng.randrange(len(data))] ^= 1 << self.rng.randrange(8)
        return bytes(data)

    def set_bytes(self, frame: bytes) -> bytes:
        data = bytearray(frame)
        for _ in range(self.rng.randint(1, 4)):
            data[self.rng.randrange(len(data))] = self.rng.choice([*INTERESTING[1], self.rng.randrange(256)])
        return self.fix_length(bytes(data)) if self.rng.random() < 0.5 else bytes(data)

    def set_length(self, frame: bytes) -> bytes:
        true_length = len(frame) - LENGTH_FIELD_SIZE
        limit = self.max_frame_bytes - LENGTH_FIELD_SIZE
        length = self.rng.choice(
            [
                *INTERESTING[4],
                true_length - 1,
                true_length + 1,
                true_length + self.rng.randint(2, 100),
                max(0, true_length - self.rng.randint(2, 100)),
                limit,
                limit + 1,
                self.rng.randrange(1 << 32),
            ]
        )
        return struct.pack(">I", length % (1 << 32)) + frame[LENGTH_FIELD_SIZE:]

    def set_op(self, frame: bytes) -> bytes:
        code = self.rng.choice([self.rng.randrange(256), *(int(op) for op in Op)])
        return frame[: HEADER.size - 1] + bytes([code]) + frame[HEADER.size :]

    def set_request_id(self, frame: bytes) -> bytes:
        request_id = self.rng.choice([*INTERESTING[4], self.rng.randrange(1 << 32)])
        return frame[:LENGTH_FIELD_SIZE] + struct.pack(">I", request_id) + frame[HEADER.size - 1 :]

    def truncate(self, frame: bytes) -> bytes:
        cut = self.fix_length(frame[: self.rng.randrange(len(frame))])
        return cut

    def duplicate(self, frame: bytes) -> bytes:
        return frame + frame

    def splice(self, frame: bytes) -> bytes:
        other = self.valid_frame()
        joined = frame[: self.rng.randrange(len(frame) + 1)] + other[self.rng.randrange(len(other) + 1) :]
        return self.fix_length(joined)

    def insert_bytes(self, frame: bytes) -> bytes:
        at = self.rng.randrange(HEADER.size, len(frame) + 1)
        return self.fix_length(frame[:at] + self.rng.randbytes(self.rng.randint(1, 16)) + frame[at:])

    def delete_bytes(self, frame: bytes) -> bytes:
        if len(frame) <= HEADER.size:
            return frame[: self.rng.randrange(len(frame))]
        start = self.rng.randrange(HEADER.size, len(frame))
        end = self.rng.randint(start + 1, min(len(frame), start + 16))
        return self.fix_length(frame[:start] + frame[end:])

    def set_body_field(self, frame: bytes) -> bytes:
        """A u8, u16, u32 or u64 somewhere in the body set to an edge value: a key or value length,
        a quorum, an ``after`` or version timestamp, a count."""
        width = self.rng.choice(list(INTERESTING))
        if len(frame) - HEADER.size < width:
            return frame
        at = self.rng.randrange(HEADER.size, len(frame) - width + 1)
        value = self.rng.choice(INTERESTING[width])
        return frame[:at] + value.to_bytes(width, "big") + frame[at + width :]
