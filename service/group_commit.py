"""Group commit: many concurrent writers share one durable transaction and one fsync.

A writer greenlet calls ``submit()`` and blocks until its operation is on disk. Writes that arrive
while a commit is in progress wait for the next one, so under load each fsync carries many writes,
and with a single writer the latency is one commit. The commit itself runs in a native thread
(``CommitThread``) because an fsync would otherwise stall every greenlet on the node.
Between two commits, with none running, ``before_batch`` may prepare the store (``LocalStore``
reopens it there after a fatal LMDB error).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

import gevent
from gevent import monkey
from gevent.event import AsyncResult, Event

from service.storage import Operation, Storage

MAX_BATCH = 1024
"""Writes per transaction. Bounds the latency of one commit when a burst queues thousands of writes."""

Starter = Callable[[Callable[..., Any], Sequence[Any]], AsyncResult]
"""Starts ``function(*args)`` and returns an AsyncResult that resolves to its result or exception."""


def start_in_threadpool(function: Callable[..., Any], args: Sequence[Any]) -> AsyncResult:
    """For a store that fsyncs on commit: the commit runs in a native thread, so the event loop
    keeps serving while the disk syncs. Its exception, if any, is the result's (gevent would also
    print it with a traceback if it escaped the thread: a full disk must cost one log line)."""
    result = AsyncResult()

    def settle(job: AsyncResult) -> None:
        ok, value = job.value
        if ok:
            result.set(value)
        else:
            result.set_exception(value)

    gevent.get_hub().threadpool.spawn(_outcome, function, args).rawlink(settle)
    return result


_original_allocate_lock, _original_start_thread = monkey.get_original("_thread", ["allocate_lock", "start_new_thread"])

_Job = tuple[Callable[..., Any], Sequence[Any], AsyncResult]


class CommitThread:
    """A ``Starter`` with one native thread of its own, for a store that fsyncs on commit.

    Why not ``start_in_threadpool``: gevent's pool makes a watcher for every job, passes it through
    a queue guarded by a condition variable, and returns it through that watcher: at one write at a
    time (one client connection) that cost about 80 µs of CPU per commit on top of the commit's own
    ~140 µs (a durable commit of one write, measured apart, 3,000 in a row). Here a job is a deque
    append and, if the thread sleeps, one lock release; the thread hands results back through one
    long-lived async watcher (libev's ``ev_async``: a write to an eventfd the loop polls), and a
    wake-up delivers every result ready by then.

    The thread starts with the first job (so a process that forks before serving never loses it)
    and runs until ``close``. Jobs run one after another, in order.
    """

    def __init__(self) -> None:
        self._jobs: deque[_Job | None] = deque()
        self._done: deque[tuple[AsyncResult, bool, Any]] = deque()
        self._wake = _original_allocate_lock()
        self._wake.acquire()  # held while there is nothing to do: the thread blocks acquiring it
        self._watcher: Any = None  # the loop's async watcher, made with the thread
        self._outstanding = 0  # jobs handed in and not yet delivered (event loop's thread only)

    def __call__(self, function: Callable[..., Any], args: Sequence[Any]) -> AsyncResult:
        if self._watcher is None:
            self._watcher = gevent.get_hub().loop.async_()
            self._watcher.start(self._deliver)
            _original_start_thread(self._run, ())
        result = AsyncResult()
        self._outstanding += 1
        self._watcher.ref = True  # an awaited result keeps the loop alive
        self._jobs.append((function, args, result))
        self._signal()
        return result

    def _signal(self) -> None:
        # Only this (the event loop's) thread releases the lock and only the commit thread takes it,
        # so a lock found held is released once; one found free already carries a wake-up.
        if self._wake.locked():
            self._wake.release()

    def close(self) -> None:
        """Let the thread finish the jobs handed in, then end (it never started: nothing to do)."""
        if self._watcher is not None:
            self._jobs.append(None)
            self._signal()

    def _run(self) -> None:  # the commit thread
        jobs, done = self._jobs, self._done
        while True:
            self._wake.acquire()
            while jobs:
                job = jobs.popleft()
                if job is None:
                    return
                function, args, result = job
                try:
                    done.append((result, True, function(*args)))
                except Exception as exc:  # the waiters get it; the thread lives on
                    done.append((result, False, exc))
                self._watcher.send()

    def _deliver(self) -> None:  # the event loop's thread, woken by the watcher
        done = self._done
        while done:
            result, ok, value = done.popleft()
            self._outstanding -= 1
            if ok:
                result.set(value)
            else:
                result.set_exception(value)
        if not self._outstanding:
            self._watcher.ref = False


def _outcome(function: Callable[..., Any], args: Sequence[Any]) -> tuple[bool, Any]:
    try:
        return True, function(*args)
    except Exception as exc:
        return False, exc


def start_inline(function: Callable[..., Any], args: Sequence[Any]) -> AsyncResult:
    """For a store that does not fsync on commit: a commit is then tens of microseconds of CPU, less
    than handing it to a thread costs."""
    job = AsyncResult()
    try:
        job.set(function(*args))
    except Exception as exc:
        job.set_exception(exc)
    return job


class GroupCommitter:
    """Commits submitted operations in batches, one transaction (and one fsync) per batch.

    Event-driven, with no greenlet of its own: the first write submitted while no commit is running
    schedules one for the end of the current turn of the event loop, so every write that the turn's
    requests submit joins that batch. While a commit runs, new writes queue; when it ends, the
    queue becomes the next batch. A commit's outcome reaches every waiter of its batch, whatever
    happens to the greenlet that submitted first.
    """

    def __init__(
        self,
        storage: Storage,
        start: Starter = start_in_threadpool,
        before_batch: Callable[[], None] | None = None,
    ) -> None:
        self._storage = storage
        self._start = start
        self._before_batch = before_batch
        self._pending: list[tuple[Operation, AsyncResult]] = []
        self._busy = False  # a commit is scheduled or running
        self.committing = False
        """A commit is running now (in a native thread, with ``start_in_threadpool``)."""
        self._idle = Event()
        self._idle.set()
        self.commits = 0  # transactions committed, for tests and metrics

    def submit(self, operation: Operation) -> bool:
        """Run ``operation`` in the next commit and wait until it is durable; return whether it
        changed anything (see ``Storage.apply``)."""
        done = AsyncResult()
        self._pending.append((operation, done))
        if not self._busy:
            self._schedule()
        changed: bool = done.get()
        return changed

    def submit_all(self, operations: Sequence[Operation]) -> list[bool]:
        """``submit`` for several operations at once: they join the same commit (the next ones past
        ``MAX_BATCH``). Waits until every one is durable; raises the first failure."""
        waiters = [AsyncResult() for _ in operations]
        self._pending.extend(zip(operations, waiters, strict=True))
        if waiters and not self._busy:
            self._schedule()
        return [bool(done.get()) for done in waiters]

    @property
    def pending(self) -> int:
        """Operations waiting for a commit to start (not counting those in the running one)."""
        return len(self._pending)

    def _schedule(self) -> None:
        self._busy = True
        self._idle.clear()
        gevent.get_hub().loop.run_callback(self._commit_batch)

    def _commit_batch(self) -> None:
        batch = self._pending[:MAX_BATCH]
        del self._pending[:MAX_BATCH]
        try:
            if self._before_batch is not None:  # on the event loop's thread, with no commit running
                self._before_batch()
            self.committing = True
            job = self._start(self._storage.apply, ([operation for operation, _ in batch],))
        except Exception as exc:  # could not even start: the batch fails rather than waits forever
            job = AsyncResult()
            job.set_exception(exc)
        job.rawlink(lambda finished: self._finish(batch, finished))

    def _finish(self, batch: list[tuple[Operation, AsyncResult]], job: AsyncResult) -> None:
        self.committing = False
        if job.successful():
            self.commits += 1
            for (_, done), changed in zip(batch, job.value, strict=True):
                done.set(changed)
        else:  # every waiter learns the commit failed; none is acked
            for _, done in batch:
                done.set_exception(job.exception)
        if self._pending:
            self._commit_batch()
        else:
            self._busy = False
            self._idle.set()

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every write handed in so far is committed (used at shutdown); ``False`` if
        ``timeout`` seconds passed first (a stalled disk must not hang a shutdown forever)."""
        idle: bool = self._idle.wait(timeout)
        return idle
