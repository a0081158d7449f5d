"""A read's decisions without I/O: targets, spares, speculative retry, the answer, timeouts and
read repair, driven step by step on a clock the test sets."""

from __future__ import annotations

import pytest

from client.protocol import Record, Status, Version
from service.quorum import WAIT, Answer, Ask, Fail, QuorumFailure
from service.read_plan import SPECULATIVE_RETRY_FRACTION, ReadPlan, asks_all, read_targets

TIMEOUT = 2.0
RETRY = TIMEOUT * SPECULATIVE_RETRY_FRACTION


def record(timestamp: int, node_id: str = "x", value: bytes | None = b"v") -> Record:
    return Record(Version(timestamp, node_id), value)


# --- the plan: which replicas ----------------------------------------------------------------------


def test_targets_put_this_node_first_and_leave_out_the_down() -> None:
    assert read_targets(["b", "a", "c"], lambda node_id: False, "a", 1) == ["a", "b", "c"]
    assert read_targets(["b", "a", "c"], lambda node_id: node_id == "b", "a", 2) == ["a", "c"]
    assert read_targets(["b", "c"], lambda node_id: False, "a", 2) == ["b", "c"]  # a is not a replica


def test_too_few_replicas_up_is_unavailable_before_anything_is_asked() -> None:
    with pytest.raises(QuorumFailure) as caught:
        read_targets(["a", "b", "c"], lambda node_id: node_id != "a", "a", 2)
    assert caught.value.status == Status.UNAVAILABLE
    assert (caught.value.acked, caught.value.required) == (0, 2)
    assert "only 1 of the key's 3 replicas are up; the read needs 2" in caught.value.message


def test_r_equal_to_the_replicas_up_asks_them_all_without_a_draw() -> None:
    def no_draw() -> float:
        raise AssertionError("no draw needed")

    assert asks_all(2, 2, 0.0, no_draw)
    assert asks_all(1, 3, 0.1, lambda: 0.09)
    assert not asks_all(1, 3, 0.1, lambda: 0.1)


# --- the fan-out's decisions -----------------------------------------------------------------------


def test_r_replies_answer_with_the_newest() -> None:
    plan = ReadPlan(["a", "b", "c"], 2, ask_all=False, now=0.0, timeout=TIMEOUT)
    assert plan.ask_first == ["a", "b"]
    assert plan.on_success("a", record(1)) is WAIT
    assert plan.on_success("b", record(2, "b")) == Answer(record(2, "b"))
    assert plan.on_success("c", record(3)) is WAIT  # decided: late replies are only recorded


def test_no_replica_holding_the_key_answers_none() -> None:
    plan = ReadPlan(["a", "b"], 2, ask_all=True, now=0.0, timeout=TIMEOUT)
    plan.on_success("a", None)
    assert plan.on_success("b", None) == Answer(None)
    assert not plan.needs_repair
    assert plan.repairs() is None


def test_a_failure_asks_the_next_spare_and_the_last_failure_is_unavailable() -> None:
    plan = ReadPlan(["a", "b", "c"], 1, ask_all=False, now=0.0, timeout=TIMEOUT)
    assert plan.on_failure("a", "bad sector") == Ask("b")
    assert plan.on_failure("b", "gone") == Ask("c")
    decision = plan.on_failure("c", "gone too")
    assert isinstance(decision, Fail)
    assert decision.failure.status == Status.UNAVAILABLE
    assert (decision.failure.acked, decision.failure.required) == (0, 1)
    assert "3 failed (a: bad sector; b: gone; c: gone too)" in decision.failure.message


def test_speculative_retry_asks_one_spare_per_interval_until_none_is_left() -> None:
    plan = ReadPlan(["a", "b", "c"], 1, ask_all=False, now=10.0, timeout=TIMEOUT)
    assert plan.wake_at == pytest.approx(10.0 + RETRY)
    assert plan.tick(10.0 + RETRY / 2) is WAIT
    assert plan.tick(10.0 + RETRY) == Ask("b")
    assert plan.wake_at == pytest.approx(10.0 + 2 * RETRY)  # the interval restarts at each retry
    assert plan.tick(10.0 + 2 * RETRY) == Ask("c")
    assert plan.wake_at == pytest.approx(10.0 + TIMEOUT)  # no spare left: only the deadline
    assert plan.on_success("a", record(5)) == Answer(record(5))  # the silent replica still counts


def test_a_read_that_asked_everyone_never_retries_and_times_out_at_the_deadline() -> None:
    plan = ReadPlan(["a", "b"], 2, ask_all=True, now=0.0, timeout=TIMEOUT)
    assert plan.wake_at == TIMEOUT
    assert plan.on_success("a", record(1)) is WAIT
    assert plan.tick(RETRY) is WAIT
    decision = plan.tick(TIMEOUT)
    assert isinstance(decision, Fail)
    assert decision.failure.status == Status.TIMEOUT
    assert (decision.failure.acked, decision.failure.required) == (1, 2)
    assert plan.tick(TIMEOUT + 1) is WAIT  # decided once


def test_after_the_answer_failures_ask_no_spare() -> None:
    plan = ReadPlan(["a", "b", "c"], 1, ask_all=False, now=0.0, timeout=TIMEOUT)
    assert plan.on_success("a", record(1)) == Answer(record(1))
    assert plan.tick(RETRY) is WAIT
    assert plan.on_failure("a", "late") is WAIT


# --- read repair -----------------------------------------------------------------------------------


def test_repairs_name_every_replica_older_than_the_newest_reply() -> None:
    plan = ReadPlan(["a", "b", "c"], 1, ask_all=True, now=0.0, timeout=TIMEOUT)
    newest = record(3, "c")
    assert plan.on_success("a", record(1)) == Answer(record(1))  # R=1: the first reply answers
    assert plan.needs_repair  # b and c are still due
    plan.on_success("b", None)
    plan.on_success("c", newest)
    assert plan.outstanding == 0
    assert plan.repairs() == (newest, ["a", "b"])


def test_agreeing_replies_need_no_repair_and_failed_ones_are_left_out() -> None:
    same = record(2)
    plan = ReadPlan(["a", "b", "c"], 2, ask_all=True, now=0.0, timeout=TIMEOUT)
    plan.on_success("a", same)
    plan.on_failure("b", "unreachable")
    plan.on_success("c", same)
    assert not plan.needs_repair
    assert plan.repairs() == (same, [])
