"""Test helpers that speak the protocol over a bare socket, hold a node's commits, or play a node.

``RawConnection`` sends and reads frames with no client logic in the way, so tests can send what a
real client never would (pipelined bursts, partial frames, nothing at all). ``HeldCommits`` keeps a
node's writes in flight until released. ``FakeNode`` answers as a script says, to show a client
what no real node would (a close in the middle of a request, an error with request id 0).
"""

from __future__ import annotations

import socket as stdlib_socket
import time
from collections.abc import Callable

import gevent
from gevent import socket
from gevent.event import AsyncResult, Event

from client import protocol
from client.protocol import Frame, Op, Status
from service.node import Node

READ_TIMEOUT = 3.0


class RawConnection:
    """A bare socket speaking frames, with no client logic in the way."""

    def __init__(self, address: str) -> None:
        host, port = address.rsplit(":", 1)
        self.sock = socket.create_connection((host, int(port)), timeout=READ_TIMEOUT)
        self.decoder = protocol.FrameDecoder(1 << 24)
        self.frames: list[Frame] = []
        self.eof = False

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def request(self, request_id: int, request: protocol.Request) -> None:
        self.send(protocol.encode_request(request_id, request))

    def hello(self, request_id: int = 1) -> Frame:
        self.request(request_id, protocol.Hello(client_name="raw-test"))
        reply = self.read_frame()
        assert (reply.request_id, reply.code) == (request_id, Status.OK)
        return reply

    def _fill(self, deadline: float) -> None:
        self.sock.settimeout(max(0.001, deadline - time.monotonic()))
        try:
            data = self.sock.recv(1 << 16)
        except ConnectionResetError:
            data = b""
        if not data:
            self.eof = True
            return
        self.frames += self.decoder.feed(data)

    def read_frame(self, timeout: float = READ_TIMEOUT) -> Frame:
        deadline = time.monotonic() + timeout
        while not self.frames:
            assert not self.eof, "the node closed the connection"
            self._fill(deadline)
        return self.frames.pop(0)

    def read_frames(self, count: int, timeout: float = READ_TIMEOUT) -> list[Frame]:
        return [self.read_frame(timeout) for _ in range(count)]

    def read_until_closed(self, timeout: float = READ_TIMEOUT) -> list[Frame]:
        """Every frame the node sends until it closes the connection (fails if it does not)."""
        deadline = time.monotonic() + timeout
        while not self.eof:
            self._fill(deadline)  # a recv timeout here means the node kept the connection open
        frames, self.frames = self.frames, []
        return frames

    def call(self, request_id: int, request: protocol.Request) -> Frame:
        self.request(request_id, request)
        reply = self.read_frame()
        assert reply.request_id == request_id
        return reply

    def close(self) -> None:
        self.sock.close()


class HeldCommits:
    """Holds the node's group commits (its fsyncs) until ``release``: writes stay in flight."""

    def __init__(self, node: Node) -> None:
        self.gate = Event()
        self.batches: list[int] = []
        self._start = node.store.committer._start
        node.store.committer._start = self._held

    def _held(self, function, args):
        self.batches.append(len(args[0]))
        job = AsyncResult()

        def commit_when_released() -> None:
            self.gate.wait()
            self._start(function, args).rawlink(lambda done: job.set(done.get()))

        gevent.spawn(commit_when_released)
        return job

    def release(self) -> None:
        self.gate.set()


class FakeNode:
    """A listening socket that answers each frame as ``script(connection_number, frame)`` says: the
    bytes to send back, or ``None`` to close that connection. HELLO and EPOCH are answered for it."""

    def __init__(self, script: Callable[[int, Frame], bytes | None]) -> None:
        self._script = script
        self._listener = socket.socket(stdlib_socket.AF_INET, stdlib_socket.SOCK_STREAM)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(8)
        self.port: int = self._listener.getsockname()[1]
        self.address = f"127.0.0.1:{self.port}"
        self.connections = 0
        self._server = gevent.spawn(self._accept)

    def hello_reply(self, request_id: int) -> bytes:
        hello = protocol.HelloReply(protocol.PROTOCOL_VERSION, "fake", 1024, 1024, 1 << 20)
        return protocol.encode_response(request_id, Status.OK, protocol.encode_hello_reply(hello))

    def topology_reply(self, request_id: int) -> bytes:
        topology = protocol.TopologyReply(1, 1, 1, 16, (protocol.NodeAddress("fake", "127.0.0.1", self.port),))
        return protocol.encode_response(request_id, Status.OK, protocol.encode_topology_reply(topology))

    def _accept(self) -> None:
        while True:
            sock, _ = self._listener.accept()
            self.connections += 1
            gevent.spawn(self._serve, sock, self.connections)

    def _serve(self, sock: socket.socket, number: int) -> None:
        decoder = protocol.FrameDecoder()
        try:
            while data := sock.recv(65536):
                for frame in decoder.feed(data):
                    if frame.code == Op.HELLO:
                        reply: bytes | None = self.hello_reply(frame.request_id)
                    elif frame.code == Op.EPOCH:  # a client's, on each new connection: epoch 0, none known
                        reply = protocol.encode_response(frame.request_id, Status.OK, protocol.encode_epoch_reply(0))
                    else:
                        reply = self._script(number, frame)
                    if reply is None:
                        return
                    sock.sendall(reply)
        finally:
            sock.close()

    def close(self) -> None:
        self._server.kill()
        self._listener.close()
