"""Periodic: the loop that runs the node's background passes."""

from __future__ import annotations

import gevent
from polling import wait_until

from service.periodic import Periodic


class Recorder:
    def __init__(self, fail_first: int = 0) -> None:
        self.passes = 0
        self.fail_first = fail_first
        self.errors: list[tuple[str, str]] = []

    def run(self) -> None:
        self.passes += 1
        if self.passes <= self.fail_first:
            raise RuntimeError(f"pass {self.passes} failed")

    def on_error(self, name: str, error: Exception) -> None:
        self.errors.append((name, str(error)))


def test_runs_every_interval_until_stopped() -> None:
    recorder = Recorder()
    task = Periodic("t", recorder.run, 0.01, on_error=recorder.on_error)
    task.start()
    wait_until(lambda: recorder.passes >= 3, message="three passes")
    task.stop()
    stopped_at = recorder.passes
    gevent.sleep(0.05)  # several intervals: a stopped task must not run again
    assert recorder.passes == stopped_at


def test_wake_runs_the_next_pass_at_once() -> None:
    recorder = Recorder()
    task = Periodic("t", recorder.run, 3600, on_error=recorder.on_error)
    task.start()
    try:
        wait_until(lambda: recorder.passes == 1, message="the first pass")
        task.wake()
        wait_until(lambda: recorder.passes == 2, timeout=1.0, message="a pass right after wake")
    finally:
        task.stop()


def test_first_delay_holds_the_first_pass_back() -> None:
    recorder = Recorder()
    task = Periodic("t", recorder.run, 0.01, first_delay=3600, on_error=recorder.on_error)
    task.start()
    try:
        gevent.sleep(0.05)
        assert recorder.passes == 0
        task.wake()  # waking also ends the first delay
        wait_until(lambda: recorder.passes >= 1, message="the first pass after wake")
    finally:
        task.stop()


def test_a_failing_pass_is_reported_and_the_task_goes_on() -> None:
    recorder = Recorder(fail_first=2)
    task = Periodic("repair", recorder.run, 0.01, on_error=recorder.on_error)
    task.start()
    try:
        wait_until(lambda: recorder.passes >= 4, message="passes after the failures")
    finally:
        task.stop()
    assert recorder.errors == [("repair", "pass 1 failed"), ("repair", "pass 2 failed")]
