"""Versions and the rule that picks a winner: a hybrid logical clock, and last-writer-wins.

A version is ``(timestamp, node_id)`` (``client.protocol.Version``). The timestamp is a hybrid logical
clock (HLC): the high 48 bits are wall-clock milliseconds, the low 16 bits a counter that orders
events within one millisecond and carries causality across nodes whose clocks disagree. Every node
observes the versions it receives, so a write that follows a read is always ordered after it, even
when the writer's wall clock is behind.

The highest version wins; a tombstone is an ordinary record whose value is ``None``, so a delete
beats every older write and loses to every newer one. Pure: the wall clock is injected.

Clocks that disagree. An HLC follows the highest timestamp it observes, so one bogus timestamp far
in the future (a client's ``after`` of 2^64-1, a peer whose clock jumped a day ahead) would drag
every node's clock there for good, and every later write would lose to the versions stamped before
it. So a clock may be given a maximum offset (``KV_MAX_CLOCK_OFFSET_MS``, CockroachDB's
``--max-offset``): a timestamp further ahead of this node's own clock than that is refused with
``ClockSkew`` instead of observed.

Workers. A node served by several processes (``KV_WORKERS``) stamps versions in each of them, all
with the node's id, so two workers must never issue the same timestamp: two different writes with one
version would look identical to every replica, and replicas could keep different values for good.
Each worker therefore owns a residue of the logical counter: with ``workers`` processes the low
``worker_bits(workers)`` bits of every timestamp a worker issues are its index. Timestamps stay
64-bit HLC values (the wire encoding does not change) and still order by time first; a worker
gets ``2**(16 - bits)`` stamps per millisecond instead of 65,536. One worker uses no bits: exactly the
single-process clock. ``NodeClock`` is the node's own clock: a wall clock that never
steps back while the process runs, and a steady clock for ages (hints, tombstones) that ignores
the wall clock's jumps either way.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable

from client.protocol import Record, Version

LOGICAL_BITS = 16
LOGICAL_MASK = (1 << LOGICAL_BITS) - 1
MAX_TIMESTAMP = (1 << 64) - 1


def wall_clock_ms() -> int:
    return time.time_ns() // 1_000_000


def monotonic_ms() -> int:
    return time.monotonic_ns() // 1_000_000


class ClockSkew(Exception):
    """A timestamp is further ahead of this node's clock than the maximum clock offset allows; the
    message says by how much. The node answers CLOCK_SKEW."""


class NodeClock:
    """This node's sense of time, in Unix milliseconds, from an injected wall clock and monotonic clock.

    * ``wall_ms``: the wall clock, except that it never steps back while the process runs (an NTP
      step backwards is ridden out on the monotonic clock). The physical part of this node's HLC
      timestamps, and what "too far ahead" is measured against.
    * ``steady_ms``: the wall clock at start plus the monotonic time since, so it does not follow
      the wall clock's jumps in either direction while the process runs. Ages are measured on it
      (a hint's, a tombstone's), so a clock stepped forward by a day expires nothing early.
    """

    def __init__(self, wall: Callable[[], int] = wall_clock_ms, monotonic: Callable[[], int] = monotonic_ms) -> None:
        self._wall = wall
        self._monotonic = monotonic
        self._anchor_wall = wall()
        self._anchor_monotonic = monotonic()

    def steady_ms(self) -> int:
        return self._anchor_wall + self._monotonic() - self._anchor_monotonic

    def wall_ms(self) -> int:
        return max(self._wall(), self.steady_ms())


def worker_bits(workers: int) -> int:
    """Low bits of the logical counter that name the worker: enough for ``workers`` indexes (0 for one)."""
    return (workers - 1).bit_length()


def physical_ms(timestamp: int) -> int:
    """The wall-clock milliseconds part of an HLC timestamp."""
    return timestamp >> LOGICAL_BITS


class HybridLogicalClock:
    """Issues strictly increasing timestamps that never fall behind any timestamp observed.

    ``now_ms`` is the physical clock (Unix ms); ``last`` the timestamp to resume above (the highest
    stored, after a restart). With ``max_offset_ms``, ``observe`` refuses a timestamp whose
    milliseconds are more than that far ahead of ``now_ms()`` (``ClockSkew``); without it (``None``)
    every timestamp is observed. ``worker`` of ``workers``: every timestamp ``now`` issues has
    ``worker`` in its low ``worker_bits(workers)`` bits, so the workers of one node never issue the
    same one (``ValueError`` unless ``0 <= worker < workers``).
    """

    def __init__(
        self,
        now_ms: Callable[[], int] = wall_clock_ms,
        last: int = 0,
        *,
        max_offset_ms: int | None = None,
        worker: int = 0,
        workers: int = 1,
    ) -> None:
        if not 0 <= worker < workers or worker_bits(workers) >= LOGICAL_BITS:
            raise ValueError(f"worker {worker} of {workers}: need 0 <= worker < workers < 2**{LOGICAL_BITS}")
        self._now_ms = now_ms
        self._last = last
        self.max_offset_ms = max_offset_ms
        self._worker = worker
        self._worker_mask = (1 << worker_bits(workers)) - 1

    @property
    def last(self) -> int:
        return self._last

    def physical_now(self) -> int:
        """The physical clock now, in Unix milliseconds (what a PING reply reports)."""
        return self._now_ms()

    def check(self, timestamp: int) -> None:
        """Raise ``ClockSkew`` if ``timestamp`` is further ahead of this clock than the maximum offset."""
        if self.max_offset_ms is None:
            return
        ahead_ms = physical_ms(timestamp) - self._now_ms()
        if ahead_ms > self.max_offset_ms:
            raise ClockSkew(
                f"timestamp {timestamp} is {ahead_ms / 1000:.3f} s ahead of this node's clock; "
                f"the most allowed is KV_MAX_CLOCK_OFFSET_MS={self.max_offset_ms}"
            )

    def now(self) -> int:
        """A timestamp greater than every one issued or observed before."""
        physical = self._now_ms() << LOGICAL_BITS
        # When the wall clock has not passed the last timestamp, the counter moves instead; if the
        # counter overflows it carries into the millisecond part, which is still monotonic. At the
        # very top of the 64-bit range (only a peer's bogus timestamp can get us there) it saturates
        # rather than produce a version that cannot be encoded.
        candidate = physical if physical > self._last else self._last + 1
        mask = self._worker_mask
        if mask:  # the first value from here on whose low bits are this worker's index
            stamped = (candidate & ~mask) | self._worker
            candidate = stamped if stamped >= candidate else stamped + mask + 1
        self._last = min(candidate, MAX_TIMESTAMP)
        return self._last

    def observe(self, timestamp: int) -> None:
        """Fold in a timestamp seen from another node, so later ``now()`` values exceed it; raise
        ``ClockSkew`` (observing nothing) if it is too far ahead (``check``)."""
        if timestamp > self._last:
            self.check(timestamp)
            self._last = min(timestamp, MAX_TIMESTAMP)

    def observe_within_bound(self, timestamp: int) -> None:
        """``observe``, except that a timestamp too far ahead is ignored rather than refused: for
        versions a read returns, which must not fail the read."""
        with contextlib.suppress(ClockSkew):
            self.observe(timestamp)


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
    "ClockSkew",
    "HybridLogicalClock",
    "NodeClock",
    "Record",
    "Version",
    "monotonic_ms",
    "newest",
    "physical_ms",
    "supersedes",
    "wall_clock_ms",
    "worker_bits",
]
