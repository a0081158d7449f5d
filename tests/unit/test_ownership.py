"""The ownership planner: which partitions move on a join, a leave or a removal, and from where."""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from client.ring import Ring
from service.ownership import plan, plan_change, replica_shares

pytestmark = pytest.mark.unit

PARTITIONS = 512
node_ids = st.text(alphabet="abcdefghij0123456789-", min_size=1, max_size=8)
members = st.sets(node_ids, min_size=1, max_size=9)
replicas = st.integers(min_value=1, max_value=3)
SLOW = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def names(count: int) -> list[str]:
    return [f"node{i}" for i in range(1, count + 1)]


# --- minimal movement ------------------------------------------------------------------------------


@SLOW
@given(members, node_ids, replicas)
def test_a_join_moves_only_changed_partitions_and_only_to_the_new_node(old: set[str], joiner: str, n: int) -> None:
    if joiner in old:
        old = old - {joiner}
    if not old:
        return
    change = plan_change(old, old | {joiner}, n, PARTITIONS)
    old_ring, new_ring = change.old, change.new
    moved = {move.partition for move in change.moves}
    for partition in range(PARTITIONS):
        before = old_ring.partition_owners(partition)[:n]
        after = new_ring.partition_owners(partition)[:n]
        assert (partition in moved) == (set(before) != set(after))
    for move in change.moves:
        assert move.receivers == (joiner,)
        assert len(move.retiring) == (1 if len(old) >= n else 0)
        assert joiner in move.new
        assert move.write_set == (*move.old, joiner)
        assert move.read_set == move.old


@pytest.mark.parametrize(("count", "n"), [(3, 2), (3, 3), (5, 2), (9, 3)])
def test_a_join_moves_about_one_replica_in_n_plus_one(count: int, n: int) -> None:
    change = plan_change(names(count), names(count + 1), n, 4096)
    ideal = 1 / (count + 1)
    assert abs(change.moved_fraction - ideal) <= 0.1 * ideal, (change.moved_fraction, ideal)
    # Each moved partition moves one replica, so N/(n+1) of the partitions move.
    assert abs(len(change.moves) / 4096 - n * ideal) <= 0.1 * n * ideal


@SLOW
@given(members, replicas, st.data())
def test_a_leave_moves_only_the_leavers_replicas_to_the_next_in_line(
    old: set[str], n: int, data: st.DataObject
) -> None:
    if len(old) < 2:
        return
    leaver = data.draw(st.sampled_from(sorted(old)))
    change = plan_change(old, old - {leaver}, n, PARTITIONS)
    held = sum(1 for p in range(PARTITIONS) if leaver in change.old.partition_owners(p)[:n])
    assert len(change.moves) == held
    for move in change.moves:
        assert move.retiring == (leaver,)
        if len(old) <= n:  # fewer members than N: the partition keeps one copy fewer
            assert move.receivers == ()
            continue
        ranking = change.old.partition_owners(move.partition)
        assert move.receivers == (ranking[n],)  # the next node in the old ranking takes it
        assert move.source(move.receivers[0]) is not None  # the leaver is alive: it may be a source


# --- sources ---------------------------------------------------------------------------------------


@SLOW
@given(members, members, replicas)
def test_receivers_never_source_from_themselves_and_sources_are_old_owners(
    old: set[str], new: set[str], n: int
) -> None:
    change = plan_change(old, new, n, PARTITIONS)
    for move in change.moves:
        for receiver, sources in move.sources.items():
            assert receiver not in sources
            assert receiver not in move.old
            assert set(sources) == set(move.old)  # nobody unavailable: every old owner may serve


@SLOW
@given(members, replicas, st.data())
def test_a_removal_recreates_n_copies_from_the_survivors(old: set[str], n: int, data: st.DataObject) -> None:
    if len(old) < 2:
        return
    dead = data.draw(st.sampled_from(sorted(old)))
    change = plan(Ring(old, PARTITIONS), Ring(old - {dead}, PARTITIONS), n, unavailable={dead})
    for move in change.moves:
        for sources in move.sources.values():
            assert dead not in sources
    if n > 1:
        assert change.lost == ()
    for partition in range(PARTITIONS):
        move = change.move(partition)
        before = set(change.old.partition_owners(partition)[:n])
        after = set(move.new) if move else before
        copies = (before - {dead}) | (set(move.receivers) if move else set())
        assert copies == after
        assert len(after) == min(n, len(old) - 1)


def test_a_removal_with_one_copy_reports_the_partitions_lost() -> None:
    old = Ring(names(3), 64)
    change = plan(old, Ring(["node1", "node2"], 64), 1, unavailable={"node3"})
    held = [p for p in range(64) if old.partition_owners(p)[0] == "node3"]
    assert list(change.lost) == held
    assert all(move.source(move.receivers[0]) is None for move in change.moves)


def test_sources_spread_over_the_old_owners() -> None:
    change = plan_change(names(4), names(5), 3, 4096)
    suggested = Counter(move.source("node5") for move in change.moves)
    assert set(suggested) == set(names(4))
    mean = len(change.moves) / 4
    assert all(abs(count - mean) <= 1 for count in suggested.values()), suggested


def test_sending_and_receiving_list_the_moves_by_node() -> None:
    change = plan_change(names(3), names(4), 2, 256)
    assert change.receiving("node4") == list(change.moves)
    assert change.receiving("node1") == []
    sent = sum(len(change.sending(node)) for node in names(3))
    assert sent == len(change.moves)


def test_an_unchanged_membership_moves_nothing() -> None:
    change = plan_change(names(3), names(3), 2, 256)
    assert change.moves == ()
    assert change.replicas_moved == 0
    assert change.move(0) is None


def test_rings_with_different_partition_counts_are_refused() -> None:
    with pytest.raises(ValueError, match="keeps the count"):
        plan(Ring(names(3), 256), Ring(names(3), 512), 2)
    with pytest.raises(ValueError, match="at least 1"):
        plan(Ring(names(3), 256), Ring(names(3), 256), 0)


# --- balance ---------------------------------------------------------------------------------------


@settings(max_examples=20, deadline=None)
@given(st.integers(min_value=3, max_value=8), st.integers(min_value=2, max_value=3))
def test_every_node_holds_its_share_within_ten_percent(count: int, n: int) -> None:
    """With 4096 partitions and up to 8 nodes; ``docs/capacity.md`` shows where this stops holding."""
    shares = replica_shares(Ring(names(count), 4096), n)
    mean = 4096 * n / count
    for node_id, share in shares.items():
        assert abs(share - mean) <= 0.10 * mean, f"{node_id}: {share} replicas, mean {mean:.0f}"
