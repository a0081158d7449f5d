"""Other nodes as this node sees them: one shared connection each, reconnection, and up/down state.

A ``Peer`` is a remote replica for the coordinator. Its connection is multiplexed, so every
concurrent request to that peer shares one socket. When a connect fails, requests to the peer fail
at once for ``RETRY_DELAY`` seconds instead of each paying a connect timeout; meanwhile the monitor
pings every peer once a second, which reconnects a peer that came back and keeps ``kv_peer_up`` true.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

import gevent
from gevent.event import AsyncResult

from client import protocol
from client.connection import Connection
from client.errors import KVError, NodeUnreachableError
from client.protocol import Frame, NodeAddress, Record, Request, Status

RETRY_DELAY = 1.0
"""Seconds a peer that refused a connection is treated as down before requests try it again."""
MONITOR_INTERVAL = 1.0
"""Seconds between pings of each peer: how fast a restarted peer is noticed."""


class Peer:
    def __init__(
        self,
        node: NodeAddress,
        *,
        local_node_id: str,
        connect_timeout: float,
        request_timeout: float,
        max_frame_bytes: int,
        on_state_change: Callable[[Peer, bool, str], None] = lambda peer, up, reason: None,
    ) -> None:
        self.node = node
        self.node_id = node.node_id
        self.up: bool | None = None  # None until the first attempt
        self._local_node_id = local_node_id
        self._connect_timeout = connect_timeout
        self._request_timeout = request_timeout
        self._max_frame_bytes = max_frame_bytes
        self._on_state_change = on_state_change
        self._connection: Connection | None = None
        self._connecting: AsyncResult | None = None
        self._retry_at = 0.0
        self._last_error = ""

    # --- the replica interface --------------------------------------------------------------------

    def read(self, key: bytes) -> Record | None:
        frame = self.call(protocol.ReplicaGet(key))
        return None if frame.code == Status.NOT_FOUND else protocol.decode_record(frame.body)

    def write(self, key: bytes, record: Record) -> None:
        self.call(protocol.ReplicaPut(key, record))

    # --- transport --------------------------------------------------------------------------------

    def call(self, request: Request, *, retry_now: bool = False) -> Frame:
        connection = self._open_connection(retry_now)
        try:
            return connection.call(request, timeout=self._request_timeout)
        except NodeUnreachableError as exc:
            self._set_state(False, exc.message)
            raise

    def ping(self) -> bool:
        """Whether the peer answers PING now, reconnecting if needed regardless of ``RETRY_DELAY``."""
        try:
            self.call(protocol.Ping(), retry_now=True)
        except KVError:
            return False
        return True

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()

    def _open_connection(self, retry_now: bool) -> Connection:
        connection = self._connection
        if connection is not None and connection.is_open:
            return connection
        if self._connecting is not None:
            return self._connecting.get()
        if not retry_now and time.monotonic() < self._retry_at:
            raise NodeUnreachableError(f"{self.node_id} is down ({self._last_error})")
        self._connecting = AsyncResult()
        try:
            connection = Connection(
                self.node.host,
                self.node.port,
                connect_timeout=self._connect_timeout,
                client_name=f"node:{self._local_node_id}",
                max_frame_bytes=self._max_frame_bytes,
            )
            connection.connect()
        except KVError as exc:
            self._retry_at = time.monotonic() + RETRY_DELAY
            self._set_state(False, exc.message)
            self._connecting.set_exception(exc)
            raise
        finally:
            done, self._connecting = self._connecting, None
        self._connection = connection
        self._set_state(True, "connected")
        done.set(connection)
        return connection

    def _set_state(self, up: bool, reason: str) -> None:
        if not up:
            self._last_error = reason
        if self.up is not up:
            self.up = up
            self._on_state_change(self, up, reason)


class PeerMonitor:
    """Pings every peer each ``interval`` seconds so their up/down state stays current."""

    def __init__(self, peers: Iterable[Peer], interval: float = MONITOR_INTERVAL) -> None:
        self._peers = list(peers)
        self._interval = interval
        self._loop: gevent.Greenlet | None = None

    def start(self) -> None:
        self._loop = gevent.spawn(self._run)

    def stop(self) -> None:
        if self._loop is not None:
            self._loop.kill()

    def _run(self) -> None:
        while True:
            gevent.joinall([gevent.spawn(peer.ping) for peer in self._peers])
            gevent.sleep(self._interval)
