"""Failed authentications from one address space out its next attempts; pure, on a fake clock."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from service.auth_throttle import (
    FORGET_AFTER,
    FREE_FAILURES,
    MAX_ADDRESSES,
    MAX_DELAY,
    MAX_WAIT,
    AuthThrottle,
    delay_after,
)

pytestmark = pytest.mark.unit


def test_the_first_failures_are_free_then_attempts_wait_longer_and_longer() -> None:
    throttle = AuthThrottle()
    for _ in range(FREE_FAILURES - 1):
        assert throttle.turn("10.0.0.1", 0.0) == 0.0
        throttle.failed("10.0.0.1", 0.0)
    assert throttle.turn("10.0.0.1", 0.0) == 0.0
    throttle.failed("10.0.0.1", 0.0)
    waits = []
    now = 0.0
    for _ in range(6):
        wait = throttle.turn("10.0.0.1", now)
        assert wait is not None
        waits.append(wait)
        now += wait
        throttle.failed("10.0.0.1", now)
    assert waits == sorted(waits) and waits[0] > 0 and max(waits) <= MAX_DELAY
    assert throttle.turn("10.0.0.2", now) == 0.0  # another address is not slowed


def test_parallel_attempts_from_one_address_are_queued_and_refused_past_the_longest_wait() -> None:
    throttle = AuthThrottle()
    for _ in range(FREE_FAILURES + 6):
        throttle.failed("10.0.0.1", 0.0)
    turns = [throttle.turn("10.0.0.1", 0.0) for _ in range(10)]
    granted = [turn for turn in turns if turn is not None]
    assert granted == sorted(granted) and len(set(granted)) == len(granted)  # one after another
    assert None in turns and all(turn <= MAX_WAIT for turn in granted)


def test_success_and_time_forget_an_address() -> None:
    throttle = AuthThrottle()
    for _ in range(FREE_FAILURES + 3):
        throttle.failed("a", 0.0)
    throttle.succeeded("a")
    assert throttle.turn("a", 0.0) == 0.0
    for _ in range(FREE_FAILURES + 3):
        throttle.failed("b", 0.0)
    assert throttle.turn("b", FORGET_AFTER + 1) == 0.0


@given(st.lists(st.integers(0, 50_000), max_size=200))
def test_memory_is_bounded_whatever_addresses_fail(addresses: list[int]) -> None:
    throttle = AuthThrottle()
    for number in addresses:
        throttle.failed(f"10.{number}", 0.0)
    assert len(throttle) <= MAX_ADDRESSES
    assert all(delay_after(failures) <= MAX_DELAY for failures in range(200))
