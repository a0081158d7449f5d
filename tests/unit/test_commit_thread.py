"""``CommitThread``: the native thread a durable store's commits run in (``service.group_commit``)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import gevent
import pytest
from polling import wait_until

from client.protocol import Record, Version
from service.group_commit import CommitThread, GroupCommitter
from service.storage import PutRecord, Storage


def test_jobs_run_off_the_event_loop_in_order_and_return_their_results() -> None:
    thread = CommitThread()
    seen: list[tuple[int, int]] = []

    def job(index: int) -> int:
        seen.append((index, threading.get_ident()))
        time.sleep(0.001)  # the real ``time.sleep``: blocks the thread, as an fsync does
        return index * 10

    results = [thread(job, (index,)) for index in range(20)]
    assert [result.get(timeout=10) for result in results] == [index * 10 for index in range(20)]
    assert [index for index, _ in seen] == list(range(20))
    assert {ident for _, ident in seen} != {threading.get_ident()}
    assert len({ident for _, ident in seen}) == 1  # one thread for every job
    thread.close()


def test_an_exception_reaches_its_waiter_and_the_thread_lives_on() -> None:
    thread = CommitThread()

    def fail() -> None:
        raise OSError(28, "No space left on device")

    failed = thread(fail, ())
    with pytest.raises(OSError, match="No space left"):
        failed.get(timeout=10)
    assert thread(lambda: "after", ()).get(timeout=10) == "after"
    thread.close()


def test_the_event_loop_serves_while_a_job_blocks() -> None:
    thread = CommitThread()
    ticks: list[float] = []

    def ticker() -> None:
        for _ in range(5):
            ticks.append(time.monotonic())
            gevent.sleep(0.01)

    started = time.monotonic()
    job = thread(time.sleep, (0.2,))
    gevent.spawn(ticker).join(timeout=10)
    assert len(ticks) == 5 and ticks[-1] - started < 0.2  # the loop ran while the thread slept
    assert job.get(timeout=10) is None
    thread.close()


def test_an_idle_thread_does_not_keep_the_loop_alive() -> None:
    thread = CommitThread()
    assert thread(lambda: 1, ()).get(timeout=10) == 1
    gevent.wait(timeout=5)  # returns: nothing awaited keeps the hub's loop running
    thread.close()


def test_closing_ends_the_thread_after_the_jobs_handed_in() -> None:
    thread = CommitThread()
    task = Path("/proc/self/task") / str(thread(threading.get_native_id, ()).get(timeout=10))
    assert task.exists()  # the commit thread, by its OS thread id
    last = thread(lambda: "done", ())
    thread.close()
    assert last.get(timeout=10) == "done"
    wait_until(lambda: not task.exists(), timeout=10, message="the commit thread ended")


def test_group_commit_through_the_thread_is_durable_and_batched(tmp_path: Path) -> None:
    storage = Storage(str(tmp_path), 64 * 1024 * 1024)
    thread = CommitThread()
    committer = GroupCommitter(storage, thread)
    writers = [
        gevent.spawn(committer.submit, PutRecord(f"key{i}".encode(), Record(Version(i + 1, "n1"), b"v")))
        for i in range(50)
    ]
    gevent.joinall(writers, timeout=30, raise_error=True)
    assert [writer.value for writer in writers] == [True] * 50
    assert 1 <= committer.commits <= 5
    assert storage.live_keys == 50
    thread.close()
    storage.close()
