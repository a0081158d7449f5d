"""Whether this process has just been stalled: stopped (``kill -STOP``), swapped out, or its event
loop blocked, so that what it reads now may have waited in its socket buffers all that while.

A timer ticks every ``TICK`` seconds and notes the time. After a stall, the event loop runs the
sockets' callbacks before the timers' (libev queues I/O first), so a session reading the requests
that piled up during the stall sees the last tick long ago: ``stalled_for`` is then the length of
the stall. That is when a client write must not be applied: its client gave up on this node long
ago (``client.client.STALLED_GIVE_UP``) and may since have written the key again elsewhere; stamped
now, the old write would win over the newer one. Replica writes and reads are safe to serve late:
a replica write carries the version its coordinator stamped, and a late read reply is only dropped.
"""

from __future__ import annotations

import time

TICK = 0.1
"""Seconds between ticks: how finely a stall is noticed, ten cheap wake-ups a second."""
STALE_AFTER = 0.5
"""Seconds of stall after which client writes read in its wake are refused: below the client's
1 s give-up, above any pause a busy event loop takes between turns."""


class StallWatch:
    """``tick`` on a timer (``service.periodic``); ``stalled_for`` tells how long ago the last tick
    was, beyond the tick interval."""

    def __init__(self) -> None:
        self._last = time.monotonic()

    def tick(self) -> None:
        self._last = time.monotonic()

    def stalled_for(self) -> float:
        """Seconds the timers have been held up, 0 when they run on time."""
        return max(0.0, time.monotonic() - self._last - TICK)
