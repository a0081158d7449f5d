"""The socket layer: reading, opening, coalesced writing, and one pipelined socket for any protocol.

Only this module touches client sockets; the node's server reads and writes its own with ``receive``
and ``FrameWriter`` from here. It uses gevent's cooperative sockets directly, so it works in
programs that never monkey-patch: a request blocks only the greenlet that made it, and any number of
greenlets can share one socket (pipelining).

``PipelinedSocket`` keeps many requests in flight on one socket, with a reader greenlet that hands
each reply to the greenlet waiting for it. How a reply finds its waiter is the one thing that
differs between protocols, so it is pluggable: ``ById`` for ours (each reply carries its request's
id and may come in any order) and ``InOrder`` for Redis (replies come in request order).
``ConnectionSlot`` keeps one connection to an endpoint and dials it again when it is needed, once
however many greenlets ask, and knows when the reconnection policy (``client.policies``) would rather
it waited.
"""

from __future__ import annotations

import contextlib
import socket as stdlib_socket
import ssl
import struct
import time
from collections import deque
from collections.abc import Callable, Iterable
from itertools import count
from typing import Any, Generic, Protocol, TypeVar

import gevent
from gevent import socket
from gevent.event import AsyncResult

from client.address import format_address
from client.errors import (
    AbandonedRequestError,
    KVError,
    NodeUnreachableError,
    ProtocolViolationError,
    RequestTimeoutError,
    TlsError,
    error_from_frame,
)
from client.policies import Backoff
from client.protocol import CONNECTION_REQUEST_ID, MAX_REQUEST_ID, Frame, FrameDecoder, ProtocolError, Status

_RESET_ON_CLOSE = struct.pack("ii", 1, 0)
"""SO_LINGER on with a zero timeout: close() sends RST and discards what is unsent."""
RECV_BYTES = 256 * 1024
"""Bytes asked of each recv. Large enough that a pipelined burst of replies arrives in few calls."""
SEND_CHUNK_BYTES = 256 * 1024
"""Most bytes of small frames joined into one send: a burst's frames leave in few sends, and the
join never copies more than this at once."""
HELD_FLUSH_BYTES = 256 * 1024
"""Bytes a held ``FrameWriter`` may queue before it sends anyway."""


def receive(sock: socket.socket) -> bytes:
    """The next bytes from ``sock``, ``b""`` at end of stream; waits until it is readable first.

    gevent's ``recv`` tries the read at once, and on a socket with nothing to read yet pays a failed
    syscall and a Python exception before it waits. Between a reply and the next request there is
    usually nothing to read yet, so waiting first saves both: a round trip over a socketpair took
    25 instead of 31 µs of CPU. ``_wait`` and ``_read_event`` are how gevent's own ``recv`` waits.
    A TLS socket may hold decrypted bytes that the kernel no longer shows as readable
    (``pending``), so it waits only when it holds none.
    """
    pending = getattr(sock, "pending", None)  # only TLS sockets have it
    if sock._read_event is not None and (pending is None or not pending()):  # None once closed: recv raises EBADF
        sock._wait(sock._read_event)
    data: bytes = sock.recv(RECV_BYTES)
    return data


SO_TIMESTAMPNS = getattr(stdlib_socket, "SO_TIMESTAMPNS", 35)
"""Linux's option that makes ``recvmsg`` report when the kernel received the data (35 on Linux)."""
_TIMESTAMP_BYTES = stdlib_socket.CMSG_SPACE(16)  # struct timespec: two 64-bit fields
_TIMESPEC = struct.Struct("qq")


def timestamp_arrivals(sock: socket.socket) -> bool:
    """Ask the kernel to stamp the data ``sock`` receives (``receive_with_age``); ``False`` where
    it cannot (then ages read as 0)."""
    try:
        sock.setsockopt(stdlib_socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
    except OSError:
        return False
    return True


def receive_with_age(sock: socket.socket) -> tuple[bytes, float]:
    """``receive``, and how long ago (seconds, by the wall clock) the kernel received the newest of
    those bytes: long when the process was stopped or starved while they waited in its buffer.
    0 when the socket has no timestamps (``timestamp_arrivals``), and on a TLS socket, whose
    decrypted bytes no longer carry the kernel's stamp."""
    if hasattr(sock, "pending"):  # TLS: recvmsg is not available through the TLS layer
        return receive(sock), 0.0
    gevent_socket: Any = sock  # gevent's socket: its read watcher is not in socket's type
    if gevent_socket._read_event is not None:  # None once closed: recvmsg raises EBADF, as callers expect
        gevent_socket._wait(gevent_socket._read_event)
    data, ancillary, _flags, _address = sock.recvmsg(RECV_BYTES, _TIMESTAMP_BYTES)
    for level, kind, raw in ancillary:
        if level == stdlib_socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(raw) >= _TIMESPEC.size:
            seconds, nanoseconds = _TIMESPEC.unpack_from(raw)
            return data, max(0.0, time.time() - seconds - nanoseconds / 1e9)
    return data, 0.0


def open_socket(
    host: str, port: int, timeout: float, *, what: str = "", tls: ssl.SSLContext | None = None
) -> socket.socket:
    """A TCP connection to ``host:port`` with Nagle off and no timeout, or ``NodeUnreachableError``.

    A connection to itself counts as unreachable. When nothing listens on a port in the kernel's
    ephemeral range (Docker publishes ports there, so a node that just died leaves one free), the
    kernel may pick that very port as the connection's source, and TCP then connects the socket to
    itself: the HELLO comes back as its own reply. Seen as a garbled HELLO reply in the chaos test.
    ``what`` names the server in messages (``"redis at "``). With ``tls``, the connection speaks TLS
    with that context (its certificate checks included), or ``TlsError`` says why it could not.
    """
    address = what + format_address(host, port)
    try:
        sock = socket.create_connection((host, port), timeout=timeout)
    except (OSError, gevent.Timeout) as exc:
        raise NodeUnreachableError(f"cannot connect to {address}: {describe(exc)}") from None
    try:
        connected_to_itself = sock.getsockname() == sock.getpeername()
    except OSError as exc:  # reset already
        sock.close()
        raise NodeUnreachableError(f"cannot connect to {address}: {describe(exc)}") from None
    if connected_to_itself:
        sock.close()
        raise NodeUnreachableError(f"cannot connect to {address}: nothing listens there")
    sock.settimeout(None)
    sock.setsockopt(stdlib_socket.IPPROTO_TCP, stdlib_socket.TCP_NODELAY, 1)
    if tls is not None:
        return start_tls(sock, host, tls, timeout, address)
    return sock


def start_tls(sock: socket.socket, host: str, tls: ssl.SSLContext, timeout: float, address: str) -> socket.socket:
    """``sock`` wrapped in TLS, its handshake done within ``timeout`` seconds; ``TlsError`` if it
    fails (the socket is closed then). The certificate must name ``host`` if the context checks names."""
    wrapped = tls.wrap_socket(sock, server_hostname=host, do_handshake_on_connect=False)
    try:
        with gevent.Timeout(timeout):
            wrapped.do_handshake()
    except ssl.SSLCertVerificationError as exc:
        wrapped.close()
        reason = exc.verify_message or exc.reason
        raise TlsError(f"cannot connect to {address} over TLS: certificate verify failed: {reason}") from None
    except (OSError, gevent.Timeout) as exc:
        wrapped.close()
        reason = getattr(exc, "reason", None) or describe(exc)
        raise TlsError(f"cannot connect to {address} over TLS: {reason} (does it speak TLS?)") from None
    wrapped.settimeout(None)
    return wrapped


class FrameWriter:
    """Writes frames to a socket from many greenlets without interleaving them, and counts its bytes:
    ``queued`` (written by callers, not yet taken by the kernel) and ``sent`` (taken, in total).

    The first greenlet to write becomes the writer and keeps flushing until the outbox is empty;
    frames queued meanwhile by others leave with it, small ones joined into sends of up to
    ``SEND_CHUNK_BYTES``, a large one alone, in pieces of that size (never copied), so ``sent``
    moves as a slow reader takes it. Two ways to get more frames into one send, since each send on
    loopback costs about as much as handling a small request:

    * ``write(frame, wait_for_more=True)``: when other requests on the connection are in flight,
      the writer first lets the rest of this turn of the event loop run, so the replies (or
      requests) those greenlets produce in the same turn join its send;
    * ``hold()`` ... ``release()``: frames written in between are queued, and leave together at
      ``release`` (a session answering a burst of pipelined requests that need no waiting), or as
      soon as they reach ``HELD_FLUSH_BYTES``: holding saves sends, it must never pile up replies.

    ``on_sent`` runs after each send (a session waiting for its buffers to drain). A failed send
    drops everything queued, so a dead connection holds no memory, and raises ``OSError``.
    """

    def __init__(self, sock: socket.socket, *, on_sent: Callable[[], None] | None = None) -> None:
        self._sock = sock
        self._outbox: list[bytes] = []
        self._writing = False
        self._held = False
        self.queued = 0
        self.sent = 0
        self._on_sent = on_sent

    def write(self, frame: bytes, *, wait_for_more: bool = False) -> None:
        self._outbox.append(frame)
        self.queued += len(frame)
        if not self._writing and (not self._held or self.queued >= HELD_FLUSH_BYTES):
            self._send_outbox(wait_for_more and not self._held)

    def hold(self) -> None:
        self._held = True

    def release(self) -> None:
        self._held = False
        if self._outbox and not self._writing:
            self._send_outbox(False)

    def _send_outbox(self, wait_for_more: bool) -> None:
        self._writing = True
        try:
            if wait_for_more:
                gevent.sleep(0)  # to the back of this turn's run queue
        finally:
            # Even if the sleep was interrupted, the frames already queued must still go out.
            try:
                outbox, sendall = self._outbox, self._sock.sendall
                while outbox:
                    if len(outbox[0]) < SEND_CHUNK_BYTES:
                        chunk = outbox.pop() if len(outbox) == 1 else self._join_small()
                        sendall(chunk)
                        self._sent(len(chunk))
                        continue
                    frame = outbox.pop(0)
                    view = memoryview(frame)
                    for start in range(0, len(frame), SEND_CHUNK_BYTES):
                        piece = view[start : start + SEND_CHUNK_BYTES]
                        sendall(piece)
                        self._sent(len(piece))
            except BaseException:
                self._drop()
                raise
            finally:
                self._writing = False

    def _join_small(self) -> bytes:
        """The frames at the head of the outbox that fit in ``SEND_CHUNK_BYTES``, joined, taken off it."""
        outbox = self._outbox
        size, count = 0, 0
        for frame in outbox:
            if count and size + len(frame) > SEND_CHUNK_BYTES:
                break
            size += len(frame)
            count += 1
        chunk = b"".join(outbox[:count])
        del outbox[:count]
        return chunk

    def _sent(self, size: int) -> None:
        self.queued -= size
        self.sent += size
        if self._on_sent is not None:
            self._on_sent()

    def _drop(self) -> None:
        self._outbox.clear()
        self.queued = 0
        if self._on_sent is not None:
            self._on_sent()


ReplyT = TypeVar("ReplyT")
ReplyT_co = TypeVar("ReplyT_co", covariant=True)


class Decoder(Protocol[ReplyT_co]):
    """Turns a byte stream into replies; raises ``ProtocolError`` (or a subclass) on bytes that are
    not replies, after which the stream is unusable."""

    def feed(self, data: bytes) -> Iterable[ReplyT_co]:
        """Append ``data`` and return every reply now complete; keep a partial one buffered."""
        ...


class ReplyMatching(Protocol[ReplyT_co]):
    """How replies find the requests they answer: a waiter is registered as each request leaves,
    and each reply decoded from the socket resolves one."""

    def expect(self) -> tuple[int, AsyncResult]:
        """A waiter for the next request, and the id to send in it (0 where requests carry none)."""
        ...

    def feed(self, data: bytes) -> None:
        """Decode ``data`` and resolve the waiter of every reply now complete. Raises ``ProtocolError``."""
        ...

    def forget(self, request_id: int) -> None:
        """The waiter of ``request_id`` stopped waiting (it timed out)."""
        ...

    def take_all(self) -> list[AsyncResult]:
        """Every waiter still without a reply, removed (the socket failed: each gets the error)."""
        ...

    def __len__(self) -> int:
        """Requests in flight."""
        ...


class ById:
    """Our protocol's matching: a request carries an id, its reply the same id, in any order.

    Ids run from 1 and wrap around past 0: request id 0 (``CONNECTION_REQUEST_ID``) is the node's
    for errors about the whole connection, and such a frame fails every request waiting on it.
    """

    def __init__(self, max_frame_bytes: int) -> None:
        self._decoder = FrameDecoder(max_frame_bytes)
        self._pending: dict[int, AsyncResult] = {}
        self._ids = count(1)

    def expect(self) -> tuple[int, AsyncResult]:
        request_id = next(self._ids) & MAX_REQUEST_ID
        if request_id == CONNECTION_REQUEST_ID:
            request_id = next(self._ids) & MAX_REQUEST_ID
        done = AsyncResult()
        self._pending[request_id] = done
        return request_id, done

    def feed(self, data: bytes) -> None:
        """Resolve the waiters of the replies in ``data``. Raises the error of a connection-level
        error frame (request id 0), and ``ProtocolError`` for bytes that are not frames."""
        pending = self._pending
        for frame in self._decoder.feed(data):
            if frame.request_id == CONNECTION_REQUEST_ID:
                raise _connection_error(frame)
            done = pending.pop(frame.request_id, None)
            if done is not None:  # None: its request timed out, and the late reply is dropped
                done.set(frame)

    def forget(self, request_id: int) -> None:
        self._pending.pop(request_id, None)

    def take_all(self) -> list[AsyncResult]:
        pending, self._pending = self._pending, {}
        return list(pending.values())

    def __len__(self) -> int:
        return len(self._pending)


def _connection_error(frame: Frame) -> KVError:
    if frame.code < Status.BAD_REQUEST:  # an answer, not an error: no request has id 0
        return ProtocolViolationError(f"a reply with request id {CONNECTION_REQUEST_ID}, which no request has")
    return error_from_frame(frame)


class InOrder(Generic[ReplyT]):
    """Redis's matching: requests carry no id, and replies come in the order the requests left."""

    def __init__(self, decoder: Decoder[ReplyT]) -> None:
        self._decoder = decoder
        self._waiting: deque[AsyncResult] = deque()

    def expect(self) -> tuple[int, AsyncResult]:
        done = AsyncResult()
        self._waiting.append(done)
        return 0, done

    def feed(self, data: bytes) -> None:
        waiting = self._waiting
        for reply in self._decoder.feed(data):
            if not waiting:
                raise ProtocolError("a reply to no request")
            waiting.popleft().set(reply)

    def forget(self, request_id: int) -> None:
        """Nothing to do: the reply still comes, in its turn, and resolves the abandoned waiter."""

    def take_all(self) -> list[AsyncResult]:
        waiting, self._waiting = list(self._waiting), deque()
        return waiting

    def __len__(self) -> int:
        return len(self._waiting)


class PipelinedSocket(Generic[ReplyT]):
    """One open socket with many requests in flight; a reader greenlet hands each reply to its waiter.

    A request is ``expect`` (a waiter, and the id to send), ``write`` (the encoded request, with no
    yield since ``expect``, so the order of waiters is the order on the wire) and ``wait``; ``call``
    does all three where the request carries no id. When the socket fails, whether closed by either
    side, reset, or sent bytes that are not replies, every waiter gets the same error and so does
    every later request: ``NodeUnreachableError`` or ``ProtocolViolationError``. A request with no
    reply in time gets ``RequestTimeoutError`` alone; the socket stays open.
    """

    def __init__(
        self, sock: socket.socket, address: str, matching: ReplyMatching[ReplyT], *, coalesce: bool = False
    ) -> None:
        """``address`` names the server in errors. ``coalesce``: for a socket many greenlets share (a
        node's link to a peer), a request written while others are in flight waits for the end of
        the event loop's turn and leaves in one send with the others written in that turn."""
        self.address = address
        self._sock = sock
        self._matching = matching
        self._writer = FrameWriter(sock)
        self._coalesce = coalesce
        self._failure: KVError | None = None
        self.is_open = True  # a plain attribute, not a property: every request reads it, twice
        self._silent_since: float | None = None  # waiting on replies, and nothing heard, since then
        self._reader = gevent.spawn(self._read_replies)

    def expect(self) -> tuple[int, AsyncResult]:
        """A waiter for the request about to be written, and its id; raises the socket's failure."""
        if self._failure is not None:
            raise self._failure
        return self._matching.expect()

    def write(self, frame: bytes) -> None:
        """Send an encoded request; a failed send fails the socket (the waiter then gets the error)."""
        if self._silent_since is None:
            self._silent_since = time.monotonic()
        try:
            self._writer.write(frame, wait_for_more=self._coalesce and len(self._matching) > 1)
        except OSError as exc:
            self._fail(NodeUnreachableError(f"connection to {self.address} lost: {describe(exc)}"))

    def wait(self, request_id: int, done: AsyncResult, timeout: float | None, *, keep_waiting: bool = False) -> ReplyT:
        """The reply for which ``expect`` gave ``request_id`` and ``done``; ``RequestTimeoutError`` if
        none came within ``timeout`` seconds, after which the reply is dropped when it comes, unless
        ``keep_waiting`` (the caller waits again, or calls ``forget``)."""
        try:
            reply: ReplyT = done.get(timeout=timeout)
        except gevent.Timeout:
            if not keep_waiting:
                self._matching.forget(request_id)
            raise RequestTimeoutError(f"no reply from {self.address} within {timeout:g} s") from None
        return reply

    def forget(self, request_id: int) -> None:
        """The waiter of ``request_id`` gave up: its reply is dropped when it comes."""
        self._matching.forget(request_id)

    def call(self, frame: bytes, timeout: float | None) -> ReplyT:
        """Send a request that carries no id (``InOrder``) and wait for its reply."""
        request_id, done = self.expect()
        self.write(frame)
        return self.wait(request_id, done, timeout)

    def close(self) -> None:
        self._fail(NodeUnreachableError(f"connection to {self.address} closed"))

    def abort(self, reason: str) -> None:
        """Reset the connection (TCP RST, not FIN): a server that was paused with our requests in its
        socket buffer finds the connection reset when it wakes, and its kernel has dropped those
        requests, so none is applied late. Every waiter gets ``AbandonedRequestError(reason)``: a
        middlebox that already took the bytes may still deliver them, so a write among them is
        indeterminate, not unsent."""
        with contextlib.suppress(OSError):
            self._sock.setsockopt(stdlib_socket.SOL_SOCKET, stdlib_socket.SO_LINGER, _RESET_ON_CLOSE)
        self._fail(AbandonedRequestError(reason))

    def stalled(self, after: float) -> bool:
        """Whether a request sent on this socket has gone more than ``after`` seconds with nothing
        heard from the server since: a server that accepts but does not answer (paused, swapping,
        stuck on a disk), which no connection error will reveal. It stays stalled, even once the
        waiters gave up, until the server is heard from again."""
        since = self._silent_since
        return since is not None and time.monotonic() - since > after

    def _read_replies(self) -> None:
        try:
            while True:
                data = receive(self._sock)
                if not data:
                    raise NodeUnreachableError(f"{self.address} closed the connection")
                self._matching.feed(data)
                self._silent_since = time.monotonic() if len(self._matching) else None
        except KVError as exc:
            self._fail(exc)
        except ProtocolError as exc:
            self._fail(ProtocolViolationError(f"bad reply from {self.address}: {exc}"))
        except OSError as exc:
            self._fail(NodeUnreachableError(f"connection to {self.address} lost: {describe(exc)}"))

    def _fail(self, error: KVError) -> None:
        if self._failure is not None:
            return
        self._failure = error
        self.is_open = False
        self._sock.close()
        for done in self._matching.take_all():
            done.set_exception(error)
        if self._reader is not gevent.getcurrent():
            self._reader.kill(block=False)


class Endpoint(Protocol):
    """What ``ConnectionSlot`` needs of a connection: whether it is still open, and a way to close it."""

    @property
    def is_open(self) -> bool: ...

    def close(self) -> None: ...


EndpointT = TypeVar("EndpointT", bound=Endpoint)


class ConnectionSlot(Generic[EndpointT]):
    """One reusable connection to one endpoint: kept while open, dialled again when needed, and
    dialled once even when many greenlets ask at the same moment (the others wait for that dial).

    It remembers the endpoint's failures in a ``Backoff``: a failed dial counts by itself, a failed
    request when its owner reports it (``failed``). ``backing_off`` then says that the reconnection
    policy wants no dial yet. Whether to honour that is the owner's call, made with each ``get``:
    a node's heartbeat and a client's last resort dial anyway; a request to the benchmark's Redis,
    or a client's with no failover, fails at once.
    """

    def __init__(self, dial: Callable[[], EndpointT], name: str, backoff: Backoff | None = None) -> None:
        """``name`` names the endpoint in the error of a request refused while backing off."""
        self._dial = dial
        self.name = name
        self._backoff = backoff if backoff is not None else Backoff()
        self._connection: EndpointT | None = None
        self._dialing: AsyncResult | None = None

    @property
    def connection(self) -> EndpointT | None:
        """The connection kept now, open or not, without dialling; ``None`` before the first dial."""
        return self._connection

    @property
    def usable(self) -> bool:
        """Whether ``get`` would return without starting a new dial."""
        return self._dialing is not None or (self._connection is not None and self._connection.is_open)

    @property
    def backing_off(self) -> bool:
        """Whether a ``get`` now would dial an endpoint the reconnection policy says to leave alone yet."""
        return not self.usable and self._backoff.waiting

    @property
    def retry_in(self) -> float:
        """Seconds until the reconnection policy allows the next dial; 0 if it does now."""
        return self._backoff.retry_in

    def get(self, *, dial_backing_off: bool = True) -> EndpointT:
        """An open connection, dialled if need be; raises what the dial raised (``NodeUnreachableError``).

        With ``dial_backing_off=False``, an endpoint that is backing off is not dialled: the request
        is refused at once with ``NodeUnreachableError`` (which does not count as another failure).
        """
        connection = self._connection
        if connection is not None and connection.is_open:
            return connection
        if not dial_backing_off and self._dialing is None and self._backoff.waiting:
            raise NodeUnreachableError(f"{self.name} is down; next dial within {self.retry_in:.1f} s")
        if self._dialing is not None:
            dialled: EndpointT = self._dialing.get()
            return dialled
        dialing = self._dialing = AsyncResult()
        try:
            connection = self._dial()
        except Exception as exc:  # whatever the dial raised, the greenlets waiting on it see it too
            self._backoff.failed()
            dialing.set_exception(exc)
            raise
        finally:
            self._dialing = None
        self._backoff.succeeded()
        self._connection = connection
        dialing.set(connection)
        return connection

    def failed(self) -> None:
        """A request found the endpoint unreachable (its connection broke): back off from it too."""
        self._backoff.failed()

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()


def describe(exc: BaseException) -> str:
    """An OS or timeout error as the few words a message about a connection needs."""
    if isinstance(exc, gevent.Timeout | TimeoutError | stdlib_socket.timeout):
        return "timed out"
    if isinstance(exc, stdlib_socket.gaierror):
        return "unknown host"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    return str(exc) or type(exc).__name__
