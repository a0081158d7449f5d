"""Anti-entropy on in-process clusters: rounds run on demand (periodic rounds are off, see cluster.py)
find replicas that differ, copy the newest version both ways, rebuild a wiped node, and purge
tombstones only once every replica has them and the grace period is over."""

from __future__ import annotations

import shutil
from collections.abc import Callable

import gevent
from cluster import InProcessCluster

from client import protocol
from client.protocol import Record, Version
from service.anti_entropy import RoundResult
from service.group_commit import start_inline
from service.node import Node
from service.storage import EMPTY_DIGEST, StorageError
from service.versioning import physical_ms, wall_clock_ms

MakeCluster = Callable[..., InProcessCluster]


def run_rounds(cluster: InProcessCluster) -> dict[str, RoundResult]:
    """One round on every running node, in node id order."""
    return {node_id: cluster.node(node_id).anti_entropy.run_round() for node_id in sorted(cluster.running)}


def replica_views(cluster: InProcessCluster, key: bytes) -> dict[str, Record | None]:
    """The key's record on each of its replicas, as REPLICA_GET returns it over the wire."""
    views = {}
    with cluster.running_client() as client:
        for node_id in cluster.replicas_of(key):
            frame = client.call_node(cluster.address(node_id), protocol.ReplicaGet(key))
            views[node_id] = None if frame.code == protocol.Status.NOT_FOUND else protocol.decode_record(frame.body)
    return views


def newer(node: Node, value: bytes | None) -> Record:
    return Record(Version(node.clock.now(), node.config.node_id), value)


def shared_digests_agree(cluster: InProcessCluster) -> bool:
    ring = cluster.ring()
    for partition in range(ring.partitions):
        owners = ring.partition_owners(partition)[: cluster.config.n]
        digests = {cluster.node(node_id).storage.digests([partition])[0] for node_id in owners}
        if len(digests) != 1:
            return False
    return True


def metric(node: Node, name: str) -> float:
    return node.metrics.registry.get_sample_value(name) or 0.0


# --- repair of differing replicas ------------------------------------------------------------------


def test_a_round_makes_damaged_replicas_equal_again(cluster: InProcessCluster) -> None:
    with cluster.running_client() as client:
        for i in range(40):
            client.put(f"key-{i}", f"v{i}")
    baseline = run_rounds(cluster)
    assert [(r.differing, r.repaired, r.failed_peers) for r in baseline.values()] == [(0, 0, [])] * 3

    damaged: dict[bytes, Record] = {}  # what every replica of the key must hold afterwards
    for i in range(0, 40, 4):  # a newer value on one replica only (the write to the other was lost)
        key = f"key-{i}".encode()
        node = cluster.node(cluster.replicas_of(key)[i % 8 // 4])
        damaged[key] = newer(node, b"newer on one replica")
        node.store.write(key, damaged[key])
    for i in range(1, 40, 8):  # a delete that reached one replica only
        key = f"key-{i}".encode()
        node = cluster.node(cluster.replicas_of(key)[1])
        damaged[key] = newer(node, None)
        node.store.write(key, damaged[key])
    for i in range(5):  # keys that exist on one replica only
        key = f"lonely-{i}".encode()
        node = cluster.node(cluster.replicas_of(key)[0])
        damaged[key] = newer(node, b"only here")
        node.store.write(key, damaged[key])
    assert not shared_digests_agree(cluster)

    results = run_rounds(cluster)
    assert sum(result.differing for result in results.values()) == len(damaged)  # each found exactly once
    assert sum(result.repaired for result in results.values()) == len(damaged)
    assert all(result.failed_peers == [] for result in results.values())
    for key, record in damaged.items():
        assert set(replica_views(cluster, key).values()) == {record}, key
    assert shared_digests_agree(cluster)

    again = run_rounds(cluster)
    assert [(result.differing, result.repaired) for result in again.values()] == [(0, 0)] * 3
    assert sum(metric(cluster.node(n), "kv_antientropy_keys_repaired_total") for n in cluster.node_ids) == len(damaged)
    assert all(metric(cluster.node(n), "kv_antientropy_rounds_total") == 3 for n in cluster.node_ids)


def test_a_round_compares_exactly_the_partitions_shared_with_each_peer(cluster: InProcessCluster) -> None:
    ring, n = cluster.ring(), cluster.config.n
    for node_id, result in run_rounds(cluster).items():
        mine = {p for p in range(ring.partitions) if node_id in ring.partition_owners(p)[:n]}
        assert (result.partitions, result.failed_peers) == (len(mine) * (n - 1), []), node_id
        # every partition it replicates was synced with its other replica
        assert set(cluster.node(node_id).anti_entropy.synced_at) == mine


def test_writes_missed_while_a_node_was_stopped_are_copied_to_it(make_cluster: MakeCluster) -> None:
    cluster = make_cluster(2)  # N=2 on two nodes: no fallback node, so no hints; only anti-entropy repairs
    cluster.stop("node2")
    with cluster.running_client() as client:
        versions = {f"missed-{i}": client.put(f"missed-{i}", f"v{i}", w=1) for i in range(20)}
        deleted = client.delete("missed-0", w=1)
    node2 = cluster.start("node2")
    cluster.settle()
    assert node2.storage.live_keys == 0

    result = cluster.node("node1").anti_entropy.run_round()
    assert (result.differing, result.repaired, result.failed_peers) == (20, 20, [])
    assert node2.storage.get(b"missed-0") == Record(deleted, None)
    for key, version in list(versions.items())[1:]:
        assert replica_views(cluster, key.encode()) == {
            "node1": Record(version, f"v{key[7:]}".encode()),
            "node2": Record(version, f"v{key[7:]}".encode()),
        }
    assert node2.storage.live_keys == 19
    assert node2.anti_entropy.run_round().differing == 0


def test_a_wiped_node_is_rebuilt_by_its_own_round(cluster: InProcessCluster) -> None:
    with cluster.running_client() as client:
        for i in range(60):
            client.put(f"key-{i}", f"v{i}")
        for i in range(0, 60, 10):
            client.delete(f"key-{i}")
    live = 54
    assert sum(cluster.node(n).storage.live_keys for n in cluster.node_ids) == 2 * live
    held_by_node2 = {key: record for key, record in cluster.node("node2").storage.records()}

    cluster.stop("node2")
    shutil.rmtree(cluster.configs["node2"].data_dir)  # the disk is lost
    node2 = cluster.start("node2")
    cluster.settle()
    assert list(node2.storage.records()) == []

    result = node2.anti_entropy.run_round()
    assert result.failed_peers == []
    assert result.differing == result.repaired == len(held_by_node2)  # tombstones come back too
    assert dict(node2.storage.records()) == held_by_node2
    assert sum(cluster.node(n).storage.live_keys for n in cluster.node_ids) == 2 * live
    assert shared_digests_agree(cluster)
    assert node2.anti_entropy.run_round().differing == 0


def test_a_stopped_peer_is_reported_and_its_partitions_are_not_marked_synced(cluster: InProcessCluster) -> None:
    cluster.stop("node3")
    node1 = cluster.node("node1")
    result = node1.anti_entropy.run_round()
    assert result.failed_peers == ["node3"]
    ring = cluster.ring()
    with_node2 = {p for p in range(ring.partitions) if set(ring.partition_owners(p)[:2]) == {"node1", "node2"}}
    with_node3 = {p for p in range(ring.partitions) if set(ring.partition_owners(p)[:2]) == {"node1", "node3"}}
    assert result.partitions == len(with_node2)
    assert set(node1.anti_entropy.synced_at) == with_node2
    assert not set(node1.anti_entropy.synced_at) & with_node3


def test_repair_over_the_wire_is_one_round(cluster: InProcessCluster) -> None:
    key = b"repair-op"
    first, second = cluster.replicas_of(key)
    record = newer(cluster.node(first), b"v")
    cluster.node(first).store.write(key, record)
    with cluster.running_client() as client:
        reply = client.repair(second)  # the replica that lacks it pulls it
    assert (reply.differing, reply.repaired, reply.failed_peers) == (1, 1, ())
    assert cluster.node(second).storage.get(key) == record


# --- tombstones ------------------------------------------------------------------------------------

GRACE_SETTINGS = {"KV_HINT_WINDOW_S": "1", "KV_TOMBSTONE_GRACE_S": "2"}


class FakeNow:
    """Wall-clock milliseconds for anti-entropy: the real clock plus an offset the test moves."""

    def __init__(self) -> None:
        self.offset_ms = 0

    def __call__(self) -> int:
        return wall_clock_ms() + self.offset_ms


def with_fake_now(*nodes: Node) -> FakeNow:
    now = FakeNow()
    for node in nodes:
        node.anti_entropy.now_ms = now
    return now


def deleted_key(cluster: InProcessCluster) -> tuple[bytes, Version, Node, Node]:
    key = b"to-be-deleted"
    with cluster.running_client() as client:
        client.put(key, "v")
        version = client.delete(key)
    first, second = (cluster.node(node_id) for node_id in cluster.replicas_of(key))
    assert first.storage.get(key) == second.storage.get(key) == Record(version, None)
    return key, version, first, second


def test_a_tombstone_is_purged_from_every_replica_after_the_grace_period(make_cluster: MakeCluster) -> None:
    cluster = make_cluster(3, **GRACE_SETTINGS)
    key, version, first, second = deleted_key(cluster)
    partition = cluster.ring().partition(key)
    now = with_fake_now(first, second)

    run_rounds(cluster)  # synced, but the tombstone is younger than the grace period
    assert first.storage.get(key) == second.storage.get(key) == Record(version, None)

    now.offset_ms = 2_500  # past the 2 s grace period
    first.anti_entropy.run_round()
    assert first.storage.get(key) is None
    assert second.storage.get(key) == Record(version, None)  # the other replica keeps it for now
    now.offset_ms += 1_000
    assert first.anti_entropy.run_round().differing == 0  # an expired tombstone there, nothing here: equal
    assert first.storage.get(key) is None  # and it is not copied back

    second.anti_entropy.run_round()
    assert second.storage.get(key) is None
    assert first.storage.digests([partition]) == second.storage.digests([partition])
    assert metric(first, "kv_tombstones_purged_total") == metric(second, "kv_tombstones_purged_total") == 1
    with cluster.running_client() as client:
        assert client.get(key) is None


def test_the_tombstone_scan_lets_other_greenlets_run_between_partitions(make_cluster: MakeCluster) -> None:
    # The scan reads every synced partition; in one go it would stall every request on the node.
    cluster = make_cluster(3, **GRACE_SETTINGS)
    key, _, first, _ = deleted_key(cluster)
    now = with_fake_now(first)
    run_rounds(cluster)  # every shared partition synced
    now.offset_ms = 2_500  # the scan is due, and the tombstone purgeable
    other_ran: list[bool] = []
    seen_at_each_read: list[bool] = []
    read = first.store.partition_records

    def partition_records(partition: int) -> dict[bytes, Record]:
        seen_at_each_read.append(bool(other_ran))
        return read(partition)

    first.store.partition_records = partition_records  # type: ignore[method-assign]
    gevent.spawn(other_ran.append, True)
    first.anti_entropy._purge_tombstones()
    assert len(seen_at_each_read) > 100  # the node's synced share of the 4096 partitions
    assert seen_at_each_read[:2] == [False, True]  # it ran right after the first partition
    assert first.storage.get(key) is None  # and the scan still purged


def test_a_tombstone_is_not_purged_before_every_replica_synced(make_cluster: MakeCluster) -> None:
    cluster = make_cluster(3, **GRACE_SETTINGS)
    key, version, first, second = deleted_key(cluster)
    now = with_fake_now(first)
    now.offset_ms = 60_000  # long past the grace period
    cluster.stop(second.config.node_id)

    result = first.anti_entropy.run_round()
    assert second.config.node_id in result.failed_peers
    assert first.storage.get(key) == Record(version, None)  # the other replica may still lack it

    second = cluster.start(second.config.node_id)
    cluster.settle()
    now.offset_ms += 1_000
    assert first.anti_entropy.run_round().failed_peers == []
    assert first.storage.get(key) is None


def test_a_tombstone_synced_only_before_it_was_written_is_kept(make_cluster: MakeCluster) -> None:
    cluster = make_cluster(3, **GRACE_SETTINGS)
    first_id, second_id = cluster.replicas_of(b"to-be-deleted")
    partition = cluster.ring().partition(b"to-be-deleted")
    cluster.node(first_id).anti_entropy.run_round()  # the partition is synced, before the delete
    synced_before = cluster.node(first_id).anti_entropy.synced_at[partition]
    key, version, first, _ = deleted_key(cluster)
    cluster.stop(second_id)  # the next sync cannot complete
    now = with_fake_now(first)
    now.offset_ms = 60_000

    assert second_id in first.anti_entropy.run_round().failed_peers
    assert first.anti_entropy.synced_at[partition] == synced_before <= physical_ms(version.timestamp)
    assert first.storage.get(key) == Record(version, None)


# --- known bugs ------------------------------------------------------------------------------------


class FailingCommits:
    """Makes a node's store refuse every write (a full disk) until ``heal``."""

    def __init__(self, node: Node) -> None:
        self.committer = node.store.committer
        self.original = node.store.committer._start
        self.committer._start = self._fail

    def _fail(self, function, args):
        return start_inline(_raise, (StorageError("the store is full"),))

    def heal(self) -> None:
        self.committer._start = self.original


def _raise(error: Exception) -> None:
    raise error


def test_a_tombstone_the_peer_could_not_take_is_not_purged(make_cluster: MakeCluster) -> None:
    cluster = make_cluster(2, **GRACE_SETTINGS)
    key = b"resurrection"
    with cluster.running_client() as client:
        client.put(key, "old value")
        cluster.stop("node2")
        client.delete(key, w=1)  # only node1 has the delete
    node1 = cluster.node("node1")
    node2 = cluster.start("node2")
    cluster.settle()
    now = with_fake_now(node1)
    now.offset_ms = 60_000

    failing = FailingCommits(node2)  # node2 cannot store the tombstone node1 pushes
    result = node1.anti_entropy.run_round()
    assert (result.differing, result.repaired, result.failed_peers) == (1, 0, [])
    failing.heal()
    now.offset_ms += 1_000
    node1.anti_entropy.run_round()
    node2.anti_entropy.run_round()

    with cluster.running_client() as client:
        assert client.get(key) is None  # the delete must hold


def test_anti_entropy_works_with_a_small_value_limit(make_cluster: MakeCluster) -> None:
    cluster = make_cluster(3, KV_MAX_KEY_BYTES="16", KV_MAX_VALUE_BYTES="64")
    result = cluster.node("node1").anti_entropy.run_round()
    assert result.failed_peers == []
    assert result.partitions > 0


def test_anti_entropy_lists_a_partition_of_long_keys(make_cluster: MakeCluster) -> None:
    cluster = make_cluster(2, KV_PARTITIONS="1", KV_MAX_KEY_BYTES="65535", KV_MAX_VALUE_BYTES="1024")
    node1, node2 = cluster.node("node1"), cluster.node("node2")
    for i in range(3):
        node1.store.write(bytes([i]) * 60_000, newer(node1, b"v"))
    node2.store.write(b"short", newer(node2, b"v"))
    result = node2.anti_entropy.run_round()  # node2 must list node1's partition
    assert result.failed_peers == []
    assert node2.storage.live_keys == 4
    assert node1.storage.digests([0]) == node2.storage.digests([0]) != [EMPTY_DIGEST]
