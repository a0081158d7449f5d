"""What the node's parts report, turned into metrics and log lines, in one place.

The coordinator, hinted handoff, anti-entropy, the local store, the peer monitor and the background
tasks each report events through a small interface of their own (``CoordinatorEvents``,
``HandoffEvents``, ``AntiEntropyEvents``, ``StoreEvents``, and the callbacks for peer state changes
and failed tasks), and know nothing of Prometheus or structlog. ``NodeEvents`` implements all of
them: every counter the node increments, and every log line about something a part did, is here.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any

from client.protocol import PeerState, Version
from service.anti_entropy import AntiEntropyEvents, RoundResult
from service.clock_offsets import ClockOffsets, OffsetSample
from service.coordinator import CoordinatorEvents
from service.handoff import HandoffEvents
from service.local_store import LocalStore, StoreEvents
from service.logging import printable_key
from service.metrics import Metrics
from service.peers import MonitorEvents, Peer

REFUSAL_LOG_INTERVAL_S = 10.0
"""Timestamps refused for clock skew are logged at most this often per source."""
OFFSET_LOG_INTERVAL_MS = 60_000
"""A peer's clock offset is logged at most once a minute while it stays above half the maximum."""


class NodeEvents(CoordinatorEvents, HandoffEvents, AntiEntropyEvents, StoreEvents, MonitorEvents):
    """Every event a node's parts report, as metrics (``metrics``) and JSON log lines (``log``).

    ``hint_window_s`` is only quoted in the log line for expired hints.
    """

    def __init__(self, metrics: Metrics, log: Any, *, hint_window_s: float) -> None:
        self.metrics = metrics
        self.log = log
        self._hint_window_s = hint_window_s
        self._pending_hints: Callable[[], int] = lambda: 0  # until ``track`` names the store
        self.on_peer_up: Callable[[str], None] = lambda peer: None
        """Called when a peer comes up (the node wakes hinted handoff)."""
        self._offset_logged_at: dict[str, int] = {}
        self._refusals: dict[str, tuple[int, float]] = {}  # source -> (refused since logged, logged at)
        self._fenced: str | None = None

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
            self.on_peer_up(peer.node_id)
        elif new is PeerState.SUSPECT:
            self.log.warning("peer_suspect", reason=peer.last_error, **fields)
        else:
            self.log.warning("peer_down", reason=peer.last_error, **fields)

    def clock_offset(self, peer: str, sample: OffsetSample, offsets: ClockOffsets) -> None:
        self.metrics.peer_clock_offset.labels(peer).set(sample.offset_ms / 1000)
        large = abs(sample.offset_ms) - sample.uncertainty_ms > offsets.max_offset_ms / 2
        last = self._offset_logged_at.get(peer)
        if large and (last is None or sample.measured_at_ms - last >= OFFSET_LOG_INTERVAL_MS):
            self._offset_logged_at[peer] = sample.measured_at_ms
            log = self.log.error if offsets.beyond_bound(peer) else self.log.warning
            log(
                "peer_clock_offset",
                peer=peer,
                offset_ms=round(sample.offset_ms, 1),
                uncertainty_ms=round(sample.uncertainty_ms, 1),
                max_offset_ms=offsets.max_offset_ms,
            )
        elif not large and last is not None:
            del self._offset_logged_at[peer]
            self.log.info("peer_clock_offset_normal", peer=peer, offset_ms=round(sample.offset_ms, 1))
        fenced = offsets.fenced()
        if (fenced is None) != (self._fenced is None):
            self.metrics.clock_fenced.set(0 if fenced is None else 1)
            if fenced is None:
                self.log.info("clock_fence_lifted", offsets_ms={p: round(o, 1) for p, o in offsets.offsets().items()})
            else:
                self.log.error("clock_fenced", reason=fenced)
        self._fenced = fenced

    def clock_skew_refused(self, source: str, reason: str) -> None:
        """A timestamp from ``source`` (``after``, ``replica_write``, ``hint``, ``replica_version``,
        ``fenced``) was refused; logged at most once per ``REFUSAL_LOG_INTERVAL_S`` per source, with
        the count since the last line (a hostile client must not flood the log)."""
        self.metrics.clock_skew_refusals.labels(source).inc()
        now = time.monotonic()
        count, logged_at = self._refusals.get(source, (0, -REFUSAL_LOG_INTERVAL_S))
        if now - logged_at >= REFUSAL_LOG_INTERVAL_S:
            self.log.warning("clock_skew_refused", source=source, reason=reason, refused_since_last=count + 1)
            self._refusals[source] = (0, now)
        else:
            self._refusals[source] = (count + 1, logged_at)

    def write_restamped(self, key: bytes, superseded: Version, newer: Version) -> None:
        self.metrics.writes_restamped.inc()
        self.log.debug(
            "write_restamped",
            key=printable_key(key),
            superseded=superseded.timestamp,
            newer=newer.timestamp,
            newer_writer=newer.node_id,
        )

    def task_failed(self, name: str, error: Exception) -> None:
        """A pass of background task ``name`` raised; the task runs again at its next interval."""
        self.log.error("background_task_failed", task=name, error=str(error) or type(error).__name__)

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
