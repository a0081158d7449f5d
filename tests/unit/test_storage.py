"""The LMDB store (last-writer-wins on write, counters, long keys) and group commit over it."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import gevent
import pytest

from client.protocol import Record, Version
from service.group_commit import GroupCommitter
from service.storage import SHORT_KEY_MAX, Storage, StorageError, storage_key

MAP_SIZE = 64 * 1024 * 1024


def value(timestamp: int, data: bytes, node_id: str = "node1") -> Record:
    return Record(Version(timestamp, node_id), data)


def tombstone(timestamp: int, node_id: str = "node1") -> Record:
    return Record(Version(timestamp, node_id), None)


@pytest.fixture
def path(tmp_path: Path) -> str:
    return str(tmp_path / "store")


@pytest.fixture
def storage(path: str) -> Iterator[Storage]:
    store = Storage(path, MAP_SIZE)
    yield store
    store.close()


# --- reads and last-writer-wins --------------------------------------------------------------------


def test_missing_key_is_none(storage: Storage) -> None:
    assert storage.get(b"nope") is None
    assert storage.live_keys == 0
    assert storage.max_timestamp == 0


def test_apply_stores_a_record(storage: Storage) -> None:
    record = value(10, b"v1")
    assert storage.apply([(b"k", record)]) == [True]
    assert storage.get(b"k") == record
    assert storage.get(b"other") is None


def test_newer_version_replaces(storage: Storage) -> None:
    storage.apply([(b"k", value(10, b"v1"))])
    assert storage.apply([(b"k", value(11, b"v2"))]) == [True]
    assert storage.get(b"k") == value(11, b"v2")
    assert storage.apply([(b"k", value(11, b"v3", node_id="node2"))]) == [True]  # tie broken by node id
    assert storage.get(b"k") == value(11, b"v3", node_id="node2")


@pytest.mark.parametrize(
    "stale",
    [value(9, b"old"), value(10, b"same version"), value(10, b"lower node id", node_id="node0"), tombstone(9)],
    ids=["older", "equal", "tie-lower-node", "older-tombstone"],
)
def test_older_or_equal_version_is_refused(storage: Storage, stale: Record) -> None:
    current = value(10, b"current")
    storage.apply([(b"k", current)])
    assert storage.apply([(b"k", stale)]) == [False]
    assert storage.get(b"k") == current
    assert storage.live_keys == 1
    assert storage.max_timestamp == 10


def test_tombstone_replaces_a_value_and_is_returned(storage: Storage) -> None:
    storage.apply([(b"k", value(10, b"v"))])
    assert storage.apply([(b"k", tombstone(11))]) == [True]
    record = storage.get(b"k")
    assert record == tombstone(11)
    assert record is not None
    assert record.is_tombstone
    assert storage.apply([(b"k", value(10, b"resurrect?"))]) == [False]  # an older write cannot undo a delete
    assert storage.get(b"k") == tombstone(11)


def test_empty_value_is_a_value_not_a_tombstone(storage: Storage) -> None:
    storage.apply([(b"k", value(1, b""))])
    record = storage.get(b"k")
    assert record == value(1, b"")
    assert record is not None
    assert not record.is_tombstone
    assert storage.live_keys == 1


def test_live_keys_counts_values_not_tombstones(storage: Storage) -> None:
    storage.apply([(b"a", value(1, b"1"))])
    assert storage.live_keys == 1
    storage.apply([(b"b", value(2, b"2"))])
    assert storage.live_keys == 2
    storage.apply([(b"a", value(3, b"overwrite"))])
    assert storage.live_keys == 2
    storage.apply([(b"a", tombstone(4))])
    assert storage.live_keys == 1
    storage.apply([(b"a", tombstone(5))])  # deleting a deleted key
    assert storage.live_keys == 1
    storage.apply([(b"c", tombstone(6))])  # deleting a key never written
    assert storage.live_keys == 1
    storage.apply([(b"a", value(7, b"re-put"))])
    assert storage.live_keys == 2
    storage.apply([(b"b", value(1, b"refused"))])
    assert storage.live_keys == 2
    assert storage.max_timestamp == 7


def test_writes_to_one_key_in_one_batch_apply_in_order(storage: Storage) -> None:
    applied = storage.apply(
        [
            (b"k", value(1, b"first")),
            (b"k", value(3, b"third")),
            (b"k", value(2, b"stale within the batch")),
            (b"other", value(1, b"x")),
            (b"k", tombstone(4)),
            (b"k", value(5, b"last")),
        ]
    )
    assert applied == [True, True, False, True, True, True]
    assert storage.get(b"k") == value(5, b"last")
    assert storage.live_keys == 2
    assert storage.max_timestamp == 5


def test_batch_ending_in_a_delete_counts_correctly(storage: Storage) -> None:
    assert storage.apply([(b"k", value(1, b"v")), (b"k", tombstone(2))]) == [True, True]
    assert storage.live_keys == 0
    assert storage.get(b"k") == tombstone(2)


def test_reopen_keeps_records_and_counters(path: str) -> None:
    store = Storage(path, MAP_SIZE)
    store.apply([(b"a", value(5, b"A")), (b"b", value(9, b"B")), (b"c", value(7, b"C"))])
    store.apply([(b"c", tombstone(8))])
    store.close()

    reopened = Storage(path, MAP_SIZE)
    try:
        assert reopened.get(b"a") == value(5, b"A")
        assert reopened.get(b"b") == value(9, b"B")
        assert reopened.get(b"c") == tombstone(8)
        assert reopened.live_keys == 2
        assert reopened.max_timestamp == 9
        assert reopened.apply([(b"b", value(8, b"stale"))]) == [False]
    finally:
        reopened.close()


# --- keys ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("length", [SHORT_KEY_MAX - 1, SHORT_KEY_MAX, SHORT_KEY_MAX + 1, 1024, 0xFFFF])
def test_keys_of_any_length_round_trip(storage: Storage, length: int) -> None:
    key = bytes(i % 251 for i in range(length))
    storage.apply([(key, value(1, b"long"))])
    assert storage.get(key) == value(1, b"long")
    assert storage.get(key[:-1]) is None
    assert len(storage_key(key)) <= 511  # LMDB's key limit


def test_long_keys_sharing_a_prefix_stay_distinct(storage: Storage) -> None:
    prefix = b"p" * SHORT_KEY_MAX
    first, second = prefix + b"-first" + b"x" * 500, prefix + b"-second" + b"x" * 500
    assert storage_key(first) != storage_key(second)
    storage.apply([(first, value(1, b"one")), (second, value(1, b"two"))])
    assert storage.get(first) == value(1, b"one")
    assert storage.get(second) == value(1, b"two")
    assert storage.get(prefix) is None
    assert storage.live_keys == 2
    storage.apply([(first, tombstone(2))])
    assert storage.get(second) == value(1, b"two")
    assert storage.live_keys == 1


def test_empty_and_binary_keys_and_values(storage: Storage) -> None:
    binary_key = bytes(range(256))
    binary_value = bytes(range(255, -1, -1)) * 4
    writes = [(b"", value(1, b"empty key")), (binary_key, value(2, binary_value)), (b"\x00", value(3, b"\x00\xff"))]
    assert storage.apply(writes) == [True, True, True]
    assert storage.get(b"") == value(1, b"empty key")
    assert storage.get(binary_key) == value(2, binary_value)
    assert storage.get(b"\x00") == value(3, b"\x00\xff")
    assert storage.live_keys == 3


def test_non_ascii_node_id_round_trips(storage: Storage) -> None:
    record = value(1, b"v", node_id="nœud-ü")
    storage.apply([(b"k", record)])
    assert storage.get(b"k") == record


# --- failures --------------------------------------------------------------------------------------


def test_full_store_raises_storage_error_naming_the_setting(path: str) -> None:
    store = Storage(path, 64 * 1024)
    try:
        with pytest.raises(StorageError, match="KV_STORAGE_LIMIT_MB"):
            store.apply([(b"big", value(1, b"x" * (1 << 20)))])
        assert store.get(b"big") is None
        assert store.live_keys == 0
        assert store.max_timestamp == 0
        assert store.apply([(b"small", value(2, b"fits"))]) == [True]  # the store still works afterwards
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
    committer = GroupCommitter(storage)  # default run_blocking: the gevent threadpool
    writers = [gevent.spawn(committer.write, f"key{i}".encode(), value(i + 1, f"v{i}".encode())) for i in range(50)]
    gevent.joinall(writers, timeout=30, raise_error=True)
    assert all(writer.successful() for writer in writers)
    assert [writer.value for writer in writers] == [True] * 50
    for i in range(50):
        assert storage.get(f"key{i}".encode()) == value(i + 1, f"v{i}".encode())
    assert storage.live_keys == 50
    assert 1 <= committer.commits <= 5, f"{committer.commits} commits for 50 concurrent writes"


def test_group_commit_reports_refused_writes(storage: Storage) -> None:
    storage.apply([(b"k", value(10, b"current"))])
    committer = GroupCommitter(storage)
    assert committer.write(b"k", value(5, b"stale")) is False
    assert committer.write(b"k", value(11, b"newer")) is True
    assert storage.get(b"k") == value(11, b"newer")
    assert committer.commits == 2
    committer.flush()  # nothing pending: returns at once


def test_storage_failure_reaches_every_waiter_of_the_batch(storage: Storage) -> None:
    failure = StorageError("disk on fire")
    fail = [True]

    def run_blocking(function: Callable[..., Any], *args: Any) -> Any:
        if fail[0]:
            raise failure
        return function(*args)

    committer = GroupCommitter(storage, run_blocking=run_blocking)
    writers = [gevent.spawn(committer.write, f"key{i}".encode(), value(1, b"v")) for i in range(10)]
    gevent.joinall(writers, timeout=10)
    assert all(writer.ready() for writer in writers)
    assert [writer.exception for writer in writers] == [failure] * 10
    assert committer.commits == 0
    assert storage.live_keys == 0
    assert storage.get(b"key0") is None

    fail[0] = False  # the committer recovers: the next write starts a new flush
    assert committer.write(b"key0", value(2, b"after")) is True
    assert storage.get(b"key0") == value(2, b"after")
    assert committer.commits == 1
