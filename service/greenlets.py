"""Short-lived work in greenlets that are reused rather than made anew (``spawn``).

Why: a request that may block (a write waiting for its commit, a replica write waiting for a peer)
runs in a greenlet of its own, and on CPython 3.11 a new greenlet's first call maps a fresh 16 KiB
chunk for its interpreter frames (``mmap``, four page faults) and unmaps it when the greenlet ends
(``munmap``, which on a machine with several cores also flushes other cores' TLBs): measured with
``strace -k``, one of each per durable PUT. A finished greenlet here parks instead, keeping its
chunk, and the next ``spawn`` resumes it with the new work: no allocation, no syscall.

A parked greenlet waits in ``hub.switch()`` for a ``_Job``; it is in ``_idle`` then and only then.
Anything else that wakes it (an exception thrown in, a stray switch) ends it: it leaves ``_idle``
and a fresh one takes its place on demand. At most ``MAX_IDLE`` park; more finish as usual. Work
starts on the next turn of the event loop, as with ``gevent.spawn_raw``, and must handle its own
exceptions: one that escapes is reported as gevent reports an uncaught greenlet error, and the
greenlet is reused anyway.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable
from typing import Any

import gevent
from gevent.hub import RawGreenlet, getcurrent  # greenlet's own, as gevent.spawn_raw uses them

MAX_IDLE = 256
"""Parked greenlets kept for reuse: each holds about 16 KiB (its frame chunk) and its saved stack."""

_idle: list[Any] = []  # greenlet.greenlet objects (greenlet ships no types here)


class _Job:
    __slots__ = ("args", "function")

    def __init__(self, function: Callable[..., Any], args: tuple[Any, ...]) -> None:
        self.function = function
        self.args = args


def spawn(function: Callable[..., Any], *args: Any) -> None:
    """Run ``function(*args)`` in a greenlet, from the next turn of the event loop; returns nothing
    to wait on (like ``gevent.spawn_raw``)."""
    hub = gevent.get_hub()
    worker = _idle.pop() if _idle else RawGreenlet(_work, hub)
    hub.loop.run_callback(worker.switch, _Job(function, args))


def idle() -> int:
    """Greenlets parked for reuse now (for tests)."""
    return len(_idle)


def _work(job: _Job) -> None:
    hub = gevent.get_hub()
    me = getcurrent()
    while True:
        try:
            job.function(*job.args)
        except Exception:
            hub.handle_error(me, *sys.exc_info())
        del job  # drop the finished work's references before parking
        if len(_idle) >= MAX_IDLE:
            return
        _idle.append(me)
        try:
            woken = hub.switch()
        except BaseException:  # thrown into a parked greenlet: it ends, unused
            with contextlib.suppress(ValueError):
                _idle.remove(me)
            return
        if type(woken) is not _Job:  # not ours: never run it, end
            with contextlib.suppress(ValueError):
                _idle.remove(me)
            return
        job = woken
