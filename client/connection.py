"""One connection to a node: HELLO on connect, then many requests in flight, matched by id.

The socket work (opening, coalesced writes, the reader greenlet, failing every waiting request when
the socket fails) is ``client.transport``'s ``PipelinedSocket``; this module adds what is ours: the
HELLO exchange and, with credentials, authentication (SCRAM-SHA-256, ``client.scram``) right after it,
requests encoded with an id and replies matched by it (``ById``), and error statuses raised as the
exceptions of ``client.errors``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from gevent.event import AsyncResult

from client import protocol
from client.address import format_address
from client.errors import (
    KVError,
    NodeUnreachableError,
    ProtocolViolationError,
    RequestTimeoutError,
    error_from_frame,
)
from client.protocol import Frame, HelloReply, Request, Status
from client.scram import ScramExchange
from client.security import NO_SECURITY, Credentials, Security
from client.transport import ById, PipelinedSocket, open_socket

AUTH_DELAY_ALLOWANCE = 10.0
"""Seconds a node may hold back its answer to a failed authentication, beyond the connect timeout
(it delays repeated failures from one address: ``service.auth_throttle``)."""


@dataclass(frozen=True)
class Framing:
    """How a connection reads, writes and secures its frames. A client's defaults; a node's link to a
    peer sets them all (``service.peers``)."""

    max_frame_bytes: int = protocol.DEFAULT_MAX_FRAME_BYTES
    """Longest reply frame accepted; a longer one fails the connection."""
    coalesce: bool = False
    """For a connection many greenlets share: requests sent while others are in flight wait for the
    end of the event loop's turn and leave in one send with the others sent in that turn."""
    security: Security = NO_SECURITY
    """TLS to speak, and credentials to authenticate with right after HELLO (``client.security``)."""


class Connection:
    """A connection to one node. ``call`` sends a request and waits for its reply."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        connect_timeout: float = 1.0,
        client_name: str = "kv-client",
        framing: Framing = Framing(),
    ) -> None:
        self.host = host
        self.port = port
        self.connect_timeout = connect_timeout
        self.client_name = client_name
        self.framing = framing
        self.hello: HelloReply | None = None
        self.role = 0
        """The role the node granted when this connection authenticated (``protocol.Role``); 0 if it did not."""
        self._socket: PipelinedSocket[Frame] | None = None

    @property
    def address(self) -> str:
        return format_address(self.host, self.port)

    @property
    def is_open(self) -> bool:
        return self._socket is not None and self._socket.is_open

    def connect(self) -> HelloReply:
        """Open the socket (TLS if the framing's security says so), negotiate the protocol version,
        and authenticate if it holds credentials. Raises ``NodeUnreachableError`` (``TlsError`` for
        TLS), ``AuthFailedError``."""
        security = self.framing.security
        sock = open_socket(self.host, self.port, self.connect_timeout, tls=security.tls_context)
        matching = ById(self.framing.max_frame_bytes)
        self._socket = PipelinedSocket(sock, self.address, matching, coalesce=self.framing.coalesce)
        try:
            frame = self.call(protocol.Hello(client_name=self.client_name[:255]), timeout=self.connect_timeout)
            self.hello = protocol.decode_hello_reply(frame.body)
            if security.credentials is not None:
                self.role = self._authenticate(security.credentials)
        except protocol.ProtocolError as exc:
            self.close()
            raise ProtocolViolationError(f"bad HELLO reply from {self.address}: {exc}") from None
        except RequestTimeoutError:
            # A node that accepts the connection but does not answer HELLO (paused, swamped) cannot
            # be reached, as far as a caller choosing another node is concerned.
            self.close()
            raise NodeUnreachableError(
                f"{self.address} did not answer HELLO within {self.connect_timeout:g} s"
            ) from None
        except KVError:
            self.close()
            raise
        return self.hello

    def _authenticate(self, credentials: Credentials) -> int:
        """SCRAM-SHA-256 over AUTH_START and AUTH_FINISH; the role the node grants. The node must
        prove it holds the user's verifier too, or ``AuthFailedError``."""
        exchange = ScramExchange(credentials.user, credentials.password)
        frame = self.call(protocol.AuthStart(exchange.client_first()), timeout=self.connect_timeout)
        client_final = exchange.client_final(protocol.decode_auth_start_reply(frame.body))
        # The node may hold a failed proof back a while (it slows guessing), so allow it the longest delay.
        frame = self.call(protocol.AuthFinish(client_final), timeout=self.connect_timeout + AUTH_DELAY_ALLOWANCE)
        reply = protocol.decode_auth_reply(frame.body)
        exchange.verify(reply.server_final)
        return reply.role

    def send(self, request: Request) -> AsyncResult:
        """Send ``request`` without waiting; the result resolves to the reply frame or an exception."""
        return self._send(request)[1]

    def _send(self, request: Request) -> tuple[int, AsyncResult]:
        sock = self._socket
        if sock is None:
            raise NodeUnreachableError(f"connection to {self.address} is not open")
        request_id, done = sock.expect()
        sock.write(protocol.encode_request(request_id, request))
        return request_id, done

    def call(self, request: Request, timeout: float | None = None, *, stalled_after: float | None = None) -> Frame:
        """Send ``request`` and return its reply frame (OK or NOT_FOUND); raise for error statuses,
        and ``RequestTimeoutError`` after ``timeout`` seconds. With ``stalled_after``, give up sooner
        once the node has answered nothing at all for that long (``stalled``): it is paused or
        swapping, not merely busy, for a busy node answers other requests meanwhile."""
        request_id, done = self._send(request)
        sock = self._socket
        assert sock is not None  # _send raised otherwise
        if stalled_after is None or timeout is None:
            return check_reply(sock.wait(request_id, done, timeout))
        deadline = time.monotonic() + timeout
        patience = stalled_after / 2
        for _ in range(int(timeout / patience) + 2):  # bounded: each turn waits up to ``patience``
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                return check_reply(sock.wait(request_id, done, min(remaining, patience), keep_waiting=True))
            except RequestTimeoutError:
                if sock.stalled(stalled_after):
                    # Reset the connection: a node paused with this request in its socket buffer must
                    # not find it there when it wakes, long after we gave up (and maybe wrote again).
                    message = f"{self.address} answered nothing for {stalled_after:g} s"
                    sock.abort(f"{message}; connection reset")
                    raise RequestTimeoutError(message) from None
        sock.forget(request_id)
        raise RequestTimeoutError(f"no reply from {self.address} within {timeout:g} s")

    def stalled(self, after: float) -> bool:
        """Whether requests have waited more than ``after`` seconds with nothing heard from the node:
        it accepts but does not answer (paused, swapping, stuck on its disk)."""
        return self._socket is not None and self._socket.stalled(after)

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()


def check_reply(frame: Frame) -> Frame:
    """``frame`` if it is OK or NOT_FOUND; otherwise the error it carries, raised."""
    if frame.code in (Status.OK, Status.NOT_FOUND):
        return frame
    raise error_from_frame(frame)
