"""The hybrid logical clock and last-writer-wins: supersedes and newest."""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from client.protocol import Record, Version
from service.versioning import (
    LOGICAL_BITS,
    LOGICAL_MASK,
    MAX_TIMESTAMP,
    HybridLogicalClock,
    newest,
    physical_ms,
    supersedes,
    wall_clock_ms,
)


class FakeWallClock:
    """A wall clock the test sets by hand; calling it returns the current milliseconds."""

    def __init__(self, ms: int = 1_000) -> None:
        self.ms = ms

    def __call__(self) -> int:
        return self.ms


def scripted_clock(readings: list[int]) -> Callable[[], int]:
    """A wall clock that returns ``readings`` in turn, then repeats the last one."""
    remaining = list(readings)

    def now_ms() -> int:
        return remaining.pop(0) if len(remaining) > 1 else remaining[0]

    return now_ms


# --- hybrid logical clock --------------------------------------------------------------------------


def test_timestamp_carries_wall_clock_milliseconds() -> None:
    clock = HybridLogicalClock(FakeWallClock(1_234))
    stamp = clock.now()
    assert physical_ms(stamp) == 1_234
    assert stamp & LOGICAL_MASK == 0
    assert clock.last == stamp


def test_stalled_wall_clock_still_gives_strictly_increasing_timestamps() -> None:
    wall = FakeWallClock(5_000)
    clock = HybridLogicalClock(wall)
    stamps = [clock.now() for _ in range(1_000)]
    assert all(a < b for a, b in itertools.pairwise(stamps))
    assert {physical_ms(stamp) for stamp in stamps} == {5_000}  # the counter moved, not the milliseconds
    assert [stamp & LOGICAL_MASK for stamp in stamps] == list(range(1_000))


def test_wall_clock_going_backwards_still_gives_strictly_increasing_timestamps() -> None:
    clock = HybridLogicalClock(scripted_clock([10_000, 9_000, 5_000, 5_000, 1, 10_000, 10_001]))
    stamps = [clock.now() for _ in range(7)]
    assert all(a < b for a, b in itertools.pairwise(stamps))
    assert physical_ms(stamps[4]) == 10_000  # never behind the highest wall time seen
    assert physical_ms(stamps[6]) == 10_001  # and follows the wall clock again once it passes
    assert stamps[6] & LOGICAL_MASK == 0


def test_counter_overflow_carries_into_milliseconds_and_stays_monotonic() -> None:
    clock = HybridLogicalClock(FakeWallClock(7), last=(7 << LOGICAL_BITS) | LOGICAL_MASK)
    stamp = clock.now()
    assert stamp == 8 << LOGICAL_BITS
    assert clock.now() > stamp


def test_clock_resumes_above_the_last_timestamp_it_was_given() -> None:
    restored = (50_000 << LOGICAL_BITS) + 17
    clock = HybridLogicalClock(FakeWallClock(40_000), last=restored)  # wall clock behind after a restart
    assert clock.now() == restored + 1


def test_observe_moves_the_clock_past_a_remote_timestamp() -> None:
    wall = FakeWallClock(1_000)
    clock = HybridLogicalClock(wall)
    remote = (9_000 << LOGICAL_BITS) + 3
    clock.observe(remote)
    assert clock.last == remote
    stamp = clock.now()
    assert stamp > remote
    assert physical_ms(stamp) == 9_000  # causality wins over the slow local wall clock


def test_observe_of_an_older_timestamp_changes_nothing() -> None:
    clock = HybridLogicalClock(FakeWallClock(1_000))
    stamp = clock.now()
    clock.observe(stamp - 5)
    assert clock.last == stamp
    assert clock.now() == stamp + 1


def test_observe_near_the_top_of_the_range_leaves_room_for_one_more_timestamp() -> None:
    clock = HybridLogicalClock(FakeWallClock(1))
    clock.observe(MAX_TIMESTAMP)
    assert clock.now() == MAX_TIMESTAMP


@given(
    st.lists(
        st.one_of(
            st.tuples(st.just("tick"), st.integers(0, 2**40)),
            st.tuples(st.just("observe"), st.integers(0, 2**60)),
        ),
        min_size=1,
        max_size=50,
    )
)
def test_now_always_exceeds_everything_issued_or_observed(events: list[tuple[str, int]]) -> None:
    wall = FakeWallClock(0)
    clock = HybridLogicalClock(wall)
    floor = -1  # every later now() must exceed this
    for kind, number in events:
        if kind == "tick":
            wall.ms = number
            stamp = clock.now()
            assert stamp > floor
            assert physical_ms(stamp) >= number  # never behind the wall clock
            floor = stamp
        else:
            clock.observe(number)
            floor = max(floor, number)
    assert clock.now() > floor


def test_physical_ms_drops_the_counter() -> None:
    assert physical_ms((123 << LOGICAL_BITS) | 0xFFFF) == 123
    assert physical_ms(0) == 0


def test_real_wall_clock_is_milliseconds_since_the_epoch() -> None:
    assert 1_600_000_000_000 < wall_clock_ms() < 10_000_000_000_000
    assert HybridLogicalClock().now() >> LOGICAL_BITS >= 1_600_000_000_000


# --- last writer wins ------------------------------------------------------------------------------


def test_supersedes_only_a_strictly_higher_version() -> None:
    old = Record(Version(10, "node1"), b"a")
    assert supersedes(old, None)
    assert supersedes(Record(Version(11, "node1"), b"b"), old)
    assert not supersedes(Record(Version(9, "node1"), b"b"), old)
    assert not supersedes(Record(Version(10, "node1"), b"b"), old)  # equal version: keep what is held


def test_tombstone_and_value_are_ordered_only_by_version() -> None:
    value = Record(Version(10, "node1"), b"v")
    older_delete = Record(Version(9, "node1"), None)
    newer_delete = Record(Version(11, "node1"), None)
    assert supersedes(newer_delete, value)
    assert not supersedes(older_delete, value)
    assert supersedes(value, older_delete)
    assert not supersedes(value, newer_delete)
    assert newest([value, newer_delete]) == newer_delete
    assert newest([newer_delete, value]) == newer_delete
    assert newest([older_delete, value]) == value
    assert newest([value, older_delete]) == value


def test_equal_timestamps_are_broken_by_node_id() -> None:
    low = Record(Version(10, "node1"), b"from node1")
    high = Record(Version(10, "node2"), None)
    assert supersedes(high, low)
    assert not supersedes(low, high)
    assert newest([low, high]) == high
    assert newest([high, low]) == high


@pytest.mark.parametrize("records", [[], [None], [None, None]])
def test_newest_of_nothing_is_none(records: list[Record | None]) -> None:
    assert newest(records) is None


node_ids = st.sampled_from(["node1", "node2", "node3", "a", "b", ""])
records = st.builds(Record, st.builds(Version, st.integers(0, 50), node_ids), st.none() | st.binary(max_size=4))


@given(st.lists(st.none() | records, max_size=12), st.randoms(use_true_random=False))
def test_newest_returns_the_record_with_the_highest_version(
    candidates: list[Record | None], rng: random.Random
) -> None:
    present = [record for record in candidates if record is not None]
    best = newest(candidates)
    if not present:
        assert best is None
        return
    assert best is not None
    assert best in present
    assert best.version == max(record.version for record in present)
    assert all(not supersedes(record, best) for record in present)
    shuffled = list(candidates)
    rng.shuffle(shuffled)
    reordered = newest(shuffled)
    assert reordered is not None
    assert reordered.version == best.version  # order of replies never changes the winning version


@given(st.lists(records, min_size=1, max_size=12))
def test_applying_records_in_any_order_converges_to_newest(candidates: list[Record]) -> None:
    held: Record | None = None
    for record in candidates:
        if supersedes(record, held):
            held = record
    best = newest(candidates)
    assert held is not None
    assert held == best  # both keep the first of equal versions
