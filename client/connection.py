"""One TCP connection to a node: HELLO on connect, then many requests in flight, matched by id.

Only this module and the node's connection handler touch sockets. It uses gevent's cooperative
sockets directly, so it works in programs that never monkey-patch: a request blocks only the
greenlet that made it, and any number of greenlets can share one connection (pipelining).
"""

from __future__ import annotations

import socket as stdlib_socket
from collections.abc import Callable
from itertools import count

import gevent
from gevent import socket
from gevent.event import AsyncResult

from client import protocol
from client.address import format_address
from client.errors import KVError, NodeUnreachableError, ProtocolViolationError, RequestTimeoutError, error_from_reply
from client.protocol import Frame, FrameDecoder, HelloReply, Request, Status

RECV_BYTES = 256 * 1024
"""Bytes asked of each recv. Large enough that a pipelined burst of replies arrives in few calls."""


def receive(sock: socket.socket) -> bytes:
    """The next bytes from ``sock``, ``b""`` at end of stream; waits until it is readable first.

    gevent's ``recv`` tries the read at once, and on a socket with nothing to read yet pays a failed
    syscall and a Python exception before it waits. Between a reply and the next request there is
    usually nothing to read yet, so waiting first saves both: a round trip over a socketpair took
    25 instead of 31 µs of CPU. ``_wait`` and ``_read_event`` are how gevent's own ``recv`` waits.
    """
    if sock._read_event is not None:  # None once closed: then recv raises EBADF, as callers expect
        sock._wait(sock._read_event)
    return sock.recv(RECV_BYTES)


def open_socket(host: str, port: int, timeout: float, *, what: str = "") -> socket.socket:
    """A TCP connection to ``host:port`` with Nagle off and no timeout, or ``NodeUnreachableError``.

    A connection to itself counts as unreachable. When nothing listens on a port in the kernel's
    ephemeral range (Docker publishes ports there, so a node that just died leaves one free), the
    kernel may pick that very port as the connection's source, and TCP then connects the socket to
    itself: the HELLO comes back as its own reply. Seen as a garbled HELLO reply in the chaos test.
    ``what`` names the server in messages (``"redis at "``).
    """
    address = what + format_address(host, port)
    try:
        sock = socket.create_connection((host, port), timeout=timeout)
    except (OSError, gevent.Timeout) as exc:
        raise NodeUnreachableError(f"cannot connect to {address}: {_describe(exc)}") from None
    try:
        connected_to_itself = sock.getsockname() == sock.getpeername()
    except OSError as exc:  # reset already
        sock.close()
        raise NodeUnreachableError(f"cannot connect to {address}: {_describe(exc)}") from None
    if connected_to_itself:
        sock.close()
        raise NodeUnreachableError(f"cannot connect to {address}: nothing listens there")
    sock.settimeout(None)
    sock.setsockopt(stdlib_socket.IPPROTO_TCP, stdlib_socket.TCP_NODELAY, 1)
    return sock


class FrameWriter:
    """Writes frames to a socket from many greenlets without interleaving them.

    The first greenlet to write becomes the writer and keeps flushing until the outbox is empty;
    frames queued meanwhile by others leave in the same ``sendall``. Two ways to get more frames
    into one send, since each send on loopback costs about as much as handling a small request:

    * ``write(frame, wait_for_more=True)``: when other requests on the connection are in flight,
      the writer first lets the rest of this turn of the event loop run, so the replies (or
      requests) those greenlets produce in the same turn join its send;
    * ``hold()`` ... ``release()``: frames written in between are queued, and leave together at
      ``release`` (a session answering a burst of pipelined requests that need no waiting).
    """

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._outbox: list[bytes] = []
        self._writing = False
        self._held = False

    def write(self, frame: bytes, *, wait_for_more: bool = False) -> None:
        self._outbox.append(frame)
        if not self._writing and not self._held:
            self._send_outbox(wait_for_more)

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
                while self._outbox:
                    chunk = self._outbox[0] if len(self._outbox) == 1 else b"".join(self._outbox)
                    self._outbox.clear()
                    self._sock.sendall(chunk)
            finally:
                self._writing = False


class Connection:
    """A connection to one node. ``call`` sends a request and waits for its reply."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        connect_timeout: float = 1.0,
        client_name: str = "kv-client",
        max_frame_bytes: int = protocol.DEFAULT_MAX_FRAME_BYTES,
        coalesce: bool = False,
    ) -> None:
        """``coalesce``: for a connection many greenlets share (a node's link to a peer), requests
        sent while others are in flight wait for the end of the event loop's turn and leave in one
        send with the others sent in that turn."""
        self.host = host
        self.port = port
        self.connect_timeout = connect_timeout
        self.client_name = client_name
        self.hello: HelloReply | None = None
        self._decoder = FrameDecoder(max_frame_bytes)
        self._pending: dict[int, AsyncResult] = {}
        self._ids = count(1)
        self._sock: socket.socket | None = None
        self._writer: FrameWriter | None = None
        self._reader: gevent.Greenlet | None = None
        self._failure: KVError | None = None
        self._coalesce = coalesce

    @property
    def address(self) -> str:
        return format_address(self.host, self.port)

    @property
    def is_open(self) -> bool:
        return self._sock is not None and self._failure is None

    def connect(self) -> HelloReply:
        """Open the socket and negotiate the protocol version. Raises ``NodeUnreachableError``."""
        sock = open_socket(self.host, self.port, self.connect_timeout)
        self._sock = sock
        self._writer = FrameWriter(sock)
        self._reader = gevent.spawn(self._read_replies)
        try:
            frame = self.call(protocol.Hello(client_name=self.client_name[:255]), timeout=self.connect_timeout)
            self.hello = protocol.decode_hello_reply(frame.body)
        except protocol.ProtocolError as exc:
            self.close()
            raise ProtocolViolationError(f"bad HELLO reply from {self.address}: {exc}") from None
        except KVError:
            self.close()
            raise
        return self.hello

    def send(self, request: Request) -> AsyncResult:
        """Send ``request`` without waiting; the result resolves to the reply frame or an exception."""
        return self._send(request)[1]

    def _send(self, request: Request) -> tuple[int, AsyncResult]:
        if self._failure is not None:
            raise self._failure
        if self._writer is None:
            raise NodeUnreachableError(f"connection to {self.address} is not open")
        request_id = next(self._ids) & protocol.MAX_REQUEST_ID
        done = AsyncResult()
        self._pending[request_id] = done
        try:
            self._writer.write(
                protocol.encode_request(request_id, request), wait_for_more=self._coalesce and len(self._pending) > 1
            )
        except OSError as exc:
            self._fail(NodeUnreachableError(f"connection to {self.address} lost: {_describe(exc)}"))
        return request_id, done

    def call(self, request: Request, timeout: float | None = None) -> Frame:
        """Send ``request`` and return its reply frame (OK or NOT_FOUND); raise for error statuses."""
        request_id, done = self._send(request)
        try:
            frame = done.get(timeout=timeout)
        except gevent.Timeout:
            self._pending.pop(request_id, None)
            raise RequestTimeoutError(f"no reply from {self.address} within {timeout:g} s") from None
        return check_reply(frame)

    def close(self) -> None:
        self._fail(NodeUnreachableError(f"connection to {self.address} closed"))

    def _read_replies(self) -> None:
        sock = self._sock
        assert sock is not None
        try:
            while True:
                data = receive(sock)
                if not data:
                    raise NodeUnreachableError(f"{self.address} closed the connection")
                for frame in self._decoder.feed(data):
                    done = self._pending.pop(frame.request_id, None)
                    if done is not None:
                        done.set(frame)
        except KVError as exc:
            self._fail(exc)
        except protocol.ProtocolError as exc:
            self._fail(ProtocolViolationError(f"bad reply from {self.address}: {exc}"))
        except OSError as exc:
            self._fail(NodeUnreachableError(f"connection to {self.address} lost: {_describe(exc)}"))

    def _fail(self, error: KVError) -> None:
        if self._failure is not None:
            return
        self._failure = error
        if self._sock is not None:
            self._sock.close()
        pending, self._pending = self._pending, {}
        for done in pending.values():
            done.set_exception(error)
        if self._reader is not None and self._reader is not gevent.getcurrent():
            self._reader.kill(block=False)


class ConnectionSlot:
    """One reusable connection: kept while open, dialled again when needed, and dialled once even
    when many greenlets ask at the same moment (the others wait for that dial's outcome)."""

    def __init__(self, dial: Callable[[], Connection]) -> None:
        self._dial = dial
        self._connection: Connection | None = None
        self._dialing: AsyncResult | None = None

    @property
    def usable(self) -> bool:
        """Whether ``get`` would return without starting a new dial."""
        return self._dialing is not None or (self._connection is not None and self._connection.is_open)

    def get(self) -> Connection:
        """An open connection; raises what the dial raised (``NodeUnreachableError``) if it fails."""
        if self._connection is not None and self._connection.is_open:
            return self._connection
        if self._dialing is not None:
            return self._dialing.get()
        dialing = self._dialing = AsyncResult()
        try:
            connection = self._dial()
        except Exception as exc:  # whatever the dial raised, the greenlets waiting on it see it too
            dialing.set_exception(exc)
            raise
        finally:
            self._dialing = None
        self._connection = connection
        dialing.set(connection)
        return connection

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()


def check_reply(frame: Frame) -> Frame:
    """``frame`` if it is OK or NOT_FOUND; otherwise the error it carries, raised."""
    if frame.code in (Status.OK, Status.NOT_FOUND):
        return frame
    try:
        status = Status(frame.code)
        reply = protocol.decode_error(status, frame.body)
    except (ValueError, protocol.ProtocolError):
        raise ProtocolViolationError(f"unknown reply status 0x{frame.code:02x}") from None
    raise error_from_reply(reply)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, gevent.Timeout | TimeoutError | stdlib_socket.timeout):
        return "timed out"
    if isinstance(exc, stdlib_socket.gaierror):
        return "unknown host"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    return str(exc) or type(exc).__name__
