"""``service.greenlets``: work in greenlets that park when done and are reused."""

from __future__ import annotations

import gevent
import pytest
from gevent.event import Event
from gevent.hub import getcurrent

from service import greenlets


@pytest.fixture(autouse=True)
def no_parked_greenlets() -> None:
    greenlets._idle.clear()


def test_work_runs_on_the_next_turn_and_a_finished_greenlet_is_reused() -> None:
    ran: list[tuple[int, object]] = []
    greenlets.spawn(lambda: ran.append((1, getcurrent())))
    assert ran == []  # not yet: from the next turn of the loop, as gevent.spawn_raw
    gevent.sleep(0)
    assert [index for index, _ in ran] == [1] and greenlets.idle() == 1
    greenlets.spawn(lambda: ran.append((2, getcurrent())))
    gevent.sleep(0)
    assert ran[1][0] == 2 and ran[1][1] is ran[0][1]  # the same greenlet ran both
    assert greenlets.idle() == 1


def test_concurrent_work_runs_in_separate_greenlets_and_each_can_block() -> None:
    gate = Event()
    seen: list[object] = []

    def blocked(index: int) -> None:
        gate.wait(timeout=10)
        seen.append((index, getcurrent()))

    for index in range(5):
        greenlets.spawn(blocked, index)
    gevent.sleep(0)
    assert seen == [] and greenlets.idle() == 0
    gate.set()
    gevent.sleep(0.01)
    assert sorted(index for index, _ in seen) == list(range(5))
    assert len({id(worker) for _, worker in seen}) == 5
    assert greenlets.idle() == 5


def test_an_escaping_exception_is_reported_and_the_greenlet_lives_on(monkeypatch: pytest.MonkeyPatch) -> None:
    reported: list[type[BaseException]] = []
    hub = gevent.get_hub()
    monkeypatch.setattr(hub, "handle_error", lambda where, kind, value, tb: reported.append(kind))

    def fail() -> None:
        raise ValueError("a bug in one request")

    greenlets.spawn(fail)
    gevent.sleep(0)
    assert reported == [ValueError] and greenlets.idle() == 1
    done = Event()
    greenlets.spawn(done.set)
    assert done.wait(timeout=5)


def test_a_parked_greenlet_woken_by_anything_else_ends_and_leaves_the_idle_list() -> None:
    workers: list[object] = []
    greenlets.spawn(lambda: workers.append(getcurrent()))
    gevent.sleep(0)
    (worker,) = workers
    assert greenlets.idle() == 1
    gevent.get_hub().loop.run_callback(worker.switch, "not a job")  # type: ignore[attr-defined]
    gevent.sleep(0)
    assert greenlets.idle() == 0 and worker.dead  # type: ignore[attr-defined]
    greenlets.spawn(lambda: workers.append(getcurrent()))  # a fresh one takes over
    gevent.sleep(0)
    assert len(workers) == 2 and workers[1] is not worker


def test_an_exception_thrown_into_a_parked_greenlet_ends_it() -> None:
    workers: list[object] = []
    greenlets.spawn(lambda: workers.append(getcurrent()))
    gevent.sleep(0)
    (worker,) = workers
    gevent.get_hub().loop.run_callback(worker.throw, gevent.Timeout())  # type: ignore[attr-defined]
    gevent.sleep(0)
    assert greenlets.idle() == 0 and worker.dead  # type: ignore[attr-defined]


def test_at_most_max_idle_park(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(greenlets, "MAX_IDLE", 3)
    gate = Event()
    for _ in range(6):
        greenlets.spawn(gate.wait, 10)
    gevent.sleep(0)
    gate.set()
    gevent.sleep(0.01)
    assert greenlets.idle() == 3
