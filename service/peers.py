"""Other nodes as this node reaches them: one shared connection each, and the heartbeat monitor.

A ``Peer`` is a remote replica for the coordinator. Its connection is multiplexed, so every
concurrent request to that peer shares one socket. When a connect fails, requests to the peer fail
at once until the reconnection policy (``client.policies``) allows the next dial, instead of each
paying a connect timeout.

The ``PeerMonitor`` pings every peer (the node does it once a second) and feeds the answers, and every
failed request, to the failure detector; it reports each change of a peer's state to the node.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import gevent

from client import protocol
from client.connection import Connection, Framing
from client.errors import KVError, NodeUnreachableError
from client.protocol import Frame, NodeAddress, PeerState, Record, Request, Status
from client.transport import ConnectionSlot
from service.admission import PEER_NAME_PREFIX
from service.failure_detector import FailureDetector

HEARTBEAT_INTERVAL = 1.0
"""Seconds between pings of each peer: a restarted peer is seen as up about this fast."""


@dataclass(frozen=True)
class PeerSettings:
    local_node_id: str
    """This node, named to peers in HELLO."""
    connect_timeout: float
    """Seconds a connect to a peer may take (``KV_CONNECT_TIMEOUT_MS``)."""
    request_timeout: float
    """Seconds a request to a peer may take (``KV_REQUEST_TIMEOUT_MS``)."""
    max_frame_bytes: int
    """The frame limit this node reads replies with."""


class Peer:
    """Another node, as a replica the coordinator reaches over the network, and as a target for
    heartbeats, handoff and anti-entropy (``call``).

    One multiplexed connection (``node``'s address) carries every request to the peer, opened on
    first use and reopened after a failure once the reconnection policy allows: until then requests fail
    at once with ``NodeUnreachableError``. ``on_failure(node_id)`` hears of every request that could
    not reach the peer (the failure detector's evidence).
    """

    reads_block = True
    """A read is a network round trip: the coordinator bounds it with the request timeout."""

    def __init__(
        self,
        node: NodeAddress,
        settings: PeerSettings,
        on_failure: Callable[[str], None] = lambda node_id: None,
    ) -> None:
        self.node = node
        self.node_id = node.node_id
        self.last_error = ""
        self._local_node_id = settings.local_node_id
        self._connect_timeout = settings.connect_timeout
        self._request_timeout = settings.request_timeout
        self._max_frame_bytes = settings.max_frame_bytes
        self._on_failure = on_failure
        self._slot = ConnectionSlot(self._dial, node.address)

    # --- the replica interface --------------------------------------------------------------------

    def read(self, key: bytes) -> Record | None:
        frame = self.call(protocol.ReplicaGet(key))
        return None if frame.code == Status.NOT_FOUND else protocol.decode_record(frame.body)

    def write(self, key: bytes, record: Record) -> None:
        self.call(protocol.ReplicaPut(key, record))

    def write_hint(self, key: bytes, record: Record, owner: str) -> None:
        self.call(protocol.HintedPut(key, record, owner))

    # --- transport --------------------------------------------------------------------------------

    def call(self, request: Request, *, retry_now: bool = False, timeout: float | None = None) -> Frame:
        """Send ``request`` and return the reply frame; connection failures raise
        ``NodeUnreachableError`` and are reported to the failure detector."""
        if not retry_now and self._slot.backing_off:
            # last_error stays the failure that started the backoff: quoting this message in it
            # would nest one more "is unreachable (...)" in every refusal.
            self._on_failure(self.node_id)
            raise NodeUnreachableError(f"{self.node_id} is unreachable ({self.last_error})")
        try:
            connection = self._slot.get()
            return connection.call(request, timeout=timeout or self._request_timeout)
        except NodeUnreachableError as exc:
            self.last_error = exc.message
            self._on_failure(self.node_id)
            raise

    def ping(self) -> protocol.PingReply | None:
        """The peer's answer to PING now (its wall clock and state flags), or ``None`` if it does not
        answer; reconnects if needed whatever the reconnection policy says."""
        try:
            frame = self.call(protocol.Ping(), retry_now=True, timeout=self._connect_timeout * 2)
            return protocol.decode_ping_reply(frame.body)
        except protocol.ProtocolError as exc:
            self.last_error = f"bad PING reply: {exc}"
        except KVError as exc:
            self.last_error = exc.message
        return None

    def close(self) -> None:
        self._slot.close()

    def _dial(self) -> Connection:
        connection = Connection(
            self.node.host,
            self.node.port,
            connect_timeout=self._connect_timeout,
            client_name=PEER_NAME_PREFIX + self._local_node_id,
            framing=Framing(max_frame_bytes=self._max_frame_bytes, coalesce=True),
        )
        connection.connect()  # a failure counts in the slot's backoff
        return connection


class PeerMonitor:
    """Heartbeats: ``beat`` pings every peer at once and keeps the failure detector current.

    ``on_change(peer, old, new)`` runs for every state change, whatever noticed it.
    """

    def __init__(
        self,
        peers: Iterable[Peer],
        detector: FailureDetector,
        on_change: Callable[[Peer, PeerState, PeerState], None],
    ) -> None:
        self._peers = {peer.node_id: peer for peer in peers}
        self._detector = detector
        self._on_change = on_change

    def request_failed(self, node_id: str) -> None:
        """A request to ``node_id`` failed to reach it: evidence for the detector."""
        self._report(self._detector.failure(node_id))

    def beat(self) -> None:
        """One heartbeat round: ping every peer at once, then update the detector."""
        pings = {node_id: gevent.spawn(peer.ping) for node_id, peer in self._peers.items()}
        gevent.joinall(list(pings.values()))
        for node_id, ping in pings.items():
            answered = ping.value is not None
            self._report(self._detector.heartbeat(node_id) if answered else self._detector.failure(node_id))
        self._report(self._detector.evaluate())

    def _report(self, changes: list[tuple[str, PeerState, PeerState]]) -> None:
        for node_id, old, new in changes:
            self._on_change(self._peers[node_id], old, new)
