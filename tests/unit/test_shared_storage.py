"""A store shared by worker processes: writes from another process are merged, counted and folded
into the digests as if one process had made them all. LMDB forbids opening one environment twice in
a process, so the other writer is a real second process (``python -c``)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from client.protocol import Record, Version
from service.storage import PutRecord, Storage

MAP_SIZE = 64 * 1024 * 1024
PARTITIONS = 8
REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.unit


def in_other_process(path: str, writes: list[tuple[bytes, int, bytes | None]]) -> list[bool]:
    """Apply ``(key, timestamp, value or None)`` writes from a second process sharing the store;
    return what ``apply`` returned there."""
    code = textwrap.dedent(
        f"""
        from client.protocol import Record, Version
        from service.storage import PutRecord, Storage
        store = Storage({path!r}, {MAP_SIZE}, {PARTITIONS}, shared=True)
        writes = {writes!r}
        print(store.apply([PutRecord(k, Record(Version(t, "node1"), v)) for k, t, v in writes]))
        store.close()
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    changed: list[bool] = eval(result.stdout)  # a list of booleans printed by the code above
    return changed


def put(key: bytes, timestamp: int, value: bytes | None = b"v") -> PutRecord:
    return PutRecord(key, Record(Version(timestamp, "node1"), value))


def test_a_write_older_than_another_processs_commit_is_refused(tmp_path: Path) -> None:
    path = str(tmp_path / "store")
    store = Storage(path, MAP_SIZE, PARTITIONS, shared=True)
    try:
        assert store.apply([put(b"k", 1)]) == [True]
        assert in_other_process(path, [(b"k", 5, b"newer")]) == [True]
        stale = put(b"k", 3, b"older")
        assert store.apply([stale]) == [False]  # compared with the other process's version 5
        assert stale.held == Version(5, "node1")
        assert store.get(b"k") == Record(Version(5, "node1"), b"newer")
    finally:
        store.close()


def test_counters_and_digests_include_every_processs_writes(tmp_path: Path) -> None:
    path = str(tmp_path / "store")
    store = Storage(path, MAP_SIZE, PARTITIONS, shared=True)
    try:
        store.apply([put(b"a", 1), put(b"b", 2), put(b"c", 3)])
        # The other process deletes b, adds d and e, and overwrites a.
        in_other_process(path, [(b"b", 10, None), (b"d", 11, b"v"), (b"e", 12, b"v"), (b"a", 13, b"v2")])
        store.apply([put(b"f", 4)])
        assert store.live_keys == 5  # a, c, d, e, f
        assert store.max_timestamp == 13
        rebuilt, records = store._rebuild_digests()
        assert records == 6
        expected = [
            digest.to_bytes(16, "big") if (digest := rebuilt.get(p, 0)) else bytes(16) for p in range(PARTITIONS)
        ]
        assert store.digests(range(PARTITIONS)) == expected
    finally:
        store.close()


def test_a_shared_store_rebuilds_digests_a_crashed_single_process_left_stale(tmp_path: Path) -> None:
    path = str(tmp_path / "store")
    single = Storage(path, MAP_SIZE, PARTITIONS)
    single.apply([put(f"key{i}".encode(), i + 1) for i in range(20)])
    expected = single.digests(range(PARTITIONS))
    single._env.close()  # as a crash would leave it: the digests were never saved
    shared = Storage(path, MAP_SIZE, PARTITIONS, shared=True)
    try:
        assert shared.digests_rebuilt is not None and shared.digests_rebuilt[0] == 20
        assert shared.digests(range(PARTITIONS)) == expected
        assert shared.live_keys == 20
    finally:
        shared.close()
    # And back to one process: the digests the shared store kept are current.
    single = Storage(path, MAP_SIZE, PARTITIONS)
    try:
        assert single.digests_rebuilt is None
        assert single.digests(range(PARTITIONS)) == expected
    finally:
        single.close()


def test_a_process_killed_holding_the_writer_lock_does_not_wedge_the_others(tmp_path: Path) -> None:
    """LMDB's writer lock is a robust mutex: the next writer recovers it from a dead owner, as a
    worker SIGKILLed mid-commit leaves it."""
    path = str(tmp_path / "store")
    Storage(path, MAP_SIZE, PARTITIONS, shared=True).close()
    holder = textwrap.dedent(
        f"""
        import lmdb, os, signal
        env = lmdb.open({path!r}, map_size={MAP_SIZE}, max_dbs=8)
        txn = env.begin(write=True, db=env.open_db(b"data"))
        txn.put(b"never", b"committed")
        os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    killed = subprocess.run([sys.executable, "-c", holder], cwd=REPO, capture_output=True, timeout=60, check=False)
    assert killed.returncode == -9, killed.stderr
    # A hang here would be a wedged lock: the subprocess's timeout turns it into a failure.
    assert in_other_process(path, [(b"k", 1, b"v")]) == [True]
    store = Storage(path, MAP_SIZE, PARTITIONS, shared=True)
    try:
        assert store.get(b"k") == Record(Version(1, "node1"), b"v")
        assert store.get(b"never") is None  # the dead writer's transaction never committed
    finally:
        store.close()
