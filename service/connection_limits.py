"""What one connection may hold and how long it may sit: its byte budget, and when it is closed.

Pure: no sockets, no clock of its own. The server (``service.server``) asks ``reservation`` how many
bytes a request may pin, stops reading a connection whose budget is spent (back-pressure), and feeds
each connection's counters to a ``Watch`` on a timer, which says when to close it and why.

The model is Redis's client output buffer limit (``client-output-buffer-limit``: a hard limit, and a
soft limit that may be exceeded for some seconds), adapted to a server that can stop reading a
connection. The hard limit bounds a connection's requests in flight and its unsent replies together,
and is enforced by reading no more requests, so it is never exceeded and needs no disconnect. Since
back-pressure keeps unsent replies small, a client that does not read is told apart by time instead
of bytes, as nginx's ``send_timeout`` does: replies waiting with none taken for the output timeout
(Redis's soft-limit seconds) mean the client is not reading, and it is disconnected.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, replace

from client.protocol import HEADER, Op

SMALL_REPLY_BYTES = 1024
"""The most a reply without a value or listing may take: a header, a version (up to 264 bytes) or
an error message (``MAX_ERROR_MESSAGE_BYTES``), and their length fields."""

LARGE_REPLY_OPS = frozenset(
    {Op.GET, Op.REPLICA_GET, Op.PARTITION_KEYS, Op.PARTITION_RECORDS, Op.DIGESTS, Op.MEMBERS, Op.TOPOLOGY}
)
"""Requests whose reply may be as large as a frame: a value, a page of keys or records, a digest per
partition, or a view of every member."""

PEER_LIMIT_FACTOR = 4
"""A link from another member gets this many times a client's byte limit and output timeout: it
carries the replica traffic of every coordinator on that node at once, and must never be cut by a
limit sized for one client under normal load."""


class Close(enum.Enum):
    """Why the node closed a connection (the ``reason`` label of ``kv_connections_closed_total``)."""

    HANDSHAKE_TIMEOUT = "handshake_timeout"
    """No complete HELLO within the handshake timeout."""
    FRAME_TIMEOUT = "frame_timeout"
    """A frame was started and then no byte of it arrived for the handshake timeout."""
    IDLE_TIMEOUT = "idle_timeout"
    """No request and nothing in flight for the idle timeout."""
    OUTPUT_LIMIT = "output_limit"
    """Replies waited with none taken for the output timeout: the client is not reading."""


@dataclass(frozen=True)
class ConnectionLimits:
    """The limits of one connection. Sizes in bytes, times in seconds; 0 turns a time limit off."""

    buffer_bytes: int
    """Hard limit (``KV_CLIENT_OUTPUT_LIMIT_MB``): the requests in flight, each with the largest reply
    it may produce (``reservation``), plus the replies not yet sent. At it the node stops reading the
    connection until replies drain; one request is always admitted, so it must hold two frames."""
    output_timeout: float
    """How long replies may wait with none taken before the client counts as not reading
    (``KV_CLIENT_OUTPUT_TIMEOUT_S``)."""
    handshake_timeout: float
    """Time to complete HELLO, and the longest a started frame may wait for its next byte
    (``KV_HANDSHAKE_TIMEOUT_MS``)."""
    idle_timeout: float
    """Time a connection may go with no request and nothing in flight (``KV_IDLE_TIMEOUT_S``)."""

    def for_peer(self) -> ConnectionLimits:
        """The limits of a link from another member: byte limit and output timeout ``PEER_LIMIT_FACTOR``
        times larger."""
        return replace(
            self,
            buffer_bytes=self.buffer_bytes * PEER_LIMIT_FACTOR,
            output_timeout=self.output_timeout * PEER_LIMIT_FACTOR,
        )

    @property
    def check_interval(self) -> float:
        """Seconds between checks of every connection: a quarter of the shortest time limit, from
        50 ms to 1 s, so a connection is closed at most a quarter late."""
        limits = [t for t in (self.handshake_timeout, self.idle_timeout, self.output_timeout) if t > 0]
        return min(1.0, max(0.05, min(limits) / 4))


def reservation(code: int, body_bytes: int, max_frame_bytes: int) -> int:
    """Bytes a request pins while in flight: its frame (a header and ``body_bytes``) and the largest
    reply it may produce (a whole frame for ``LARGE_REPLY_OPS``, else ``SMALL_REPLY_BYTES``)."""
    return HEADER.size + body_bytes + (max_frame_bytes if code in LARGE_REPLY_OPS else SMALL_REPLY_BYTES)


@dataclass(frozen=True, slots=True)
class Activity:
    """What a connection has done, as counters a watch compares from one check to the next."""

    bytes_received: int
    requests_received: int
    partial_frame: bool
    """Some bytes of a frame are buffered, waiting for the rest."""
    in_flight: int
    """Requests running."""
    unsent: int
    """Bytes of replies waiting to be taken by the kernel."""
    bytes_sent: int


class Watch:
    """One negotiated connection's clocks: fed its ``Activity`` at each check, says whether to close it.

    A connection is closed when replies waited with none taken for the output timeout
    (``OUTPUT_LIMIT``), when a started frame got no byte for the handshake timeout (``FRAME_TIMEOUT``),
    or when no request arrived and nothing was in flight or unsent for the idle timeout
    (``IDLE_TIMEOUT``). Times are those of the checks, so each limit is met within one check interval.
    """

    def __init__(self, limits: ConnectionLimits, now: float) -> None:
        self.limits = limits
        self._received = 0
        self._requests = 0
        self._sent = 0
        self._last_byte = now
        self._last_active = now
        self._last_progress = now

    def check(self, activity: Activity, now: float) -> Close | None:
        limits = self.limits
        if activity.bytes_received != self._received:
            self._received = activity.bytes_received
            self._last_byte = now
        if activity.requests_received != self._requests or activity.in_flight or activity.unsent:
            self._requests = activity.requests_received
            self._last_active = now
        if activity.bytes_sent != self._sent or not activity.unsent:
            self._sent = activity.bytes_sent
            self._last_progress = now
        if limits.output_timeout > 0 and now - self._last_progress >= limits.output_timeout:
            return Close.OUTPUT_LIMIT
        if activity.partial_frame and now - self._last_byte >= limits.handshake_timeout:
            return Close.FRAME_TIMEOUT
        if limits.idle_timeout > 0 and now - self._last_active >= limits.idle_timeout:
            return Close.IDLE_TIMEOUT
        return None
