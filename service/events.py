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
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from client.protocol import PING_FLAG_CATCHING_UP, PING_FLAG_STORAGE_FULL, PeerState, Role, Version
from service.anti_entropy import AntiEntropyEvents, RoundResult
from service.authentication import AuthEvents
from service.cleanup import CleanupEvents
from service.clock_offsets import ClockOffsets, OffsetSample
from service.connection_limits import Close
from service.coordinator import CoordinatorEvents
from service.handoff import HandoffEvents
from service.local_store import LocalStore, StoreEvents
from service.logging import printable_key
from service.membership import ClusterRecord
from service.membership_view import MembershipEvents
from service.metrics import Metrics
from service.peers import MonitorEvents, Peer
from service.server import ConnectionEvents
from service.storage import StorageError
from service.streaming import StreamEvents
from service.transfer import Checkpoint

HINT_FAILURE_LOG_INTERVAL_S = 30.0
"""At most one ``hint_delivery_failed`` warning per owner in this many seconds: a pass runs every
second, and an owner that keeps refusing must not flood the log."""


class Throttle:
    """At most one report per key per ``interval`` seconds (on the ``now`` clock); what is held back
    is counted into the next report."""

    def __init__(self, interval: float, now: Callable[[], float] = time.monotonic) -> None:
        self._interval = interval
        self._now = now
        self._last: dict[str, float] = {}
        self._held: dict[str, int] = {}

    def add(self, key: str, count: int) -> int | None:
        """``count`` more events for ``key``: the total to report now, or ``None`` to hold them back."""
        total = self._held.pop(key, 0) + count
        now = self._now()
        last = self._last.get(key)
        if last is not None and now - last < self._interval:
            self._held[key] = total
            return None
        self._last[key] = now
        return total


CONNECTION_LOG_INTERVAL_S = 1.0
"""At most one line a second for each event a flood of connections could repeat."""
REFUSAL_LOG_INTERVAL_S = 10.0
"""Timestamps refused for clock skew are logged at most this often per source."""
OFFSET_LOG_INTERVAL_MS = 60_000
"""A peer's clock offset is logged at most once a minute while it stays above half the maximum."""


class NodeEvents(
    CoordinatorEvents,
    HandoffEvents,
    AntiEntropyEvents,
    StoreEvents,
    MonitorEvents,
    ConnectionEvents,
    AuthEvents,
    MembershipEvents,
    StreamEvents,
    CleanupEvents,
):
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
        self._skew_refusals = Throttle(REFUSAL_LOG_INTERVAL_S)
        self._fenced: str | None = None
        self._space: Callable[[], tuple[int, int, int | None]] = lambda: (0, 0, None)
        self._hint_failures = Throttle(HINT_FAILURE_LOG_INTERVAL_S)
        self._connection_lines = Throttle(CONNECTION_LOG_INTERVAL_S)
        self._auth_lines = Throttle(CONNECTION_LOG_INTERVAL_S)

    # --- membership ------------------------------------------------------------------------------

    def membership_serving(self, record: ClusterRecord, owned: int) -> None:
        """The node serves ``record``'s ring, holding a replica of ``owned`` partitions."""
        self.metrics.membership_epoch.set(record.epoch)
        self.metrics.partitions_owned.set(owned)

    def record_changed(self, old: ClusterRecord, new: ClusterRecord, source: str) -> None:
        self.metrics.membership_epoch.set(new.epoch)
        if new.epoch != old.epoch:
            self.log.info(
                "membership_epoch_changed",
                old_epoch=old.epoch,
                epoch=new.epoch,
                source=source,
                members={m.node_id: m.state.value for m in new.members},
            )
        else:
            learnt = [m.node_id for m, was in zip(new.members, old.members, strict=False) if m != was]
            self.log.info("membership_updated", epoch=new.epoch, source=source, members_changed=learnt)

    def peer_refused(self, event: str, details: dict[str, object]) -> None:
        self.log.error(event, **details)

    def member_replaced(self, node_id: str, old: str, new: str, address: str) -> None:
        self.log.warning(
            "member_replaced",
            node=node_id,
            old_identity=old,
            identity=new,
            address=address,
            hint="the member answers at its own address as a new process (a new or wiped disk); "
            "anti-entropy brings its data back",
        )

    def save_failed(self, record: ClusterRecord, error: str) -> None:
        self.log.error(
            "membership_not_saved",
            epoch=record.epoch,
            error=error,
            hint="the node keeps its record until it can write KV_DATA_DIR/membership.json",
        )

    def publish_failed(self, epoch: int, error: str) -> None:
        self.log.error(
            "membership_epoch_not_published",
            epoch=epoch,
            error=error,
            hint="the node's PING reports an older epoch, so membership changes wait; check the supervisor's "
            "run directory (its supervisor_started line) is writable",
        )

    def conflict(self, ours: ClusterRecord, theirs: ClusterRecord, winner: ClusterRecord, peer: str) -> None:
        self.log.error(
            "membership_conflict",
            epoch=ours.epoch,
            peer=peer,
            ours={m.node_id: m.address for m in ours.members},
            theirs={m.node_id: m.address for m in theirs.members},
            kept="ours" if winner == ours or winner.members == ours.members else "theirs",
            hint="two membership changes were made at one epoch, or founding nodes were given different "
            "addresses in KV_PEERS; the one kept is the same on every node",
        )

    def track(self, store: LocalStore, peer_ids: Iterable[str]) -> None:
        """Read the store's key and hint counts and its state at each scrape; show every peer as not
        up until the failure detector says otherwise."""
        self._pending_hints = store.pending_hints
        self._space = store.space

        def state() -> tuple[bool, bool, int, int, int | None]:
            return (store.storage_full, bool(store.flags & PING_FLAG_CATCHING_UP), *store.space())

        self.metrics.track_store(lambda: store.live_keys, _or_zero(store.pending_hints), state)
        for peer_id in peer_ids:
            self.metrics.peer_up.labels(peer_id).set(0)

    def peer_added(self, peer_id: str) -> None:
        """A member joined: shown as not up until the failure detector says otherwise."""
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
        refused = self._skew_refusals.add(source, 1)
        if refused is not None:
            self.log.warning("clock_skew_refused", source=source, reason=reason, refused_since_last=refused)

    def write_restamped(self, key: bytes, superseded: Version, newer: Version) -> None:
        self.metrics.writes_restamped.inc()
        self.log.debug(
            "write_restamped",
            key=printable_key(key),
            superseded=superseded.timestamp,
            newer=newer.timestamp,
            newer_writer=newer.node_id,
        )

    def peer_store_changed(self, peer: str, old: int, new: int) -> None:
        """A peer's store flags changed (its PING reply, or a refusal, said so)."""
        if new & PING_FLAG_STORAGE_FULL:
            self.log.warning("peer_storage_full", peer=peer)
        elif new & PING_FLAG_CATCHING_UP:
            self.log.info("peer_storage_catching_up", peer=peer)
        else:
            self.log.info(
                "peer_storage_writable", peer=peer, previous="full" if old & PING_FLAG_STORAGE_FULL else "catching up"
            )

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

    # --- security ---------------------------------------------------------------------------------

    def auth_failed(self, user: str, peer: str, reason: str, failures: int) -> None:
        self.metrics.auth_failures.labels(user).inc()
        count = self._auth_lines.add(user, 1)
        if count is not None:
            self.log.warning(
                "auth_failed",
                user=user,
                peer=peer,
                reason=reason,
                failures_in_a_row=failures,
                **({"suppressed": count - 1} if count > 1 else {}),
            )

    def authenticated(self, user: str, role: Role, peer: str) -> None:
        self.log.debug("authenticated", user=user, role=role.name.lower(), peer=peer)

    def tls_failed(self, peer: str, reason: str) -> None:
        self.metrics.tls_failures.inc()
        self._throttled("tls_handshake_failed", self.log.warning, peer=peer, reason=reason)

    def _throttled(self, event: str, log: Callable[..., Any], **fields: Any) -> None:
        count = self._connection_lines.add(event, 1)
        if count is not None:
            log(event, **fields, **({"suppressed": count - 1} if count > 1 else {}))

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

    def delivery_failed(self, owner: str, count: int, error: str) -> None:
        self.metrics.hint_delivery_failures.labels(owner).inc(count)
        failed = self._hint_failures.add(owner, count)
        if failed is not None:
            self.log.warning(
                "hint_delivery_failed",
                owner=owner,
                failed=failed,
                last_error=error,
                pending=self._pending_hints(),
            )

    def storage_full(self, cause: str) -> None:
        used, limit, free = self._space()
        self.log.warning(
            "storage_full",
            cause=cause,
            used_bytes=used,
            limit_bytes=limit,
            disk_free_bytes=free,
            action="free space on the disk or raise KV_STORAGE_LIMIT_MB; writes resume by themselves",
        )

    def storage_recovered(self, full_s: float, catching_up: bool) -> None:
        self.log.info("storage_recovered", full_s=round(full_s, 1), catching_up=catching_up)

    def storage_caught_up(self, seconds: float) -> None:
        self.log.info("storage_caught_up", seconds=round(seconds, 1))

    def marker_failed(self, path: str, error: str) -> None:
        self.log.warning("storage_marker_failed", path=path, error=error)

    def storage_reopened(self, error: str | None) -> None:
        if error is None:
            self.log.warning("storage_reopened", reason="LMDB reported a fatal error after a failed write")
        else:
            self.log.error("storage_reopen_failed", error=error)

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

    def cleanup_keys_dropped(self, count: int) -> None:
        self.metrics.cleanup_keys_dropped.inc(count)

    def cleanup_partition_finished(self, partition: int, dropped: int) -> None:
        self.log.info("cleanup_partition_finished", partition=partition, dropped=dropped)

    # --- partition streaming ------------------------------------------------------------------------

    def stream_started(self, partition: int, sources: Sequence[str], checkpoint: Checkpoint | None) -> None:
        resumed = checkpoint is not None
        self.log.info("stream_started", partition=partition, sources=list(sources), resumed=resumed)

    def stream_bytes(self, count: int) -> None:
        self.metrics.stream_bytes.labels("in").inc(count)

    def stream_page_served(self, size: int) -> None:
        self.metrics.stream_bytes.labels("out").inc(size)

    def stream_source_failed(self, partition: int, source: str, reason: str) -> None:
        self.log.warning("stream_source_failed", partition=partition, source=source, error=reason)

    def stream_failed(self, partition: int, reason: str, retry_in_s: float) -> None:
        self.log.warning("stream_failed", partition=partition, error=reason, retry_in_s=round(retry_in_s, 3))

    def stream_finished(self, partition: int, seconds: float, size: int, keys: int) -> None:
        self.log.info("stream_finished", partition=partition, seconds=round(seconds, 3), bytes=size, keys=keys)

    def streams_pending(self, count: int) -> None:
        self.metrics.stream_partitions_pending.set(count)


def _or_zero(read: Callable[[], int]) -> Callable[[], int]:
    """``read`` for a gauge: 0 while the store cannot be read (it is being reopened), not a failed scrape."""

    def reading() -> int:
        try:
            return read()
        except StorageError:
            return 0

    return reading
