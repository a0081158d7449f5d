"""Anti-entropy: replicas compare partition digests and exchange only the keys that differ.

Each round, this node takes every peer in turn and the partitions they both replicate. It asks the
peer for those partitions' digests (16 bytes each, kept current by every write, see ``storage``) and
compares them with its own. For each partition that differs it lists the keys and versions on both
sides, page by page, and sends what the peer lacks or holds older (REPLICA_PUT) and fetches what it
lacks or holds older itself (REPLICA_GET, then a local write). That is a Merkle tree of depth two:
4096 partition digests, then the partitions' key lists.

After a round, partitions that were compared with every other replica are recorded as synced, and
tombstones in them that ``reconcile.purgeable`` allows are purged.

Rounds run every ``KV_ANTI_ENTROPY_INTERVAL_S`` seconds, and on demand (the REPAIR op, ``kv repair``).
A round's progress (``progress``: partitions compared, keys found differing and copied, so far) is
part of the node's STATS, which ``kv repair`` polls while it waits and the dashboard shows.
A node whose data directory was wiped starts with every digest empty, so its first round pulls its
whole share of the data back from the other replicas.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import gevent
import gevent.lock
import gevent.pool

from client import protocol
from client.errors import KVError
from client.protocol import KeyVersion, RepairProgress, RepairReply, Status
from service.local_store import LocalStore
from service.peers import Peer
from service.placement import Placement
from service.reconcile import differences, purgeable
from service.versioning import wall_clock_ms

PARTITION_CONCURRENCY = 8
"""Differing partitions reconciled at once with one peer: enough to hide round trips, few enough
not to crowd out client traffic on the shared peer connection."""
TRANSFER_CONCURRENCY = 32
"""Keys copied at once within one partition."""
DIGESTS_PER_REQUEST = 4096
"""Most partitions one DIGESTS request asks for; fewer when 16 bytes each would not fit a frame."""


@dataclass
class RoundResult:
    partitions: int = 0
    differing: int = 0
    repaired: int = 0
    failed_peers: list[str] = field(default_factory=list)

    def add(self, other: RoundResult) -> None:
        self.partitions += other.partitions
        self.differing += other.differing
        self.repaired += other.repaired
        self.failed_peers += other.failed_peers

    def reply(self) -> RepairReply:
        return RepairReply(self.partitions, self.differing, self.repaired, tuple(self.failed_peers))


class RoundProgress:
    """A round's progress so far, updated as it goes. ``total`` is the partition comparisons it will
    make: each partition once per peer it is compared with. A partition counts as compared when its
    digests matched, or once its differing keys were reconciled."""

    def __init__(self, started_ms: int, total: int) -> None:
        self.started_ms = started_ms
        self.finished_ms = 0
        self.total = total
        self.compared = 0
        self.differing = 0
        self.copied = 0

    def finish(self, now_ms: int) -> None:
        self.finished_ms = max(now_ms, self.started_ms, 1)  # never 0, which means "running"

    def reconciled(self, found: int, copied: int) -> None:
        """One differing partition was reconciled: ``found`` keys differed, ``copied`` were copied."""
        self.compared += 1
        self.differing += found
        self.copied += copied

    def snapshot(self) -> RepairProgress:
        return RepairProgress(
            running=not self.finished_ms,
            started_ms=self.started_ms,
            finished_ms=self.finished_ms,
            partitions_total=self.total,
            partitions_compared=self.compared,
            keys_differing=self.differing,
            keys_copied=self.copied,
        )


NO_ROUND_YET = RepairProgress(False, 0, 0, 0, 0, 0, 0)


class AntiEntropyEvents:
    """What anti-entropy reports; ``events.NodeEvents`` turns these into metrics and logs. Ignored by default."""

    def round_finished(self, result: RoundResult, seconds: float) -> None:
        """A round ended, with what it compared, found and copied."""

    def keys_repaired(self, peer: str, count: int) -> None:
        """``count`` keys were copied between this node and ``peer``."""

    def tombstones_purged(self, count: int) -> None:
        """``count`` tombstones were deleted after their grace period."""


@dataclass(frozen=True)
class AntiEntropySettings:
    grace_s: float
    """Seconds a tombstone is kept at least (``KV_TOMBSTONE_GRACE_S``)."""
    interval_s: float
    """Seconds between rounds (``KV_ANTI_ENTROPY_INTERVAL_S``; 0: on demand only)."""
    max_frame_bytes: int
    """The frame limit, which bounds how many digests one DIGESTS request asks for."""
    now_ms: Callable[[], int] = wall_clock_ms
    """The clock tombstone ages are measured on, in Unix milliseconds: the node gives its steady
    clock, which ignores wall-clock jumps (tests fake it)."""
    may_purge: Callable[[], bool] = lambda: True
    """Whether this node's clock is trusted enough to purge tombstones now (``ClockOffsets.trusted``):
    a clock that jumped ahead would make every tombstone look old enough."""


class AntiEntropy:
    """Rounds of digest comparison and key exchange between this node and every peer it shares
    partitions with; ``run_round`` runs one (never two at once) and purges the tombstones it made
    safe to purge. Peers the placement says are down are skipped and reported as failed."""

    def __init__(
        self,
        store: LocalStore,
        placement: Placement,
        peers: Mapping[str, Peer],
        settings: AntiEntropySettings,
        events: AntiEntropyEvents | None = None,
    ) -> None:
        self.node_id = store.node_id
        self.store = store
        self.placement = placement
        self.peers = peers
        self.grace_ms = int(settings.grace_s * 1000)
        self.interval_s = settings.interval_s
        self.digests_per_request = max(
            1,
            min(DIGESTS_PER_REQUEST, (settings.max_frame_bytes - protocol.HEADER.size - 2) // protocol.DIGEST_SIZE),
        )
        self.events = events or AntiEntropyEvents()
        self.now_ms = settings.now_ms
        self._may_purge = settings.may_purge
        self.synced_at: dict[int, int] = {}  # partition -> start of the last round that synced it fully
        # Tombstones wait out the grace period, so looking for purgeable ones 24 times per grace
        # period (hourly by default) is often enough, and bounds the cost of the scan.
        self.purge_every_ms = max(int(settings.interval_s * 1000), self.grace_ms // 24)
        self._last_purge_ms = 0
        self._shared = self._shared_partitions()
        self._round_lock = gevent.lock.Semaphore()
        self._progress: RoundProgress | None = None

    def _shared_partitions(self) -> dict[str, list[int]]:
        """For each peer, the partitions both it and this node replicate."""
        shared: dict[str, list[int]] = {peer: [] for peer in self.peers}
        for partition in range(self.placement.ring.partitions):
            owners = self.placement.partition_replicas(partition)
            if self.node_id in owners:
                for peer in owners:
                    if peer != self.node_id:
                        shared[peer].append(partition)
        return shared

    def progress(self) -> RepairProgress:
        """The running round's progress, or else the last round's (all 0 before the first)."""
        return NO_ROUND_YET if self._progress is None else self._progress.snapshot()

    def run_round(self) -> RoundResult:
        """Reconcile with every peer that is not down, then purge what that made safe to purge."""
        with self._round_lock:
            started = time.monotonic()
            # From the placement served now: after a membership change the partitions shared, and
            # the peers, differ (a retiring owner must not pull back what clean-up dropped).
            self._shared = self._shared_partitions()
            down = {peer_id for peer_id in self._shared if self.placement.is_down(peer_id)}
            total = sum(len(partitions) for peer_id, partitions in self._shared.items() if peer_id not in down)
            progress = self._progress = RoundProgress(self.now_ms(), total)
            try:
                result = self._reconcile_peers(down, progress)
            finally:
                progress.finish(self.now_ms())
            self.events.round_finished(result, time.monotonic() - started)
            return result

    def _reconcile_peers(self, down: set[str], progress: RoundProgress) -> RoundResult:
        result = RoundResult()
        synced_with: dict[int, int] = {}
        for peer_id, partitions in self._shared.items():
            if peer_id in down:
                result.failed_peers.append(peer_id)
                continue
            try:
                peer_result, unsettled = self.sync_with(peer_id, partitions, progress)
            except KVError:
                result.failed_peers.append(peer_id)
                continue
            result.add(peer_result)
            for partition in partitions:
                if partition not in unsettled:
                    synced_with[partition] = synced_with.get(partition, 0) + 1
        for partition, peers_synced in synced_with.items():
            if peers_synced == len(self.placement.partition_replicas(partition)) - 1:
                self.synced_at[partition] = progress.started_ms
        self._purge_tombstones()
        return result

    def sync_with(self, peer_id: str, partitions: list[int], progress: RoundProgress) -> tuple[RoundResult, set[int]]:
        """Compare ``partitions`` with one peer and copy every differing key both ways, counting what
        it does in ``progress`` as it goes. Returns the counts and the partitions left unsettled (a key
        failed to copy). Raises ``KVError`` if the peer cannot be compared at all (copies made so far
        stay)."""
        peer = self.peers[peer_id]
        theirs: list[bytes] = []
        for start in range(0, len(partitions), self.digests_per_request):
            chunk = tuple(partitions[start : start + self.digests_per_request])
            theirs += protocol.decode_digests_reply(peer.call(protocol.Digests(chunk)).body)
        mine = self.store.digests(partitions)
        differing = [p for p, own, other in zip(partitions, mine, theirs, strict=True) if own != other]
        progress.compared += len(partitions) - len(differing)
        result = RoundResult(partitions=len(partitions))
        unsettled: set[int] = set()
        pool = gevent.pool.Pool(PARTITION_CONCURRENCY)
        outcomes = pool.imap_unordered(lambda p: (p, _capture(self._reconcile_partition, peer, p)), differing)
        for partition, outcome in outcomes:
            if isinstance(outcome, KVError):
                raise outcome
            found, copied = outcome
            progress.reconciled(found, copied)
            result.differing += found
            result.repaired += copied
            if copied < found:
                unsettled.add(partition)
        if result.repaired:
            self.events.keys_repaired(peer_id, result.repaired)
        return result, unsettled

    def _reconcile_partition(self, peer: Peer, partition: int) -> tuple[int, int]:
        mine = self.store.partition_records(partition)
        listing = [KeyVersion(key, record.version, record.value is None) for key, record in mine.items()]
        theirs = self._remote_listing(peer, partition)
        todo = differences(listing, theirs, now_ms=self.now_ms(), grace_ms=self.grace_ms)
        transfers: list[Callable[[], object]] = []
        for key in todo.push:
            transfers.append(partial(peer.write, key, mine[key]))
        for key in todo.pull:
            transfers.append(partial(self._pull, peer, key))
        copied = sum(1 for ok in gevent.pool.Pool(TRANSFER_CONCURRENCY).imap_unordered(_succeeds, transfers) if ok)
        return len(todo.push) + len(todo.pull), copied

    def _pull(self, peer: Peer, key: bytes) -> None:
        record = peer.read(key)
        if record is not None:
            self.store.write(key, record)

    def _remote_listing(self, peer: Peer, partition: int) -> list[KeyVersion]:
        entries: list[KeyVersion] = []
        cursor = b""
        while True:
            frame = peer.call(protocol.PartitionKeys(partition, cursor))
            if frame.code != Status.OK:
                return entries
            reply = protocol.decode_partition_keys_reply(frame.body)
            entries += reply.entries
            cursor = reply.cursor
            if not cursor:
                return entries

    def _purge_tombstones(self) -> None:
        """Delete the tombstones ``reconcile.purgeable`` allows. This scans every synced partition, so
        it runs at most every ``purge_every_s`` (a tombstone is not purgeable before the grace period
        anyway), and lets the node's requests run between two partitions: in one go, the scan held
        the event loop for 18 ms of CPU with only 10,000 keys (and longer the more a node holds)."""
        now_ms = self.now_ms()
        if now_ms - self._last_purge_ms < self.purge_every_ms or not self._may_purge():
            return
        self._last_purge_ms = now_ms
        purged = 0
        for partition, synced_at_ms in list(self.synced_at.items()):
            for key, record in self.store.partition_records(partition).items():
                if record.value is None and purgeable(
                    record.version, now_ms=now_ms, grace_ms=self.grace_ms, synced_at_ms=synced_at_ms
                ):
                    purged += self.store.purge_tombstone(key, record.version)
            gevent.sleep(0)
        if purged:
            self.events.tombstones_purged(purged)


def _capture(function: Callable[..., Any], *args: Any) -> Any:
    try:
        return function(*args)
    except KVError as exc:
        return exc


def _succeeds(transfer: Callable[[], object]) -> bool:
    try:
        transfer()
    except Exception:  # a key that fails to copy is retried by the next round
        return False
    return True
