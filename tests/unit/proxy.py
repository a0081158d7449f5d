"""A TCP proxy in front of one in-process node that can be paused: the node then accepts
connections and takes requests, and answers nothing, as a node under ``kill -STOP`` does.

Bytes received while paused are held and forwarded on ``resume``, so nothing is lost, only late.
"""

from __future__ import annotations

import contextlib

import gevent
from gevent import socket
from gevent.event import Event
from gevent.server import StreamServer

CHUNK = 64 * 1024


class PausableProxy:
    """Listens on 127.0.0.1 (``port``) and forwards each connection to ``127.0.0.1:target_port``."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self._flowing = Event()
        self._flowing.set()
        self._server = StreamServer(("127.0.0.1", 0), self._handle)
        self._server.start()
        self._greenlets: set[gevent.Greenlet] = set()

    @property
    def port(self) -> int:
        port: int = self._server.server_port
        return port

    def pause(self) -> None:
        self._flowing.clear()

    def resume(self) -> None:
        self._flowing.set()

    def close(self) -> None:
        self._server.stop(timeout=0)
        gevent.killall(list(self._greenlets), timeout=1)

    def _handle(self, downstream: socket.socket, _address: object) -> None:
        try:
            upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=2)
        except OSError:
            downstream.close()
            return
        pumps = [gevent.spawn(self._pump, downstream, upstream), gevent.spawn(self._pump, upstream, downstream)]
        self._greenlets.update(pumps)
        gevent.joinall(pumps, count=1)
        for sock in (downstream, upstream):
            with contextlib.suppress(OSError):
                sock.close()
        gevent.killall(pumps, timeout=1)
        self._greenlets.difference_update(pumps)

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while True:
                self._flowing.wait()
                data = source.recv(CHUNK)
                if not data:
                    return
                self._flowing.wait()  # what arrived during a pause leaves when it ends
                sink.sendall(data)
