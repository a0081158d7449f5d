"""Background work that repeats: a greenlet per task, which outlives its own failures.

The node's components (heartbeats, hint delivery, anti-entropy, the periodic fsync) each offer one
pass of their work as a plain method; ``Periodic`` decides when passes run. Keeping the loops here
keeps the components testable pass by pass, and means a pass that raises is reported and retried
at the next interval instead of silently ending the greenlet that runs it.
"""

from __future__ import annotations

from collections.abc import Callable

import gevent
from gevent.event import Event


class Periodic:
    """Runs ``function`` every ``interval`` seconds, first after ``first_delay``; ``wake()`` runs
    the next pass at once."""

    def __init__(
        self,
        name: str,
        function: Callable[[], object],
        interval: float,
        *,
        on_error: Callable[[str, Exception], None],
        first_delay: float = 0.0,
    ) -> None:
        self.name = name
        self._function = function
        self._interval = interval
        self._first_delay = first_delay
        self._on_error = on_error
        self._wake = Event()
        self._greenlet: gevent.Greenlet | None = None

    def start(self) -> None:
        self._greenlet = gevent.spawn(self._run)

    def stop(self) -> None:
        if self._greenlet is not None:
            self._greenlet.kill()

    def wake(self) -> None:
        self._wake.set()

    def _run(self) -> None:
        self._pause(self._first_delay)
        while True:
            try:
                self._function()
            except Exception as exc:  # one failed pass must not end the task
                self._on_error(self.name, exc)
            self._pause(self._interval)

    def _pause(self, seconds: float) -> None:
        if seconds > 0:
            self._wake.wait(seconds)
        self._wake.clear()
