"""A full store: the error writes get, what reads still do, how the cluster routes around it, what an
operator sees (metric, log, /healthz, PING and MEMBERS flags, STATUS), and how it recovers by itself.

LMDB's map-full (``KV_STORAGE_LIMIT_MB``) is what these tests fill, with small limits; a full disk
(ENOSPC, or the short write LMDB reports as EIO) is injected into real commits and classified the
same way, and the integration test ``test_full_disk.py`` fills a real 3 MB tmpfs. LMDB's fatal error
(MDB_PANIC, every transaction refused until the environment is reopened: what a failed meta-page
write leaves) is an environment that raises it, over a real store.
"""

from __future__ import annotations

import dataclasses
import errno
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import lmdb
import pytest
from cluster import InProcessCluster, LogSink, http_get
from polling import wait_until

from client import cli, protocol
from client.client import Client
from client.errors import KVError, ReplicaBehindError, StorageFullError
from client.protocol import MemberView, PeerState, Record, Status, Version
from service.events import Throttle
from service.group_commit import start_inline
from service.local_store import BEHIND_MARKER, LocalStore, StoreEvents
from service.node import Node
from service.recovery import CatchUp
from service.storage import PROBE_PIECE_BYTES, PROBE_PIECES, PutRecord, Storage, StorageError, StorageFull
from service.storage_health import StorageHealth, StoreState
from service.store_flags import StoreFlags
from service.versioning import HybridLogicalClock

MakeCluster = Callable[..., InProcessCluster]

VALUE = b"v" * 20_000
"""The issue's writes: 20 KB each."""
SMALL_LIMIT = 1024 * 1024
"""A store limit that holds about forty of them."""
MAX_WRITES = 400


def value(timestamp: int, data: bytes = VALUE) -> Record:
    return Record(Version(timestamp, "node1"), data)


# --- the store ---------------------------------------------------------------------------------------


class FailingCommitEnv:
    """An LMDB environment whose write transactions fail at commit with ``error`` (what a full disk
    does); everything else is the real environment's."""

    def __init__(self, real: Any, error: Exception) -> None:
        self.real = real
        self.error = error

    def begin(self, *args: Any, **kwargs: Any) -> Any:
        txn = self.real.begin(*args, **kwargs)
        return FailingCommitTxn(txn, self.error) if kwargs.get("write") else txn

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)


class FailingCommitTxn:
    def __init__(self, txn: Any, error: Exception) -> None:
        self.txn = txn
        self.error = error

    def __enter__(self) -> Any:
        return self.txn.__enter__()

    def __exit__(self, *exc_info: Any) -> None:
        self.txn.abort()
        if exc_info[0] is None:
            raise self.error

    def __getattr__(self, name: str) -> Any:
        return getattr(self.txn, name)


class PanickedEnv:
    """An LMDB environment after MDB_PANIC: every transaction raises ``lmdb.PanicError`` until it is
    closed and opened again (verified against LMDB 0.9 by failing a meta-page write)."""

    def __init__(self, real: Any) -> None:
        self.real = real

    def begin(self, *args: Any, **kwargs: Any) -> Any:
        raise lmdb.PanicError("mdb_txn_begin: MDB_PANIC: Update of meta page failed or environment had fatal error")

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)


@pytest.fixture
def storage(tmp_path: Path) -> Iterator[Storage]:
    store = Storage(str(tmp_path / "store"), 64 * 1024 * 1024, 8)
    yield store
    store.close()


def test_map_full_is_storage_full_naming_the_setting_and_the_store_still_reads(tmp_path: Path) -> None:
    storage = Storage(str(tmp_path / "store"), SMALL_LIMIT)
    try:
        stored = 0
        with pytest.raises(StorageFull) as caught:
            for stored in range(MAX_WRITES):
                storage.apply([PutRecord(b"k%d" % stored, value(stored + 1))])
        assert "KV_STORAGE_LIMIT_MB" in caught.value.cause
        assert 10 < stored < MAX_WRITES
        assert storage.get(b"k0") == value(1)  # reads go on
        assert storage.live_keys == stored
    finally:
        storage.close()


@pytest.mark.parametrize(
    ("error", "free_bytes", "full"),
    [
        (lmdb.DiskError("mdb_txn_commit: No space left on device"), 10**12, True),  # ENOSPC
        (lmdb.Error(f"mdb_txn_commit: {os.strerror(errno.EDQUOT)}"), 10**12, True),  # a quota
        (lmdb.Error("mdb_txn_commit: Input/output error"), 4096, True),  # LMDB's word for a short write
        (lmdb.Error("mdb_txn_commit: Input/output error"), 10**12, False),  # a failing disk, not a full one
    ],
)
def test_a_commit_that_fails_for_lack_of_disk_is_storage_full_and_leaves_no_trace(
    storage: Storage, monkeypatch: pytest.MonkeyPatch, error: Exception, free_bytes: int, full: bool
) -> None:
    storage.apply([PutRecord(b"before", value(1))])
    digests = storage.digests(list(range(8)))
    monkeypatch.setattr(storage, "disk_free_bytes", lambda: free_bytes)
    monkeypatch.setattr(storage, "_env", FailingCommitEnv(storage._env, error))

    with pytest.raises(StorageError) as caught:
        storage.apply([PutRecord(b"after", value(2))])
    assert isinstance(caught.value, StorageFull) == full
    if full:
        assert f"the disk holding {storage.path} is full" in str(caught.value)
    monkeypatch.undo()
    assert storage.get(b"after") is None
    assert storage.get(b"before") == value(1)
    assert storage.digests(list(range(8))) == digests
    assert storage.apply([PutRecord(b"after", value(2))]) == [True]  # the environment still works


def test_after_mdb_panic_the_store_is_reopened_with_everything_committed(storage: Storage) -> None:
    storage.apply([PutRecord(b"k%d" % i, value(i + 1)) for i in range(50)])
    digests = storage.digests(list(range(8)))
    counters = (storage.live_keys, storage.max_timestamp)
    storage._env = PanickedEnv(storage._env)  # type: ignore[assignment]

    with pytest.raises(StorageError, match="reopened"):
        storage.get(b"k1")
    with pytest.raises(StorageError):
        storage.apply([PutRecord(b"lost", value(99))])
    assert storage.panicked

    storage.reopen()
    assert not storage.panicked
    assert [storage.get(b"k%d" % i) for i in range(50)] == [value(i + 1) for i in range(50)]
    assert storage.get(b"lost") is None
    assert (storage.live_keys, storage.max_timestamp) == counters
    assert storage.digests(list(range(8))) == digests
    assert storage.apply([PutRecord(b"later", value(100))]) == [True]


def test_a_reopen_trusts_the_disk_over_counters_that_disagree(storage: Storage) -> None:
    storage.apply([PutRecord(b"k%d" % i, value(i + 1)) for i in range(10)])
    digests = storage.digests(list(range(8)))
    storage._live_keys = 3  # as if memory and disk had parted
    storage._digests = {}
    storage.reopen()
    assert storage.live_keys == 10
    assert storage.digests(list(range(8))) == digests


class Reports(StoreEvents):
    def __init__(self) -> None:
        self.events: list[tuple[str, Any]] = []

    def storage_full(self, cause: str) -> None:
        self.events.append(("full", cause))

    def storage_recovered(self, full_s: float, catching_up: bool) -> None:
        self.events.append(("recovered", catching_up))

    def storage_caught_up(self, seconds: float) -> None:
        self.events.append(("caught_up", None))

    def storage_reopened(self, error: str | None) -> None:
        self.events.append(("reopened", error))


def local_store(path: Path, limit: int = SMALL_LIMIT) -> tuple[LocalStore, Reports]:
    reports = Reports()
    # Without fsync the local store commits inline, in the test's greenlet (see LocalStore).
    store = LocalStore("node1", Storage(str(path), limit, sync=False), HybridLogicalClock(), events=reports)
    return store, reports


def fill(store: LocalStore) -> list[bytes]:
    """Write 20 KB values until the store refuses one; the keys it took."""
    taken: list[bytes] = []
    for i in range(MAX_WRITES):
        key = b"k%d" % i
        try:
            store.write(key, value(i + 1))
        except StorageFull:
            return taken
        taken.append(key)
    raise AssertionError(f"{MAX_WRITES} writes of 20 KB fitted under {SMALL_LIMIT} bytes")


def test_a_full_store_refuses_values_at_once_still_reads_and_reports_once(tmp_path: Path) -> None:
    store, reports = local_store(tmp_path / "store")
    taken = fill(store)
    assert store.storage_full
    assert store.flags == protocol.PING_FLAG_STORAGE_FULL
    assert not store.readable_alone
    commits = store.committer.commits
    for i in range(20):
        with pytest.raises(StorageFull, match=r"^node1: storage full: .*KV_STORAGE_LIMIT_MB"):
            store.write(b"more%d" % i, value(1000 + i))
        with pytest.raises(StorageFull):
            store.write_hint(b"hint%d" % i, value(2000 + i), "node2")
    assert store.committer.commits == commits  # refused without touching the disk
    assert reports.events == [("full", reports.events[0][1])]  # one report, not one per write
    assert all(store.read(key) is not None for key in taken)
    assert (tmp_path / "store" / BEHIND_MARKER).exists()


def test_deleting_keys_frees_room_and_a_probe_finds_it(tmp_path: Path) -> None:
    store, reports = local_store(tmp_path / "store")
    taken = fill(store)
    assert store.probe(has_peers=False)  # no room yet: still full
    for i, key in enumerate(taken):
        store.write(key, Record(Version(10_000 + i, "node1"), None))  # a tombstone is still tried
    assert not store.probe(has_peers=False)
    assert store.health.state is StoreState.WRITABLE  # no peers: nothing to catch up on
    assert [event for event, _ in reports.events] == ["full", "recovered"]
    store.write(b"fresh", value(20_000))
    assert store.read(b"fresh") == value(20_000)
    assert not (tmp_path / "store" / BEHIND_MARKER).exists()


def test_a_probe_writes_and_then_frees_its_room(tmp_path: Path) -> None:
    store, _ = local_store(tmp_path / "store", 64 * 1024 * 1024)
    store.health.no_room("test", 0.0)
    used = store.space()[0]
    assert not store.probe(has_peers=True)
    assert store.health.state is StoreState.CATCHING_UP
    assert store.space()[0] - used >= PROBE_PIECES * PROBE_PIECE_BYTES  # it really found that room
    store.write(b"k", value(1))
    assert store.space()[0] - used < 2 * PROBE_PIECES * PROBE_PIECE_BYTES  # and gave it back


def test_a_store_reopens_itself_after_mdb_panic_on_the_next_read_or_write(tmp_path: Path) -> None:
    store, reports = local_store(tmp_path / "store", 64 * 1024 * 1024)
    store.write(b"kept", value(1))
    storage = store._storage
    storage._env = PanickedEnv(storage._env)  # type: ignore[assignment]
    assert store.read(b"kept") == value(1)  # reopened under the read
    assert reports.events == [("reopened", None)]

    storage._env = PanickedEnv(storage._env)  # type: ignore[assignment]
    with pytest.raises(StorageError):  # the commit that met the panic fails: it is not acknowledged
        store.write(b"lost", value(2))
    store.write(b"next", value(3))  # reopened between commits
    assert [store.read(key) for key in (b"kept", b"lost", b"next")] == [value(1), None, value(3)]


# --- the pure parts ----------------------------------------------------------------------------------


def test_health_goes_full_then_catching_up_then_writable_and_full_again_from_any_state() -> None:
    health = StorageHealth(0.0)
    assert (health.readable_alone, health.flags) == (True, 0)
    assert health.no_room("disk full", 1.0)
    assert not health.no_room("disk full", 2.0)  # already full: no second report
    assert (health.state, health.cause, health.flags) == (StoreState.FULL, "disk full", protocol.PING_FLAG_STORAGE_FULL)
    assert not health.caught_up(3.0)  # catching up starts only once room is found
    assert health.room_found(4.0, has_peers=True)
    assert (health.state, health.flags, health.readable_alone) == (StoreState.CATCHING_UP, 2, False)
    assert health.no_room("again", 5.0)
    assert health.room_found(6.0, has_peers=True)
    assert health.caught_up(7.0)
    assert (health.state, health.since, health.readable_alone) == (StoreState.WRITABLE, 7.0, True)
    assert StorageHealth(0.0, catching_up=True).state is StoreState.CATCHING_UP


def test_store_flags_take_pings_and_refusals_and_the_next_ping_has_the_last_word() -> None:
    changes: list[tuple[str, int, int]] = []
    local = [0]
    flags = StoreFlags("node1", lambda: local[0], ["node2", "node3"], lambda *change: changes.append(change))
    assert not flags.is_full("node2")
    flags.refused("node2", protocol.PING_FLAG_STORAGE_FULL)
    assert flags.is_full("node2")
    assert flags.is_behind("node2")
    flags.observe("node2", protocol.PING_FLAG_CATCHING_UP)
    assert (flags.is_full("node2"), flags.is_behind("node2")) == (False, True)
    flags.observe("node2", 0)
    flags.observe("node2", 0)
    assert changes == [("node2", 0, 1), ("node2", 1, 2), ("node2", 2, 0)]
    local[0] = protocol.PING_FLAG_STORAGE_FULL
    assert flags.is_full("node1")  # this node's own flags are its store's
    assert flags.is_behind("node1")
    alone = StoreFlags("node1", lambda: protocol.PING_FLAG_STORAGE_FULL, [])
    assert alone.is_full("node1")
    assert not alone.is_behind("node1")  # no other node took a write for it: its store lacks nothing


def member(hints: int = 0, *, state: PeerState = PeerState.UP, since: int = 1, flags: int = 0) -> MemberView:
    return MemberView("node1", state, since, hints, flags)


def test_catching_up_waits_for_every_peer_to_see_the_store_writable_then_settle_then_no_hints() -> None:
    catch_up = CatchUp("node1", settle=2.0)
    full = member(flags=protocol.PING_FLAG_STORAGE_FULL)
    assert not catch_up.step(0.0, {"node2": member(), "node3": full})  # node3 still routes around it
    assert not catch_up.step(1.0, {"node2": member(), "node3": member()})  # both see it writable: from now
    assert not catch_up.step(2.5, {"node2": member(), "node3": member()})  # writes under way may still hint
    assert not catch_up.step(3.5, {"node2": member(hints=4), "node3": member()})  # some still to deliver
    assert catch_up.step(4.0, {"node2": member(), "node3": member()})


@pytest.mark.parametrize(
    "interruption",
    [
        {"node2": None},  # node2 did not answer
        {"node2": member(state=PeerState.SUSPECT)},
        {"node2": member(since=2)},  # node2 saw it go and come back in between
        {"node2": member(flags=protocol.PING_FLAG_STORAGE_FULL)},
    ],
)
def test_catching_up_starts_over_when_a_peer_stops_seeing_the_store_writable(
    interruption: dict[str, MemberView | None],
) -> None:
    catch_up = CatchUp("node1", settle=2.0)
    views = {"node2": member(), "node3": member()}
    assert not catch_up.step(0.0, views)
    assert not catch_up.step(1.0, {**views, **interruption})
    assert not catch_up.step(2.5, views)  # settle counts again from here
    assert catch_up.step(4.5, views)


def test_a_throttle_lets_one_report_through_per_interval_and_counts_the_rest() -> None:
    now = [0.0]
    throttle = Throttle(30.0, lambda: now[0])
    assert throttle.add("node2", 3) == 3
    assert throttle.add("node2", 2) is None
    assert throttle.add("node3", 1) == 1  # per key
    now[0] = 29.0
    assert throttle.add("node2", 1) is None
    now[0] = 30.0
    assert throttle.add("node2", 1) == 4  # what was held back comes with the next report


# --- nodes -------------------------------------------------------------------------------------------


def gauge(node: Node, name: str) -> float | None:
    return node.metrics.registry.get_sample_value(name)


def with_storage_limit(cluster: InProcessCluster, node_id: str, limit_bytes: int) -> Node:
    """Restart ``node_id`` with ``KV_STORAGE_LIMIT_MB`` at ``limit_bytes`` (any size, for tests)."""
    cluster.configs[node_id] = dataclasses.replace(cluster.configs[node_id], storage_limit_bytes=limit_bytes)
    node = cluster.restart(node_id)
    cluster.settle()
    return node


def write_until_refused(client: Client, count: int = MAX_WRITES) -> tuple[list[str], StorageFullError | None]:
    """PUT 20 KB values; the keys acknowledged, and the STORAGE_FULL that stopped it, if one did."""
    acked: list[str] = []
    for i in range(count):
        key = f"key{i:04d}"
        try:
            client.put(key, VALUE)
        except StorageFullError as exc:
            return acked, exc
        acked.append(key)
    return acked, None


def get_through(client: Client, cluster: InProcessCluster, node_id: str, key: str) -> bytes | None:
    """GET ``key`` at the default R with ``node_id`` as the coordinator."""
    frame = client.call_node(cluster.address(node_id), protocol.Get(key.encode()))
    return None if frame.code == Status.NOT_FOUND else protocol.decode_value(frame.body)[1]


def ping_flags(client: Client, cluster: InProcessCluster, node_id: str) -> int:
    return protocol.decode_ping_reply(client.call_node(cluster.address(node_id), protocol.Ping()).body).flags


def test_a_lone_full_node_answers_storage_full_serves_reads_shows_it_and_recovers_when_keys_go(
    make_cluster: MakeCluster, log_sink: LogSink
) -> None:
    cluster = make_cluster(1, KV_LOG_COMMANDS="false")
    node = with_storage_limit(cluster, "node1", SMALL_LIMIT)
    assert gauge(node, "kv_storage_full") == 0
    with cluster.running_client() as client:
        acked, refused = write_until_refused(client)
        assert refused is not None, "the store never filled"
        assert "node1" in refused.message
        assert "KV_STORAGE_LIMIT_MB" in refused.message
        assert "UNAVAILABLE" not in refused.message
        for i in range(10):  # more writes: the same error, and no more log lines
            with pytest.raises(StorageFullError):
                client.put(f"more{i}", VALUE)
        assert all(client.get(key) == VALUE for key in acked)  # reads keep working

        assert gauge(node, "kv_storage_full") == 1
        assert gauge(node, "kv_storage_limit_bytes") == SMALL_LIMIT
        assert 0 < (gauge(node, "kv_storage_used_bytes") or 0) <= SMALL_LIMIT
        status, body = http_get(node.http_port, "/healthz")
        assert (status, body.startswith("node1: storage full:")) == (503, True)
        assert http_get(node.http_port, "/readyz")[0] == 200  # it still coordinates
        assert ping_flags(client, cluster, "node1") == protocol.PING_FLAG_STORAGE_FULL
        _, (me,) = client.members()
        assert me.storage_full
        assert len(log_sink.events("storage_full")) == 1

        for key in acked:  # deleting keys frees room: a tombstone is still tried on a full store
            client.delete(key)
        wait_until(lambda: gauge(node, "kv_storage_full") == 0, 5, message="the store to find room again")
        client.put("fresh", VALUE)
        assert client.get("fresh") == VALUE
    assert http_get(node.http_port, "/healthz") == (200, "ok\n")
    assert len(log_sink.events("storage_recovered")) == 1


def test_a_full_node_starts_again_and_a_raised_limit_recovers_it(make_cluster: MakeCluster) -> None:
    cluster = make_cluster(1, KV_LOG_COMMANDS="false")
    with_storage_limit(cluster, "node1", SMALL_LIMIT)
    with cluster.running_client() as client:
        acked, refused = write_until_refused(client)
        assert refused is not None
    node = cluster.restart("node1")  # still full: it starts, and reads its data
    with cluster.running_client() as client:
        assert all(client.get(key) == VALUE for key in acked)
        with pytest.raises(StorageFullError):
            client.put("more", VALUE)
    node = with_storage_limit(cluster, "node1", 4 * SMALL_LIMIT)
    wait_until(lambda: node.store.readable_alone, 5, message="the store to catch up (it has no peers)")
    with cluster.running_client() as client:
        client.put("more", VALUE)
        assert all(client.get(key) == VALUE for key in [*acked, "more"])


@pytest.fixture
def full_node1(make_cluster: MakeCluster) -> Iterator[tuple[InProcessCluster, Client, list[str]]]:
    """Three nodes (N=2, W=2, R=1) with node1's store limited to ``SMALL_LIMIT``, after 150 writes of
    20 KB through the cluster: node1 is full, and the keys acknowledged."""
    cluster = make_cluster(3, KV_LOG_COMMANDS="false", KV_REQUEST_TIMEOUT_MS="500")
    with_storage_limit(cluster, "node1", SMALL_LIMIT)
    with cluster.running_client() as client:
        acked, _ = write_until_refused(client, 150)
        yield cluster, client, acked


def test_with_one_store_full_every_write_succeeds_and_every_key_reads_through_every_node(
    full_node1: tuple[InProcessCluster, Client, list[str]], capsys: pytest.CaptureFixture[str]
) -> None:
    cluster, client, acked = full_node1
    node1 = cluster.node("node1")
    assert len(acked) == 150  # node1's copies went to the others as hints
    assert node1.store.storage_full
    # Read at once, before any heartbeat: a coordinator that has not heard yet is refused by node1.
    for node_id in cluster.node_ids:
        missing = [key for key in acked if get_through(client, cluster, node_id, key) != VALUE]
        assert missing == [], f"{len(missing)} acknowledged keys not found through {node_id}"
    assert all(client.get(key) == VALUE for key in acked)
    held = sum(cluster.node(node_id).store.hint_counts().get("node1", 0) for node_id in ("node2", "node3"))
    assert held > 0
    cluster.settle()
    for node_id in ("node2", "node3"):
        assert cluster.node(node_id).store_flags.is_full("node1")
        members = {member.node_id: member for member in cluster.node(node_id).reports.members()}
        assert members["node1"].storage_full
    with pytest.raises(ReplicaBehindError):  # its own store would answer NOT_FOUND for some keys
        client.call_node(cluster.address("node1"), protocol.ReplicaGet(acked[-1].encode()))
    capsys.readouterr()
    assert cli.main(["--nodes", cluster.address("node2"), "status"]) == 2  # degraded
    status_line = capsys.readouterr().out
    assert f"node1 {cluster.address('node1')} up (storage full)" in status_line


def test_a_full_node_recovers_by_itself_catches_up_on_its_hints_then_serves_reads_again(
    full_node1: tuple[InProcessCluster, Client, list[str]], log_sink: LogSink
) -> None:
    cluster, client, acked = full_node1
    node1 = cluster.node("node1")
    for node_id in ("node2", "node3"):  # hold node1's hints back, to look at the window before they arrive
        cluster.node(node_id).tasks["hinted_handoff"].stop()
    # Keep keys written while node1 was full (their node1 copies are hints elsewhere); delete the
    # rest, which makes room for those hints.
    lacking = [key for key in acked if "node1" in cluster.replicas_of(key) and node1.store.read(key.encode()) is None]
    assert lacking, "no acknowledged key has its node1 copy held as a hint"
    kept = lacking[-10:]
    deleted = [key for key in acked if key not in kept]
    for key in deleted:
        client.delete(key)

    wait_until(lambda: node1.store.health.state is StoreState.CATCHING_UP, 5, message="node1 to find room")
    assert gauge(node1, "kv_storage_full") == 0
    assert gauge(node1, "kv_storage_catching_up") == 1
    cluster.settle()
    assert all(cluster.node(node_id).store_flags.is_behind("node1") for node_id in ("node2", "node3"))
    for node_id in cluster.node_ids:  # node1 lacks some of these still: nobody reads it alone
        assert [key for key in kept if get_through(client, cluster, node_id, key) != VALUE] == []
        assert all(get_through(client, cluster, node_id, key) is None for key in deleted)
    with pytest.raises(ReplicaBehindError):
        client.call_node(cluster.address("node1"), protocol.ReplicaGet(kept[0].encode()))
    assert node1.store.health.state is StoreState.CATCHING_UP  # hints still held: not caught up

    for node_id in ("node2", "node3"):
        cluster.node(node_id).tasks["hinted_handoff"].start()
    wait_until(lambda: node1.store.readable_alone, 10, message="node1 to catch up")
    assert all(cluster.node(node_id).store.hint_counts().get("node1", 0) == 0 for node_id in ("node2", "node3"))
    held = [node1.store.read(key.encode()) for key in kept]  # node1's own store has them now
    assert [record.value if record is not None else None for record in held] == [VALUE] * len(kept)
    cluster.settle()
    assert not any(cluster.node(node_id).store_flags.is_behind("node1") for node_id in ("node2", "node3"))
    client.put("after", b"v")
    assert all(get_through(client, cluster, node_id, "after") == b"v" for node_id in cluster.node_ids)
    assert [event["event"] for event in log_sink.events() if event["event"].startswith("storage_")] == [
        "storage_recovered",
        "storage_caught_up",
    ]


def test_a_write_that_no_store_has_room_for_is_storage_full_not_unavailable(make_cluster: MakeCluster) -> None:
    cluster = make_cluster(3, KV_LOG_COMMANDS="false")
    for node_id in cluster.node_ids:
        with_storage_limit(cluster, node_id, SMALL_LIMIT)
    with cluster.running_client() as client:
        acked, refused = write_until_refused(client)
        assert refused is not None
        assert "storage full" in refused.message
        assert all(client.get(key) == VALUE for key in acked)


def test_a_node_restarted_while_catching_up_goes_on_catching_up(
    full_node1: tuple[InProcessCluster, Client, list[str]],
) -> None:
    cluster, client, acked = full_node1
    for node_id in ("node2", "node3"):
        cluster.node(node_id).tasks["hinted_handoff"].stop()
    node1 = with_storage_limit(cluster, "node1", 16 * SMALL_LIMIT)  # the operator raises the limit
    assert node1.store.health.state is StoreState.CATCHING_UP  # its marker survived the restart
    for node_id in cluster.node_ids:
        assert [key for key in acked if get_through(client, cluster, node_id, key) != VALUE] == []
    for node_id in ("node2", "node3"):
        cluster.node(node_id).tasks["hinted_handoff"].start()
    wait_until(lambda: node1.store.readable_alone, 10, message="node1 to catch up")
    assert not (Path(node1.config.data_dir) / BEHIND_MARKER).exists()
    assert all(get_through(client, cluster, "node1", key) == VALUE for key in acked)


def test_failed_hint_deliveries_are_logged_once_per_owner_per_interval(
    make_cluster: MakeCluster, log_sink: LogSink
) -> None:
    cluster = make_cluster(3, KV_LOG_COMMANDS="false")
    key = next(f"k{i}" for i in range(1000) if cluster.replicas_of(f"k{i}")[0] == "node1")
    holder = next(node_id for node_id in cluster.node_ids if node_id not in cluster.replicas_of(key))
    cluster.stop("node1")
    cluster.settle()
    with cluster.running_client() as client:
        client.put(key, b"held for node1")
    assert cluster.node(holder).store.hint_counts() == {"node1": 1}
    node1 = cluster.start("node1")
    node1.store.committer._start = lambda function, args: start_inline(_refuse, ())  # every commit fails
    cluster.settle()
    handoff = cluster.node(holder).handoff
    for _ in range(5):
        handoff.run_pass()
    failures = cluster.node(holder).metrics.registry.get_sample_value(
        "kv_hint_delivery_failures_total", {"owner": "node1"}
    )
    assert failures is not None and failures >= 5
    (warning,) = log_sink.events("hint_delivery_failed")
    assert (warning["owner"], warning["level"]) == ("node1", "warning")
    assert warning["failed"] >= 1
    assert "disk on fire" in warning["last_error"]


def _refuse() -> None:
    raise StorageError("disk on fire")


def test_a_client_sees_storage_full_as_one_line(make_cluster: MakeCluster) -> None:
    cluster = make_cluster(1, KV_LOG_COMMANDS="false")
    with_storage_limit(cluster, "node1", SMALL_LIMIT)
    with cluster.running_client() as client:
        _, refused = write_until_refused(client)
    assert isinstance(refused, KVError)
    assert refused.code == "STORAGE_FULL"
    assert "\n" not in refused.message
    assert len(refused.message) < 300
