"""Group commit: many concurrent writers share one durable transaction and one fsync.

A writer greenlet calls ``submit()`` and blocks until its operation is on disk. Writes that arrive while
a commit is in progress wait for the next one, so under load each fsync carries many writes, and
with a single writer the latency is one commit. The commit itself runs in a native thread
(``run_blocking``) because an fsync would otherwise stall every greenlet on the node.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import gevent
from gevent.event import AsyncResult

from service.storage import Operation, Storage

MAX_BATCH = 1024
"""Writes per transaction. Bounds the latency of one commit when a burst queues thousands of writes."""


def _run_in_threadpool(function: Callable[..., Any], *args: Any) -> Any:
    return gevent.get_hub().threadpool.apply(function, args)


class GroupCommitter:
    def __init__(self, storage: Storage, run_blocking: Callable[..., Any] = _run_in_threadpool) -> None:
        self._storage = storage
        self._run_blocking = run_blocking
        self._pending: list[tuple[Operation, AsyncResult]] = []
        self._flusher: gevent.Greenlet | None = None
        self.commits = 0  # transactions committed, for tests and metrics

    def submit(self, operation: Operation) -> bool:
        """Run ``operation`` in the next commit and wait until it is durable; return whether it
        changed anything (see ``Storage.apply``)."""
        done = AsyncResult()
        self._pending.append((operation, done))
        if self._flusher is None:
            self._flusher = gevent.spawn(self._flush_until_empty)
        return done.get()

    def _flush_until_empty(self) -> None:
        try:
            while self._pending:
                batch = self._pending[:MAX_BATCH]
                del self._pending[:MAX_BATCH]
                try:
                    applied = self._run_blocking(self._storage.apply, [operation for operation, _ in batch])
                except Exception as exc:  # every waiter learns the commit failed; none is acked
                    for _, done in batch:
                        done.set_exception(exc)
                    continue
                self.commits += 1
                for (_, done), changed in zip(batch, applied, strict=True):
                    done.set(changed)
        finally:
            self._flusher = None

    def flush(self) -> None:
        """Wait until every write handed in so far is committed (used at shutdown)."""
        while self._flusher is not None:
            self._flusher.join()
