"""Versions and the rule that picks a winner: a hybrid logical clock, and last-writer-wins.

A version is ``(timestamp, node_id)`` (``client.protocol.Version``). The timestamp is a hybrid logical
clock (HLC): the high 48 bits are wall-clock milliseconds, the low 16 bits a counter that orders
events within one millisecond and carries causality across nodes whose clocks disagree. Every node
observes the versions it receives, so a write that follows a read is always ordered after it, even
when the writer's wall clock is behind.

The highest version wins; a tombstone is an ordinary record whose value is ``None``, so a delete
beats every older write and loses to every newer one. Pure: the wall clock is injected.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

from client.protocol import Record, Version

LOGICAL_BITS = 16
LOGICAL_MASK = (1 << LOGICAL_BITS) - 1
MAX_TIMESTAMP = (1 << 64) - 1


def wall_clock_ms() -> int:
    return time.time_ns() // 1_000_000


def physical_ms(timestamp: int) -> int:
    """The wall-clock milliseconds part of an HLC timestamp."""
    return timestamp >> LOGICAL_BITS


class HybridLogicalClock:
    """Issues strictly increasing timestamps that never fall behind any timestamp observed."""

    def __init__(self, now_ms: Callable[[], int] = wall_clock_ms, last: int = 0) -> None:
        self._now_ms = now_ms
        self._last = last

    @property
    def last(self) -> int:
        return self._last

    def now(self) -> int:
        """A timestamp greater than every one issued or observed before."""
        physical = self._now_ms() << LOGICAL_BITS
        # When the wall clock has not passed the last timestamp, the counter moves instead; if the
        # counter overflows it carries into the millisecond part, which is still monotonic. At the
        # very top of the 64-bit range (only a peer's bogus timestamp can get us there) it saturates
        # rather than produce a version that cannot be encoded.
        self._last = physical if physical > self._last else min(self._last + 1, MAX_TIMESTAMP)
        return self._last

    def observe(self, timestamp: int) -> None:
        """Fold in a timestamp seen from another node, so later ``now()`` values exceed it."""
        if timestamp > self._last:
            self._last = min(timestamp, MAX_TIMESTAMP)


def supersedes(candidate: Record, current: Record | None) -> bool:
    """Whether ``candidate`` should replace ``current``: only a strictly higher version does."""
    return current is None or candidate.version > current.version


def newest(records: Iterable[Record | None]) -> Record | None:
    """The record with the highest version, or ``None`` if there is none."""
    best: Record | None = None
    for record in records:
        if record is not None and (best is None or record.version > best.version):
            best = record
    return best


__all__ = [
    "HybridLogicalClock",
    "Record",
    "Version",
    "newest",
    "physical_ms",
    "supersedes",
    "wall_clock_ms",
]
