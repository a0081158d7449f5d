"""The LMDB store (last-writer-wins, counters, long keys, digests, partition listings, hints, tombstone
purges) and group commit over it."""

from __future__ import annotations

import random
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import gevent
import gevent.event
import pytest
from gevent.event import AsyncResult
from polling import wait_until

from client.protocol import Record, Version
from client.ring import Ring
from service.group_commit import GroupCommitter
from service.local_store import LISTING_PAGE_BYTES, listing_page
from service.storage import (
    EMPTY_DIGEST,
    SHORT_KEY_MAX,
    DropHint,
    Hint,
    PurgeTombstone,
    PutHint,
    PutRecord,
    Storage,
    StorageError,
    storage_key,
)

MAP_SIZE = 64 * 1024 * 1024


def value(timestamp: int, data: bytes, node_id: str = "node1") -> Record:
    return Record(Version(timestamp, node_id), data)


def tombstone(timestamp: int, node_id: str = "node1") -> Record:
    return Record(Version(timestamp, node_id), None)


PARTITIONS = 8


@pytest.fixture
def path(tmp_path: Path) -> str:
    return str(tmp_path / "store")


@pytest.fixture(params=[False, True], ids=["one-process", "shared"])
def shared(request: pytest.FixtureRequest) -> bool:
    """Every test of a ``storage`` or ``open_store`` runs on a store of one process and on one
    shared by worker processes (counters and digests kept in LMDB, not in memory)."""
    flag: bool = request.param
    return flag


@pytest.fixture
def storage(path: str, shared: bool) -> Iterator[Storage]:
    store = Storage(path, MAP_SIZE, shared=shared)
    yield store
    store.close()


@pytest.fixture
def open_store(tmp_path: Path, shared: bool) -> Iterator[Callable[..., Storage]]:
    """Opens further stores (``open_store("name", partitions=8)``), all closed at teardown."""
    opened: list[Storage] = []

    def open_named(name: str, partitions: int = PARTITIONS) -> Storage:
        store = Storage(str(tmp_path / name), MAP_SIZE, partitions, shared=shared)
        opened.append(store)
        return store

    yield open_named
    for store in opened:
        store.close()


# --- reads and last-writer-wins --------------------------------------------------------------------


def test_missing_key_is_none(storage: Storage) -> None:
    assert storage.get(b"nope") is None
    assert storage.live_keys == 0
    assert storage.max_timestamp == 0


def test_apply_stores_a_record(storage: Storage) -> None:
    record = value(10, b"v1")
    assert storage.apply([PutRecord(b"k", record)]) == [True]
    assert storage.get(b"k") == record
    assert storage.get(b"other") is None


def test_newer_version_replaces(storage: Storage) -> None:
    storage.apply([PutRecord(b"k", value(10, b"v1"))])
    assert storage.apply([PutRecord(b"k", value(11, b"v2"))]) == [True]
    assert storage.get(b"k") == value(11, b"v2")
    assert storage.apply([PutRecord(b"k", value(11, b"v3", node_id="node2"))]) == [True]  # tie broken by node id
    assert storage.get(b"k") == value(11, b"v3", node_id="node2")


@pytest.mark.parametrize(
    "stale",
    [value(9, b"old"), value(10, b"same version"), value(10, b"lower node id", node_id="node0"), tombstone(9)],
    ids=["older", "equal", "tie-lower-node", "older-tombstone"],
)
def test_older_or_equal_version_is_refused(storage: Storage, stale: Record) -> None:
    current = value(10, b"current")
    storage.apply([PutRecord(b"k", current)])
    assert storage.apply([PutRecord(b"k", stale)]) == [False]
    assert storage.get(b"k") == current
    assert storage.live_keys == 1
    assert storage.max_timestamp == 10


def test_tombstone_replaces_a_value_and_is_returned(storage: Storage) -> None:
    storage.apply([PutRecord(b"k", value(10, b"v"))])
    assert storage.apply([PutRecord(b"k", tombstone(11))]) == [True]
    record = storage.get(b"k")
    assert record == tombstone(11)
    assert record is not None
    assert record.is_tombstone
    assert storage.apply([PutRecord(b"k", value(10, b"resurrect?"))]) == [False]  # an older write cannot undo a delete
    assert storage.get(b"k") == tombstone(11)


def test_empty_value_is_a_value_not_a_tombstone(storage: Storage) -> None:
    storage.apply([PutRecord(b"k", value(1, b""))])
    record = storage.get(b"k")
    assert record == value(1, b"")
    assert record is not None
    assert not record.is_tombstone
    assert storage.live_keys == 1


def test_live_keys_counts_values_not_tombstones(storage: Storage) -> None:
    storage.apply([PutRecord(b"a", value(1, b"1"))])
    assert storage.live_keys == 1
    storage.apply([PutRecord(b"b", value(2, b"2"))])
    assert storage.live_keys == 2
    storage.apply([PutRecord(b"a", value(3, b"overwrite"))])
    assert storage.live_keys == 2
    storage.apply([PutRecord(b"a", tombstone(4))])
    assert storage.live_keys == 1
    storage.apply([PutRecord(b"a", tombstone(5))])  # deleting a deleted key
    assert storage.live_keys == 1
    storage.apply([PutRecord(b"c", tombstone(6))])  # deleting a key never written
    assert storage.live_keys == 1
    storage.apply([PutRecord(b"a", value(7, b"re-put"))])
    assert storage.live_keys == 2
    storage.apply([PutRecord(b"b", value(1, b"refused"))])
    assert storage.live_keys == 2
    assert storage.max_timestamp == 7


def test_writes_to_one_key_in_one_batch_apply_in_order(storage: Storage) -> None:
    applied = storage.apply(
        [
            PutRecord(b"k", value(1, b"first")),
            PutRecord(b"k", value(3, b"third")),
            PutRecord(b"k", value(2, b"stale within the batch")),
            PutRecord(b"other", value(1, b"x")),
            PutRecord(b"k", tombstone(4)),
            PutRecord(b"k", value(5, b"last")),
        ]
    )
    assert applied == [True, True, False, True, True, True]
    assert storage.get(b"k") == value(5, b"last")
    assert storage.live_keys == 2
    assert storage.max_timestamp == 5


def test_batch_ending_in_a_delete_counts_correctly(storage: Storage) -> None:
    assert storage.apply([PutRecord(b"k", value(1, b"v")), PutRecord(b"k", tombstone(2))]) == [True, True]
    assert storage.live_keys == 0
    assert storage.get(b"k") == tombstone(2)


def test_reopen_keeps_records_and_counters(path: str) -> None:
    store = Storage(path, MAP_SIZE)
    store.apply([PutRecord(b"a", value(5, b"A")), PutRecord(b"b", value(9, b"B")), PutRecord(b"c", value(7, b"C"))])
    store.apply([PutRecord(b"c", tombstone(8))])
    store.close()

    reopened = Storage(path, MAP_SIZE)
    try:
        assert reopened.get(b"a") == value(5, b"A")
        assert reopened.get(b"b") == value(9, b"B")
        assert reopened.get(b"c") == tombstone(8)
        assert reopened.live_keys == 2
        assert reopened.max_timestamp == 9
        assert reopened.apply([PutRecord(b"b", value(8, b"stale"))]) == [False]
    finally:
        reopened.close()


# --- keys ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("length", [SHORT_KEY_MAX - 1, SHORT_KEY_MAX, SHORT_KEY_MAX + 1, 1024, 0xFFFF])
def test_keys_of_any_length_round_trip(storage: Storage, length: int) -> None:
    key = bytes(i % 251 for i in range(length))
    storage.apply([PutRecord(key, value(1, b"long"))])
    assert storage.get(key) == value(1, b"long")
    assert storage.get(key[:-1]) is None
    assert len(storage_key(key)) <= 511  # LMDB's key limit


def test_long_keys_sharing_a_prefix_stay_distinct(storage: Storage) -> None:
    prefix = b"p" * SHORT_KEY_MAX
    first, second = prefix + b"-first" + b"x" * 500, prefix + b"-second" + b"x" * 500
    assert storage_key(first) != storage_key(second)
    storage.apply([PutRecord(first, value(1, b"one")), PutRecord(second, value(1, b"two"))])
    assert storage.get(first) == value(1, b"one")
    assert storage.get(second) == value(1, b"two")
    assert storage.get(prefix) is None
    assert storage.live_keys == 2
    storage.apply([PutRecord(first, tombstone(2))])
    assert storage.get(second) == value(1, b"two")
    assert storage.live_keys == 1


def test_empty_and_binary_keys_and_values(storage: Storage) -> None:
    binary_key = bytes(range(256))
    binary_value = bytes(range(255, -1, -1)) * 4
    writes = [
        PutRecord(b"", value(1, b"empty key")),
        PutRecord(binary_key, value(2, binary_value)),
        PutRecord(b"\x00", value(3, b"\x00\xff")),
    ]
    assert storage.apply(writes) == [True, True, True]
    assert storage.get(b"") == value(1, b"empty key")
    assert storage.get(binary_key) == value(2, binary_value)
    assert storage.get(b"\x00") == value(3, b"\x00\xff")
    assert storage.live_keys == 3


def test_non_ascii_node_id_round_trips(storage: Storage) -> None:
    record = value(1, b"v", node_id="nœud-ü")
    storage.apply([PutRecord(b"k", record)])
    assert storage.get(b"k") == record


# --- failures --------------------------------------------------------------------------------------


def test_full_store_raises_storage_error_naming_the_setting(path: str) -> None:
    store = Storage(path, 64 * 1024)
    try:
        with pytest.raises(StorageError, match="KV_STORAGE_LIMIT_MB"):
            store.apply([PutRecord(b"big", value(1, b"x" * (1 << 20)))])
        assert store.get(b"big") is None
        assert store.live_keys == 0
        assert store.max_timestamp == 0
        assert set(all_digests(store)) == {EMPTY_DIGEST}  # the failed batch left no trace in the digests
        assert store.apply([PutRecord(b"small", value(2, b"fits"))]) == [True]  # the store still works afterwards
        assert store.live_keys == 1
    finally:
        store.close()


def test_unopenable_path_raises_storage_error(tmp_path: Path) -> None:
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("occupied")
    with pytest.raises(StorageError, match="cannot open"):
        Storage(str(not_a_dir), MAP_SIZE)


# --- group commit ----------------------------------------------------------------------------------


def test_concurrent_writers_share_commits(storage: Storage) -> None:
    committer = GroupCommitter(storage)  # default: commits in the gevent threadpool
    writers = [
        gevent.spawn(committer.submit, PutRecord(f"key{i}".encode(), value(i + 1, f"v{i}".encode()))) for i in range(50)
    ]
    gevent.joinall(writers, timeout=30, raise_error=True)
    assert all(writer.successful() for writer in writers)
    assert [writer.value for writer in writers] == [True] * 50
    for i in range(50):
        assert storage.get(f"key{i}".encode()) == value(i + 1, f"v{i}".encode())
    assert storage.live_keys == 50
    assert 1 <= committer.commits <= 5, f"{committer.commits} commits for 50 concurrent writes"


def test_group_commit_reports_refused_writes(storage: Storage) -> None:
    storage.apply([PutRecord(b"k", value(10, b"current"))])
    committer = GroupCommitter(storage)
    assert committer.submit(PutRecord(b"k", value(5, b"stale"))) is False
    assert committer.submit(PutRecord(b"k", value(11, b"newer"))) is True
    assert storage.get(b"k") == value(11, b"newer")
    assert committer.commits == 2
    committer.flush()  # nothing pending: returns at once


def test_storage_failure_reaches_every_waiter_of_the_batch(storage: Storage) -> None:
    failure = StorageError("disk on fire")
    fail = [True]

    def start(function: Callable[..., Any], args: Any) -> AsyncResult:
        job = AsyncResult()
        if fail[0]:
            job.set_exception(failure)
        else:
            job.set(function(*args))
        return job

    committer = GroupCommitter(storage, start=start)
    writers = [gevent.spawn(committer.submit, PutRecord(f"key{i}".encode(), value(1, b"v"))) for i in range(10)]
    gevent.joinall(writers, timeout=10)
    assert all(writer.ready() for writer in writers)
    assert [writer.exception for writer in writers] == [failure] * 10
    assert committer.commits == 0
    assert storage.live_keys == 0
    assert storage.get(b"key0") is None

    fail[0] = False  # the committer recovers: the next write starts a new flush
    assert committer.submit(PutRecord(b"key0", value(2, b"after"))) is True
    assert storage.get(b"key0") == value(2, b"after")
    assert committer.commits == 1


def test_group_commit_runs_every_kind_of_operation(storage: Storage) -> None:
    committer = GroupCommitter(storage)
    operations = [
        PutRecord(b"live", value(1, b"v")),
        PutRecord(b"deleted", tombstone(2)),
        PutHint("node2", b"held", value(3, b"h"), 1_000),
        PurgeTombstone(b"deleted", Version(2, "node1")),
        DropHint("node2", b"held", Version(3, "node1")),
        PutRecord(b"live", value(0, b"stale")),
    ]
    results = [gevent.spawn(committer.submit, operation) for operation in operations]
    gevent.joinall(results, timeout=10, raise_error=True)
    assert [result.value for result in results] == [True, True, True, True, True, False]
    assert committer.commits == 1  # submitted in one turn of the event loop: one commit, in order
    assert storage.get(b"live") == value(1, b"v")
    assert storage.get(b"deleted") is None
    assert storage.pending_hints() == 0


def test_a_batch_with_something_that_is_not_an_operation_changes_nothing(storage: Storage) -> None:
    with pytest.raises(TypeError, match="not a storage operation"):
        storage.apply([PutRecord(b"k", value(1, b"v")), (b"k", value(2, b"old-style tuple"))])  # type: ignore[list-item]
    assert storage.get(b"k") is None  # the batch is one transaction: all or nothing
    assert storage.live_keys == 0
    assert storage.max_timestamp == 0
    assert storage.digests(range(storage.partitions)) == [EMPTY_DIGEST] * storage.partitions


# --- partition digests -----------------------------------------------------------------------------


def partition_of(key: bytes, partitions: int = PARTITIONS) -> int:
    """The key's partition as clients and coordinators compute it."""
    return Ring(["any-node"], partitions).partition(key)


def sample_writes(count: int, seed: int) -> list[PutRecord]:
    """Writes to ``count`` keys: values, overwrites, tombstones, and a few long keys."""
    rng = random.Random(seed)
    writes = []
    for i in range(count):
        key = f"key-{i}".encode() if i % 10 else bytes([i % 256]) * (SHORT_KEY_MAX + 1 + i)
        for version in range(1, rng.randint(1, 3) + 1):
            record = tombstone(version) if rng.random() < 0.2 else value(version, f"{i}.{version}".encode())
            writes.append(PutRecord(key, record))
    return writes


def all_digests(store: Storage) -> list[bytes]:
    return store.digests(range(store.partitions))


def test_an_empty_store_has_the_empty_digest_everywhere(open_store: Callable[..., Storage]) -> None:
    store = open_store("empty")
    assert all_digests(store) == [EMPTY_DIGEST] * PARTITIONS
    assert store.digests([3, 0, 3]) == [EMPTY_DIGEST] * 3  # in request order, repeats allowed


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_the_same_records_give_the_same_digests_whatever_the_order_and_batching(
    open_store: Callable[..., Storage], seed: int
) -> None:
    writes = sample_writes(60, seed)
    in_order = open_store("in-order")
    in_order.apply(writes)

    shuffled = open_store("shuffled")
    mixed = list(writes)
    random.Random(seed).shuffle(mixed)  # older versions after newer ones: refused, digests unchanged
    for start in range(0, len(mixed), 7):
        shuffled.apply(mixed[start : start + 7])

    newest_only = open_store("newest-only")
    final: dict[bytes, Record] = {}
    for write in writes:
        final[write.key] = write.record  # versions only grow within sample_writes
    newest_only.apply([PutRecord(key, record) for key, record in final.items()])

    assert list(in_order.records()) == list(shuffled.records()) == list(newest_only.records())
    digests = all_digests(in_order)
    assert all_digests(shuffled) == digests
    assert all_digests(newest_only) == digests
    assert sum(digest != EMPTY_DIGEST for digest in digests) >= PARTITIONS // 2  # the keys spread out


@pytest.mark.parametrize(
    "change",
    [value(2, b"newer value"), tombstone(2), value(1, b"same version, other node", node_id="node2")],
    ids=["newer-value", "newer-tombstone", "other-node-id"],
)
def test_one_differing_record_changes_only_its_partitions_digest(
    open_store: Callable[..., Storage], change: Record
) -> None:
    writes = [PutRecord(f"key-{i}".encode(), value(1, b"v")) for i in range(40)]
    left, right = open_store("left"), open_store("right")
    left.apply(writes)
    right.apply(writes)
    assert all_digests(left) == all_digests(right)

    assert right.apply([PutRecord(b"key-7", change)]) == [True]
    differing = [p for p, (a, b) in enumerate(zip(all_digests(left), all_digests(right), strict=True)) if a != b]
    assert differing == [partition_of(b"key-7")]

    left.apply([PutRecord(b"key-7", change)])
    assert all_digests(left) == all_digests(right)


def test_an_extra_key_changes_the_digest(open_store: Callable[..., Storage]) -> None:
    left, right = open_store("left"), open_store("right")
    left.apply([PutRecord(b"a", value(1, b"v"))])
    right.apply([PutRecord(b"a", value(1, b"v")), PutRecord(b"b", tombstone(1))])  # even a tombstone counts
    assert left.digests([partition_of(b"b")]) != right.digests([partition_of(b"b")])


def test_purging_the_only_record_returns_the_partition_to_the_empty_digest(storage: Storage) -> None:
    storage.apply([PutRecord(b"k", value(1, b"v"))])
    partition = partition_of(b"k", storage.partitions)
    assert storage.digests([partition]) != [EMPTY_DIGEST]
    storage.apply([PutRecord(b"k", tombstone(2))])
    assert storage.digests([partition]) != [EMPTY_DIGEST]
    assert storage.apply([PurgeTombstone(b"k", Version(2, "node1"))]) == [True]
    assert storage.digests([partition]) == [EMPTY_DIGEST]


def test_digests_survive_close_and_reopen(path: str) -> None:
    store = Storage(path, MAP_SIZE, PARTITIONS)
    store.apply(sample_writes(30, seed=4))
    before = all_digests(store)
    store.close()
    reopened = Storage(path, MAP_SIZE, PARTITIONS)
    try:
        assert all_digests(reopened) == before
        assert reopened.digests_rebuilt is None  # a clean close saved them: loaded, not rebuilt
    finally:
        reopened.close()


def test_a_store_that_syncs_periodically_also_saves_its_digests_at_close(path: str) -> None:
    store = Storage(path, MAP_SIZE, PARTITIONS, sync=False)
    store.apply(sample_writes(20, seed=7))
    before = all_digests(store)
    store.close()
    reopened = Storage(path, MAP_SIZE, PARTITIONS, sync=False)
    try:
        assert reopened.digests_rebuilt is None
        assert all_digests(reopened) == before
    finally:
        reopened.close()


def test_after_a_crash_the_digests_are_rebuilt_from_the_records(path: str, tmp_path: Path) -> None:
    store = Storage(path, MAP_SIZE, PARTITIONS)
    store.apply(sample_writes(30, seed=5))
    store.close()  # saved once...
    store = Storage(path, MAP_SIZE, PARTITIONS)
    store.apply(sample_writes(40, seed=6))  # ...then changed: the saved digests are stale now
    records = len(list(store.records()))
    expected = all_digests(store)
    crashed = tmp_path / "crashed"  # the files as a crash would leave them: committed, never closed
    shutil.copytree(path, crashed)
    store.close()
    recovered = Storage(str(crashed), MAP_SIZE, PARTITIONS)
    try:
        assert recovered.digests_rebuilt is not None and recovered.digests_rebuilt[0] == records
        assert all_digests(recovered) == expected
    finally:
        recovered.close()


# --- partition listings ----------------------------------------------------------------------------


def partition_records(
    store: Storage, partition: int, cursor: bytes = b"", limit_bytes: int = LISTING_PAGE_BYTES
) -> tuple[list[tuple[bytes, Record]], bytes]:
    """One page of the store's iteration of ``partition``, cut as PARTITION_KEYS pages are."""
    return listing_page(store.partition_entries(partition, cursor), limit_bytes)


def list_partition(store: Storage, partition: int, limit_bytes: int) -> list[list[tuple[bytes, Record]]]:
    """Every page of ``partition``, following the cursors (bounded: fails rather than loop forever)."""
    pages = []
    cursor = b""
    for _ in range(10_000):
        page, cursor = partition_records(store, partition, cursor, limit_bytes)
        pages.append(page)
        if not cursor:
            return pages
    raise AssertionError("the cursor never reached the end of the partition")


def test_paging_returns_every_record_of_its_partition_exactly_once(open_store: Callable[..., Storage]) -> None:
    store = open_store("paged")
    writes = sample_writes(120, seed=5)
    store.apply(writes)
    expected = dict(store.records())
    assert any(len(key) > SHORT_KEY_MAX for key in expected)  # long keys are in the listing too

    seen: list[bytes] = []
    page_count = 0
    for partition in range(PARTITIONS):
        pages = list_partition(store, partition, limit_bytes=100)  # about three records a page
        page_count += len(pages)
        listed = [key for page in pages for key, _ in page]
        assert all(partition_of(key) == partition for key in listed), partition
        assert [storage_key(key) for key in listed] == sorted(storage_key(key) for key in listed)
        for page in pages:
            for key, record in page:
                assert record == expected[key]
        seen += listed
    assert sorted(seen) == sorted(expected)  # every record once, none twice
    assert len(seen) == len(set(seen))
    assert page_count >= len(expected) // 3  # the limit really split the partitions into pages


def test_one_big_page_lists_the_same_as_many_small_ones(open_store: Callable[..., Storage]) -> None:
    store = open_store("paged")
    store.apply(sample_writes(80, seed=6))
    for partition in range(PARTITIONS):
        [whole] = list_partition(store, partition, limit_bytes=1 << 30)
        small_pages = list_partition(store, partition, limit_bytes=1)
        # one record a page; the page holding the last record already reports the end (an empty
        # partition is one empty page)
        assert [len(page) for page in small_pages] == ([1] * len(whole) or [0])
        assert [entry for page in small_pages for entry in page] == whole


def test_an_empty_partition_lists_nothing(open_store: Callable[..., Storage]) -> None:
    store = open_store("sparse")
    store.apply([PutRecord(b"only", value(1, b"v"))])
    for partition in range(PARTITIONS):
        expected = [(b"only", value(1, b"v"))] if partition == partition_of(b"only") else []
        assert partition_records(store, partition) == (expected, b"")


def test_paging_continues_after_the_cursor_record_is_purged(open_store: Callable[..., Storage]) -> None:
    store = open_store("purged")
    keys = [f"key-{i}".encode() for i in range(200)]
    partition = partition_of(keys[0])
    mine = [key for key in keys if partition_of(key) == partition]
    assert len(mine) >= 5
    store.apply([PutRecord(key, tombstone(1)) for key in mine])
    first, cursor = partition_records(store, partition, b"", limit_bytes=1)
    assert len(first) == 1 and cursor
    [(listed_key, _)] = first
    assert store.apply([PurgeTombstone(listed_key, Version(1, "node1"))]) == [True]
    rest = [key for page in _pages_from(store, partition, cursor) for key, _ in page]
    assert sorted([listed_key, *rest]) == sorted(mine)


def _pages_from(store: Storage, partition: int, cursor: bytes) -> list[list[tuple[bytes, Record]]]:
    pages = []
    for _ in range(1000):
        page, cursor = partition_records(store, partition, cursor, limit_bytes=1)
        pages.append(page)
        if not cursor:
            return pages
    raise AssertionError("the cursor never reached the end of the partition")


def test_a_single_partition_store_lists_everything(open_store: Callable[..., Storage]) -> None:
    store = open_store("one", partitions=1)
    store.apply([PutRecord(bytes([b]), value(1, b"v")) for b in range(256)])
    [page] = list_partition(store, 0, limit_bytes=1 << 30)
    assert sorted(key for key, _ in page) == [bytes([b]) for b in range(256)]


# --- hints -----------------------------------------------------------------------------------------


def test_a_hint_is_held_apart_from_the_data(storage: Storage) -> None:
    assert storage.apply([PutHint("node2", b"k", value(5, b"for node2"), 1_000)]) == [True]
    assert storage.get(b"k") is None  # not served to reads
    assert storage.live_keys == 0  # not counted as a key
    assert list(storage.records()) == []
    assert storage.digests(range(storage.partitions)) == [EMPTY_DIGEST] * storage.partitions
    assert partition_records(storage, partition_of(b"k", storage.partitions)) == ([], b"")
    assert storage.max_timestamp == 5  # but the clock resumes above it after a restart
    assert storage.pending_hints() == 1
    assert storage.hint_counts() == {"node2": 1}
    assert storage.hints_for("node2", 10) == [Hint("node2", b"k", value(5, b"for node2"), 1_000)]


def test_only_the_newest_hint_per_owner_and_key_is_kept(storage: Storage) -> None:
    assert storage.apply([PutHint("node2", b"k", value(5, b"v5"), 1_000)]) == [True]
    assert storage.apply([PutHint("node2", b"k", value(7, b"v7"), 2_000)]) == [True]
    assert storage.apply([PutHint("node2", b"k", value(6, b"v6"), 3_000)]) == [False]
    assert storage.apply([PutHint("node2", b"k", value(7, b"v7 again"), 4_000)]) == [False]
    assert storage.hints_for("node2", 10) == [Hint("node2", b"k", value(7, b"v7"), 2_000)]
    assert storage.apply([PutHint("node2", b"k", tombstone(8), 5_000)]) == [True]  # a delete supersedes too
    assert storage.hints_for("node2", 10) == [Hint("node2", b"k", tombstone(8), 5_000)]
    assert storage.pending_hints() == 1


def test_hints_are_kept_per_owner(storage: Storage) -> None:
    storage.apply(
        [
            PutHint("node1", b"a", value(1, b"1a"), 10),
            PutHint("node1", b"b", value(1, b"1b"), 11),
            PutHint("node10", b"a", value(1, b"10a"), 12),  # an owner whose id extends another's
            PutHint("n", b"a", value(1, b"na"), 13),
        ]
    )
    assert storage.pending_hints() == 4
    assert storage.hint_counts() == {"node1": 2, "node10": 1, "n": 1}
    assert sorted(hint.key for hint in storage.hints_for("node1", 10)) == [b"a", b"b"]
    assert storage.hints_for("node10", 10) == [Hint("node10", b"a", value(1, b"10a"), 12)]
    assert storage.hints_for("n", 10) == [Hint("n", b"a", value(1, b"na"), 13)]
    assert storage.hints_for("node2", 10) == []
    assert len(storage.hints_for("node1", 1)) == 1


def test_hints_for_pages_by_limit(storage: Storage) -> None:
    keys = [f"k{i}".encode() for i in range(10)]
    storage.apply([PutHint("node3", key, value(1, key), 1) for key in keys])
    assert len(storage.hints_for("node3", 4)) == 4
    assert sorted(hint.key for hint in storage.hints_for("node3", 100)) == sorted(keys)
    assert all(hint.record == value(1, hint.key) for hint in storage.hints_for("node3", 100))


NODE_ID_MAX = "n" * 64  # the longest node id service.config accepts


@pytest.mark.parametrize(
    ("owner", "key_length"),
    [("node2", SHORT_KEY_MAX), (NODE_ID_MAX, 511 - 1 - 64 - 8)],
    ids=["short-key-at-the-limit", "longest-owner-longest-fitting-key"],
)
def test_a_hint_for_a_key_up_to_the_short_key_limit_is_held(storage: Storage, owner: str, key_length: int) -> None:
    key = b"h" * key_length
    assert storage.apply([PutHint(owner, key, value(1, b"v"), 1)]) == [True]
    assert storage.hints_for(owner, 10) == [Hint(owner, key, value(1, b"v"), 1)]


@pytest.mark.parametrize(
    ("owner", "key_length"),
    [("node2", SHORT_KEY_MAX + 1), ("node2", 1024), (NODE_ID_MAX, 511 - 64 - 8)],
    ids=["long-key", "max-default-key", "longest-owner-short-key"],
)
def test_a_hint_for_a_long_key_is_held(storage: Storage, owner: str, key_length: int) -> None:
    key = b"h" * key_length
    assert storage.apply([PutHint(owner, key, value(1, b"v"), 1)]) == [True]
    assert storage.hints_for(owner, 10) == [Hint(owner, key, value(1, b"v"), 1)]


def test_drop_hint_removes_it_only_when_the_version_matches(storage: Storage) -> None:
    storage.apply([PutHint("node2", b"k", value(7, b"v7"), 1_000)])
    assert storage.apply([DropHint("node2", b"k", Version(6, "node1"))]) == [False]  # replaced meanwhile
    assert storage.apply([DropHint("node2", b"k", Version(7, "node9"))]) == [False]
    assert storage.apply([DropHint("node3", b"k", Version(7, "node1"))]) == [False]  # another owner's
    assert storage.apply([DropHint("node2", b"other", Version(7, "node1"))]) == [False]
    assert storage.pending_hints() == 1
    assert storage.apply([DropHint("node2", b"k", Version(7, "node1"))]) == [True]
    assert storage.pending_hints() == 0
    assert storage.hint_counts() == {}
    assert storage.apply([DropHint("node2", b"k", Version(7, "node1"))]) == [False]  # already gone


def test_hints_survive_close_and_reopen(path: str) -> None:
    long_key = b"x" * 400
    store = Storage(path, MAP_SIZE)
    store.apply([PutHint("node2", b"k", value(3, b"v"), 42), PutHint("node3", long_key, tombstone(4), 43)])
    store.close()
    reopened = Storage(path, MAP_SIZE)
    try:
        assert reopened.pending_hints() == 2
        assert reopened.hint_counts() == {"node2": 1, "node3": 1}
        assert reopened.hints_for("node2", 10) == [Hint("node2", b"k", value(3, b"v"), 42)]
        assert reopened.hints_for("node3", 10) == [Hint("node3", long_key, tombstone(4), 43)]
        assert reopened.max_timestamp == 4
    finally:
        reopened.close()


# --- tombstone purges ------------------------------------------------------------------------------


def test_purge_deletes_exactly_that_tombstone(storage: Storage) -> None:
    storage.apply([PutRecord(b"k", value(1, b"v")), PutRecord(b"k", tombstone(5)), PutRecord(b"other", value(1, b"o"))])
    assert storage.apply([PurgeTombstone(b"k", Version(4, "node1"))]) == [False]  # an older tombstone's
    assert storage.apply([PurgeTombstone(b"k", Version(5, "node2"))]) == [False]  # same time, other node
    assert storage.get(b"k") == tombstone(5)
    assert storage.apply([PurgeTombstone(b"k", Version(5, "node1"))]) == [True]
    assert storage.get(b"k") is None
    assert storage.get(b"other") == value(1, b"o")
    assert storage.live_keys == 1
    assert storage.apply([PurgeTombstone(b"k", Version(5, "node1"))]) == [False]  # nothing left to purge
    assert storage.apply([PutRecord(b"k", value(2, b"older than the purged delete"))]) == [True]


def test_purge_never_deletes_a_value(storage: Storage) -> None:
    storage.apply([PutRecord(b"k", value(5, b"live"))])
    assert storage.apply([PurgeTombstone(b"k", Version(5, "node1"))]) == [False]  # same version, but a value
    assert storage.apply([PurgeTombstone(b"missing", Version(5, "node1"))]) == [False]
    assert storage.get(b"k") == value(5, b"live")
    assert storage.live_keys == 1


def test_purge_of_a_tombstone_overwritten_in_the_same_batch_is_refused(storage: Storage) -> None:
    results = storage.apply(
        [PutRecord(b"k", tombstone(5)), PutRecord(b"k", value(6, b"back")), PurgeTombstone(b"k", Version(5, "node1"))]
    )
    assert results == [True, True, False]
    assert storage.get(b"k") == value(6, b"back")


def test_purge_of_a_long_key_tombstone(storage: Storage) -> None:
    key = b"q" * (SHORT_KEY_MAX + 50)
    storage.apply([PutRecord(key, tombstone(3))])
    assert storage.apply([PurgeTombstone(key, Version(3, "node1"))]) == [True]
    assert storage.get(key) is None
    assert list(storage.records()) == []


def test_a_writer_that_times_out_does_not_strand_the_writes_behind_it(storage: Storage) -> None:
    gate = gevent.event.Event()

    def start_when_released(function: Callable[..., Any], args: Any) -> AsyncResult:
        job = AsyncResult()
        gevent.spawn(lambda: (gate.wait(), job.set(function(*args))))
        return job

    committer = GroupCommitter(storage, start=start_when_released)
    leader = gevent.spawn(lambda: gevent.with_timeout(0.05, committer.submit, PutRecord(b"first", value(1, b"a"))))
    wait_until(leader.ready, timeout=5.0)
    assert isinstance(leader.exception, gevent.Timeout)  # the first writer gave up...
    follower = gevent.spawn(committer.submit, PutRecord(b"second", value(2, b"b")))
    gevent.sleep(0)
    assert committer.pending == 1  # ...but its commit still runs, and the next write waits for it
    gate.set()
    assert follower.get(timeout=5) is True
    assert storage.get(b"first") == value(1, b"a")  # the timed-out write landed all the same
    assert storage.get(b"second") == value(2, b"b")
    assert committer.commits == 2
