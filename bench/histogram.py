"""A latency histogram with fixed memory and bounded relative error (log-linear, HDR-style buckets).

Values are kept in integer nanoseconds. Below ``LINEAR_LIMIT`` every nanosecond has its own bucket;
above it each power of two is split into ``SUB_BUCKETS`` equal buckets, so a bucket is never wider
than 1/128 of the values in it. A percentile is reported as the middle of its bucket, clamped to the
observed minimum and maximum, so it is within 0.4% of the exact nearest-rank percentile (and exact
when that is the minimum, the maximum, or any value below 256 ns). Values above ``HIGHEST_NS`` (about 68.7 s)
share the last bucket; the maximum is still kept exactly.

Pure: no clocks, no I/O. ``to_dict``/``from_dict`` give a plain, JSON-ready form (sparse bucket
counts) so worker processes can send their histograms to a parent that merges them.
"""

from __future__ import annotations

import math
from typing import Any

SUB_BUCKET_BITS = 7
SUB_BUCKETS = 1 << SUB_BUCKET_BITS
"""Buckets per power of two: 128 makes a bucket at most 1/128 (0.78%) of its values wide, so its
middle is within 0.4% of any value in it: comfortably inside the 1% asked of a latency report."""
LINEAR_LIMIT = 2 * SUB_BUCKETS
"""Below 256 ns buckets are 1 ns wide: log-linear spacing would make them narrower than 1 ns."""
HIGHEST_NS = (1 << 36) - 1
"""About 68.7 s: the first power of two above a minute, the longest latency worth telling apart."""

_TOP_SHIFT = HIGHEST_NS.bit_length() - (SUB_BUCKET_BITS + 1)
BUCKETS = LINEAR_LIMIT + _TOP_SHIFT * SUB_BUCKETS
"""3,840 counters: the whole memory of a histogram, whatever it records."""

FORMAT_VERSION = 1
"""Stamped into ``to_dict`` so a parent refuses a dict from an incompatible layout."""


def bucket_index(ns: int) -> int:
    """The bucket holding ``ns`` (clamped to ``0..HIGHEST_NS``)."""
    if ns < LINEAR_LIMIT:
        return max(ns, 0)
    ns = min(ns, HIGHEST_NS)
    shift = ns.bit_length() - (SUB_BUCKET_BITS + 1)  # leaves 8 significant bits: 128..255
    return LINEAR_LIMIT + (shift - 1) * SUB_BUCKETS + (ns >> shift) - SUB_BUCKETS


def bucket_bounds(index: int) -> tuple[int, int]:
    """The lowest and highest nanosecond value that fall in bucket ``index``."""
    if not 0 <= index < BUCKETS:
        raise ValueError(f"bucket index {index} outside 0..{BUCKETS - 1}")
    if index < LINEAR_LIMIT:
        return index, index
    shift = (index - LINEAR_LIMIT) // SUB_BUCKETS + 1
    mantissa = (index - LINEAR_LIMIT) % SUB_BUCKETS + SUB_BUCKETS
    low = mantissa << shift
    return low, low + (1 << shift) - 1


def nearest_rank(p: float, count: int) -> int:
    """The 1-based rank of the ``p``-th percentile of ``count`` values: ceil(p% of count), at least 1.

    ``p * count / 100`` is rounded to 6 decimals first, so float noise (99.9 / 100 * 100000 is
    99900.00000000001) cannot push the rank one past an exact product.
    """
    return max(1, math.ceil(round(p * count / 100, 6)))


class Histogram:
    """Counts of latencies by bucket, plus the exact count, sum, minimum and maximum."""

    __slots__ = ("_counts", "count", "max_ns", "min_ns", "total_ns")

    def __init__(self) -> None:
        self._counts = [0] * BUCKETS
        self.count = 0
        self.total_ns = 0
        self.min_ns = 0
        self.max_ns = 0

    def record(self, seconds: float) -> None:
        """Add one latency given in seconds. Raises ``ValueError`` for a negative or non-finite one."""
        if not math.isfinite(seconds) or seconds < 0:
            raise ValueError(f"latency must be a finite number of seconds >= 0, not {seconds!r}")
        self.record_ns(round(seconds * 1e9))

    def record_ns(self, ns: int) -> None:
        """Add one latency given in integer nanoseconds (the hot path: no float conversion)."""
        if ns < 0:
            raise ValueError(f"latency must be >= 0 ns, not {ns}")
        self._counts[bucket_index(ns)] += 1
        if self.count == 0 or ns < self.min_ns:
            self.min_ns = ns
        self.max_ns = max(self.max_ns, ns)
        self.count += 1
        self.total_ns += ns

    def merge(self, other: Histogram) -> None:
        """Add every value ``other`` recorded, as if they had been recorded here."""
        if other.count == 0:
            return
        counts = self._counts
        for index, n in enumerate(other._counts):
            if n:
                counts[index] += n
        self.min_ns = other.min_ns if self.count == 0 else min(self.min_ns, other.min_ns)
        self.max_ns = max(self.max_ns, other.max_ns)
        self.count += other.count
        self.total_ns += other.total_ns

    def percentile_ns(self, p: float) -> float:
        """The nearest-rank ``p``-th percentile (0 < p <= 100) in nanoseconds; 0.0 when empty."""
        if not 0 < p <= 100:
            raise ValueError(f"percentile must be in (0, 100], not {p!r}")
        if self.count == 0:
            return 0.0
        rank = nearest_rank(p, self.count)
        if rank == self.count:  # the largest value is known exactly: no need to approximate it
            return float(self.max_ns)
        if rank == 1:
            return float(self.min_ns)
        seen = 0
        for index, n in enumerate(self._counts):
            seen += n
            if seen >= rank:
                low, high = bucket_bounds(index)
                middle = (low + high) / 2
                return float(min(max(middle, self.min_ns), self.max_ns))
        return float(self.max_ns)  # unreachable while the counts add up to ``count``

    def percentile(self, p: float) -> float:
        """The nearest-rank ``p``-th percentile in seconds (e.g. ``percentile(99.9)``)."""
        return self.percentile_ns(p) / 1e9

    @property
    def min(self) -> float:
        """Smallest value recorded, in seconds (0.0 when empty)."""
        return self.min_ns / 1e9

    @property
    def max(self) -> float:
        """Largest value recorded, in seconds, exact even past ``HIGHEST_NS`` (0.0 when empty)."""
        return self.max_ns / 1e9

    @property
    def mean(self) -> float:
        """Mean of the recorded values in seconds, from the exact sum (0.0 when empty)."""
        return self.total_ns / self.count / 1e9 if self.count else 0.0

    def to_dict(self) -> dict[str, Any]:
        """A plain, JSON-ready form: non-empty buckets as ``[index, count]`` pairs."""
        return {
            "format": FORMAT_VERSION,
            "sub_buckets": SUB_BUCKETS,
            "count": self.count,
            "total_ns": self.total_ns,
            "min_ns": self.min_ns,
            "max_ns": self.max_ns,
            "buckets": [[index, n] for index, n in enumerate(self._counts) if n],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Histogram:
        """The histogram ``to_dict`` described. Raises ``ValueError`` for a dict it did not make."""
        if data.get("format") != FORMAT_VERSION or data.get("sub_buckets") != SUB_BUCKETS:
            raise ValueError("histogram dict has an unknown format or bucket layout")
        histogram = cls()
        for index, n in data["buckets"]:
            if not 0 <= index < BUCKETS or n < 0:
                raise ValueError(f"bad histogram bucket [{index}, {n}]")
            histogram._counts[index] += n
        histogram.count = int(data["count"])
        histogram.total_ns = int(data["total_ns"])
        histogram.min_ns = int(data["min_ns"])
        histogram.max_ns = int(data["max_ns"])
        if sum(histogram._counts) != histogram.count:
            raise ValueError("histogram dict's bucket counts do not add up to its count")
        return histogram

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Histogram):
            return NotImplemented
        return (self._counts, self.count, self.total_ns, self.min_ns, self.max_ns) == (
            other._counts,
            other.count,
            other.total_ns,
            other.min_ns,
            other.max_ns,
        )

    __hash__ = None  # type: ignore[assignment]  # mutable

    def __repr__(self) -> str:
        if not self.count:
            return "Histogram(empty)"
        return (
            f"Histogram(count={self.count}, p50={self.percentile(50) * 1e3:.3f} ms, "
            f"p99={self.percentile(99) * 1e3:.3f} ms, max={self.max * 1e3:.3f} ms)"
        )
