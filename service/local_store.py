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
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Generator, Sequence

from client import protocol
from client.protocol import KeyVersion, PartitionKeysReply, Record, Version, listing_size
from service.group_commit import GroupCommitter, start_in_threadpool, start_inline
from service.storage import (
    MAX_CURSOR_BYTES,
    DiskUsage,
    DropHint,
    Hint,
    PurgeTombstone,
    PutHint,
    PutRecord,
    Storage,
)
from service.versioning import ClockSkew, HybridLogicalClock, wall_clock_ms

LISTING_PAGE_BYTES = 256 * 1024
"""Largest PARTITION_KEYS page: large enough that a typical partition is one round trip."""
LISTING_ENVELOPE_BYTES = protocol.HEADER.size + 4 + 2 + MAX_CURSOR_BYTES
"""What a PARTITION_KEYS reply carries besides its entries: frame header, entry count, cursor
length and the longest cursor."""


def listing_page_bytes(max_frame_bytes: int) -> int:
    """Entry bytes per PARTITION_KEYS page (``listing_size`` each): ``LISTING_PAGE_BYTES``, or less
    when a frame of ``max_frame_bytes`` could not carry that with its envelope."""
    return min(LISTING_PAGE_BYTES, max_frame_bytes - LISTING_ENVELOPE_BYTES)


def listing_page(
    entries: Generator[tuple[bytes, bytes, Record]], limit_bytes: int
) -> tuple[list[tuple[bytes, Record]], bytes]:
    """The first ``(key, record)`` pairs of ``entries`` (``(cursor, key, record)`` in order, as
    ``Storage.partition_entries`` yields them) that fit ``limit_bytes`` when listed, always at least
    one, and the cursor to continue after them (empty when they reach the end). Closes ``entries``,
    which ends its read transaction."""
    page: list[tuple[bytes, Record]] = []
    size = 0
    last = b""
    with contextlib.closing(entries):
        for cursor, key, record in entries:
            entry_size = listing_size(key, record.version)
            if page and size + entry_size > limit_bytes:
                return page, last
            page.append((key, record))
            size += entry_size
            last = cursor
    return page, b""


class StoreEvents:
    """What the store reports; ``events.NodeEvents`` turns these into metrics and logs. Ignored by default."""

    def hint_stored(self, owner: str, key: bytes) -> None:
        """A write meant for ``owner`` is now held here as a hint."""

    def clock_skew_refused(self, source: str, reason: str) -> None:
        """A version from ``source`` (``replica_write``, ``hint``) was refused: too far ahead."""


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
        self.committer = GroupCommitter(storage, start_in_threadpool if storage.syncs_on_commit else start_inline)
        self._now_ms = now_ms
        self._storage = storage
        self._clock = clock
        self._events = events or StoreEvents()

    @property
    def storage_full(self) -> bool:
        """Whether the store refuses writes for lack of space (a full disk or storage limit)."""
        return False

    # --- the replica interface --------------------------------------------------------------------

    def read(self, key: bytes) -> Record | None:
        return self._storage.get(key)

    def write(self, key: bytes, record: Record, *, stalled_after: float | None = None) -> Version | None:
        """Store ``record`` durably unless the key holds a newer version; return that newer version,
        or ``None`` when ``record`` was stored (or was already). Raises ``ClockSkew`` for a version
        too far ahead of this node's clock, storing nothing. ``stalled_after`` is not used: the
        coordinator bounds a local write itself (``FanOut``'s inline timeout)."""
        # Observing every version written keeps this node's clock ahead of all data it holds, so its
        # own later writes to these keys are ordered after them.
        self._observe(record, "replica_write")
        put = PutRecord(key, record)
        self.committer.submit(put)
        return put.held if put.held is not None and put.held > record.version else None

    def write_hint(self, key: bytes, record: Record, owner: str) -> bool:
        """Hold ``record`` durably for ``owner`` until the handoff delivers it. Raises ``ClockSkew``
        as ``write`` does."""
        self._observe(record, "hint")
        stored = self.committer.submit(PutHint(owner, key, record, self._now_ms()))
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
        return self._storage.pending_hints()

    def hint_counts(self) -> dict[str, int]:
        """Hints held per owner."""
        return self._storage.hint_counts()

    def hints_for(self, owner: str, limit: int) -> list[Hint]:
        """Up to ``limit`` hints held for ``owner``."""
        return self._storage.hints_for(owner, limit)

    def drop_hints(self, hints: Sequence[Hint]) -> None:
        """Forget delivered or expired hints, in one commit (a hint replaced meanwhile by a newer
        one stays). Raises ``StorageError`` if the commit fails."""
        self.committer.submit_all([DropHint(hint.owner, hint.key, hint.record.version) for hint in hints])

    # --- anti-entropy -----------------------------------------------------------------------------

    @property
    def partitions(self) -> int:
        return self._storage.partitions

    def digests(self, partitions: Sequence[int]) -> list[bytes]:
        """Each partition's 16-byte digest, in the order asked."""
        return self._storage.digests(partitions)

    def partition_records(self, partition: int) -> dict[bytes, Record]:
        """Every record of ``partition``, tombstones included, by key."""
        return {key: record for _, key, record in self._storage.partition_entries(partition)}

    def partition_keys(self, partition: int, cursor: bytes, limit_bytes: int) -> PartitionKeysReply:
        """One PARTITION_KEYS page: the keys of ``partition`` after ``cursor`` that fit ``limit_bytes``
        (``listing_page_bytes``), and the cursor for the next page (empty after the last)."""
        page, next_cursor = listing_page(self._storage.partition_entries(partition, cursor), limit_bytes)
        entries = tuple(KeyVersion(key, record.version, record.value is None) for key, record in page)
        return PartitionKeysReply(entries, next_cursor)

    def purge_tombstone(self, key: bytes, version: Version) -> bool:
        """Delete the key's record if it is still this tombstone; return whether it was."""
        return self.committer.submit(PurgeTombstone(key, version))

    # --- lifecycle --------------------------------------------------------------------------------

    @property
    def live_keys(self) -> int:
        """Keys whose newest record is a value, not a tombstone."""
        return self._storage.live_keys

    def disk_usage(self) -> DiskUsage:
        """The room the store takes: on disk, in use, and at most."""
        return self._storage.disk_usage()

    def sync(self) -> None:
        """fsync what was committed (``KV_FSYNC=periodic``), in a native thread so the loop serves on."""
        start_in_threadpool(self._storage.flush, ()).get()

    def drain(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for every write handed in so far to commit; ``False`` if
        some had not (a stalled disk must not hang a shutdown forever)."""
        return self.committer.flush(timeout)

    def close(self) -> None:
        """fsync and close the store (after ``drain``)."""
        self._storage.flush()
        self._storage.close()
