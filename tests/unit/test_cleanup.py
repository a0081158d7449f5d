"""Clean-up after a membership change: the pure choice of partitions and keys, the local delete, and
real in-process nodes giving back what they no longer own without losing a copy."""

from __future__ import annotations

from pathlib import Path

import pytest
from cluster import LOG_SINK, InProcessCluster, free_port, start_cluster
from hypothesis import given
from hypothesis import strategies as st
from polling import wait_until

from client import protocol
from client.protocol import Record, Version
from client.ring import Ring
from service import membership, membership_changes, ownership
from service.local_store import LocalStore
from service.membership import MemberState
from service.ownership import sort_keys, unowned_partitions
from service.storage import Storage, partition_of, storage_key
from service.versioning import HybridLogicalClock

pytestmark = pytest.mark.unit

NODES = [f"n{i}" for i in range(6)]


@given(
    members=st.lists(st.sampled_from(NODES), min_size=1, max_size=6, unique=True),
    node=st.sampled_from(NODES),
    n=st.integers(1, 4),
    partitions=st.integers(1, 64),
    data=st.data(),
)
def test_the_planner_selects_exactly_the_held_partitions_neither_owned_nor_pending(
    members: list[str], node: str, n: int, partitions: int, data: st.DataObject
) -> None:
    ring = Ring(members, partitions)
    held = data.draw(st.sets(st.integers(0, partitions - 1)))
    pending = data.draw(
        st.dictionaries(st.integers(0, partitions - 1), st.lists(st.sampled_from(NODES), max_size=2).map(tuple))
    )
    chosen = unowned_partitions(ring, n, node, held, pending)
    assert chosen == sorted(chosen)
    for partition in range(partitions):
        owned = node in ring.partition_owners(partition)[:n] or node in pending.get(partition, ())
        assert (partition in chosen) == (partition in held and not owned), partition


def test_a_non_member_owns_nothing_so_everything_it_holds_is_unowned() -> None:
    ring = Ring(["a", "b"], 8)
    assert unowned_partitions(ring, 2, "c", [0, 3, 7]) == [0, 3, 7]
    assert unowned_partitions(ring, 2, "a", [0, 3, 7]) == []


def v(timestamp: int) -> Version:
    return Version(timestamp, "x")


def test_a_key_goes_only_when_every_owner_holds_it_at_least_as_new() -> None:
    mine = [
        (b"same", Record(v(5), b"x")),
        (b"newer-there", Record(v(5), b"x")),
        (b"missing-on-b", Record(v(5), b"x")),
        (b"older-on-a", Record(v(5), b"x")),
        (b"tombstone", Record(v(5), None)),
    ]
    owners = {
        "a": {b"same": v(5), b"newer-there": v(9), b"missing-on-b": v(5), b"older-on-a": v(4)},
        "b": {b"same": v(5), b"newer-there": v(5), b"older-on-a": v(5), b"tombstone": v(5)},
    }
    decision = sort_keys(mine, owners)
    assert decision.drop == {b"same": v(5), b"newer-there": v(5)}
    # A tombstone is data: one not on every owner is sent, not dropped.
    assert decision.send == {"a": [b"older-on-a", b"tombstone"], "b": [b"missing-on-b"]}
    assert sort_keys(mine, {}).drop == {}  # no owner to check against: nothing goes


@given(
    st.dictionaries(st.binary(max_size=2), st.integers(0, 5), max_size=8),
    st.dictionaries(st.sampled_from("abc"), st.dictionaries(st.binary(max_size=2), st.integers(0, 5)), max_size=3),
)
def test_every_dropped_key_is_held_by_every_owner_and_every_other_one_is_sent(
    mine: dict[bytes, int], held: dict[str, dict[bytes, int]]
) -> None:
    records = [(key, Record(v(t), None if t % 2 else b"x")) for key, t in mine.items()]
    owners = {owner: {key: v(t) for key, t in keys.items()} for owner, keys in held.items()}
    decision = sort_keys(records, owners)
    sent = {key for keys in decision.send.values() for key in keys}
    for key, t in mine.items():
        assert (key in decision.drop) != (key in sent or not owners), key
        for owner, keys in owners.items():
            if key in decision.drop:
                assert keys[key] >= v(t)
            else:
                assert (key in decision.send.get(owner, [])) == (key not in keys or keys[key] < v(t))


def test_dropping_a_record_leaves_no_tombstone_and_keeps_the_counts_and_digests(tmp_path: Path) -> None:
    storage = Storage(str(tmp_path), 64 * 1024 * 1024, 16)
    store = LocalStore("a", storage, HybridLogicalClock())
    try:
        store.write(b"k", Record(v(5), b"value"))
        store.write(b"t", Record(v(5), None))
        partitions = sorted({partition_of(storage_key(key), 16) for key in (b"k", b"t")})
        assert store.live_keys == 1
        assert not store.drop_record(b"k", v(4))  # not the version checked: kept
        assert store.drop_record(b"k", v(5))
        assert store.drop_record(b"t", v(5))  # tombstones go the same way
        assert store.read(b"k") is None and store.read(b"t") is None
        assert store.live_keys == 0
        assert all(digest == bytes(len(digest)) for digest in store.digests(partitions))
        assert list(storage.records()) == []
    finally:
        store.close()


# --- real nodes ---------------------------------------------------------------------------------


def kv_keys_total(cluster: InProcessCluster) -> int:
    return sum(cluster.nodes[node_id].store.live_keys for node_id in cluster.running)


def clean(cluster: InProcessCluster, node_ids: list[str] | None = None) -> int:
    """One clean-up pass on each of ``node_ids`` (every running node): the records dropped."""
    return sum(cluster.nodes[node_id].cleanup.run_pass() for node_id in node_ids or sorted(cluster.running))


def held_unowned(cluster: InProcessCluster, node_id: str) -> list[int]:
    node = cluster.nodes[node_id]
    ring = membership.ring(node.membership.record)
    everything = range(ring.partitions)
    held = [p for p, digest in zip(everything, node.store.digests(everything), strict=True) if any(digest)]
    return unowned_partitions(ring, cluster.config.n, node_id, held)


def joined(cluster: InProcessCluster, node_id: str) -> bool:
    return all(
        getattr(cluster.nodes[other].membership.record.member(node_id), "state", None) is MemberState.NORMAL
        for other in cluster.running
    )


def join_node4(cluster: InProcessCluster) -> membership.ClusterRecord:
    """Join node4 and wait until every node holds it as normal; the record before the join."""
    before = cluster.nodes["node1"].membership.record
    cluster.add_joining("node4", seeds=["node1"])
    cluster.start("node4")
    wait_until(lambda: joined(cluster, "node4"), 60, message="every node to hold node4 as normal")
    for node in cluster.nodes.values():
        node.tasks["cleanup"].stop()  # the test runs the passes itself
    return before


KEYS = 300


def test_after_a_join_the_old_owners_give_back_what_they_no_longer_own(tmp_path: Path) -> None:
    cluster = start_cluster(tmp_path, 3, n=2, w=2, r=1, partitions=64)
    try:
        with cluster.running_client() as client:
            for i in range(KEYS):
                client.put(f"k{i:04d}", f"v{i}".encode())
            for i in range(0, KEYS, 10):
                client.delete(f"k{i:04d}")  # tombstones move and are cleaned like values
            live = KEYS - len(range(0, KEYS, 10))
            assert kv_keys_total(cluster) == 2 * live
            join_node4(cluster)
            assert kv_keys_total(cluster) > 2 * live  # the retiring owners still hold their copies
            before_cleanup = kv_keys_total(cluster)
            LOG_SINK.clear()
            dropped = 0
            for _ in range(10):  # each pass cleans at most PARTITIONS_PER_PASS partitions per node
                dropped += clean(cluster)
                if not any(held_unowned(cluster, node_id) for node_id in cluster.running):
                    break
            assert not any(held_unowned(cluster, node_id) for node_id in cluster.running)
            assert kv_keys_total(cluster) == 2 * live
            assert dropped >= kv_keys_total(cluster) // 8  # node4's share went from the others
            print(
                f"clean-up: kv_keys sum {before_cleanup} -> {kv_keys_total(cluster)} (2 x {live} live), "
                f"{dropped} dropped"
            )
            dropped_metric = sum(
                cluster.nodes[node_id].metrics.cleanup_keys_dropped._value.get() for node_id in cluster.running
            )
            assert dropped_metric == dropped
            assert LOG_SINK.events("cleanup_partition_finished")
            # Nothing acknowledged lost, no delete undone: every replica holds what was written.
            for i in range(KEYS):
                expected = None if i % 10 == 0 else f"v{i}".encode()
                assert client.get(f"k{i:04d}", r=2) == expected, i
            # Anti-entropy follows the ring served now: it pulls nothing back into a retiring owner.
            for node_id in sorted(cluster.running):
                cluster.nodes[node_id].anti_entropy.run_round()
            assert kv_keys_total(cluster) == 2 * live
            for node_id in cluster.running:  # and each node holds exactly what it owns
                node = cluster.nodes[node_id]
                ring = membership.ring(node.membership.record)
                for key, _ in node.storage.records():
                    assert node_id in ring.preference_list(key, 2), (node_id, key)
    finally:
        cluster.stop_all()


def test_a_key_its_new_owner_lacks_is_copied_before_it_is_dropped(tmp_path: Path) -> None:
    cluster = start_cluster(tmp_path, 3, n=2, w=2, r=1, partitions=64)
    try:
        with cluster.running_client() as client:
            for i in range(KEYS):
                client.put(f"k{i:04d}", f"v{i}".encode())
            before = join_node4(cluster)
            after = cluster.nodes["node1"].membership.record
            moves = ownership.plan(membership.ring(before), membership.ring(after), 2).receiving("node4")
            ring = membership.ring(after)
            move = moves[0]
            retiring = move.retiring[0]
            key = next(
                f"k{i:04d}".encode() for i in range(KEYS) if ring.partition(f"k{i:04d}".encode()) == move.partition
            )
            node4, old = cluster.nodes["node4"], cluster.nodes[retiring]
            held = node4.store.read(key)
            assert held is not None and old.store.read(key) == held
            assert node4.store.drop_record(key, held.version)  # node4 lost its copy

            # While node4 is down, nothing of the partitions it owns goes anywhere.
            cluster.stop("node4")
            wait_until(lambda: old.detector.is_down("node4"), 10, message=f"{retiring} to see node4 down")
            old.cleanup.run_pass()
            assert old.store.read(key) == held
            for partition in [m.partition for m in moves if retiring in m.retiring]:
                assert any(old.store.digests([partition])[0]), partition

            # Back up: the first pass sends node4 the key and keeps it; the next one drops it.
            node4 = cluster.start("node4")
            node4.tasks["cleanup"].stop()
            wait_until(lambda: not old.detector.is_down("node4"), 10, message=f"{retiring} to see node4 up")
            old.cleanup.run_pass()
            assert node4.store.read(key) == held
            assert old.store.read(key) == held
            wait_until(lambda: old.cleanup.run_pass() >= 0 and old.store.read(key) is None, 10, message="the drop")
            assert client.get(key, r=2) == held.value
    finally:
        cluster.stop_all()


def test_no_pass_drops_anything_while_a_change_is_in_progress(tmp_path: Path) -> None:
    cluster = start_cluster(tmp_path, 3, n=2, w=2, r=1, partitions=64)
    try:
        with cluster.running_client() as client:
            for i in range(KEYS):
                client.put(f"k{i:04d}", f"v{i}".encode())
        join_node4(cluster)
        total = kv_keys_total(cluster)
        # node5 is admitted (joining) but never starts: the change stays in progress.
        port = free_port()
        cluster.nodes["node1"].changes.request(protocol.ClusterJoin("node5", "127.0.0.1", port))
        wait_until(
            lambda: all(membership_changes.changing(cluster.nodes[n].membership.record) for n in cluster.running),
            10,
            message="every node to hold node5 joining",
        )
        wait_until(
            lambda: all(cluster.nodes[n].detector.is_down("node5") for n in cluster.running),
            10,
            message="every node to see node5 down (so only the change in progress holds clean-up back)",
        )
        assert clean(cluster) == 0
        assert kv_keys_total(cluster) == total
        assert any(held_unowned(cluster, node_id) for node_id in cluster.running)
        # The join abandoned: clean-up goes ahead.
        cluster.nodes["node1"].changes.request(protocol.ClusterRemove("node5"))
        wait_until(
            lambda: not any(membership_changes.changing(cluster.nodes[n].membership.record) for n in cluster.running),
            10,
            message="every node to hold node5 removed",
        )
        wait_until(lambda: clean(cluster) > 0, 10, message="a pass to drop something")
        assert kv_keys_total(cluster) < total
    finally:
        cluster.stop_all()
