"""This node's own store: the one handle the rest of the node has on its data.

``LocalStore`` owns everything done to this node's records and hints: reads, every write (through
group commit: nothing else submits to the committer or calls ``Storage.apply``, so every write is
batched and, with ``KV_FSYNC=always``, fsynced before it is acknowledged), hints held for other nodes
(stored, listed, dropped), tombstone purges, partition digests and partition listings. The
coordinator, hinted handoff, anti-entropy and the request handler each get this one object.

It is also the local replica the coordinator asks, with the same ``read``, ``write`` and
``write_hint`` as a ``Peer``.

Listings are where the store meets the wire: ``Storage`` iterates a partition in key order, and
this module cuts that into PARTITION_KEYS pages that fit a frame (``listing_page_bytes``), so
storage knows nothing of frame sizes and the handler nothing of storage keys.

It also keeps the store's health (``storage_health``): after a write finds no room, writes that add
data are refused at once with ``StorageFull`` until ``probe`` finds room again; removals (tombstones,
delivered hints, purges) are still tried, since they are how room comes back. And after LMDB's
fatal error (MDB_PANIC) it reopens the store, between two commits or before a read, never while
another thread is inside it.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Generator, Sequence
from typing import TypeVar

from client import protocol
from client.protocol import KeyVersion, PartitionKeysReply, PartitionRecordsReply, Record, Version, listing_size
from client.ring import partition_of
from service.group_commit import CommitThread, GroupCommitter, start_in_threadpool, start_inline
from service.storage import (
    MAX_CURSOR_BYTES,
    DiskUsage,
    DropHint,
    DropRecord,
    Hint,
    PurgeTombstone,
    PutHint,
    PutRecord,
    SpaceProbe,
    Storage,
    StorageError,
    StorageFull,
)
from service.storage_health import StorageHealth
from service.versioning import ClockSkew, HybridLogicalClock, wall_clock_ms

T = TypeVar("T")

BEHIND_MARKER = "store-behind"
"""An empty file in the data directory while the store is full or catching up, so that a restart in
that state resumes catching up rather than answering reads the store may lack. Empty: creating it
needs no data block, so it fits on a full disk."""

LISTING_PAGE_BYTES = 256 * 1024
"""Largest PARTITION_KEYS page: large enough that a typical partition is one round trip."""
LISTING_ENVELOPE_BYTES = protocol.HEADER.size + 4 + 2 + MAX_CURSOR_BYTES
"""What a PARTITION_KEYS reply carries besides its entries: frame header, entry count, cursor
length and the longest cursor."""


def listing_page_bytes(max_frame_bytes: int) -> int:
    """Entry bytes per PARTITION_KEYS page (``listing_size`` each): ``LISTING_PAGE_BYTES``, or less
    when a frame of ``max_frame_bytes`` could not carry that with its envelope."""
    return min(LISTING_PAGE_BYTES, max_frame_bytes - LISTING_ENVELOPE_BYTES)


def _listed_size(key: bytes, record: Record) -> int:
    return listing_size(key, record.version)


def records_page_bytes(max_frame_bytes: int) -> int:
    """Record bytes per PARTITION_RECORDS page (``record_entry_size`` each): a whole frame less the
    envelope, so a page carries as many records as one frame can (fewer pages, each a batch of
    writes for the receiver's group commit); a single largest record still fits."""
    return max_frame_bytes - LISTING_ENVELOPE_BYTES


def listing_page(
    entries: Generator[tuple[bytes, bytes, Record]],
    limit_bytes: int,
    entry_size: Callable[[bytes, Record], int] = _listed_size,
) -> tuple[list[tuple[bytes, Record]], bytes]:
    """The first ``(key, record)`` pairs of ``entries`` (``(cursor, key, record)`` in order, as
    ``Storage.partition_entries`` yields them) whose ``entry_size`` (a PARTITION_KEYS entry's by
    default) fits ``limit_bytes``, always at least one, and the cursor to continue after them (empty
    when they reach the end). Closes ``entries``, which ends its read transaction."""
    page: list[tuple[bytes, Record]] = []
    size = 0
    last = b""
    with contextlib.closing(entries):
        for cursor, key, record in entries:
            this_size = entry_size(key, record)
            if page and size + this_size > limit_bytes:
                return page, last
            page.append((key, record))
            size += this_size
            last = cursor
    return page, b""


class StoreEvents:
    """What the store reports; ``events.NodeEvents`` turns these into metrics and logs. Ignored by default."""

    def hint_stored(self, owner: str, key: bytes) -> None:
        """A write meant for ``owner`` is now held here as a hint."""

    def clock_skew_refused(self, source: str, reason: str) -> None:
        """A version from ``source`` (``replica_write``, ``hint``) was refused: too far ahead."""

    def storage_full(self, cause: str) -> None:
        """A write found no room (``cause`` says why): writes are refused until a probe finds room."""

    def storage_recovered(self, full_s: float, catching_up: bool) -> None:
        """A probe found room again after ``full_s`` seconds; ``catching_up``: the writes held
        elsewhere meanwhile are still to arrive."""

    def storage_caught_up(self, seconds: float) -> None:
        """Every write held elsewhere for this node while it was full has arrived, ``seconds`` after
        it took writes again."""

    def storage_reopened(self, error: str | None) -> None:
        """The store was reopened after LMDB's fatal error; ``error`` if that failed too."""

    def marker_failed(self, path: str, error: str) -> None:
        """The file marking the store as behind could not be created or removed."""

    def stream_page_served(self, size: int) -> None:
        """A PARTITION_RECORDS page of ``size`` bytes went to a node streaming a partition from here."""


class LocalStore:
    """This node's records and hints, behind one object; every write goes through group commit.

    Commits run in a native thread when each one fsyncs, inline when it does not (see
    ``group_commit``). Writes block the calling greenlet until their batch commits. ``clock`` is
    this node's HLC: it observes every version written here, and refuses one too far ahead of it
    (``ClockSkew``). ``now_ms`` stamps a hint's creation, on the clock its age is later measured by
    (``versioning.NodeClock.steady_ms``, which ignores wall-clock jumps).
    """

    reads_block = False
    """A read is one LMDB lookup in memory-mapped pages: the coordinator needs no timeout around it."""

    def __init__(
        self,
        node_id: str,
        storage: Storage,
        clock: HybridLogicalClock,
        *,
        now_ms: Callable[[], int] = wall_clock_ms,
        events: StoreEvents | None = None,
    ) -> None:
        self.node_id = node_id
        self._commit_thread = CommitThread() if storage.syncs_on_commit else None
        self.committer = GroupCommitter(
            storage,
            self._commit_thread or start_inline,
            before_batch=self._reopen_between_commits,
        )
        self._now_ms = now_ms
        self._storage = storage
        self._clock = clock
        self._events = events or StoreEvents()
        self._marker = os.path.join(storage.path, BEHIND_MARKER)
        self.health = StorageHealth(time.monotonic(), catching_up=os.path.exists(self._marker))
        self._syncing = False  # a periodic fsync is running in a native thread
        self.arriving: set[int] = set()
        """Partitions this node owns already and is still streaming in (``change_runner``: a removal
        makes the new owners owners at once). It may lack acknowledged writes of these, so it does
        not answer reads of them alone (``arriving_key``): they go to the surviving replicas."""

    # --- health -----------------------------------------------------------------------------------

    @property
    def storage_full(self) -> bool:
        """Whether the store refuses writes for lack of space (a full disk or storage limit)."""
        return self.health.full

    @property
    def flags(self) -> int:
        """The store's state as PING and MEMBERS carry it (``client.protocol`` store flags)."""
        return self.health.flags

    def arriving_key(self, key: bytes) -> bool:
        """Whether ``key`` falls in a partition still streaming in (``arriving``)."""
        return bool(self.arriving) and partition_of(key, self.partitions) in self.arriving

    @property
    def readable_alone(self) -> bool:
        """Whether this store holds every write acknowledged for it (not full, not catching up), so
        a read may be answered from it alone."""
        return self.health.readable_alone

    def state_description(self) -> str:
        """The store's state in a line: "writable", or why it is full, or that it is catching up."""
        if self.health.full:
            return f"storage full: {self.health.cause}"
        return self.health.state.value

    def _refuse_if_full(self) -> None:
        if self.health.full:
            raise StorageFull(f"{self.node_id}: storage full: {self.health.cause}", self.health.cause)

    def _no_room(self, error: StorageFull) -> StorageFull:
        """A commit found no room: the store is full (reported once), and ``error`` names this node."""
        if self.health.no_room(error.cause, time.monotonic()):
            self._set_marker(True)
            self._events.storage_full(error.cause)
        return StorageFull(f"{self.node_id}: storage full: {error.cause}", error.cause)

    def _set_marker(self, behind: bool) -> None:
        """Create (``behind``) or remove the ``BEHIND_MARKER``; if the disk refuses even that, a
        restart starts WRITABLE (and reads may miss the hints not yet delivered, as after any failure)."""
        try:
            if behind:
                os.close(os.open(self._marker, os.O_CREAT | os.O_WRONLY, 0o644))
            else:
                with contextlib.suppress(FileNotFoundError):
                    os.remove(self._marker)
            directory = os.open(os.path.dirname(self._marker), os.O_RDONLY)
            try:
                os.fsync(directory)
            finally:
                os.close(directory)
        except OSError as exc:
            self._events.marker_failed(self._marker, str(exc))

    def probe(self, *, has_peers: bool) -> bool:
        """While full: commit ``SpaceProbe`` records, then delete them; if that fits, the store
        takes writes again (catching up first when it ``has_peers``). Returns whether it is full.
        The probe shares its commit with whatever else is pending (tombstones, dropped hints): while
        it does not fit, those fail with it, and are hinted or retried like any refused write."""
        if not self.health.full:
            return False
        full_since = self.health.since
        try:
            self.committer.submit(SpaceProbe(fill=True))
        except StorageError:
            return True  # still no room (a StorageFull), or the disk fails in another way
        with contextlib.suppress(StorageError):  # if it stays, the next probe overwrites it
            self.committer.submit(SpaceProbe(fill=False))
        now = time.monotonic()
        if self.health.room_found(now, has_peers=has_peers):
            if self.health.readable_alone:
                self._set_marker(False)
            self._events.storage_recovered(now - full_since, catching_up=has_peers)
        return False

    def caught_up(self) -> None:
        """Every write held elsewhere for this node while it was full has arrived (``recovery``)."""
        since = self.health.since
        now = time.monotonic()
        if self.health.caught_up(now):
            self._set_marker(False)
            self._events.storage_caught_up(now - since)

    def _reopen_between_commits(self) -> None:
        """Before each commit (the committer calls it with no commit running): reopen the store if
        LMDB's fatal error needs it. Raises ``StorageError`` if it cannot be reopened."""
        if self._storage.panicked and not self._syncing:
            self._reopen()

    def _reopen(self) -> None:
        try:
            self._storage.reopen()
        except StorageError as exc:
            self._events.storage_reopened(str(exc))
            raise
        self._events.storage_reopened(None)

    def _read(self, function: Callable[..., T], *args: object) -> T:
        """``function(*args)``, a read; after LMDB's fatal error, reopen the store (if no other
        thread is in it) and read again."""
        try:
            return function(*args)
        except StorageError:
            if not self._may_reopen_now():
                raise
            self._reopen()
            return function(*args)

    def _may_reopen_now(self) -> bool:
        """Whether the store needs reopening and no other thread (a commit, an fsync) is in it."""
        return self._storage.panicked and not self.committer.committing and not self._syncing

    # --- the replica interface --------------------------------------------------------------------

    def read(self, key: bytes, *, behind_ok: bool = False) -> Record | None:
        """This store's record for ``key``, whatever its state: ``behind_ok`` is for peers (the handler
        refuses their REPLICA_GET while this store is behind); this node's own coordinator knows the
        state, and reads here while behind only when no other replica is left."""
        try:
            return self._storage.get(key)
        except StorageError:  # inline rather than through _read: every local read comes here
            if not self._may_reopen_now():
                raise
            self._reopen()
            return self._storage.get(key)

    def write(self, key: bytes, record: Record, *, stalled_after: float | None = None) -> Version | None:
        """Store ``record`` durably unless the key holds a newer version; return that newer version,
        or ``None`` when ``record`` was stored (or was already). Raises ``ClockSkew`` for a version
        too far ahead of this node's clock, storing nothing, and ``StorageFull`` when there is no
        room; while full, at once for a value (a tombstone is still tried: it replaces a value, so
        it frees room). ``stalled_after`` is not used: the coordinator bounds a local write itself
        (``FanOut``'s inline timeout)."""
        if record.value is not None:
            self._refuse_if_full()
        # Observing every version written keeps this node's clock ahead of all data it holds, so its
        # own later writes to these keys are ordered after them.
        self._observe(record, "replica_write")
        put = PutRecord(key, record)
        try:
            self.committer.submit(put)
        except StorageFull as exc:
            raise self._no_room(exc) from exc
        return put.held if put.held is not None and put.held > record.version else None

    def write_hint(self, key: bytes, record: Record, owner: str) -> bool:
        """Hold ``record`` durably for ``owner`` until the handoff delivers it. Raises ``ClockSkew``
        as ``write`` does, and ``StorageFull`` when there is no room, at once while the store is full."""
        self._refuse_if_full()
        self._observe(record, "hint")
        try:
            stored = self.committer.submit(PutHint(owner, key, record, self._now_ms()))
        except StorageFull as exc:
            raise self._no_room(exc) from exc
        self._events.hint_stored(owner, key)
        return stored

    def _observe(self, record: Record, source: str) -> None:
        try:
            self._clock.observe(record.version.timestamp)
        except ClockSkew as exc:
            self._events.clock_skew_refused(source, str(exc))
            raise

    # --- hints ------------------------------------------------------------------------------------

    def pending_hints(self) -> int:
        """Hints held here for any node."""
        return self._read(self._storage.pending_hints)

    def hint_counts(self) -> dict[str, int]:
        """Hints held per owner."""
        return self._read(self._storage.hint_counts)

    def hints_for(self, owner: str, limit: int) -> list[Hint]:
        """Up to ``limit`` hints held for ``owner``."""
        return self._read(self._storage.hints_for, owner, limit)

    def drop_hints(self, hints: Sequence[Hint]) -> None:
        """Forget delivered or expired hints, in one commit (a hint replaced meanwhile by a newer
        one stays). Raises ``StorageError`` if the commit fails."""
        try:
            self.committer.submit_all([DropHint(hint.owner, hint.key, hint.record.version) for hint in hints])
        except StorageFull as exc:
            raise self._no_room(exc) from exc

    # --- anti-entropy -----------------------------------------------------------------------------

    @property
    def partitions(self) -> int:
        return self._storage.partitions

    def digests(self, partitions: Sequence[int]) -> list[bytes]:
        """Each partition's 16-byte digest, in the order asked."""
        return self._storage.digests(partitions)

    def partition_records(self, partition: int) -> dict[bytes, Record]:
        """Every record of ``partition``, tombstones included, by key."""
        return self._read(self._partition_records, partition)

    def _partition_records(self, partition: int) -> dict[bytes, Record]:
        return {key: record for _, key, record in self._storage.partition_entries(partition)}

    def partition_keys(self, partition: int, cursor: bytes, limit_bytes: int) -> PartitionKeysReply:
        """One PARTITION_KEYS page: the keys of ``partition`` after ``cursor`` that fit ``limit_bytes``
        (``listing_page_bytes``), and the cursor for the next page (empty after the last)."""
        page, next_cursor = self._read(
            lambda: listing_page(self._storage.partition_entries(partition, cursor), limit_bytes)
        )
        entries = tuple(KeyVersion(key, record.version, record.value is None) for key, record in page)
        return PartitionKeysReply(entries, next_cursor)

    def partition_records_page(self, partition: int, cursor: bytes, limit_bytes: int) -> PartitionRecordsReply:
        """One PARTITION_RECORDS page: the records of ``partition`` after ``cursor``, tombstones
        included, that fit ``limit_bytes`` (always at least one), and the next page's cursor (empty
        after the last). Reported as streamed out (``stream_page_served``)."""
        page, next_cursor = self._read(
            lambda: listing_page(
                self._storage.partition_entries(partition, cursor), limit_bytes, protocol.record_entry_size
            )
        )
        reply = PartitionRecordsReply(tuple(page), next_cursor)
        self._events.stream_page_served(sum(protocol.record_entry_size(key, record) for key, record in page))
        return reply

    def purge_tombstone(self, key: bytes, version: Version) -> bool:
        """Delete the key's record if it is still this tombstone; return whether it was."""
        try:
            return self.committer.submit(PurgeTombstone(key, version))
        except StorageFull as exc:
            raise self._no_room(exc) from exc

    def drop_record(self, key: bytes, version: Version) -> bool:
        """Delete the key's record (value or tombstone) if it is still at ``version``, leaving no
        tombstone and replicating nothing; return whether it was. For data this node no longer
        owns once its owners hold it (``service.cleanup``): keys, digests and byte counts follow."""
        try:
            return self.committer.submit(DropRecord(key, version))
        except StorageFull as exc:
            raise self._no_room(exc) from exc

    def records_page(self, partition: int, cursor: bytes, limit_bytes: int) -> tuple[list[tuple[bytes, Record]], bytes]:
        """The ``(key, record)`` pairs of ``partition`` after ``cursor`` whose PARTITION_KEYS entry
        sizes fit ``limit_bytes`` (at least one), and the next cursor (empty after the last)."""
        return self._read(lambda: listing_page(self._storage.partition_entries(partition, cursor), limit_bytes))

    # --- lifecycle --------------------------------------------------------------------------------

    @property
    def live_keys(self) -> int:
        """Keys whose newest record is a value, not a tombstone."""
        return self._storage.live_keys

    def disk_usage(self) -> DiskUsage:
        """The room the store takes: on disk, in use, and at most."""
        return self._storage.disk_usage()

    def space(self) -> tuple[int, int, int | None]:
        """``(used, limit, disk free)`` in bytes: the store file's pages in use or free for reuse,
        ``KV_STORAGE_LIMIT_MB``, and what the disk holding it has free (``None`` if unknown)."""
        return self._storage.used_bytes(), self._storage.limit_bytes, self._storage.disk_free_bytes()

    def sync(self) -> None:
        """fsync what was committed (``KV_FSYNC=periodic``), in a native thread so the loop serves on."""
        if self._storage.panicked:  # nothing to sync until the next commit reopens the store
            return
        self._syncing = True
        try:
            start_in_threadpool(self._storage.flush, ()).get()
        finally:
            self._syncing = False

    def drain(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for every write handed in so far to commit; ``False`` if
        some had not (a stalled disk must not hang a shutdown forever)."""
        return self.committer.flush(timeout)

    def close(self) -> None:
        """fsync and close the store (after ``drain``), and end the commit thread."""
        if self._commit_thread is not None:
            self._commit_thread.close()
        self._storage.flush()
        self._storage.close()
