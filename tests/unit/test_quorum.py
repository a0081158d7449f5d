"""Quorum arithmetic: when a request is decided, and which quorum it runs with."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from client.protocol import Status
from service.quorum import REACHED, WAIT, Fail, QuorumFailure, QuorumRound, QuorumState, QuorumTracker, resolve_quorum


def expected_outcome(acked: int, failed: int, required: int, replicas: int) -> QuorumState:
    if acked >= required:
        return QuorumState.REACHED
    if replicas - failed < required:
        return QuorumState.LOST
    return QuorumState.PENDING


def test_starts_pending() -> None:
    tracker = QuorumTracker(2, 3)
    assert tracker.outcome is QuorumState.PENDING
    assert (tracker.acked, tracker.failed) == (0, 0)


def test_reached_exactly_at_required() -> None:
    tracker = QuorumTracker(2, 3)
    assert tracker.succeed() is QuorumState.PENDING
    assert tracker.succeed() is QuorumState.REACHED
    assert tracker.fail() is QuorumState.REACHED  # a late failure does not undo a quorum
    assert tracker.acked == 2


def test_lost_as_soon_as_the_rest_cannot_make_it() -> None:
    tracker = QuorumTracker(2, 3)
    assert tracker.fail() is QuorumState.PENDING  # two replicas left, two needed
    assert tracker.fail() is QuorumState.LOST  # one left: no need to wait for it
    assert tracker.failed == 2


def test_one_failure_loses_an_all_replicas_quorum() -> None:
    tracker = QuorumTracker(3, 3)
    assert tracker.succeed() is QuorumState.PENDING
    assert tracker.fail() is QuorumState.LOST


def test_single_replica_quorum() -> None:
    assert QuorumTracker(1, 1).succeed() is QuorumState.REACHED
    assert QuorumTracker(1, 1).fail() is QuorumState.LOST
    assert QuorumTracker(1, 3).succeed() is QuorumState.REACHED


@pytest.mark.parametrize(("required", "replicas"), [(0, 3), (4, 3), (-1, 2), (1, 0)])
def test_impossible_quorum_is_rejected(required: int, replicas: int) -> None:
    with pytest.raises(ValueError, match="required"):
        QuorumTracker(required, replicas)


@given(st.integers(1, 8).flatmap(lambda n: st.tuples(st.integers(1, n), st.just(n))), st.data())
def test_outcome_follows_every_answer(sizes: tuple[int, int], data: st.DataObject) -> None:
    required, replicas = sizes
    answers = data.draw(st.lists(st.booleans(), max_size=replicas), label="answers (True: success)")
    tracker = QuorumTracker(required, replicas)
    acked = failed = 0
    decided: QuorumState | None = None
    for success in answers:
        if success:
            acked += 1
            outcome = tracker.succeed()
        else:
            failed += 1
            outcome = tracker.fail()
        assert outcome is expected_outcome(acked, failed, required, replicas)
        assert tracker.outcome is outcome
        assert (tracker.acked, tracker.failed) == (acked, failed)
        if decided is not None:
            assert outcome is decided  # once decided, a request stays decided
        elif outcome is not QuorumState.PENDING:
            decided = outcome
    if len(answers) == replicas:
        assert tracker.outcome is not QuorumState.PENDING  # every replica answered: the request is decided


def test_quorum_error_carries_its_counts() -> None:
    error = QuorumFailure(Status.TIMEOUT, 1, 2, "1 of 2 replicas answered in time")
    assert (error.status, error.acked, error.required) == (Status.TIMEOUT, 1, 2)
    assert str(error) == error.message == "1 of 2 replicas answered in time"


def test_resolve_quorum_zero_means_the_default() -> None:
    assert resolve_quorum(0, 2, 3, "W") == 2
    assert resolve_quorum(0, 1, 2, "R") == 1


@given(st.integers(1, 255).flatmap(lambda n: st.tuples(st.integers(1, n), st.just(n))), st.integers(1, 255))
def test_resolve_quorum_keeps_a_request_within_n(sizes: tuple[int, int], default: int) -> None:
    requested, replicas = sizes
    assert resolve_quorum(requested, default, replicas, "R") == requested


@pytest.mark.parametrize(
    ("requested", "replicas", "name", "message"),
    [(3, 2, "W", "W=3 exceeds N=2"), (4, 3, "R", "R=4 exceeds N=3"), (255, 1, "W", "W=255 exceeds N=1")],
)
def test_resolve_quorum_over_n_is_rejected(requested: int, replicas: int, name: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        resolve_quorum(requested, 1, replicas, name)


# --- a round: the tracker over time ---------------------------------------------------------------


def test_a_round_is_reached_at_the_required_success_and_stays_decided() -> None:
    quorum = QuorumRound(2, 3, now=0.0, timeout=1.0)
    assert quorum.on_success("a", None) is WAIT
    assert quorum.on_success("b", None) is REACHED
    assert quorum.on_failure("c", "late") is WAIT
    assert quorum.tick(5.0) is WAIT  # decided: the deadline no longer matters


def test_a_round_fails_unavailable_with_every_reason_once_the_rest_cannot_make_it() -> None:
    quorum = QuorumRound(2, 3, now=0.0, timeout=1.0)
    assert quorum.on_failure("c", "disk full") is WAIT
    decision = quorum.on_failure("a", "refused")
    assert isinstance(decision, Fail)
    assert decision.failure.status == Status.UNAVAILABLE
    assert decision.failure.message == "0 of 2 required replicas acked; 2 of 3 failed (a: refused; c: disk full)"


def test_a_round_times_out_at_its_deadline_and_not_before() -> None:
    quorum = QuorumRound(1, 2, now=100.0, timeout=0.5)
    assert quorum.wake_at == 100.5
    assert quorum.tick(100.49) is WAIT
    decision = quorum.tick(100.5)
    assert isinstance(decision, Fail)
    assert decision.failure.status == Status.TIMEOUT
    assert decision.failure.message == "0 of 1 required replicas answered within 0.5 s"
