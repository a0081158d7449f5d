"""Test helpers that speak the protocol over a bare socket, and hold a node's commits.

``RawConnection`` sends and reads frames with no client logic in the way, so tests can send what a
real client never would (pipelined bursts, partial frames, nothing at all). ``HeldCommits`` keeps a
node's writes in flight until released.
"""

from __future__ import annotations

import time

import gevent
from gevent import socket
from gevent.event import AsyncResult, Event

from client import protocol
from client.protocol import Frame, Status
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
