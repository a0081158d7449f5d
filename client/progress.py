"""A status line for long commands, on stderr: rewritten in place on a terminal, one line per
interval otherwise, so a log stays readable. ``kv bench`` and ``kv repair`` draw their progress with
it; stdout keeps its one line per command.
"""

from __future__ import annotations

import time
from typing import TextIO

PROGRESS_INTERVAL = 1.0
"""Seconds between status lines: often enough to watch, rarely enough to cost nothing."""


class Progress:
    """The status line on ``stream``: in place on a terminal, one line per ``interval`` seconds
    otherwise; nothing at all unless ``enabled``."""

    def __init__(self, stream: TextIO, enabled: bool, interval: float = PROGRESS_INTERVAL) -> None:
        self.stream = stream
        self.enabled = enabled
        self.in_place = enabled and stream.isatty()
        self.interval = interval
        self._width = 0
        self._last: float | None = None

    def show(self, line: str) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if self._last is not None and now - self._last < self.interval * 0.9:
            return
        self._last = now
        if self.in_place:
            self.stream.write("\r" + line.ljust(self._width))
            self._width = len(line)
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def done(self) -> None:
        """Clear the line drawn in place, so what follows starts on a clean line."""
        if self.enabled and self.in_place and self._width:
            self.stream.write("\r" + " " * self._width + "\r")
            self.stream.flush()
        self._width = 0
        self._last = None
