"""Reconciliation rules: what two replicas exchange (newest wins both ways, expired tombstones stay put)
and when a tombstone may be purged."""

from __future__ import annotations

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from client.protocol import KeyVersion, Version
from service.reconcile import Differences, differences, is_expired_tombstone, purgeable
from service.versioning import LOGICAL_BITS

NOW_MS = 1_700_000_000_000
GRACE_MS = 10_000


def at(ms: int, node_id: str = "n1", counter: int = 0) -> Version:
    """A version written at wall-clock ``ms``."""
    return Version((ms << LOGICAL_BITS) | counter, node_id)


def live(key: bytes, version: Version) -> KeyVersion:
    return KeyVersion(key, version, False)


def dead(key: bytes, version: Version) -> KeyVersion:
    return KeyVersion(key, version, True)


def diff(mine: list[KeyVersion], theirs: list[KeyVersion]) -> Differences:
    return differences(mine, theirs, now_ms=NOW_MS, grace_ms=GRACE_MS)


RECENT = at(NOW_MS - 1_000)
OLD = at(NOW_MS - GRACE_MS - 1)  # past the grace period
OLDER = at(NOW_MS - GRACE_MS - 5_000)


# --- differences -----------------------------------------------------------------------------------


def test_identical_sides_differ_in_nothing() -> None:
    entries = [live(b"a", RECENT), dead(b"b", RECENT), live(b"c", OLD), dead(b"d", OLD)]
    assert diff(entries, list(entries)) == Differences([], [])
    assert diff([], []) == Differences([], [])


def test_keys_only_mine_are_pushed_and_keys_only_theirs_pulled() -> None:
    assert diff([live(b"a", RECENT), live(b"old", OLDER)], []) == Differences([b"a", b"old"], [])
    assert diff([], [live(b"a", RECENT), live(b"old", OLDER)]) == Differences([], [b"a", b"old"])


def test_the_newer_version_is_pushed_or_pulled() -> None:
    mine = [
        live(b"mine-newer", at(NOW_MS, "n1")),
        live(b"theirs-newer", at(NOW_MS - 5)),
        live(b"tie", at(NOW_MS, "n1")),
    ]
    theirs = [live(b"mine-newer", at(NOW_MS - 5)), live(b"theirs-newer", at(NOW_MS)), live(b"tie", at(NOW_MS, "n2"))]
    # equal timestamps: the higher node id wins, as everywhere else
    assert diff(mine, theirs) == Differences([b"mine-newer"], [b"theirs-newer", b"tie"])


def test_a_recent_tombstone_is_a_difference_like_any_record() -> None:
    assert diff([dead(b"k", RECENT)], []) == Differences([b"k"], [])
    assert diff([], [dead(b"k", RECENT)]) == Differences([], [b"k"])


def test_an_expired_tombstone_against_nothing_is_no_difference_either_way() -> None:
    # One side purged it, the other has not yet: both mean "deleted".
    assert diff([dead(b"k", OLD)], []) == Differences([], [])
    assert diff([], [dead(b"k", OLD)]) == Differences([], [])


def test_a_tombstone_against_an_older_value_is_pushed_however_old_it_is() -> None:
    for tombstone_version in (RECENT, OLD):
        assert diff([dead(b"k", tombstone_version)], [live(b"k", OLDER)]) == Differences([b"k"], [])
        assert diff([live(b"k", OLDER)], [dead(b"k", tombstone_version)]) == Differences([], [b"k"])


def test_a_value_newer_than_a_tombstone_wins_over_it() -> None:
    assert diff([live(b"k", RECENT)], [dead(b"k", OLD)]) == Differences([b"k"], [])
    assert diff([dead(b"k", OLD)], [live(b"k", RECENT)]) == Differences([], [b"k"])


def test_tombstone_expiry_is_strictly_after_the_grace_period() -> None:
    exactly = at(NOW_MS - GRACE_MS)
    assert not is_expired_tombstone(dead(b"k", exactly), NOW_MS, GRACE_MS)
    assert is_expired_tombstone(dead(b"k", at(NOW_MS - GRACE_MS - 1)), NOW_MS, GRACE_MS)
    assert diff([dead(b"k", exactly)], []) == Differences([b"k"], [])
    # the logical counter does not count as time
    assert not is_expired_tombstone(dead(b"k", at(NOW_MS - GRACE_MS, counter=0xFFFF)), NOW_MS, GRACE_MS)


def test_values_never_expire() -> None:
    assert not is_expired_tombstone(live(b"k", at(0)), NOW_MS, GRACE_MS)
    assert diff([live(b"k", at(0))], []) == Differences([b"k"], [])


# --- property: one exchange makes the replicas agree -----------------------------------------------

# Ages around the grace period (some tombstones expired, some not), a few node ids for ties.
ages = st.sampled_from([0, 1, 500, GRACE_MS - 1, GRACE_MS, GRACE_MS + 1, 3 * GRACE_MS])
versions = st.builds(
    lambda age, counter, node: at(NOW_MS - age, node, counter), ages, st.integers(0, 2), st.sampled_from(["n1", "n2"])
)
KEYS = [bytes([ord("a") + i]) for i in range(8)]  # few keys: both sides often hold the same ones
sides = st.dictionaries(st.sampled_from(KEYS), st.tuples(versions, st.booleans()), max_size=len(KEYS))


def listing(side: dict[bytes, tuple[Version, bool]]) -> list[KeyVersion]:
    return [KeyVersion(key, version, tombstone) for key, (version, tombstone) in side.items()]


def expired(entry: tuple[Version, bool]) -> bool:
    version, tombstone = entry
    return is_expired_tombstone(KeyVersion(b"", version, tombstone), NOW_MS, GRACE_MS)


@settings(max_examples=150)
@given(sides, sides)
def test_applying_the_differences_makes_both_sides_agree_on_the_newest(
    mine: dict[bytes, tuple[Version, bool]], theirs: dict[bytes, tuple[Version, bool]]
) -> None:
    # one version is one write: both sides holding it hold the same record
    assume(all(mine[key] == theirs[key] for key in mine.keys() & theirs.keys() if mine[key][0] == theirs[key][0]))
    todo = diff(listing(mine), listing(theirs))
    assert len(set(todo.push)) == len(todo.push) and len(set(todo.pull)) == len(todo.pull)
    assert not set(todo.push) & set(todo.pull)

    my_after, their_after = dict(mine), dict(theirs)
    for key in todo.push:
        their_after[key] = mine[key]
    for key in todo.pull:
        my_after[key] = theirs[key]

    for key in mine.keys() | theirs.keys():
        candidates = [side[key] for side in (mine, theirs) if key in side]
        newest = max(candidates, key=lambda entry: entry[0])
        if key in mine and key in theirs:
            assert my_after[key] == their_after[key] == newest, key  # newest wins both ways
        elif expired(newest):
            # a purged tombstone's twin is left alone on the side that still has it
            assert (my_after.get(key), their_after.get(key)) in ((newest, None), (None, newest)), key
        else:
            assert my_after[key] == their_after[key] == newest, key

    assert diff(listing(my_after), listing(their_after)) == Differences([], [])
    # each side's live values are now the same
    assert {k: e for k, e in my_after.items() if not e[1]} == {k: e for k, e in their_after.items() if not e[1]}


@settings(max_examples=50)
@given(sides, sides)
def test_differences_are_symmetric(
    side_a: dict[bytes, tuple[Version, bool]], side_b: dict[bytes, tuple[Version, bool]]
) -> None:
    forward = diff(listing(side_a), listing(side_b))
    backward = diff(listing(side_b), listing(side_a))
    assert (sorted(forward.push), sorted(forward.pull)) == (sorted(backward.pull), sorted(backward.push))


# --- purgeable -------------------------------------------------------------------------------------

WRITTEN_MS = NOW_MS - GRACE_MS - 1_000
TOMBSTONE = at(WRITTEN_MS)


def test_a_tombstone_synced_after_it_was_written_and_past_the_grace_period_is_purgeable() -> None:
    assert purgeable(TOMBSTONE, now_ms=NOW_MS, grace_ms=GRACE_MS, synced_at_ms=WRITTEN_MS + 1)


@pytest.mark.parametrize(
    ("now_ms", "synced_at_ms", "reason"),
    [
        (NOW_MS, None, "never synced with every replica"),
        (NOW_MS, WRITTEN_MS, "synced in the very millisecond it was written: maybe before it"),
        (NOW_MS, WRITTEN_MS - 1, "synced only before it was written"),
        (WRITTEN_MS + GRACE_MS, WRITTEN_MS + 1, "exactly the grace period old"),
        (WRITTEN_MS + 5, WRITTEN_MS + 1, "younger than the grace period"),
    ],
)
def test_each_condition_for_a_purge_is_necessary(now_ms: int, synced_at_ms: int | None, reason: str) -> None:
    assert not purgeable(TOMBSTONE, now_ms=now_ms, grace_ms=GRACE_MS, synced_at_ms=synced_at_ms), reason


@given(st.integers(0, 10**6), st.integers(0, 10**6), st.none() | st.integers(0, 10**6), st.integers(0, 5_000))
def test_purgeable_is_exactly_the_three_conditions(written: int, now: int, synced: int | None, grace: int) -> None:
    expected = synced is not None and written < synced and now - written > grace
    assert purgeable(at(written, counter=7), now_ms=now, grace_ms=grace, synced_at_ms=synced) is expected
