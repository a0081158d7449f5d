"""What the node's parts report, turned into metrics and log lines, in one place.

The coordinator, hinted handoff, anti-entropy, the local store, the protocol server, the peer monitor
and the background tasks each report events through a small interface of their own
(``CoordinatorEvents``, ``HandoffEvents``, ``AntiEntropyEvents``, ``StoreEvents``,
``ConnectionEvents``, and the callbacks for peer state changes and failed tasks), and know nothing of
Prometheus or structlog. ``NodeEvents`` implements all of them: every counter the node increments,
and every log line about something a part did, is here. Events a client can cause by the thousand
(refused or timed-out connections) are logged through a ``Throttle``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any

from client.protocol import PeerState
from service.anti_entropy import AntiEntropyEvents, RoundResult
from service.connection_limits import Close
from service.coordinator import CoordinatorEvents
from service.handoff import HandoffEvents
from service.local_store import LocalStore, StoreEvents
from service.logging import printable_key
from service.metrics import Metrics
from service.peers import Peer
from service.server import ConnectionEvents

THROTTLE_SECONDS = 1.0
"""At most one line a second for each event a flood of connections could repeat."""


class Throttle:
    """Lets one log line through per ``interval`` seconds and counts those it holds back.

    ``allow()`` returns ``None`` to hold a line back, or the number held back since the last line
    let through (to log with this one)."""

    def __init__(self, interval: float = THROTTLE_SECONDS, clock: Callable[[], float] = time.monotonic) -> None:
        self._interval = interval
        self._clock = clock
        self._next = float("-inf")
        self._held_back = 0

    def allow(self) -> int | None:
        now = self._clock()
        if now < self._next:
            self._held_back += 1
            return None
        self._next = now + self._interval
        held_back, self._held_back = self._held_back, 0
        return held_back


class NodeEvents(CoordinatorEvents, HandoffEvents, AntiEntropyEvents, StoreEvents, ConnectionEvents):
    """Every event a node's parts report, as metrics (``metrics``) and JSON log lines (``log``).

    ``hint_window_s`` is only quoted in the log line for expired hints.
    """

    def __init__(self, metrics: Metrics, log: Any, *, hint_window_s: float) -> None:
        self.metrics = metrics
        self.log = log
        self._hint_window_s = hint_window_s
        self._pending_hints: Callable[[], int] = lambda: 0  # until ``track`` names the store
        self._throttles = {event: Throttle() for event in ("connection_refused", "handshake_timeout", "frame_timeout")}

    def track(self, store: LocalStore, peer_ids: Iterable[str]) -> None:
        """Read the store's key and hint counts at each scrape; show every peer as not up until the
        failure detector says otherwise."""
        self._pending_hints = store.pending_hints
        self.metrics.track_store(lambda: store.live_keys, store.pending_hints)
        for peer_id in peer_ids:
            self.metrics.peer_up.labels(peer_id).set(0)

    # --- peers and tasks --------------------------------------------------------------------------

    def peer_state_changed(self, peer: Peer, old: PeerState, new: PeerState) -> None:
        self.metrics.peer_up.labels(peer.node_id).set(1 if new is PeerState.UP else 0)
        fields = {"peer": peer.node_id, "address": peer.node.address, "previous": old.name.lower()}
        if new is PeerState.UP:
            self.log.info("peer_up", **fields)
        elif new is PeerState.SUSPECT:
            self.log.warning("peer_suspect", reason=peer.last_error, **fields)
        else:
            self.log.warning("peer_down", reason=peer.last_error, **fields)

    def task_failed(self, name: str, error: Exception) -> None:
        """A pass of background task ``name`` raised; the task runs again at its next interval."""
        self.log.error("background_task_failed", task=name, error=str(error) or type(error).__name__)

    # --- connections ------------------------------------------------------------------------------

    def refused(self, peer: str, limit: int) -> None:
        self.metrics.connections_refused.inc()
        self._throttled("connection_refused", self.log.warning, peer=peer, limit=limit)

    def closed(self, reason: Close, peer: str, details: dict[str, Any]) -> None:
        self.metrics.connections_closed.labels(reason.value).inc()
        if reason is Close.OUTPUT_LIMIT:
            self.log.warning("client_output_limit", peer=peer, **details)
        elif reason is Close.IDLE_TIMEOUT:
            self.log.debug("connection_idle", peer=peer, **details)
        else:
            self._throttled(reason.value, self.log.info, peer=peer, **details)

    def _throttled(self, event: str, log: Callable[..., Any], **fields: Any) -> None:
        held_back = self._throttles[event].allow()
        if held_back is not None:
            log(event, **fields, **({"suppressed": held_back} if held_back else {}))

    # --- coordinator ------------------------------------------------------------------------------

    def replica_write(self, node_id: str, ok: bool) -> None:
        self.metrics.count_replica_write(node_id, "ok" if ok else "error")

    def hinted_write(self, owner: str, holder: str) -> None:
        self.metrics.count_replica_write(owner, "hinted")

    def read_repair(self, key: bytes, node_id: str, ok: bool) -> None:
        if ok:
            self.metrics.read_repairs.inc()
        self.log.info("read_repair", key=printable_key(key), replica=node_id, ok=ok)

    # --- the local store and hinted handoff -------------------------------------------------------

    def hint_stored(self, owner: str, key: bytes) -> None:
        self.metrics.hints_stored.labels(owner).inc()
        self.log.info("hint_stored", owner=owner, key=printable_key(key))

    def delivered(self, owner: str, count: int) -> None:
        self.metrics.hints_delivered.labels(owner).inc(count)
        self.log.info("hints_delivered", owner=owner, count=count, pending=self._pending_hints())

    def expired(self, owner: str, count: int) -> None:
        self.metrics.hints_expired.labels(owner).inc(count)
        self.log.warning("hints_expired", owner=owner, count=count, window_s=self._hint_window_s)

    # --- anti-entropy -----------------------------------------------------------------------------

    def round_finished(self, result: RoundResult, seconds: float) -> None:
        self.metrics.antientropy_rounds.inc()
        log = self.log.info if result.differing or result.failed_peers else self.log.debug
        log(
            "anti_entropy_round",
            partitions=result.partitions,
            differing=result.differing,
            repaired=result.repaired,
            failed_peers=result.failed_peers,
            duration_ms=round(seconds * 1000, 1),
        )

    def keys_repaired(self, peer: str, count: int) -> None:
        self.metrics.antientropy_keys_repaired.inc(count)

    def tombstones_purged(self, count: int) -> None:
        self.metrics.tombstones_purged.inc(count)
        self.log.info("tombstones_purged", count=count)
