"""The node's durable store: versioned records, hints for other nodes, and partition digests, in LMDB.

Why LMDB: a committed transaction is on disk (``sync=True`` fsyncs on commit) and a crash needs no
log replay; reads are memory-mapped and need no copy through a cache; keys are ordered, so a
partition of the ring is one contiguous scan for anti-entropy.

Databases in the one LMDB environment (``data``, ``hints`` and ``meta`` change together, in one
transaction per batch):

* ``data``: storage key -> record. The storage key is the key's 8-byte ring position followed by the
  key itself, so records sort by ring position. LMDB keys stop at 511 bytes, so a key longer than
  ``SHORT_KEY_MAX`` is stored as its first ``SHORT_KEY_MAX`` bytes plus its 32-byte BLAKE2b digest (a
  storage key of exactly ``LONG_STORAGE_KEY_SIZE`` bytes, a length no short key can have), and its
  record carries the full key.
* ``hints``: owner id + storage key -> a write held for a node that could not take it (hinted
  handoff). Kept apart from ``data``: hints are not served to reads and not counted in ``kv_keys``.
* ``digests``: partition -> XOR of a 128-bit hash of every record (key, version, tombstone flag) in
  that partition. XOR lets each write update it in O(1), and two replicas holding the same records in
  a partition have the same digest, so anti-entropy compares 16 bytes instead of the partition.
  The digests live in memory and are updated with each commit; this database holds them only
  between a clean ``close`` and the next open. Writing them in every commit dirtied a dozen more
  pages per fsync (a quarter of a commit's time), and they can always be rebuilt from ``data``:
  after a crash (the ``meta`` flag says they were not saved), opening the store rebuilds them with
  one scan.
* ``meta``: the live key count, the highest timestamp ever stored, and whether ``digests`` is current
  (and, for a moment, the records a ``SpaceProbe`` writes).

A write that finds no room, on the disk (ENOSPC, or the short write LMDB reports as EIO when a disk
fills mid-commit) or under the storage limit (LMDB's map-full), raises ``StorageFull``: to the user
both are one condition. A failed commit leaves the environment usable, unless LMDB could not
write its meta page (a failing or copy-on-write disk): every transaction then raises MDB_PANIC until
the environment is reopened, which ``reopen`` does without losing anything committed.

Shared by several processes (``shared=True``, a node with ``KV_WORKERS`` above 1). LMDB itself is
multi-process safe: one writer at a time through the lock file's (robust) mutex, readers in the
reader table. What this class keeps in memory is not, so a shared store keeps nothing there:

* the live key count and the highest timestamp are read from ``meta`` inside each write
  transaction, under the writer lock, so a batch counts on top of every other process's commits,
  and the properties read them from ``meta`` too;
* the digests are kept in ``digests`` and updated in every commit, inside the same transaction as
  the records they cover, so they are exactly as durable as the records (a worker killed mid-commit
  leaves both or neither), and every process's anti-entropy reads the one set; the meta flag stays
  "saved" while the store is shared. This costs the extra pages a commit dirties that the
  single-process store saves, and is why one worker keeps them in memory;
* a commit fsyncs its data pages under the writer lock and its meta page after it (``_sync_shared``),
  so another process can commit during the second fsync;
* each write's read-compare-write (``_Batch``) already runs inside one write transaction, so a
  version another process committed between this process's read of a key and its write is the
  one compared against, never overwritten by an older one.

Opening a shared store clears reader slots left by dead processes (``reader_check``: a SIGKILLed
worker's slot would pin old pages and grow the file), and brings ``digests`` up to date under the
writer lock if the last process to write them did not finish (a crash of a single-process node).

This class is synchronous and knows nothing of gevent or of the wire format: ``group_commit`` decides
when ``apply`` runs, and ``local_store``, the only caller that writes, cuts ``partition_entries``
into listing pages.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import struct
import time
from collections.abc import Generator, Iterator, Sequence
from typing import Any, NamedTuple

import lmdb

from client.protocol import DIGEST_SIZE, Record, Version
from client.ring import DEFAULT_PARTITIONS, position

SHORT_KEY_MAX = 470
POSITION_SIZE = 8
KEY_DIGEST_SIZE = 32
LONG_STORAGE_KEY_SIZE = POSITION_SIZE + SHORT_KEY_MAX + KEY_DIGEST_SIZE  # 510, under LMDB's 511
MAX_CURSOR_BYTES = LONG_STORAGE_KEY_SIZE
"""The longest cursor ``partition_entries`` hands out (a cursor is a storage key)."""
RING_BITS = 64
EMPTY_DIGEST = bytes(DIGEST_SIZE)

_TOMBSTONE = 0x01
_FULL_KEY = 0x02
_RECORD_HEAD = struct.Struct(">BQB")  # flags, timestamp, node id length
_U16 = struct.Struct(">H")
_U64 = struct.Struct(">Q")

Buffer = bytes | memoryview
"""What LMDB hands back: ``bytes``, or a ``memoryview`` of its pages in a ``buffers=True`` transaction."""

_META_LIVE_KEYS = b"live_keys"
_META_MAX_TIMESTAMP = b"max_timestamp"
_META_DIGESTS_SAVED = b"digests_saved"
_META_SPACE_PROBE = b"space_probe/"

MIB = 1024 * 1024
LOW_DISK_BYTES = MIB
"""After a write fails with an I/O error, a disk with less than this free (beyond what the batch
needed) counts as full: LMDB reports a write the disk cut short as EIO, not ENOSPC."""
PROBE_PIECE_BYTES = 16 * 1024
PROBE_PIECES = 16
"""A space probe writes this many records of ``PROBE_PIECE_BYTES``: 256 KiB, room for a dozen
ordinary values, in pieces small enough to fit the page runs that deleted values leave free."""


class DiskUsage(NamedTuple):
    file_bytes: int  # what the store's files take on disk (allocated blocks)
    used_bytes: int  # the pages LMDB has in use, free-list pages included
    limit_bytes: int  # the map size: the most the store may grow to


class StorageError(Exception):
    """The store cannot be opened or written; the message says why and what to do."""


class StorageFull(StorageError):
    """A write found no room: the disk holding the store is full, or the store reached its limit
    (``KV_STORAGE_LIMIT_MB``). ``cause`` says which, in a phrase."""

    def __init__(self, message: str, cause: str) -> None:
        super().__init__(message)
        self.cause = cause


# --- what a batch can hold ----------------------------------------------------------------------


class PutRecord:
    """Store ``record`` for ``key`` if it supersedes the key's current record.

    Whatever does not depend on what the store holds (the storage key, the encoded record, its
    digest hash) is worked out here, where the write is made, in the writer's greenlet. The commit
    thread then does only the comparison and the writes: while it runs Python it holds the GIL
    against the event loop, and every write in its batch waits for it.
    """

    __slots__ = ("encoded", "held", "key", "record", "record_hash", "skey")
    __match_args__ = ("key", "record")

    def __init__(self, key: bytes, record: Record) -> None:
        self.key = key
        self.record = record
        self.skey = storage_key(key)
        self.encoded = encode_stored(key, record)
        self.record_hash = record_hash(self.skey, record.version, record.value is None)
        self.held: Version | None = None
        """After the commit: the version the key held when that was not older (so the put changed
        nothing), else ``None``."""

    def __repr__(self) -> str:
        return f"PutRecord({self.key!r}, {self.record!r})"


class PutHint(NamedTuple):
    """Hold ``record`` for ``owner`` (keeping only the newest per owner and key)."""

    owner: str
    key: bytes
    record: Record
    created_ms: int


class DropHint(NamedTuple):
    """Forget a hint once delivered or expired, unless a newer one replaced it meanwhile."""

    owner: str
    key: bytes
    version: Version


class PurgeTombstone(NamedTuple):
    """Delete the key's record if it is still this very tombstone."""

    key: bytes
    version: Version


class DropRecord(NamedTuple):
    """Delete the key's record, a value or a tombstone, if it is still this very version: a local
    physical delete that leaves no tombstone (the clean-up of a partition this node no longer owns,
    ``service.cleanup``; a newer write that arrived meanwhile stays)."""

    key: bytes
    version: Version


class SpaceProbe(NamedTuple):
    """Write ``PROBE_PIECES`` records of ``PROBE_PIECE_BYTES`` (``fill``), or delete them (not
    ``fill``): a full store's test of whether it has room again."""

    fill: bool


Operation = PutRecord | PutHint | DropHint | PurgeTombstone | DropRecord | SpaceProbe


class Hint(NamedTuple):
    owner: str
    key: bytes
    record: Record
    created_ms: int


# --- encodings -------------------------------------------------------------------------------------


def storage_key(key: bytes) -> bytes:
    prefix = position(key).to_bytes(POSITION_SIZE, "big")
    if len(key) <= SHORT_KEY_MAX:
        return prefix + key
    return prefix + key[:SHORT_KEY_MAX] + hashlib.blake2b(key, digest_size=KEY_DIGEST_SIZE).digest()


def encode_stored(key: bytes, record: Record, *, full_key: bool = False) -> bytes:
    node_id = record.version.node_id.encode()
    flags = _TOMBSTONE if record.value is None else 0
    key_part = b""
    if full_key or len(key) > SHORT_KEY_MAX:
        flags |= _FULL_KEY
        key_part = _U16.pack(len(key)) + key
    head = _RECORD_HEAD.pack(flags, record.version.timestamp, len(node_id))
    return b"".join((head, node_id, key_part, record.value or b""))


def decode_stored(raw: Buffer) -> tuple[Record, bytes | None]:
    """The record in ``raw``, and the full key when the record carries one."""
    flags, timestamp, id_length = _RECORD_HEAD.unpack_from(raw)
    offset = _RECORD_HEAD.size
    node_id = bytes(raw[offset : offset + id_length]).decode()
    offset += id_length
    full_key = None
    if flags & _FULL_KEY:
        (key_length,) = _U16.unpack_from(raw, offset)
        offset += _U16.size
        full_key = bytes(raw[offset : offset + key_length])
        offset += key_length
    value = None if flags & _TOMBSTONE else bytes(raw[offset:])
    return Record(Version(timestamp, node_id), value), full_key


def stored_version(raw: Buffer) -> tuple[Version, bool]:
    """Only the version and tombstone flag of an encoded record: all a write needs to compare, and
    cheaper than ``decode_stored``, which copies the value out."""
    flags, timestamp, id_length = _RECORD_HEAD.unpack_from(raw)
    node_id = bytes(raw[_RECORD_HEAD.size : _RECORD_HEAD.size + id_length]).decode()
    return Version(timestamp, node_id), bool(flags & _TOMBSTONE)


def record_hash(skey: Buffer, version: Version, tombstone: bool) -> int:
    """A record's contribution to its partition digest: its key, version and tombstone flag."""
    flag = b"\x01" if tombstone else b"\x00"
    data = b"".join((skey, _U64.pack(version.timestamp), version.node_id.encode(), flag))
    return int.from_bytes(hashlib.blake2b(data, digest_size=DIGEST_SIZE).digest(), "big")


def partition_of(skey: Buffer, partitions: int) -> int:
    return (int.from_bytes(skey[:POSITION_SIZE], "big") * partitions) >> RING_BITS


def partition_start(partition: int, partitions: int) -> bytes:
    """The smallest storage key in ``partition``: the first ring position that maps to it."""
    first_position = -(-(partition << RING_BITS) // partitions)
    return first_position.to_bytes(POSITION_SIZE, "big")


def _hint_key(owner: str, key: bytes) -> bytes:
    """Owner, then the key's 32-byte BLAKE2b digest: at most 1 + 64 + 32 bytes whatever the key's
    length (a storage key can be 510 bytes, which with the owner would pass LMDB's 511). The hint
    itself carries the full key."""
    return _owner_prefix(owner) + hashlib.blake2b(key, digest_size=KEY_DIGEST_SIZE).digest()


def _owner_prefix(owner: str) -> bytes:
    raw = owner.encode()
    return bytes([len(raw)]) + raw


class Storage:
    """One node's records. Reads are direct; ``apply`` writes a batch in one durable transaction."""

    def __init__(
        self,
        path: str,
        map_size: int,
        partitions: int = DEFAULT_PARTITIONS,
        *,
        sync: bool = True,
        shared: bool = False,
    ) -> None:
        self.path = path
        self.partitions = partitions
        self.syncs_on_commit = sync
        self.shared = shared
        """Other processes write this store too (see the module docstring)."""
        self._map_size = map_size
        self.panicked = False
        """LMDB reported a fatal error (MDB_PANIC): nothing works until ``reopen``."""
        self._open_env()
        self.digests_rebuilt: tuple[int, float] | None = None
        """``(records scanned, seconds)`` when opening had to rebuild the digests, else ``None``."""
        self._digests_flag_pending = False  # the next commit must also mark the saved digests stale
        if shared:
            self._live_keys = self._max_timestamp = 0  # read from meta each time instead
            self._digests = {}
            self._share_digests()
            return
        with self._env.begin(db=self._meta) as txn:
            self._live_keys = _read_u64(txn.get(_META_LIVE_KEYS))
            self._max_timestamp = _read_u64(txn.get(_META_MAX_TIMESTAMP))
            saved = txn.get(_META_DIGESTS_SAVED) == b"\x01"
        if saved:
            self._digests = self._load_digests()
            self._mark_saved_digests_stale()
        else:
            started = time.monotonic()
            self._digests, records = self._rebuild_digests()
            self.digests_rebuilt = (records, time.monotonic() - started)

    def _open_env(self) -> None:
        try:
            os.makedirs(self.path, exist_ok=True)
            self._env = lmdb.open(
                self.path,
                map_size=self._map_size,
                max_dbs=8,
                # sync: a commit returns only after fsync, which is what an ack promises. Without it a
                # commit is in the OS page cache (safe from a process crash) and flush() syncs it.
                sync=self.syncs_on_commit,
                # A shared store fsyncs the meta page after the commit, outside LMDB's writer lock
                # (``_sync_shared``): the lock is then held for one fsync, not two, and two processes
                # committing at once got 1.3-3 times the commits per second on the development machine
                # (bench/lmdb_shared_commits.py). The data pages are still
                # fsynced before the meta page is written, so a crash leaves the old or the new
                # commit, never a meta page pointing at pages not on disk (LMDB's MDB_NOMETASYNC).
                metasync=self.syncs_on_commit and not self.shared,
                readahead=False,  # random point reads; readahead would only evict useful pages
            )
            self._data = self._env.open_db(b"data")
            self._hints = self._env.open_db(b"hints")
            self._saved_digests = self._env.open_db(b"digests")
            self._meta = self._env.open_db(b"meta")
            if self.shared:
                self._env.reader_check()  # free the reader slots of processes that died
        except (OSError, lmdb.Error) as exc:
            raise StorageError(f"cannot open the data directory {self.path!r}: {exc}") from exc

    def _share_digests(self) -> None:
        """A shared store's ``digests`` database must be current: if the flag says it is not (the
        last single-process run did not close cleanly), rebuild it from ``data``, under the writer
        lock so no other process commits meanwhile, and mark it saved."""
        try:
            with self._env.begin(write=True, db=self._meta) as txn:
                if txn.get(_META_DIGESTS_SAVED) == b"\x01":
                    return
                started = time.monotonic()
                digests, records = self._rebuild_digests(txn)
                txn.drop(self._saved_digests, delete=False)
                for partition, digest in digests.items():
                    if digest:
                        txn.put(_U16.pack(partition), digest.to_bytes(DIGEST_SIZE, "big"), db=self._saved_digests)
                txn.put(_META_DIGESTS_SAVED, b"\x01")
                self.digests_rebuilt = (records, time.monotonic() - started)
            self._env.sync(True)
        except lmdb.Error as exc:
            self._env.close()
            raise StorageError(f"cannot write to the data directory {self.path!r}: {exc}") from exc

    def _mark_saved_digests_stale(self) -> None:
        """From here until close() saves them again, the saved digests fall behind; a crash in
        between must leave the flag saying so, on disk, whatever KV_FSYNC says. On a full store the
        flag cannot be written now: it then goes into the first commit that succeeds, which is the
        first that changes anything, so no state on disk has changes under a flag saying "saved"."""
        try:
            with self._env.begin(write=True, db=self._meta) as txn:
                txn.put(_META_DIGESTS_SAVED, b"\x00")
            self._env.sync(True)
        except lmdb.Error as exc:
            if self._full_cause(exc, 0) is None:
                self._env.close()
                raise StorageError(f"cannot write to the data directory {self.path!r}: {exc}") from exc
            self._env.close()  # start from a clean environment, whatever the failed commit left
            self._open_env()
            self._digests_flag_pending = True

    @property
    def live_keys(self) -> int:
        """Keys whose newest record is a value, not a tombstone."""
        if self.shared:
            return self._meta_counters()[0]
        return self._live_keys

    @property
    def max_timestamp(self) -> int:
        """The highest version timestamp ever stored; the clock resumes above it after a restart."""
        if self.shared:
            return self._meta_counters()[1]
        return self._max_timestamp

    def _meta_counters(self, txn: lmdb.Transaction | None = None) -> tuple[int, int]:
        """``(live keys, highest timestamp)`` as ``meta`` holds them, read in ``txn`` or a read
        transaction of its own."""
        if txn is None:
            with self._reading(self._meta) as reader:
                return self._meta_counters(reader)
        meta = self._meta
        return _read_u64(txn.get(_META_LIVE_KEYS, db=meta)), _read_u64(txn.get(_META_MAX_TIMESTAMP, db=meta))

    def get(self, key: bytes) -> Record | None:
        try:
            with self._env.begin(db=self._data, buffers=True) as txn:
                raw = txn.get(storage_key(key))
                return None if raw is None else decode_stored(raw)[0]
        except lmdb.PanicError as exc:
            raise self._fatal(exc) from exc

    @contextlib.contextmanager
    def _reading(self, db: Any = None) -> Iterator[lmdb.Transaction[bytes]]:
        """A read transaction; MDB_PANIC becomes a ``StorageError`` and marks the store for ``reopen``."""
        try:
            with self._env.begin(db=db) as txn:
                yield txn
        except lmdb.PanicError as exc:
            raise self._fatal(exc) from exc

    def _fatal(self, exc: lmdb.Error) -> StorageError:
        self.panicked = True
        return StorageError(f"the store hit a fatal LMDB error and is being reopened ({exc})")

    # --- writing ----------------------------------------------------------------------------------

    def apply(self, operations: Sequence[Operation]) -> list[bool]:
        """Run every operation in one fsynced transaction; return, per operation, whether it changed
        anything (``False``: the key already held a newer version, or the hint was replaced)."""
        batch = _Batch(self)
        folded = False
        try:
            with self._env.begin(write=True, db=self._data) as txn:
                if self.shared:  # counted on top of what every process committed, under the write lock
                    batch.live_keys, batch.max_timestamp = self._meta_counters(txn)
                results = [batch.run(txn, operation) for operation in operations]
                batch.finish(txn)
                if self.shared:  # the digests commit with the records, in this transaction
                    self._write_digest_changes(txn, batch.digest_changes)
                else:
                    # Folded in while this transaction holds LMDB's write lock, which _save_digests
                    # needs too: a save sees every committed batch's changes or none of a batch's.
                    self._fold_digests(batch.digest_changes)
                    folded = True
            if self.shared:
                return self._sync_shared(results)
        except lmdb.Error as exc:
            if folded:  # the commit itself failed: XOR the changes out again
                self._fold_digests(batch.digest_changes)
            if isinstance(exc, lmdb.PanicError) or self._env_panicked():
                self.panicked = True
            cause = self._full_cause(exc, batch.bytes_written)
            if cause is not None:
                raise StorageFull(f"storage full: {cause}", cause) from exc
            raise StorageError(f"write failed: {exc}") from exc
        self._live_keys = batch.live_keys
        self._max_timestamp = batch.max_timestamp
        self._digests_flag_pending = False
        return results

    def _sync_shared(self, results: list[bool]) -> list[bool]:
        """Return ``results`` once the commit is durable: a shared store's commit fsyncs its data
        pages under the writer lock but not its meta page (``_open_env``), so that fsync happens
        here, after the lock is released, while another process may commit."""
        if self.syncs_on_commit:
            self._env.sync(True)
        return results

    def _write_digest_changes(self, txn: lmdb.Transaction, changes: dict[int, int]) -> None:
        """Fold ``changes`` (partition -> XOR) into the ``digests`` database, within ``txn``."""
        db = self._saved_digests
        for partition, change in changes.items():
            if not change:
                continue
            pkey = _U16.pack(partition)
            raw = txn.get(pkey, db=db)
            digest = (int.from_bytes(raw, "big") if raw is not None else 0) ^ change
            if digest:
                txn.put(pkey, digest.to_bytes(DIGEST_SIZE, "big"), db=db)
            else:
                txn.delete(pkey, db=db)

    def _full_cause(self, exc: lmdb.Error, needed_bytes: int) -> str | None:
        """Why ``exc``, a failed write, means the store is full, in a phrase; ``None`` if it is another
        failure. Map-full is the storage limit; ENOSPC and EDQUOT are the disk; any other I/O error
        counts as the disk when the disk is (nearly) full, because LMDB reports a short write as EIO."""
        if isinstance(exc, lmdb.MapFullError):
            return f"the store reached its limit of {_mib(self._map_size)} (KV_STORAGE_LIMIT_MB)"
        message = str(exc)
        disk_errors = (os.strerror(errno.ENOSPC), os.strerror(errno.EDQUOT))
        free = self.disk_free_bytes()
        if (
            isinstance(exc, lmdb.DiskError)
            or any(text in message for text in disk_errors)
            or (free is not None and free < needed_bytes + LOW_DISK_BYTES)
        ):
            return f"the disk holding {self.path} is full ({message}; {free} bytes free)"
        return None

    def _env_panicked(self) -> bool:
        try:
            self._env.begin().abort()
        except lmdb.PanicError:
            return True
        except lmdb.Error:
            return False
        return False

    def reopen(self) -> None:
        """Close and open the environment again after MDB_PANIC. Everything committed is on disk and
        stays; the transaction that failed is not. The counters and digests in memory cover exactly
        the batches that committed; if the disk says otherwise, they are read and rebuilt from it.
        Raises ``StorageError`` if the store cannot be opened. Call only while no transaction is
        open: reads run on the caller's thread, and no commit or flush may be running."""
        with contextlib.suppress(lmdb.Error):
            self._env.close()
        self._open_env()
        if self.shared:  # nothing in memory to check: the counters and digests live in the store
            self.panicked = False
            return
        with self._env.begin(db=self._meta) as txn:
            counters = (_read_u64(txn.get(_META_LIVE_KEYS)), _read_u64(txn.get(_META_MAX_TIMESTAMP)))
        if counters != (self._live_keys, self._max_timestamp):
            self._live_keys, self._max_timestamp = counters
            self._digests, _ = self._rebuild_digests()
        self.panicked = False

    # --- space ------------------------------------------------------------------------------------

    @property
    def limit_bytes(self) -> int:
        """The most the store may grow to (``KV_STORAGE_LIMIT_MB``; LMDB's map size)."""
        return self._map_size

    def used_bytes(self) -> int:
        """Bytes of the store file in use or free for reuse (LMDB's pages up to the last one used);
        0 while the environment is closed (a reopen failed)."""
        try:
            info = self._env.info()
            psize: int = self._env.stat()["psize"]
        except lmdb.Error:
            return 0
        return (int(info["last_pgno"]) + 1) * psize

    def disk_free_bytes(self) -> int | None:
        """Bytes free to this process on the disk holding the store; ``None`` if it cannot be read."""
        try:
            stats = os.statvfs(self.path)
        except OSError:
            return None
        return stats.f_bavail * stats.f_frsize

    def _fold_digests(self, changes: dict[int, int]) -> None:
        digests = self._digests
        for partition, change in changes.items():
            digests[partition] = digests.get(partition, 0) ^ change

    # --- anti-entropy -----------------------------------------------------------------------------

    def digests(self, partitions: Sequence[int]) -> list[bytes]:
        if self.shared:
            with self._reading(self._saved_digests) as txn:
                return [txn.get(_U16.pack(partition)) or EMPTY_DIGEST for partition in partitions]
        return [self._digests.get(partition, 0).to_bytes(DIGEST_SIZE, "big") for partition in partitions]

    def _load_digests(self) -> dict[int, int]:
        with self._reading(self._saved_digests) as txn:
            return {_U16.unpack(pkey)[0]: int.from_bytes(raw, "big") for pkey, raw in txn.cursor()}

    def _rebuild_digests(self, within: lmdb.Transaction | None = None) -> tuple[dict[int, int], int]:
        """Every partition's digest from the records themselves, and how many records were read;
        read in ``within`` if given, else in a read transaction of its own."""
        if within is None:
            with self._env.begin(db=self._data, buffers=True) as txn:
                return self._rebuild_digests(txn)
        digests: dict[int, int] = {}
        records = 0
        for skey, raw in within.cursor(db=self._data):
            partition = partition_of(skey, self.partitions)
            digests[partition] = digests.get(partition, 0) ^ record_hash(skey, *stored_version(raw))
            records += 1
        return digests, records

    def _save_digests(self) -> None:
        """Write the digests and mark them current, in one transaction (at close)."""
        with self._env.begin(write=True, db=self._saved_digests) as txn:
            txn.drop(self._saved_digests, delete=False)
            for partition, digest in list(self._digests.items()):
                if digest:
                    txn.put(_U16.pack(partition), digest.to_bytes(DIGEST_SIZE, "big"))
            txn.put(_META_DIGESTS_SAVED, b"\x01", db=self._meta)

    def partition_entries(self, partition: int, after: bytes = b"") -> Generator[tuple[bytes, bytes, Record]]:
        """The records of ``partition`` in storage-key order, as ``(cursor, key, record)``, starting
        after the cursor ``after`` (empty: at the start). A cursor is opaque, at most
        ``MAX_CURSOR_BYTES`` long, and still valid after its record is gone. Iterating holds one read
        transaction: exhaust or close the generator soon."""
        start = after or partition_start(partition, self.partitions)
        end = partition_start(partition + 1, self.partitions) if partition + 1 < self.partitions else None
        with self._reading(self._data) as txn:
            db_cursor = txn.cursor()
            if not db_cursor.set_range(start):
                return
            for skey, raw in db_cursor:
                if end is not None and skey >= end:
                    return
                if after and skey == after:
                    continue
                record, full_key = decode_stored(raw)
                yield skey, (full_key if full_key is not None else skey[POSITION_SIZE:]), record

    # --- hints ------------------------------------------------------------------------------------

    def pending_hints(self) -> int:
        with self._reading() as txn:
            return txn.stat(self._hints)["entries"]

    def hint_counts(self) -> dict[str, int]:
        """Hints held per owner."""
        counts: dict[str, int] = {}
        with self._reading(self._hints) as txn:
            for hkey in txn.cursor().iternext(keys=True, values=False):
                owner = bytes(hkey[1 : 1 + hkey[0]]).decode()
                counts[owner] = counts.get(owner, 0) + 1
        return counts

    def hints_for(self, owner: str, limit: int) -> list[Hint]:
        """Up to ``limit`` hints held for ``owner``."""
        prefix = _owner_prefix(owner)
        hints: list[Hint] = []
        with self._reading(self._hints) as txn:
            db_cursor = txn.cursor()
            if not db_cursor.set_range(prefix):
                return hints
            for hkey, raw in db_cursor:
                if not hkey.startswith(prefix) or len(hints) >= limit:
                    break
                (created_ms,) = _U64.unpack_from(raw)
                record, full_key = decode_stored(raw[_U64.size :])
                assert full_key is not None  # hints always carry their key
                hints.append(Hint(owner, full_key, record, created_ms))
        return hints

    def records(self) -> Iterator[tuple[bytes, Record]]:
        """Every record, in storage-key order (for tests and tools; a read transaction per call)."""
        with self._reading(self._data) as txn:
            for skey, raw in txn.cursor():
                record, full_key = decode_stored(raw)
                yield (full_key if full_key is not None else skey[POSITION_SIZE:]), record

    def disk_usage(self) -> DiskUsage:
        """How much room the store takes, in bytes: on disk, in LMDB pages, and at most."""
        info = self._env.info()
        used = (info["last_pgno"] + 1) * self._env.stat()["psize"]
        file_bytes = 0
        with contextlib.suppress(OSError):  # a file gone under us is nothing to report as an error here
            file_bytes = os.stat(os.path.join(self.path, "data.mdb")).st_blocks * 512
        return DiskUsage(file_bytes, used, info["map_size"])

    def flush(self) -> None:
        """fsync everything committed so far (for a store opened with ``sync=False``); nothing to do
        while the environment must be reopened (its last commit failed)."""
        if not self.panicked:
            self._env.sync(True)

    def close(self) -> None:
        # If the digests cannot be saved (a full disk), the flag still says so: the next open
        # rebuilds them. Whatever happened, the environment must still be closed. A shared store's
        # digests are saved with every commit.
        with contextlib.suppress(Exception):
            if not self.shared:
                self._save_digests()
            if not self.syncs_on_commit:
                self._env.sync(True)
        self._env.close()


class _Batch:
    """The state one ``apply`` carries across its operations: counters and digest changes."""

    def __init__(self, storage: Storage) -> None:
        self.storage = storage
        self.live_keys = storage._live_keys  # a shared store's come from meta once the write lock is held
        self.max_timestamp = storage._max_timestamp
        self.digest_changes: dict[int, int] = {}
        self.bytes_written = 0  # the records' bytes, what the disk needed room for at least

    def run(self, txn: lmdb.Transaction, operation: Operation) -> bool:
        if type(operation) is PutRecord:  # nearly every operation: skip the pattern matching
            self.bytes_written += len(operation.encoded)
            return self._put_record(txn, operation)
        match operation:
            case PutHint(owner, key, record, created_ms):
                return self._put_hint(txn, owner, key, record, created_ms)
            case DropHint(owner, key, version):
                return self._drop_hint(txn, owner, key, version)
            case PurgeTombstone(key, version):
                return self._purge(txn, key, version)
            case DropRecord(key, version):
                return self._drop_record(txn, key, version)
            case SpaceProbe(fill):
                return self._probe(txn, fill)
        raise TypeError(f"not a storage operation: {operation!r}")

    def _probe(self, txn: lmdb.Transaction, fill: bool) -> bool:
        meta = self.storage._meta
        for piece in range(PROBE_PIECES):
            probe_key = _META_SPACE_PROBE + _U16.pack(piece)
            if fill:
                txn.put(probe_key, bytes(PROBE_PIECE_BYTES), db=meta)
                self.bytes_written += PROBE_PIECE_BYTES
            else:
                txn.delete(probe_key, db=meta)
        return True

    def _put_record(self, txn: lmdb.Transaction, put: PutRecord) -> bool:
        skey, version = put.skey, put.record.version
        raw = txn.get(skey)
        current = None if raw is None else stored_version(raw)
        if current is not None and version <= current[0]:
            put.held = current[0]
            return False
        txn.put(skey, put.encoded)
        self.live_keys += (put.record.value is not None) - (current is not None and not current[1])
        self.max_timestamp = max(self.max_timestamp, version.timestamp)
        change = put.record_hash if current is None else put.record_hash ^ record_hash(skey, *current)
        self._fold_digest_change(skey, change)
        return True

    def _put_hint(self, txn: lmdb.Transaction, owner: str, key: bytes, record: Record, created_ms: int) -> bool:
        hkey = _hint_key(owner, key)
        raw = txn.get(hkey, db=self.storage._hints)
        if raw is not None and record.version <= stored_version(raw[_U64.size :])[0]:
            return False
        encoded = encode_stored(key, record, full_key=True)
        self.bytes_written += len(encoded)
        txn.put(hkey, _U64.pack(created_ms) + encoded, db=self.storage._hints)
        self.max_timestamp = max(self.max_timestamp, record.version.timestamp)
        return True

    def _drop_hint(self, txn: lmdb.Transaction, owner: str, key: bytes, version: Version) -> bool:
        hkey = _hint_key(owner, key)
        raw = txn.get(hkey, db=self.storage._hints)
        if raw is None or stored_version(raw[_U64.size :])[0] != version:
            return False
        return txn.delete(hkey, db=self.storage._hints)

    def _purge(self, txn: lmdb.Transaction, key: bytes, version: Version) -> bool:
        skey = storage_key(key)
        raw = txn.get(skey)
        if raw is None:
            return False
        current = stored_version(raw)
        if not current[1] or current[0] != version:
            return False
        txn.delete(skey)
        self._fold_digest_change(skey, record_hash(skey, *current))
        return True

    def _drop_record(self, txn: lmdb.Transaction, key: bytes, version: Version) -> bool:
        skey = storage_key(key)
        raw = txn.get(skey)
        if raw is None:
            return False
        current = stored_version(raw)
        if current[0] != version:
            return False
        txn.delete(skey)
        self.live_keys -= not current[1]  # a value counted as a live key; a tombstone did not
        self._fold_digest_change(skey, record_hash(skey, *current))
        return True

    def _fold_digest_change(self, skey: bytes, change: int) -> None:
        """Fold a record's replacement into its partition's digest change: ``change`` is the XOR of
        the old record's hash (if any) and the new one's (if any)."""
        partition = partition_of(skey, self.storage.partitions)
        self.digest_changes[partition] = self.digest_changes.get(partition, 0) ^ change

    def finish(self, txn: lmdb.Transaction) -> None:
        storage = self.storage
        txn.put(_META_LIVE_KEYS, _U64.pack(self.live_keys), db=storage._meta)
        txn.put(_META_MAX_TIMESTAMP, _U64.pack(self.max_timestamp), db=storage._meta)
        if storage._digests_flag_pending:
            txn.put(_META_DIGESTS_SAVED, b"\x00", db=storage._meta)


def _read_u64(raw: Buffer | None) -> int:
    return 0 if raw is None else _U64.unpack(raw)[0]


def _mib(size: int) -> str:
    return f"{size / MIB:g} MiB"
