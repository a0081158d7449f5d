"""The protocol server: accepts connections, admits them, reads frames, hands requests to the handler,
writes replies, and closes connections that hold what they should not.

Each connection is a ``Session``. It reads frames off the socket and runs each request in its own
greenlet, so a slow PUT does not hold up the GETs pipelined behind it; replies go back in completion
order, matched by request id. Requests that need no waiting (``INLINE_REQUESTS``) are answered in the
reading greenlet itself.

No client can exhaust the node:

* **Admission** (``service.admission``). Every connection is accepted, never left in the listen
  backlog. A new connection takes a client slot (``KV_MAX_CONNECTIONS``), or, with all taken, waits
  a moment for its HELLO: a link from another member of the cluster (``node:<id>``) gets one of that
  member's own links, anything else gets ``TOO_MANY_CONNECTIONS`` (as the reply to its HELLO, or with
  request id 0 if it sent none) and is closed. HELLO must come within ``KV_HANDSHAKE_TIMEOUT_MS``.
* **Bytes and requests per connection** (``service.connection_limits``). A connection may have
  ``MAX_IN_FLIGHT_PER_CONNECTION`` requests running and, together with its unsent replies, requests
  reserving at most its hard byte limit (each reserves its frame and the largest reply it may
  produce). Before each request, inline ones included, the session waits for room; meanwhile it
  reads nothing more, which pushes back on the client through TCP. So a client's memory on the
  node is bounded whatever it sends, and whether or not it reads.
* **Timeouts.** A watch over every negotiated connection (``check_connections``, a few times a
  second) closes one idle for ``KV_IDLE_TIMEOUT_S``, one that started a frame and sent nothing more
  for the handshake timeout, and one whose replies waited with none taken for
  ``KV_CLIENT_OUTPUT_TIMEOUT_S`` (the client is not reading).

Input never crashes the node. A frame that cannot be parsed, or one over the frame limit, ends that
connection (after a FRAME_TOO_LARGE reply, in the second case). A well-framed request with a bad body,
an oversize key or value, or an impossible quorum gets an error reply and the connection goes on.
"""

from __future__ import annotations

import contextlib
import socket
import struct
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
from client.protocol import CONNECTION_REQUEST_ID, Frame, Op, ProtocolError, Status
from client.transport import RECV_BYTES, FrameWriter, receive_with_age, timestamp_arrivals
from service import greenlets
from service.admission import PEER_NAME_PREFIX, Admission, Seat, Ticket
from service.authentication import Authenticator, AuthRefused, Identity, ServerExchange, describe
from service.connection_limits import Activity, Close, ConnectionLimits, Watch, reservation
from service.coordinator import MustWait
from service.handler import RequestHandler
from service.logging import get_logger, printable_key
from service.metrics import Metrics
from service.roles import DENIED, NOT_AUTHENTICATED, NOTHING_DENIED
from service.tls import TlsAcceptor, tls_without_certificate

MAX_IN_FLIGHT_PER_CONNECTION = 256
"""Requests one connection may have running, inline ones included (its bytes are bounded apart)."""

PEER_LINKS_PER_MEMBER = 4
"""Connections each other member may hold outside the client slots: its link, and room for links
being replaced (a restarted or partitioned node's old link lingers until its close is seen)."""
MAX_WAITING = 64
"""Connections that may wait for their HELLO while every client slot is taken; past that a new
connection is refused at once."""
WAITING_HELLO_SECONDS = 1.0
"""How long a connection that found every client slot taken may take to send HELLO (a member's
link is admitted then) before it gets TOO_MANY_CONNECTIONS with request id 0; at most the handshake
timeout."""

CLIENT_COMMANDS = frozenset({Op.GET, Op.PUT, Op.DELETE})
CLIENT_WRITES = frozenset({Op.PUT, Op.DELETE})
STALE_AFTER = 0.5
"""Seconds a client write may wait in this node, from the kernel receiving it to its run, before it is
refused rather than run. A node stopped by ``kill -STOP`` (or swapped out, or starved) finds, when it
wakes, the writes its clients sent meanwhile; their clients gave up on them after a second
(``client.client.STALLED_GIVE_UP``) and may since have written those keys again elsewhere, so one
stamped now would win over the newer write. Below the client's give-up, far above a healthy wait.
Replica writes carry their coordinator's version and may land late safely; reads too."""
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

TLS_REFUSAL = protocol.encode_error(
    CONNECTION_REQUEST_ID,
    Status.TLS_REQUIRED,
    "this node accepts only TLS connections (KV_TLS_MODE=required): connect with TLS (kv --tls --tls-ca CA)",
)
"""What a plaintext connection to a TLS-only port is told before it is closed."""

_ABORT_LINGER = struct.pack("ii", 1, 0)
"""SO_LINGER on, 0 s: close sends RST and frees the kernel's send buffer at once, instead of keeping
it for a client that does not read."""


@dataclass(frozen=True)
class ServerSettings:
    max_connections: int
    """Client connections served at once (``KV_MAX_CONNECTIONS``); links from members are apart."""
    max_frame_bytes: int
    """Largest frame read; a larger one gets FRAME_TOO_LARGE and ends its connection."""
    log_commands: bool
    """Log one line per client GET, PUT and DELETE."""
    limits: ConnectionLimits
    """A client connection's byte limits and timeouts; a member's link gets ``limits.for_peer()``."""
    members: tuple[str, ...] = ()
    """The other members' node ids: a connection whose HELLO names one is admitted as a peer link."""
    authenticator: Authenticator | None = None
    """Checks who connections are; ``None`` or one without users: every connection may do anything."""
    tls: TlsAcceptor | None = None
    """Speaks TLS on accepted connections (``KV_TLS_MODE``); ``None``: plaintext only."""


class ConnectionEvents:
    """What the server reports about connections; ``events.NodeEvents`` turns it into metrics and logs."""

    def refused(self, peer: str, limit: int) -> None:
        """A connection from ``peer`` got TOO_MANY_CONNECTIONS: all ``limit`` client slots were taken."""

    def closed(self, reason: Close, peer: str, details: dict[str, Any]) -> None:
        """The node closed ``peer``'s connection for ``reason``; ``details`` are the numbers behind it."""


@dataclass(frozen=True)
class _Shared:
    """What every session of one server uses."""

    handler: RequestHandler
    metrics: Metrics
    events: ConnectionEvents
    settings: ServerSettings
    admission: Admission


class _StopReading(Exception):
    """Raised into a session's recv to make it stop taking requests."""


class _HandshakeExpired(Exception):
    """The handshake's time ran out (raised by its timer)."""


def _stale_reply(frame: Frame, seconds: float) -> bytes:
    """TIMEOUT for a client write that waited ``seconds`` in this node before it could run."""
    return protocol.encode_error(
        frame.request_id,
        Status.TIMEOUT,
        f"this node was stalled for {seconds:.1f} s (paused?); the write waited that long and was not applied",
        acked=0,
        required=0,
    )


class InFlight:
    """The requests running on one connection, each in a greenlet of its own, at most ``limit``, and
    the bytes they reserve (``reserved``).

    ``spawn`` blocks while ``limit`` run. Raw greenlets, reused (``service.greenlets``), rather than
    a ``Pool``: one is cheaper to start and to finish (no Greenlet object, no link callback, no fresh
    frame memory), and every request pays that; the function run must handle its own errors, as
    ``Session._run_request`` does. ``on_finish`` runs as each ends.
    """

    def __init__(self, limit: int, on_finish: Callable[[], None] = lambda: None) -> None:
        self.limit = limit
        self.reserved = 0
        self._slots = Semaphore(limit)
        self._running = 0
        self._idle = Event()
        self._idle.set()
        self._on_finish = on_finish

    def __len__(self) -> int:
        return self._running

    def spawn(self, function: Callable[..., Any], *args: Any, reserve: int = 0) -> None:
        """Run ``function(*args)`` in a greenlet, holding ``reserve`` bytes until it returns."""
        self._slots.acquire()
        self._running += 1
        self.reserved += reserve
        self._idle.clear()
        greenlets.spawn(self._run, function, args, reserve)

    def join(self) -> None:
        """Wait until every request spawned so far has finished."""
        self._idle.wait()

    def _run(self, function: Callable[..., Any], args: tuple[Any, ...], reserve: int) -> None:
        try:
            function(*args)
        finally:
            self._running -= 1
            self.reserved -= reserve
            self._slots.release()
            if not self._running:
                self._idle.set()
            self._on_finish()


class Session:
    """One client or peer connection, holding ``ticket``'s seat (``None``: refused, it holds none)."""

    def __init__(self, sock: socket.socket, shared: _Shared, log: Any, ticket: Ticket | None, peer: str) -> None:
        self.sock = sock
        self.peer = peer
        self.ticket = ticket
        self._shared = shared
        self._handler = shared.handler
        self._metrics = shared.metrics
        self._log = log
        settings = shared.settings
        self._log_commands = settings.log_commands
        self._max_frame_bytes = settings.max_frame_bytes
        self.limits = settings.limits
        self._decoder = protocol.FrameDecoder(settings.max_frame_bytes)
        self._writer = FrameWriter(sock, on_sent=self._progress)
        self._in_flight = InFlight(MAX_IN_FLIGHT_PER_CONNECTION, on_finish=self._progress)
        self._room = Event()
        self._waiting_for_room = False
        self._negotiated = False
        authenticator = settings.authenticator
        self._authenticator = authenticator if authenticator is not None and authenticator.required else None
        self.identity: Identity | None = None
        """Who the connection authenticated as; ``None`` before, or on a node without users."""
        self._denied = NOTHING_DENIED if self._authenticator is None else NOT_AUTHENTICATED
        """Op codes this connection may not run: its role's (``service.roles``), checked per request."""
        self._exchange: ServerExchange | None = None
        self._stopping = False
        self._broken = False  # a send failed, or abort(): no reply can be delivered any more
        self._read_at = 0.0  # when the kernel received the frames being dispatched (time.monotonic())
        self._watch: Watch | None = None  # from HELLO on
        self.bytes_received = 0
        self.requests_received = 0
        self.client_epoch = 0
        """The membership epoch the client said it routes by (EPOCH); 0: it never said."""

    @property
    def buffered(self) -> int:
        """Bytes this connection holds: reserved by requests in flight, and replies not yet sent."""
        return self._in_flight.reserved + self._writer.queued

    def run(self) -> None:
        try:
            if self.ticket is None:  # no seat, not even in the waiting room: refused at once
                self._refuse(CONNECTION_REQUEST_ID)
                return
            frames = self._handshake()
            if frames is not None:
                self._watch = Watch(self.limits, time.monotonic())
                self._read_frames(frames)
        except _StopReading:
            pass
        except OSError as exc:  # the peer reset the connection; nothing to answer
            self._log.debug("connection_error", error=str(exc))
        finally:
            self._in_flight.join()
            self._close()

    def check(self, now: float) -> Close | None:
        """Whether this connection must close now, and why (``connection_limits.Watch``)."""
        if self._watch is None or self._stopping:
            return None
        writer = self._writer
        activity = Activity(
            self.bytes_received,
            self.requests_received,
            self._decoder.buffered > 0,
            len(self._in_flight),
            writer.queued,
            writer.sent,
        )
        return self._watch.check(activity, now)

    def stop_reading(self) -> None:
        """Stop taking new requests; those in flight still get their replies (graceful shutdown)."""
        if self._stopping:  # told already (or closing): one wake-up is enough
            return
        self._stopping = True
        interrupt_recv(self.sock, _StopReading())

    def abort(self) -> None:
        """Close the connection now, dropping what it holds: its client does not read, so nothing
        more can be delivered. Whatever waits on the socket gets an error; the replies queued go."""
        self._stopping = self._broken = True
        with contextlib.suppress(OSError):
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _ABORT_LINGER)
        self.sock.close()
        self._room.set()

    def _close(self) -> None:
        """Close without losing replies: closing a socket that still has unread input makes Linux
        send RST, which discards replies the client has not read yet. So end our side first, let
        the client see EOF after its last reply, and read what it still sends until it closes."""
        if not self._broken:
            with contextlib.suppress(OSError, _StopReading):
                self.sock.shutdown(socket.SHUT_WR)
                with gevent.Timeout(LINGER_SECONDS, False):
                    while self.sock.recv(RECV_BYTES):
                        pass
        self.sock.close()

    def _progress(self) -> None:
        """A send finished or a request ended: a session waiting for room may go on."""
        if self._waiting_for_room:
            self._room.set()

    # --- the handshake ----------------------------------------------------------------------------

    def _handshake(self) -> list[Frame] | None:
        """Read until a HELLO succeeds and, on a node with users, the connection has authenticated,
        within the handshake timeout (a waiting connection's HELLO, within ``WAITING_HELLO_SECONDS``);
        the frames that came after, or ``None`` to close."""
        assert self.ticket is not None
        seconds = self.limits.handshake_timeout
        if self.ticket.seat is Seat.WAITING:
            seconds = min(WAITING_HELLO_SECONDS, seconds)
        deadline = time.monotonic() + seconds
        frames: list[Frame] = []
        while True:
            if not frames:
                try:
                    frames = self._read_before(deadline)
                except _HandshakeExpired:
                    if self.ticket is not None and self.ticket.seat is Seat.WAITING:
                        self._refuse(CONNECTION_REQUEST_ID)
                    else:
                        self._shared.events.closed(Close.HANDSHAKE_TIMEOUT, self.peer, {"timeout_s": seconds})
                    return None
                if not frames:
                    return None
            frame = frames.pop(0)
            if not (self._hello(frame) if not self._negotiated else self._authenticate(frame)):
                return None
            if self._negotiated and (self._authenticator is None or self.identity is not None):
                return frames

    def _read_before(self, deadline: float) -> list[Frame]:
        """The next frames read, ``[]`` at end of stream or on bad framing; ``_HandshakeExpired`` if
        none is complete by ``deadline`` (``time.monotonic()``)."""
        with gevent.Timeout(max(0.0, deadline - time.monotonic()), _HandshakeExpired):
            while True:
                data = self._receive()
                if not data:
                    return []
                frames = self._feed(data)
                if frames is None:
                    return []
                if frames:
                    return frames

    def _hello(self, frame: Frame) -> bool:
        """Answer the first frames: they must be HELLO. ``False`` ends the connection."""
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
        if isinstance(request, protocol.Hello) and self.ticket is not None:
            ticket = self._shared.admission.identify(self.ticket, request.client_name)
            if ticket is None:  # identify gave up the old ticket
                self.ticket = None
                self._refuse(frame.request_id)
                return False
            if ticket.seat is Seat.PEER and self.ticket.seat is not Seat.PEER:
                self.limits = self.limits.for_peer()
            self.ticket = ticket
        reply = self._run_request(frame, request)
        self._negotiated = protocol.frame_code(reply) == Status.OK
        return True

    def _authenticate(self, frame: Frame) -> bool:
        """Answer a frame sent after HELLO and before authenticating: AUTH_START and AUTH_FINISH run
        the SCRAM exchange, another HELLO is answered as the first, anything else gets
        AUTH_REQUIRED. ``False`` ends the connection (a failed authentication)."""
        assert self._authenticator is not None
        if frame.code == Op.HELLO:
            return self._hello(frame)
        if frame.code not in (Op.AUTH_START, Op.AUTH_FINISH):
            self._write_status(
                frame,
                Status.AUTH_REQUIRED,
                f"{protocol.op_name(frame.code)} needs authentication: this node requires a user "
                "(kv --user NAME; the library's Security)",
            )
            return True
        try:
            request = protocol.decode_request(frame)
        except ProtocolError as exc:
            self._write_status(frame, Status.BAD_REQUEST, str(exc))
            return True
        try:
            if isinstance(request, protocol.AuthStart):
                self._exchange = self._authenticator.exchange(self.peer)
                reply = protocol.encode_auth_start_reply(self._exchange.start(request))
            else:
                assert isinstance(request, protocol.AuthFinish)
                if self._exchange is None:
                    raise AuthRefused("send AUTH_START before AUTH_FINISH")
                identity, auth_reply = self._exchange.finish(request)
                self._check_member(identity)
                reply = protocol.encode_auth_reply(auth_reply)
                self.identity = identity
                self._denied = DENIED[identity.role]
        except AuthRefused as exc:
            self._write_status(frame, Status.AUTH_FAILED, str(exc))
            return False
        self._writer.write(protocol.encode_response(frame.request_id, Status.OK, reply))
        return True

    def _check_member(self, identity: Identity) -> None:
        """A link admitted as a member's must be that member, and over TLS must show a certificate
        signed by the cluster's CA (``KV_TLS_CA``); ``AuthRefused`` otherwise."""
        assert self.ticket is not None
        member = self.ticket.member
        if member is not None and identity.user != PEER_NAME_PREFIX + member:
            raise AuthRefused(f"this link said it was {member} but authenticated as {identity.user}")
        if identity.user.startswith(PEER_NAME_PREFIX) and tls_without_certificate(self.sock):
            raise AuthRefused("a member's link over TLS must present its certificate (KV_TLS_CERT)")

    def _write_status(self, frame: Frame, status: Status, message: str) -> None:
        self._writer.write(protocol.encode_error(frame.request_id, status, message))
        self._metrics.observe_request(protocol.op_name(frame.code), status.name, 0.0)

    def _forbid(self, frame: Frame) -> None:
        """A request this connection's role may not run: FORBIDDEN, naming the op and the user."""
        identity = self.identity
        who = describe(identity) if identity is not None else "this connection"
        self._write_status(
            frame,
            Status.FORBIDDEN,
            f"{protocol.op_name(frame.code)} is not allowed for {who}; ask an admin for a role that allows it",
        )

    def _refuse(self, request_id: int) -> None:
        limit = self._shared.admission.max_clients
        self._writer.write(
            protocol.encode_error(
                request_id,
                Status.TOO_MANY_CONNECTIONS,
                f"this node serves at most {limit} client connections (KV_MAX_CONNECTIONS), all in use; "
                "try another node, or later",
            )
        )
        self._shared.events.refused(self.peer, limit)

    # --- requests ---------------------------------------------------------------------------------

    def _feed(self, data: bytes) -> list[Frame] | None:
        """The frames ``data`` completes; ``None`` if the stream is unusable (after answering
        FRAME_TOO_LARGE for a frame over the limit)."""
        self.bytes_received += len(data)
        try:
            frames = self._decoder.feed(data)
        except protocol.OversizeFrameError as exc:
            self._log.warning("frame_too_large", length=exc.length, limit=exc.limit)
            self._writer.write(protocol.encode_error(exc.request_id, Status.FRAME_TOO_LARGE, str(exc)))
            return None
        except ProtocolError as exc:
            self._log.warning("malformed_frame", error=str(exc))
            return None
        self.requests_received += len(frames)
        return frames

    def _receive(self) -> bytes:
        """The next bytes from the connection; notes when the kernel received them (``_read_at``,
        on the monotonic clock), which is long ago if this process was stopped meanwhile."""
        data, age = receive_with_age(self.sock)
        self._read_at = time.monotonic() - age
        return data

    def _read_frames(self, frames: list[Frame]) -> None:
        writer = self._writer
        while True:
            if frames:
                # Replies to requests answered right here leave together after the burst.
                writer.hold()
                try:
                    for frame in frames:
                        if self._broken:  # the client is gone: what it sent needs no answer
                            return
                        self._dispatch(frame)
                finally:
                    writer.release()
                # The decoder returns the frames before a break in framing and raises on its next
                # feed; make that feed now rather than after the client's next bytes, which may never
                # come (with a whole header buffered, the rest is a partial frame or the break).
                if self._decoder.buffered >= protocol.HEADER.size and self._feed(b"") is None:
                    return
            if self._stopping:
                return
            data = self._receive()
            if not data:
                return
            next_frames = self._feed(data)
            if next_frames is None:
                return
            frames = next_frames

    def _dispatch(self, frame: Frame) -> None:
        """Start ``frame``'s request once the connection has room for it."""
        if frame.code in self._denied:
            self._forbid(frame)
            return
        need = reservation(frame.code, len(frame.body), self._max_frame_bytes)
        in_flight = self._in_flight
        pending = in_flight.reserved + self._writer.queued
        received = self._read_at
        if len(in_flight) >= in_flight.limit or (pending and pending + need > self.limits.buffer_bytes):
            self._wait_for_room(need)
            received = time.monotonic()  # the client's own pipeline held it back, not a stall
        try:
            request: protocol.Request | ProtocolError = protocol.decode_request(frame)
        except ProtocolError as exc:
            request = exc
        if isinstance(request, (ProtocolError, *INLINE_REQUESTS)):
            try:
                self._run_request(frame, request, inline=True)
            except MustWait:  # a GET that needs another node: this one holds no copy, R > 1, or its read failed
                in_flight.spawn(self._run_request, frame, request, received, reserve=need)
        else:
            in_flight.spawn(self._run_request, frame, request, received, reserve=need)

    def _wait_for_room(self, need: int) -> None:
        """Wait until one more request may run: fewer than the limit in flight, and ``need`` more bytes
        within the connection's budget (or nothing held at all). Sends what was held first."""
        in_flight, writer, budget = self._in_flight, self._writer, self.limits.buffer_bytes
        writer.release()
        try:
            while not self._broken:
                pending = in_flight.reserved + writer.queued
                if len(in_flight) < in_flight.limit and (not pending or pending + need <= budget):
                    return
                self._room.clear()
                self._waiting_for_room = True
                self._room.wait()
                self._waiting_for_room = False
            raise _StopReading
        finally:
            writer.hold()

    def _run_request(
        self,
        frame: Frame,
        request: protocol.Request | ProtocolError,
        received: float = 0.0,
        *,
        inline: bool = False,
    ) -> bytes:
        """Run a decoded request (or answer the error that decoding it raised) and send the reply.
        ``received``: when the kernel received it (``time.monotonic()``): a client write that waited
        longer than ``STALE_AFTER`` to run (the process was stopped or starved meanwhile) is refused,
        not stamped now, after its client gave up. ``inline``: in the reading greenlet, so ``MustWait`` is raised
        rather than waited out."""
        started = time.perf_counter()
        try:
            waited = time.monotonic() - received if received and frame.code in CLIENT_WRITES else 0.0
            if waited > STALE_AFTER:
                self._log.warning("stale_write_refused", op=protocol.op_name(frame.code), waited_s=round(waited, 3))
                reply = _stale_reply(frame, waited)
            elif isinstance(request, ProtocolError):
                reply = protocol.encode_error(frame.request_id, Status.BAD_REQUEST, str(request))
            elif self.client_epoch and frame.code in CLIENT_COMMANDS and self.client_epoch < self._handler.epoch:
                # Told once: the client refreshes its ring and sends again, its epoch with it.
                reply = self._handler.epoch_moved(frame.request_id, self.client_epoch)
                self.client_epoch = self._handler.epoch
            else:
                if isinstance(request, protocol.Epoch):
                    self.client_epoch = request.epoch
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
            self._broken = True
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


class ServedConnection(Protocol):
    """A session as its server drives it: ``run`` serves the connection until it ends; ``stop_reading``
    asks it to take no more requests, answer those in flight, and end."""

    def run(self) -> None: ...

    def stop_reading(self) -> None: ...


class ConnectionServer:
    """A gevent ``StreamServer`` whose Pool caps connections, with a draining ``stop``. What a
    connection speaks is up to its session: a subclass makes one per connection (``open_session``).
    The Redis port's ``resp_server.RespServer`` is one; ``ProtocolServer`` below has a shell of its
    own, since it admits connections (``Admission``) and watches their limits."""

    log_context: ClassVar[dict[str, str]] = {}
    """Bound into a connection's log lines beside its peer and id (the Redis server's: protocol=resp)."""
    tls_refusal: ClassVar[bytes] = b""
    """What a plaintext connection is told, in the port's protocol, when the port speaks only TLS."""

    def __init__(
        self, listener: socket.socket | tuple[str, int], metrics: Metrics, log: Any, settings: ServerSettings
    ) -> None:
        self._metrics = metrics
        self._log = log
        self._settings = settings
        self._sessions: set[ServedConnection] = set()
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

    def open_session(self, sock: socket.socket, peer: str, log: Any) -> ServedConnection:
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
        if self._settings.tls is not None:
            served = self._settings.tls.accept(sock, peer, self.tls_refusal)
            if served is None:
                return
            sock = served
        session = self.open_session(sock, peer, self._log.bind(**context))
        self._sessions.add(session)
        self._metrics.connections.inc()
        try:
            session.run()
        finally:
            self._sessions.discard(session)
            self._metrics.connections.dec()


class ProtocolServer:
    """A gevent ``StreamServer`` that accepts every connection and admits it (``Admission``), checks
    every connection's timeouts and output (``check_connections``), and stops with a drain."""

    def __init__(
        self,
        listener: socket.socket | tuple[str, int],
        handler: RequestHandler,
        metrics: Metrics,
        events: ConnectionEvents,
        settings: ServerSettings,
    ) -> None:
        admission = Admission(settings.max_connections, settings.members, PEER_LINKS_PER_MEMBER, MAX_WAITING)
        self._shared = _Shared(handler, metrics, events, settings, admission)
        self._log = get_logger()
        self._sessions: set[Session] = set()
        self._stopping = False
        self._connection_ids = count(1)
        self._watcher: gevent.Greenlet | None = None
        # An unbounded pool: admission caps connections, and stop() still drains every session.
        self._server = StreamServer(listener, self._serve, spawn=gevent.pool.Pool())

    @property
    def port(self) -> int:
        port: int = self._server.server_port
        return port

    def add_member(self, node_id: str) -> None:
        """``node_id`` joined the cluster: its HELLO earns a peer link from now on."""
        self._shared.admission.add_member(node_id)

    @property
    def buffered_bytes(self) -> int:
        """Bytes every connection holds in requests in flight and unsent replies."""
        return sum(session.buffered for session in self._sessions)

    def start(self) -> None:
        self._server.start()
        self._watcher = gevent.spawn(self._watch_connections)

    def stop(self, drain_timeout: float) -> None:
        """Stop accepting, let in-flight requests finish for up to ``drain_timeout`` s, then close."""
        self._stopping = True
        self._server.close()
        if self._watcher is not None:
            self._watcher.kill()
        for session in list(self._sessions):
            session.stop_reading()
        self._server.stop(timeout=drain_timeout)

    def check_connections(self, now: float) -> None:
        """Close every connection that is idle, stalled mid-frame, or not reading its replies."""
        events = self._shared.events
        for session in list(self._sessions):
            reason = session.check(now)
            if reason is None:
                continue
            details: dict[str, Any] = {}
            if reason is Close.OUTPUT_LIMIT:
                limits = session.limits
                details = {"bytes": session.buffered, "limit": limits.buffer_bytes, "waited_s": limits.output_timeout}
                session.abort()
            else:
                if reason is Close.IDLE_TIMEOUT:
                    details = {"idle_s": session.limits.idle_timeout}
                session.stop_reading()
            events.closed(reason, session.peer, details)

    def _watch_connections(self) -> None:
        interval = self._shared.settings.limits.check_interval
        while True:
            gevent.sleep(interval)
            self.check_connections(time.monotonic())

    def _serve(self, sock: socket.socket, address: tuple[str, int]) -> None:
        if self._stopping:  # accepted just before stop() and started after it: nothing to drain
            sock.close()
            return
        peer = f"{address[0]}:{address[1]}"
        conn_id = next(self._connection_ids)
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(peer=peer, conn_id=conn_id)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        timestamp_arrivals(sock)
        admission = self._shared.admission
        ticket = admission.arrive()
        tls = self._shared.settings.tls
        if tls is not None and ticket is not None:  # admitted first: a slow handshake holds a slot, not more
            served = tls.accept(sock, peer, TLS_REFUSAL)
            if served is None:
                admission.leave(ticket)
                return
            sock = served
        session = Session(sock, self._shared, self._log.bind(peer=peer, conn_id=conn_id), ticket, peer)
        self._sessions.add(session)
        self._shared.metrics.connections.inc()
        try:
            session.run()
        finally:
            self._sessions.discard(session)
            self._shared.metrics.connections.dec()
            if session.ticket is not None:
                admission.leave(session.ticket)
