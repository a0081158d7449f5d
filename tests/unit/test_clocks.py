"""Clocks that disagree never drop an acknowledged write: the offset bound, restamping, fencing,
offsets measured by heartbeats, and timers that a jumping clock cannot fool."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from cluster import InProcessCluster
from polling import wait_until

from client import protocol
from client.errors import ClockSkewError
from client.protocol import Record, Version
from service.clock_offsets import FRESH_FOR_MS, ClockOffsets
from service.handoff import HandoffSettings, HintedHandoff
from service.local_store import LocalStore
from service.storage import Storage
from service.versioning import (
    LOGICAL_BITS,
    MAX_TIMESTAMP,
    ClockSkew,
    HybridLogicalClock,
    NodeClock,
    physical_ms,
    wall_clock_ms,
)

BOUND_MS = 500


class Dial:
    """A clock reading set by hand, in milliseconds."""

    def __init__(self, ms: int) -> None:
        self.ms = ms

    def __call__(self) -> int:
        return self.ms


def skewed(offset_ms: int) -> NodeClock:
    """This machine's clock, off by ``offset_ms``."""
    return NodeClock(wall=lambda: wall_clock_ms() + offset_ms)


# --- the bound -------------------------------------------------------------------------------------


def test_a_timestamp_too_far_ahead_is_refused_and_observes_nothing() -> None:
    wall = Dial(10_000)
    clock = HybridLogicalClock(wall, max_offset_ms=BOUND_MS)
    before = clock.now()
    with pytest.raises(ClockSkew, match="KV_MAX_CLOCK_OFFSET_MS=500"):
        clock.observe(MAX_TIMESTAMP)
    with pytest.raises(ClockSkew):
        clock.observe((10_000 + BOUND_MS + 1) << LOGICAL_BITS)
    assert clock.last == before
    assert physical_ms(clock.now()) == 10_000


def test_a_timestamp_within_the_bound_is_observed() -> None:
    clock = HybridLogicalClock(Dial(10_000), max_offset_ms=BOUND_MS)
    ahead = (10_000 + BOUND_MS) << LOGICAL_BITS
    clock.observe(ahead)
    assert clock.now() > ahead


def test_observe_within_bound_ignores_what_observe_would_refuse() -> None:
    clock = HybridLogicalClock(Dial(10_000), max_offset_ms=BOUND_MS)
    clock.observe_within_bound(MAX_TIMESTAMP)
    assert physical_ms(clock.now()) == 10_000


def test_the_node_clock_never_steps_back_and_its_steady_clock_ignores_jumps() -> None:
    wall, monotonic = Dial(1_000_000), Dial(50)
    clock = NodeClock(wall, monotonic)
    monotonic.ms += 100
    wall.ms -= 3_600_000  # stepped back an hour
    assert clock.wall_ms() == 1_000_100
    assert clock.steady_ms() == 1_000_100
    wall.ms += 2 * 86_400_000  # then two days forward
    assert clock.wall_ms() == wall.ms  # the wall clock may run ahead: timestamps follow it
    assert clock.steady_ms() == 1_000_100  # ages do not


# --- offsets measured by heartbeats -----------------------------------------------------------------


def offsets_on(now: Dial, peers: list[str]) -> ClockOffsets:
    return ClockOffsets(peers, BOUND_MS, now)


def test_an_offset_is_the_peers_clock_minus_the_midpoint_give_or_take_half_the_round_trip() -> None:
    offsets = offsets_on(Dial(0), ["b"])
    sample = offsets.record("b", sent_wall_ms=1_000, received_wall_ms=1_010, peer_wall_ms=3_005)
    assert sample.offset_ms == 2_000
    assert sample.uncertainty_ms == 5
    assert offsets.offset_ms("b") == 2_000
    assert offsets.beyond_bound("b")
    offsets.record("b", sent_wall_ms=1_000, received_wall_ms=2_000, peer_wall_ms=2_000)  # 500 +- 500
    assert not offsets.beyond_bound("b")  # the round trip leaves room for doubt


def test_a_node_off_most_peers_clocks_is_fenced_and_one_odd_peer_does_not_fence_the_rest() -> None:
    now = Dial(0)
    odd_one = offsets_on(now, ["a", "b"])
    odd_one.record("a", 0, 0, 10_000)
    assert odd_one.fenced() is None  # one of two: not more than half
    odd_one.record("b", 0, 0, 9_000)
    reason = odd_one.fenced()
    assert reason is not None and "2 of its 2 peers" in reason and "a +10.000 s" in reason
    assert not odd_one.trusted()

    healthy = offsets_on(now, ["b", "c"])
    healthy.record("b", 0, 0, 3)
    healthy.record("c", 0, 0, -10_000)  # c is the odd one out
    assert healthy.fenced() is None
    assert healthy.trusted()


def test_stale_measurements_count_for_nothing_and_an_unconfirmed_clock_is_not_trusted() -> None:
    now = Dial(0)
    offsets = offsets_on(now, ["b"])
    assert not offsets.trusted()  # nobody has confirmed this clock yet
    offsets.record("b", 0, 0, 20_000)
    assert offsets.fenced() is not None
    now.ms += FRESH_FOR_MS + 1
    assert offsets.fenced() is None
    assert not offsets.trusted()
    assert ClockOffsets([], BOUND_MS, now).trusted()  # a node alone trusts itself


# --- a hostile or buggy timestamp, end to end --------------------------------------------------------


def test_a_put_with_after_at_the_top_of_the_range_is_refused_and_every_later_write_holds(
    cluster: InProcessCluster,
) -> None:
    """The input from the field report: one PUT with ``after`` = 2^64-1. Before the fix it pushed
    every node's clock to its maximum, for good, and later writes and deletes were silently lost."""
    with cluster.running_client() as kv:
        kv.put("existing", b"old")
        for address in cluster.addresses:
            with pytest.raises(ClockSkewError, match="ahead of this node's clock"):
                kv.call_node(address, protocol.Put(b"poison", b"x", 0, MAX_TIMESTAMP))
        bound = (wall_clock_ms() + 60_000) << LOGICAL_BITS
        assert all(node.clock.last < bound for node in cluster.nodes.values())

        kv.delete("existing")
        assert kv.get("existing") is None
        kv.put("fresh", b"1")
        kv.put("fresh", b"2")
        assert kv.get("fresh") == b"2"
        assert kv.get("poison") is None

    for node_id in cluster.node_ids:  # and after restarts
        cluster.restart(node_id)
    cluster.settle()
    with cluster.running_client() as kv:
        kv.put("fresh", b"3")
        assert kv.get("fresh") == b"3"
        kv.delete("fresh")
        assert kv.get("fresh") is None


def test_replica_writes_and_hints_too_far_ahead_are_refused(cluster: InProcessCluster) -> None:
    future = Record(Version(MAX_TIMESTAMP, "node2"), b"from the future")
    with cluster.running_client() as kv:
        address = cluster.address("node1")
        with pytest.raises(ClockSkewError):
            kv.call_node(address, protocol.ReplicaPut(b"k", future))
        with pytest.raises(ClockSkewError):
            kv.call_node(address, protocol.HintedPut(b"k", future, "node3"))
    node = cluster.node("node1")
    assert node.store.read(b"k") is None
    assert node.store.pending_hints() == 0
    with pytest.raises(ClockSkew):  # what anti-entropy and read repair write goes the same way
        node.store.write(b"k", future)
    samples = node.metrics.registry.get_sample_value
    assert samples("kv_clock_skew_refusals_total", {"source": "replica_write"}) >= 2
    assert samples("kv_clock_skew_refusals_total", {"source": "hint"}) == 1


# --- clocks that disagree within the bound -----------------------------------------------------------


def test_a_replica_holding_a_version_stamped_by_a_clock_ahead_makes_the_write_restamp(
    cluster: InProcessCluster,
) -> None:
    """node2's clock ran 400 ms ahead when it wrote "old"; a write made later in real time through a
    node with a correct clock must still win, not be acknowledged and then lost."""
    key = b"contested"
    ahead = (wall_clock_ms() + 400) << LOGICAL_BITS
    planted = Record(Version(ahead, "node2"), b"old")
    for node_id in cluster.replicas_of(key):
        cluster.node(node_id).store.write(key, planted)
    with cluster.running_client() as kv:
        version = kv.put(key, b"new")
        assert version > planted.version
        assert kv.get(key) == b"new"
    for node_id in cluster.replicas_of(key):
        assert cluster.node(node_id).store.read(key) == Record(version, b"new")


def test_a_node_whose_clock_is_far_behind_is_fenced_and_no_write_through_the_cluster_is_lost(
    cluster: InProcessCluster,
) -> None:
    """node3 restarted with its clock 10 s behind the others: it measures the offset to both
    peers, refuses to stamp writes (the client tries another coordinator), and its peers route
    around it, so every acknowledged write reads back at the default R."""
    cluster.restart("node3", clock=skewed(-10_000))
    cluster.settle()
    node3, node1 = cluster.node("node3"), cluster.node("node1")
    wait_until(lambda: node3.offsets.fenced() is not None, message="node3 to see that its clock is off")
    assert node1.offsets.beyond_bound("node3")
    assert node3.metrics.registry.get_sample_value("kv_clock_fenced") == 1
    offset = node1.metrics.registry.get_sample_value("kv_peer_clock_offset_seconds", {"peer": "node3"})
    assert offset is not None and -10.5 < offset < -9.5

    with cluster.running_client() as kv:
        written = {f"key{i}": f"value{i}".encode() for i in range(40)}
        for key, value in written.items():
            kv.put(key, value)
        for key in list(written)[:10]:
            kv.delete(key)
            written[key] = b""
        with cluster.running_client() as other:  # a second client, with no timestamps seen
            for key, value in written.items():
                assert (other.get(key) or b"") == value, key


def test_a_clock_within_the_bound_is_neither_fenced_nor_refused(cluster: InProcessCluster) -> None:
    cluster.restart("node3", clock=skewed(-200))
    cluster.settle()
    node3 = cluster.node("node3")
    cluster.settle()
    assert node3.offsets.fenced() is None
    with cluster.running_client() as kv:
        for i in range(20):
            kv.put(f"k{i}", b"v")
        assert all(kv.get(f"k{i}") == b"v" for i in range(20))


# --- timers a jumping clock cannot fool --------------------------------------------------------------


def make_handoff(tmp_path: Path, now: Dial, may_expire: Callable[[], bool]) -> tuple[HintedHandoff, LocalStore]:
    storage = Storage(str(tmp_path / "store"), 16 << 20, 64)
    store = LocalStore("a", storage, HybridLogicalClock(), now_ms=now)
    handoff = HintedHandoff(store, {}, lambda node_id: False, HandoffSettings(60, now, may_expire=may_expire))
    return handoff, store


def test_hints_do_not_expire_while_the_clock_is_not_trusted(tmp_path: Path) -> None:
    now = Dial(1_000_000)
    trusted = False
    handoff, store = make_handoff(tmp_path, now, lambda: trusted)
    store.write_hint(b"k", Record(Version(1 << LOGICAL_BITS, "a"), b"v"), "b")
    now.ms += 10 * 86_400_000  # the clock jumps ten days ahead
    handoff.run_pass()
    assert store.pending_hints() == 1
    trusted = True
    handoff.run_pass()
    assert store.pending_hints() == 0
    store.close()


def test_a_node_whose_clock_jumped_a_day_ahead_purges_no_tombstone(
    make_cluster: Callable[..., InProcessCluster],
) -> None:
    """A tombstone is purged once it is older than the grace period, by this node's clock. A clock
    that jumped a day ahead would make every tombstone look old enough; the node sees that its
    clock disagrees with its peers' and purges nothing, so no stale copy can bring the key back."""
    cluster = make_cluster(3, KV_HINT_WINDOW_S="1", KV_TOMBSTONE_GRACE_S="2")
    key = b"deleted"
    with cluster.running_client() as kv:
        kv.put(key, b"v")
        version = kv.delete(key)
    first, second = cluster.replicas_of(key)
    node = cluster.restart(first, clock=skewed(86_400_000))
    cluster.settle()
    wait_until(lambda: not node.offsets.trusted(), message=f"{first} to distrust its clock")
    for node_id in (first, second):
        cluster.node(node_id).anti_entropy.run_round()
    assert node.store.read(key) == Record(version, None)
    assert node.metrics.registry.get_sample_value("kv_tombstones_purged_total") == 0
