"""What a new node serves while it waits to be added (``KV_AUTO_JOIN=wait``): its name, nothing else.

``kv cluster join HOST:PORT`` asks the node at that address who it is before it asks a member to
admit it, so a node that waits must answer on its protocol port before it has a membership record,
a ring or a store. ``WaitingServer`` answers HELLO with the node's id and limits (as a member does)
and every other request with NOT_A_MEMBER, saying how to add the node; ``client.Client.identify``
reads that as "serves no cluster". Its HTTP port stays closed until it is added (no /livez or
/readyz: it is no member yet, so a liveness probe must allow for the wait). It keeps no state, so
it cannot be told anything: the node learns that it was added by asking its seeds
(``joining.wait_until_admitted``), never from what connects here.

It has a member's guards: at most ``MAX_CONNECTIONS`` served at once (more wait in the listen
backlog), frames over ``KV_MAX_FRAME_BYTES`` or malformed end their connection, and a connection
silent for ``IDLE_TIMEOUT_S`` is closed. It speaks plaintext without users: a client that sends
AUTH is told to name the node instead (``kv cluster join NODE=HOST:PORT``), which needs no answer
from it.
"""

from __future__ import annotations

import contextlib
import socket

import structlog
from gevent.pool import Pool
from gevent.server import StreamServer

from client import protocol
from client.protocol import FrameDecoder, Op, Status
from service.config import Config

MAX_CONNECTIONS = 64
"""Connections served at once: an admin's CLI needs one; more are closed as they arrive."""
IDLE_TIMEOUT_S = 30.0
"""Seconds a connection may stay silent before it is closed."""
READ_BYTES = 65536


class WaitingServer:
    """Serves ``config.node_id``'s HELLO on ``config.host``:``config.port`` until ``stop``."""

    def __init__(
        self, config: Config, log: structlog.typing.FilteringBoundLogger, listener: socket.socket | None = None
    ) -> None:
        """``listener``: the node's already bound socket (tests bind port 0 first); it serves a
        duplicate of it, so that ``stop`` leaves the node's own open for the member it becomes."""
        self.node_id = config.node_id
        self.max_frame_bytes = config.max_frame_bytes
        hello = protocol.HelloReply(
            protocol.PROTOCOL_VERSION,
            config.node_id,
            config.max_key_bytes,
            config.max_value_bytes,
            config.max_frame_bytes,
        )
        self._hello = protocol.encode_hello_reply(hello)
        self._refusal = (
            f"{config.node_id} waits to be added to a cluster (KV_AUTO_JOIN=wait) and serves nothing yet: "
            f"add it with `kv cluster join HOST:PORT` (or NODE=HOST:PORT) at a member"
        )
        self.log = log
        self._pool = Pool(MAX_CONNECTIONS)
        address = listener.dup() if listener is not None else (config.host, config.port)
        self._server = StreamServer(address, self._serve, spawn=self._pool)
        self._server.max_accept = 1

    @property
    def port(self) -> int:
        """The port it listens on (``KV_PORT=0``: the one the kernel chose)."""
        return int(self._server.server_port)

    def start(self) -> None:
        """Bind and serve. ``OSError`` if the port cannot be bound."""
        self._server.start()
        self.log.info("waiting_to_be_added", node=self.node_id, port=self.port)

    def stop(self) -> None:
        """Close the port and every connection, so that the node can bind it as a member."""
        self._server.stop(timeout=1)

    def _serve(self, sock: socket.socket, _address: object) -> None:
        sock.settimeout(IDLE_TIMEOUT_S)
        decoder = FrameDecoder(self.max_frame_bytes)
        # A closed, reset or silent peer, or a frame no member would accept, ends only this connection.
        with contextlib.suppress(OSError, protocol.ProtocolError), contextlib.closing(sock):
            while data := sock.recv(READ_BYTES):
                for frame in decoder.feed(data):
                    sock.sendall(self.reply(frame))

    def reply(self, frame: protocol.Frame) -> bytes:
        """The encoded answer to one request frame: HELLO's, or NOT_A_MEMBER."""
        if frame.code == Op.HELLO:
            hello = protocol.decode_request(frame)  # malformed: ProtocolError ends the connection
            if (
                isinstance(hello, protocol.Hello)
                and hello.min_version <= protocol.PROTOCOL_VERSION <= hello.max_version
            ):
                return protocol.encode_frame(frame.request_id, Status.OK, self._hello)
            return protocol.encode_error(
                frame.request_id,
                Status.UNSUPPORTED_VERSION,
                f"this node speaks protocol version {protocol.PROTOCOL_VERSION} only",
            )
        if frame.code in (Op.AUTH_START, Op.AUTH_FINISH):
            return protocol.encode_error(
                frame.request_id,
                Status.NOT_A_MEMBER,
                f"{self.node_id} waits to be added and has no users yet: "
                f"add it by name with `kv cluster join {self.node_id}=HOST:PORT` at a member",
            )
        return protocol.encode_error(frame.request_id, Status.NOT_A_MEMBER, self._refusal)
