"""The protocol server: accepts connections, reads frames, hands requests to the handler, writes replies.

``ConnectionServer`` is the listening shell any protocol's server uses (the connection cap, the
draining stop, each connection's log context); ``ProtocolServer`` is it with our protocol's ``Session``
per connection (``resp_server`` gives it Redis's).

Each connection is a ``Session``. It reads frames off the socket and runs each request in its own
greenlet, so a slow PUT does not hold up the GETs pipelined behind it; replies go back in completion
order, matched by request id. At most ``MAX_IN_FLIGHT_PER_CONNECTION`` requests run per connection;
past that the session stops reading, which pushes back on the client through TCP.

Input never crashes the node. A frame that cannot be parsed, or one over the frame limit, ends that
connection (after a FRAME_TOO_LARGE reply, in the second case). A well-framed request with a bad body,
an oversize key or value, or an impossible quorum gets an error reply and the connection goes on.
"""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from itertools import count
from typing import Any, ClassVar, Protocol

import gevent
import gevent.pool
import structlog
from gevent.event import Event
from gevent.lock import Semaphore
from gevent.server import StreamServer

from client import protocol
from client.protocol import Frame, Op, ProtocolError, Status
from client.transport import RECV_BYTES, FrameWriter, receive
from service.coordinator import MustWait
from service.handler import RequestHandler
from service.logging import printable_key
from service.metrics import Metrics

MAX_IN_FLIGHT_PER_CONNECTION = 256
"""Requests one connection may have running. Bounds the memory a single client can pin."""

CLIENT_COMMANDS = frozenset({Op.GET, Op.PUT, Op.DELETE})
"""Ops logged one line each when command logging is on (replica traffic between nodes is not)."""

INLINE_REQUESTS = (
    protocol.Hello,
    protocol.Ping,
    protocol.Topology,
    protocol.Members,
    protocol.ReplicaGet,
    protocol.Get,
)
"""Requests tried in the reading greenlet, because a greenlet of their own would cost more than the
request: they do not wait (a ReplicaGet is one LMDB read), and HELLO must finish before what follows.
A GET qualifies when this node's store answers it alone; when it needs another node after all, the
coordinator raises ``MustWait`` before sending anything and the session gives it a greenlet."""


LINGER_SECONDS = 1.0
"""How long a closing connection keeps reading (and discarding) what the client still sends."""


@dataclass(frozen=True)
class ServerSettings:
    max_connections: int
    """Connections served at once (``KV_MAX_CONNECTIONS``); more wait to be accepted."""
    max_frame_bytes: int
    """Largest frame read; a larger one gets FRAME_TOO_LARGE and ends its connection."""
    log_commands: bool
    """Log one line per client GET, PUT and DELETE."""


class _StopReading(Exception):
    """Raised into a session's recv to make it stop taking requests."""


class InFlight:
    """The requests running on one connection, each in a greenlet of its own, at most ``limit``.

    ``spawn`` blocks while ``limit`` run, which stops the session reading: back-pressure on the
    client through TCP. Raw greenlets rather than a ``Pool``: one is cheaper to start and to finish
    (no Greenlet object, no link callback), and every request pays that; the function run must
    handle its own errors, as ``Session._run_request`` does.
    """

    def __init__(self, limit: int) -> None:
        self._slots = Semaphore(limit)
        self._running = 0
        self._idle = Event()
        self._idle.set()

    def __len__(self) -> int:
        return self._running

    def spawn(self, function: Callable[..., Any], *args: Any) -> None:
        self._slots.acquire()
        self._running += 1
        self._idle.clear()
        gevent.spawn_raw(self._run, function, args)

    def join(self) -> None:
        """Wait until every request spawned so far has finished."""
        self._idle.wait()

    def _run(self, function: Callable[..., Any], args: tuple[Any, ...]) -> None:
        try:
            function(*args)
        finally:
            self._running -= 1
            self._slots.release()
            if not self._running:
                self._idle.set()


class Session:
    """One client or peer connection."""

    def __init__(
        self,
        sock: socket.socket,
        handler: RequestHandler,
        metrics: Metrics,
        log: Any,
        settings: ServerSettings,
    ) -> None:
        self.sock = sock
        self._handler = handler
        self._metrics = metrics
        self._log = log
        self._log_commands = settings.log_commands
        self._decoder = protocol.FrameDecoder(settings.max_frame_bytes)
        self._writer = FrameWriter(sock)
        self._in_flight = InFlight(MAX_IN_FLIGHT_PER_CONNECTION)
        self._negotiated = False
        self._stopping = False

    def run(self) -> None:
        try:
            self._read_frames()
        except _StopReading:
            pass
        except OSError as exc:  # the peer reset the connection; nothing to answer
            self._log.debug("connection_error", error=str(exc))
        finally:
            self._in_flight.join()
            self._close()

    def stop_reading(self) -> None:
        """Stop taking new requests; those in flight still get their replies (graceful shutdown)."""
        self._stopping = True
        interrupt_recv(self.sock, _StopReading())

    def _close(self) -> None:
        close_after_replies(self.sock)

    def _read_frames(self) -> None:
        while not self._stopping:
            data = receive(self.sock)
            if not data:
                return
            try:
                frames = self._decoder.feed(data)
            except protocol.OversizeFrameError as exc:
                self._log.warning("frame_too_large", length=exc.length, limit=exc.limit)
                self._writer.write(protocol.encode_error(exc.request_id, Status.FRAME_TOO_LARGE, str(exc)))
                return
            except ProtocolError as exc:
                self._log.warning("malformed_frame", error=str(exc))
                return
            # Replies to requests answered right here leave together after the burst (one send).
            self._writer.hold()
            try:
                for frame in frames:
                    if not self._dispatch(frame):
                        return
            finally:
                self._writer.release()

    def _dispatch(self, frame: Frame) -> bool:
        """Start ``frame``'s request; ``False`` ends the connection."""
        if not self._negotiated:
            return self._handshake(frame)
        try:
            request: protocol.Request | ProtocolError = protocol.decode_request(frame)
        except ProtocolError as exc:
            request = exc
        if isinstance(request, (ProtocolError, *INLINE_REQUESTS)):
            try:
                self._run_request(frame, request, inline=True)
            except MustWait:  # a GET that needs another node: this one holds no copy, R > 1, or its read failed
                self._in_flight.spawn(self._run_request, frame, request)
        else:
            self._in_flight.spawn(self._run_request, frame, request)
        return True

    def _handshake(self, frame: Frame) -> bool:
        if frame.code != Op.HELLO:
            self._log.warning("request_before_hello", op=protocol.op_name(frame.code))
            self._writer.write(
                protocol.encode_error(frame.request_id, Status.BAD_REQUEST, "send HELLO before any other request")
            )
            return False
        try:
            request: protocol.Request | ProtocolError = protocol.decode_request(frame)
        except ProtocolError as exc:
            request = exc
        reply = self._run_request(frame, request)
        self._negotiated = protocol.frame_code(reply) == Status.OK
        return True

    def _run_request(self, frame: Frame, request: protocol.Request | ProtocolError, *, inline: bool = False) -> bytes:
        """Run a decoded request (or answer the error that decoding it raised) and send the reply.
        ``inline``: in the reading greenlet, so ``MustWait`` is raised rather than waited out."""
        started = time.perf_counter()
        try:
            if isinstance(request, ProtocolError):
                reply = protocol.encode_error(frame.request_id, Status.BAD_REQUEST, str(request))
            else:
                reply = self._handler.reply(frame.request_id, request, inline=inline)
        except MustWait:
            raise
        except Exception:  # a bug must cost one request, never the connection or the node
            self._log.exception("request_failed", op=protocol.op_name(frame.code))
            reply = protocol.encode_error(
                frame.request_id, Status.INTERNAL_ERROR, "internal error; the node logged the details"
            )
        try:
            self._writer.write(reply, wait_for_more=len(self._in_flight) > 1)
        except OSError:
            self.stop_reading()
        elapsed = time.perf_counter() - started
        status = protocol.status_name(protocol.frame_code(reply))
        op = protocol.op_name(frame.code)
        self._metrics.observe_request(op, status, elapsed)
        if self._log_commands and frame.code in CLIENT_COMMANDS:
            key = getattr(request, "key", None)
            self._log.info(
                "command",
                op=op,
                key=printable_key(key) if key is not None else None,
                status=status,
                duration_ms=round(elapsed * 1000, 3),
            )
        return reply


def interrupt_recv(sock: socket.socket, error: BaseException) -> None:
    """Raise ``error`` in the greenlet waiting in ``sock``'s recv, if one does; a session's reading
    loop then checks whether it is stopping before its next recv.

    Only a greenlet waiting in recv is woken: an exception landing anywhere else could cut a reply in
    half. ``cancel_wait`` throws into whichever greenlet waits on the socket's read watcher when the
    callback runs, and does nothing if none does (``_read_event`` is how gevent's own
    ``socket.close`` does this)."""
    gevent_socket: Any = sock  # gevent's socket: its hub and read watcher are not in socket's type
    gevent_socket.hub.cancel_wait(gevent_socket._read_event, error)


def close_after_replies(sock: socket.socket) -> None:
    """Close without losing replies: closing a socket that still has unread input makes Linux send
    RST, which discards replies the client has not read yet. So end our side first, let the client
    see EOF after its last reply, and read what it still sends until it closes (``LINGER_SECONDS``)."""
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_WR)
        with gevent.Timeout(LINGER_SECONDS, False):
            while sock.recv(RECV_BYTES):
                pass
    sock.close()


class Connection(Protocol):
    """A session as its server drives it: ``run`` serves the connection until it ends; ``stop_reading``
    asks it to take no more requests, answer those in flight, and end."""

    def run(self) -> None: ...

    def stop_reading(self) -> None: ...


class ConnectionServer:
    """A gevent ``StreamServer`` whose Pool caps connections, with a draining ``stop``. What a
    connection speaks is up to its session: a subclass makes one per connection (``open_session``),
    ``ProtocolServer`` for our protocol and ``resp_server.RespServer`` for Redis's."""

    log_context: ClassVar[dict[str, str]] = {}
    """Bound into a connection's log lines beside its peer and id (the Redis server's: protocol=resp)."""

    def __init__(
        self, listener: socket.socket | tuple[str, int], metrics: Metrics, log: Any, settings: ServerSettings
    ) -> None:
        self._metrics = metrics
        self._log = log
        self._settings = settings
        self._sessions: set[Connection] = set()
        self._stopping = False
        self._connection_ids = count(1)
        self._server = StreamServer(listener, self._serve, spawn=gevent.pool.Pool(settings.max_connections))

    @property
    def port(self) -> int:
        port: int = self._server.server_port
        return port

    def start(self) -> None:
        self._server.start()

    def stop(self, drain_timeout: float) -> None:
        """Stop accepting, let in-flight requests finish for up to ``drain_timeout`` s, then close."""
        self._stopping = True
        self._server.close()
        for session in list(self._sessions):
            session.stop_reading()
        self._server.stop(timeout=drain_timeout)

    def open_session(self, sock: socket.socket, peer: str, log: Any) -> Connection:
        """The session that serves a new connection from ``peer``; ``log`` is bound to it."""
        raise NotImplementedError

    def _serve(self, sock: socket.socket, address: tuple[str, int]) -> None:
        if self._stopping:  # accepted just before stop() and started after it: nothing to drain
            sock.close()
            return
        peer = f"{address[0]}:{address[1]}"
        context = {"peer": peer, "conn_id": next(self._connection_ids), **self.log_context}
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(**context)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        session = self.open_session(sock, peer, self._log.bind(**context))
        self._sessions.add(session)
        self._metrics.connections.inc()
        try:
            session.run()
        finally:
            self._sessions.discard(session)
            self._metrics.connections.dec()


class ProtocolServer(ConnectionServer):
    """Our protocol's server: a ``Session`` per connection, answered by ``handler``."""

    def __init__(
        self,
        listener: socket.socket | tuple[str, int],
        handler: RequestHandler,
        metrics: Metrics,
        log: Any,
        settings: ServerSettings,
    ) -> None:
        super().__init__(listener, metrics, log, settings)
        self._handler = handler

    def open_session(self, sock: socket.socket, peer: str, log: Any) -> Session:
        return Session(sock, self._handler, self._metrics, log, self._settings)
