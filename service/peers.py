"""Other nodes as this node reaches them: one shared connection each, and the heartbeat monitor.

A ``Peer`` is a remote replica for the coordinator. Its connection is multiplexed, so every
concurrent request to that peer shares one socket. When a connect fails, requests to the peer fail
at once until the reconnection policy (``client.policies``) allows the next dial, instead of each
paying a connect timeout.

The ``PeerMonitor`` pings every peer (the node does it once a second) and feeds the answers, and every
failed request, to the failure detector; it reports each change of a peer's state to the node. The
store flags in each answer (storage full, catching up) go to ``store_flags.StoreFlags``, as does a
refusal that shows them (STORAGE_FULL, REPLICA_BEHIND) between heartbeats.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from typing import Protocol

import gevent

from client import protocol
from client.connection import Connection, Framing
from client.errors import (
    BadRequestError,
    KVError,
    NodeUnreachableError,
    ReplicaBehindError,
    StorageFullError,
    TlsError,
)
from client.protocol import (
    PING_FLAG_CATCHING_UP,
    PING_FLAG_STORAGE_FULL,
    Frame,
    IdentifyReply,
    MembershipVersion,
    NodeAddress,
    PeerIdentity,
    PeerState,
    Record,
    Request,
    Status,
    Version,
)
from client.security import NO_SECURITY, Security
from client.transport import ConnectionSlot
from service.admission import PEER_NAME_PREFIX
from service.clock_offsets import ClockOffsets, OffsetSample
from service.failure_detector import FailureDetector
from service.membership import ClusterRecord, MembershipError
from service.membership import decode as decode_record
from service.membership_view import MembershipRefusedError
from service.store_flags import StoreFlags

STALLED_AFTER = 0.25
"""The share of the request timeout (0.5 s by default) a peer may leave requests unanswered before
it counts as stalled: far above a healthy round trip, far below the failure detector's 5 s."""
HEARTBEAT_INTERVAL = 1.0
"""Seconds between pings of each peer: a restarted peer is seen as up about this fast."""


class PeerMembership(Protocol):
    """What a peer link needs of the node's membership (``membership_view.MembershipView``)."""

    def me(self) -> PeerIdentity: ...

    def check_answer(self, expected: str, address: str, reply: IdentifyReply) -> None: ...

    def unreachable(self, peer: str) -> None: ...

    def observe(self, peer: str, version: MembershipVersion | None) -> bool: ...

    def offer(self, peer: str, theirs: ClusterRecord) -> None: ...

    @property
    def epoch(self) -> int:
        """The membership epoch of the ring this node routes by."""
        ...


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
    security: Callable[[], Security] = lambda: NO_SECURITY
    """How to dial a peer now: TLS context and the cluster secret's credentials (``NodeSecurity``)."""
    plaintext_fallback: bool = False
    """``KV_TLS_MODE=migrate``: a peer that does not speak TLS yet is dialled again in plaintext."""
    membership: PeerMembership | None = None
    """Each link opens with IDENTIFY, checked here; ``None``: links are used unchecked (tests)."""


class Peer:
    """Another node, as a replica the coordinator reaches over the network, and as a target for
    heartbeats, handoff and anti-entropy (``call``).

    One multiplexed connection (``node``'s address) carries every request to the peer, opened on
    first use and reopened after a failure once the reconnection policy allows: until then requests fail
    at once with ``NodeUnreachableError``. ``on_failure(node_id)`` hears of every request that could
    not reach the peer (the failure detector's evidence), ``on_refusal(node_id, flag)`` of every
    STORAGE_FULL or REPLICA_BEHIND answer (the store flag it shows).
    """

    reads_block = True
    """A read is a network round trip: the coordinator bounds it with the request timeout."""

    def __init__(
        self,
        node: NodeAddress,
        settings: PeerSettings,
        on_failure: Callable[[str], None] = lambda node_id: None,
        on_refusal: Callable[[str, int], None] = lambda node_id, flag: None,
    ) -> None:
        self.node = node
        self.node_id = node.node_id
        self.last_error = ""
        self._local_node_id = settings.local_node_id
        self._connect_timeout = settings.connect_timeout
        self._request_timeout = settings.request_timeout
        self._max_frame_bytes = settings.max_frame_bytes
        self._security = settings.security
        self._plaintext_fallback = settings.plaintext_fallback
        self._membership = settings.membership
        self._gossips = settings.membership is not None  # PING asks for the membership epoch and digest
        self._on_failure = on_failure
        self._on_refusal = on_refusal
        self._slot = ConnectionSlot(self._dial, node.address)

    # --- the replica interface --------------------------------------------------------------------

    def read(self, key: bytes, *, behind_ok: bool = False) -> Record | None:
        try:
            frame = self.call(protocol.ReplicaGet(key, behind_ok))
        except ReplicaBehindError:
            self._on_refusal(self.node_id, PING_FLAG_CATCHING_UP)
            raise
        return None if frame.code == Status.NOT_FOUND else protocol.decode_record(frame.body)

    def write(self, key: bytes, record: Record, *, stalled_after: float | None = None) -> Version | None:
        """Store ``record`` on the peer; the newer version it holds instead, or ``None`` (see
        ``LocalStore.write``). A CLOCK_SKEW refusal raises ``ClockSkewError``, a STORAGE_FULL one
        ``StorageFullError``; no reply within the request timeout, or (with ``stalled_after``)
        nothing at all heard from the peer for that many seconds, raises ``RequestTimeoutError``."""
        frame = self._write(protocol.ReplicaPut(key, record), stalled_after)
        return protocol.decode_replica_put_reply(frame.body)

    def write_hint(self, key: bytes, record: Record, owner: str) -> None:
        # The epoch it is routed by: a fallback that has not heard of ``owner`` yet holds it anyway.
        epoch = self._membership.epoch if self._membership is not None else 0
        self._write(protocol.HintedPut(key, record, owner, epoch))

    def _write(self, request: protocol.ReplicaPut | protocol.HintedPut, stalled_after: float | None = None) -> Frame:
        try:
            return self.call(request, stalled_after=stalled_after)
        except StorageFullError:
            self._on_refusal(self.node_id, PING_FLAG_STORAGE_FULL)
            raise

    # --- transport --------------------------------------------------------------------------------

    def call(
        self,
        request: Request,
        *,
        retry_now: bool = False,
        timeout: float | None = None,
        stalled_after: float | None = None,
    ) -> Frame:
        """Send ``request`` and return the reply frame (``Connection.call``: ``timeout`` defaults to
        the request timeout); connection failures raise ``NodeUnreachableError`` and are reported to
        the failure detector."""
        if not retry_now and self._slot.backing_off:
            # last_error stays the failure that started the backoff: quoting this message in it
            # would nest one more "is unreachable (...)" in every refusal.
            self._on_failure(self.node_id)
            raise NodeUnreachableError(f"{self.node_id} is unreachable ({self.last_error})")
        try:
            connection = self._slot.get()
            return connection.call(request, timeout or self._request_timeout, stalled_after=stalled_after)
        except NodeUnreachableError as exc:
            self.last_error = exc.message
            self._on_failure(self.node_id)
            raise

    @property
    def request_timeout(self) -> float:
        """Seconds ``call`` waits for a reply unless given another ``timeout``."""
        return self._request_timeout

    def ping(self) -> protocol.PingReply | None:
        """The peer's answer to PING now (its wall clock and state flags), or ``None`` if it does not
        answer; reconnects if needed whatever the reconnection policy says."""
        try:
            ping = protocol.Ping(membership=self._gossips)
            try:
                frame = self.call(ping, retry_now=True, timeout=self._connect_timeout * 2)
            except BadRequestError:
                if not self._gossips:
                    raise
                # A node from before membership records takes only an empty PING: ask it so from now on.
                self._gossips = False
                frame = self.call(protocol.Ping(), retry_now=True, timeout=self._connect_timeout * 2)
            return protocol.decode_ping_reply(frame.body)
        except protocol.ProtocolError as exc:
            self.last_error = f"bad PING reply: {exc}"
        except KVError as exc:
            self.last_error = exc.message
        return None

    def stalled(self) -> bool:
        """Whether requests to the peer have gone unanswered, with nothing heard from it, for more
        than ``STALLED_AFTER`` of the request timeout: a paused or swapping node, which the failure
        detector will only call down seconds later. The coordinator routes around it meanwhile."""
        connection = self._slot.connection
        return connection is not None and connection.stalled(self._request_timeout * STALLED_AFTER)

    def close(self) -> None:
        self._slot.close()

    def pull_membership(self) -> ClusterRecord:
        """The membership record the peer holds (MEMBERSHIP); ``KVError``, ``ProtocolError`` or
        ``MembershipError`` if it cannot be had."""
        frame = self.call(protocol.MembershipRecord())
        return decode_record(protocol.decode_membership_reply(frame.body))

    def _dial(self) -> Connection:
        try:
            return self._dial_once()
        except MembershipRefusedError:
            raise
        except NodeUnreachableError:
            if self._membership is not None:
                self._membership.unreachable(self.node_id)  # what it said before no longer counts
            raise

    def _dial_once(self) -> Connection:
        security = self._security()
        try:
            return self._connect(security)
        except TlsError as exc:
            if not self._plaintext_fallback or "over TLS" not in exc.message or "certificate" in exc.message:
                raise
            # Migrating: this peer does not speak TLS yet (a certificate it shows is never skipped).
            return self._connect(replace(security, tls_context=None))

    def _connect(self, security: Security) -> Connection:
        connection = Connection(
            self.node.host,
            self.node.port,
            connect_timeout=self._connect_timeout,
            client_name=PEER_NAME_PREFIX + self._local_node_id,
            framing=Framing(max_frame_bytes=self._max_frame_bytes, coalesce=True, security=security),
        )
        connection.connect()  # a failure counts in the slot's backoff
        if self._membership is not None:
            self._identify(connection, self._membership)
        return connection

    def _identify(self, connection: Connection, membership: PeerMembership) -> None:
        """IDENTIFY both ways on a new link; ``MembershipRefusedError`` (the link closed) if the peer
        is not the member dialled or refuses this node."""
        try:
            frame = connection.call(protocol.Identify(membership.me()), self._request_timeout)
            reply = protocol.decode_identify_reply(frame.body)
        except BadRequestError:
            self._gossips = False  # a node from before IDENTIFY: no membership record to check or gossip
            return
        except protocol.ProtocolError as exc:
            connection.close()
            raise NodeUnreachableError(
                f"{self.node_id} answered IDENTIFY with bytes that do not parse: {exc}"
            ) from None
        except KVError:
            connection.close()
            raise
        try:
            membership.check_answer(self.node_id, self.node.address, reply)
        except MembershipRefusedError:
            connection.close()
            raise
        self._gossips = True


class MonitorEvents:
    """What the heartbeat monitor reports; ``events.NodeEvents`` turns these into metrics and logs."""

    def peer_state_changed(self, peer: Peer, old: PeerState, new: PeerState) -> None:
        """The failure detector moved ``peer`` from ``old`` to ``new``, whatever noticed it."""

    def clock_offset(self, peer: str, sample: OffsetSample, offsets: ClockOffsets) -> None:
        """A heartbeat measured ``peer``'s clock offset (``sample``); ``offsets`` holds the verdicts."""


@dataclass(frozen=True)
class HeartbeatRecords:
    """Where what a heartbeat answer says is kept, besides the failure detector: the peer's clock
    offset (read on ``wall_ms``, this node's clock) and its store flags."""

    offsets: ClockOffsets
    store_flags: StoreFlags
    wall_ms: Callable[[], int]
    membership: PeerMembership | None = None
    """Told each answer's membership epoch and digest; given the records pulled from peers that differ."""


class PeerMonitor:
    """Heartbeats: ``beat`` pings every peer at once, keeps the failure detector current, and
    records each answer's clock offset and store flags (``records``); ``events`` hears of every
    state change, whatever noticed it, and of every offset measured."""

    def __init__(
        self,
        peers: Iterable[Peer],
        detector: FailureDetector,
        events: MonitorEvents,
        records: HeartbeatRecords,
    ) -> None:
        self._peers = {peer.node_id: peer for peer in peers}
        self._detector = detector
        self._events = events
        self._records = records

    def add(self, peer: Peer) -> None:
        """Beat ``peer`` too from the next round on (a member that joined)."""
        self._peers.setdefault(peer.node_id, peer)

    def request_failed(self, node_id: str) -> None:
        """A request to ``node_id`` failed to reach it: evidence for the detector."""
        self._report(self._detector.failure(node_id))

    def beat(self) -> None:
        """One heartbeat round: ping every peer at once, then update the detector and the offsets."""
        pings = {node_id: gevent.spawn(self._ping, peer) for node_id, peer in self._peers.items()}
        gevent.joinall(list(pings.values()))
        records = self._records
        pulls = []
        for node_id, ping in pings.items():
            answered = ping.value is not None
            if answered:
                sent_ms, received_ms, reply = ping.value
                if records.membership is not None and records.membership.observe(node_id, reply.membership):
                    pulls.append(gevent.spawn(self._pull, self._peers[node_id], records.membership))
                records.store_flags.observe(node_id, reply.flags)
                sample = records.offsets.record(node_id, sent_ms, received_ms, reply.wall_ms)
                self._events.clock_offset(node_id, sample, records.offsets)
            self._report(self._detector.heartbeat(node_id) if answered else self._detector.failure(node_id))
        self._report(self._detector.evaluate())
        gevent.joinall(pulls)

    @staticmethod
    def _pull(peer: Peer, membership: PeerMembership) -> None:
        """Fetch ``peer``'s membership record and offer it to this node's (the next beat retries a failure)."""
        try:
            record = peer.pull_membership()
        except (KVError, protocol.ProtocolError, MembershipError) as exc:
            peer.last_error = f"membership record not pulled: {exc}"
            return
        membership.offer(peer.node_id, record)

    def _ping(self, peer: Peer) -> tuple[int, int, protocol.PingReply] | None:
        sent_ms = self._records.wall_ms()
        reply = peer.ping()
        return None if reply is None else (sent_ms, self._records.wall_ms(), reply)

    def _report(self, changes: list[tuple[str, PeerState, PeerState]]) -> None:
        for node_id, old, new in changes:
            self._events.peer_state_changed(self._peers[node_id], old, new)
