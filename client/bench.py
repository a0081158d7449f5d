"""``kv bench``: a closed-loop load generator for the cluster and, with the same code, for Redis.

What one "connection" is. A bench connection is one logical client that keeps ``--pipeline``
requests in flight: it runs that many greenlets ("lanes"), each sending one request and waiting for
its reply before sending the next. Against Redis a connection is one socket. Against our store it is
a small token-aware client: one multiplexed ``client.connection.Connection`` to each node, and every
request goes to the primary replica of its key (the first node of the key's preference list, from
``client.ring``), as ``Client`` routes it, so the cluster is measured as users drive it. With a
single-node cluster (the like-for-like comparison with one Redis) that is exactly one socket, too.
There is no failover: a request for a node that is down counts as an error, and the connection to
it is re-dialled at most once a second. ``Client`` itself is used only to discover the topology;
its per-request failover and routing bookkeeping would be work that the Redis side does not do.

Phases. Warm-up (``--warmup`` seconds; counted, then discarded), measurement (``--duration``
seconds, or until ``--ops`` operations), then a read-back check. Only operations *started* during
measurement count; those still in flight at its end finish and are counted. Latency is from just
before a request is written to when its reply is in hand, for successful operations only (a miss
is a success); errors are counted by kind. The generator is closed-loop: a slow reply delays the
next request of its lane, so a stall is measured once, not for every request it held back
("coordinated omission"). Compare targets at equal settings rather than reading the latencies as
those of an open-loop arrival rate.

Read-back check. Every key is written (PUT or DELETE) by exactly one connection: a key drawn for a
write is moved, within its block of ``total connections`` consecutive keys, to the one this
connection owns. Reads use the drawn key. Each connection's ``WriteLedger`` then knows each key's
final state exactly: a write that had no other write to its key in flight on its connection, and
was acknowledged, decides the key (our coordinator stamps versions in arrival order, and Redis runs
a connection's commands in order). Keys whose last writes overlapped are skipped until a later
write settles them; keys with any failed or timed-out write are skipped for good, since whether
that write landed is unknown. After measurement each such key is read back (from our store with
R = N, so the newest replica wins) and compared with the expected value, or expected absence.

Processes. One Python process drives roughly 10-30 thousand operations a second, which is less
than Redis serves on one core. ``--processes P`` runs P worker processes (start method "spawn":
gevent's hub must not be forked), each with about ``connections / P`` connections; they connect,
start together, and send back their histograms and counts, which are merged.

Progress. On a terminal (or with ``--progress``) a status line on stderr, updated about once a
second: rewritten in place with ``\\r`` on a terminal, one line a second otherwise (so a log stays
readable). Quiet by default when stderr is not a terminal. The report goes to stdout; with
``--json -`` stdout carries the JSON only and the text report goes to stderr.

Every loop is bounded by count and time, and traffic goes only to the addresses given (for the
cluster: to its members, reached through the seed addresses where those name them).
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import multiprocessing
import os
import platform
import queue
import random
import signal
import socket as stdlib_socket
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol, TextIO

import gevent
from gevent import socket
from gevent.event import AsyncResult

from client import protocol, resp
from client.client import Client, split_addresses
from client.connection import Connection, FrameWriter, parse_address
from client.errors import KVError
from client.histogram import Histogram
from client.protocol import Status
from client.ring import Ring

# --- settings and why they have their values -------------------------------------------------------

OPS = ("get", "put", "delete")
PERCENTILES = (50.0, 90.0, 99.0, 99.9)
KEY_PREFIX = b"bench:"
KEY_DIGITS = 10
"""Zero-padded width of key numbers: every key has the same length, whatever ``--keys`` is."""

DEFAULT_TIMEOUT = 5.0
"""Seconds a request may take before it counts as a TIMEOUT error; as ``Client``: above a node's own
2 s request timeout, so the node's answer arrives first."""
CONNECT_TIMEOUT = 2.0
"""Seconds to open a connection (and, for our store, finish HELLO): generous, as a loaded host's
accept queue can be slow, and it is paid only at start and on a re-dial."""
RECONNECT_INTERVAL = 1.0
"""A lost connection is re-dialled at most once a second, so a dead node costs one connect a second."""
ERROR_PAUSE = 0.05
"""A lane pauses this long after an UNREACHABLE error, so a dead node does not make it spin."""
OPS_MODE_TIME_CAP = 600.0
"""With ``--ops`` and no ``--duration``, measurement still ends after ten minutes."""
MAX_RATE_PER_LANE = 1_000_000
"""A lane's count bound is (warm-up + duration) x this: far above the tens of thousands of ops a
second one Python lane manages, so time always ends a run first, yet no loop is without a bound."""
CHECK_TIME_LIMIT = 120.0
"""The read-back check stops after this long; keys not read by then count as unchecked (a failure)."""
STARTUP_TIMEOUT = 60.0
"""Worker processes must import, connect and report ready within this."""
RESULT_SLACK = 30.0
"""Beyond warm-up + measurement + check, how long to wait for a worker's result before giving up."""
LANE_DRAIN_SLACK = CONNECT_TIMEOUT + ERROR_PAUSE + 1.0
"""Beyond --timeout, how long lanes get to finish their last request when measurement ends: enough
for a re-dial and an error pause, so a lane is not normally killed mid-request."""
PROGRESS_INTERVAL = 1.0
"""Seconds between status lines: often enough to watch, rarely enough to cost nothing."""
MIN_PHASE_AGE = 0.5
"""A phase's first status line waits this long, so its rate is not computed from a handful of ops."""
PUBLISH_INTERVAL = 0.2
"""How often a worker process copies its counters to the parent's progress array."""
COUNTER_SLOTS = 4
"""Per worker process in that array: phase, ops, errors, seconds in the phase."""
MISMATCH_EXAMPLES = 5
ERROR_EXAMPLES = 5
"""Report this many examples of mismatches and errors: enough to diagnose, short enough to read."""
MAX_THETA = 10.0
"""Zipf exponents above this put all but a sliver of the load on key 0: nothing left to measure."""
MAX_REJECTIONS = 64
"""Tries of the Zipf rejection step before taking the last candidate. A try is accepted with
probability above 0.98 (measured for n from 2 to 1e9 and theta from 0.01 to 10), so even 64
failures in a row at 1/2 each (below 1e-19) would never happen."""

EXIT_OK = 0
EXIT_CHECK_FAILED = 1
EXIT_ERROR = 2

PHASE_CONNECTING, PHASE_WARMUP, PHASE_MEASURE, PHASE_CHECK, PHASE_DONE = range(5)
PHASE_NAMES = {
    PHASE_CONNECTING: "connecting",
    PHASE_WARMUP: "warm-up",
    PHASE_MEASURE: "measuring",
    PHASE_CHECK: "read-back check",
    PHASE_DONE: "done",
}


class BenchError(Exception):
    """The benchmark cannot run (bad option, unreachable target); the message says why."""


# --- pure: operation mix -------------------------------------------------------------------------


@dataclass(frozen=True)
class Mix:
    """Fractions of operations that are GET, PUT and DELETE; they add up to 1."""

    get: float
    put: float
    delete: float

    def choose(self, u: float) -> str:
        """The operation for a uniform random ``u`` in [0, 1)."""
        if u < self.get:
            return "get"
        if u < self.get + self.put:
            return "put"
        return "delete" if self.delete > 0 else ("put" if self.put > 0 else "get")

    @property
    def writes(self) -> bool:
        return self.put > 0 or self.delete > 0

    def describe(self) -> str:
        """As ``parse_mix`` reads it, in percent: ``get=50,put=50,delete=0``."""
        return ",".join(f"{op}={getattr(self, op) * 100:.4g}" for op in OPS)


def parse_mix(text: str) -> Mix:
    """``"get=50,put=50,delete=0"`` (ratios, any scale; missing ops are 0) as a ``Mix``."""
    weights = dict.fromkeys(OPS, 0.0)
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        name, sep, number = item.partition("=")
        name = name.strip().lower()
        if not sep or name not in weights:
            raise ValueError(f"{item!r} is not op=ratio with op one of {', '.join(OPS)}")
        try:
            weight = float(number)
        except ValueError:
            raise ValueError(f"ratio {number.strip()!r} of {name} is not a number") from None
        if not math.isfinite(weight) or weight < 0:
            raise ValueError(f"ratio of {name} must be a finite number >= 0")
        weights[name] = weight
    total = sum(weights.values())
    if total <= 0:
        raise ValueError("the mix needs at least one op with a ratio above 0")
    return Mix(*(weights[op] / total for op in OPS))


# --- pure: key choice ------------------------------------------------------------------------------


class Zipfian:
    """Zipf-distributed ranks 0..n-1 (0 the most popular): P(rank k) = (k+1) ** -theta / H(n, theta).

    Exact, in constant time and memory, by rejection-inversion (Hormann and Derflinger, "Rejection-
    inversion to generate variates from monotone discrete distributions", 1996; the method of Apache
    Commons' Zipf sampler). YCSB's faster formula (Gray et al., 1994) over-weights ranks 2-4 by up to
    a fifth, so the hottest keys after the first two would be hotter than the skew asked for.
    Works for any exponent ``theta`` > 0, at 1 too; theta = 0 is the uniform distribution.
    """

    def __init__(self, n: int, theta: float) -> None:
        if n < 1:
            raise ValueError("a zipfian distribution needs at least one item")
        if not 0 <= theta <= MAX_THETA:
            raise ValueError(f"zipfian theta must be in [0, {MAX_THETA:g}], not {theta}")
        self.n = n
        self.theta = theta
        self._h_integral_x1 = self._h_integral(1.5) - 1.0
        self._h_integral_n = self._h_integral(n + 0.5)
        self._s = 2 - self._h_integral_inverse(self._h_integral(2.5) - self._h(2))

    def index(self, random: Callable[[], float]) -> int:
        """A rank, drawing uniform numbers in [0, 1) from ``random`` (1.02 of them on average)."""
        if self.n == 1:
            return 0
        if self.theta == 0:
            return min(int(random() * self.n), self.n - 1)
        k = 1
        for _ in range(MAX_REJECTIONS):
            u = self._h_integral_n + random() * (self._h_integral_x1 - self._h_integral_n)
            x = self._h_integral_inverse(u)
            k = self.n if x >= self.n else max(int(x + 0.5), 1)
            if k - x <= self._s or u >= self._h_integral(k + 0.5) - self._h(k):
                break
        return k - 1

    def _h(self, x: float) -> float:
        return math.exp(-self.theta * math.log(x))

    def _h_integral(self, x: float) -> float:
        """The integral of h from 1 to x, defined at theta = 1 too (then it is log x)."""
        log_x = math.log(x)
        return _expm1_over_x((1 - self.theta) * log_x) * log_x

    def _h_integral_inverse(self, x: float) -> float:
        t = x * (1 - self.theta)
        if t <= -1.0:  # the limit, which rounding can reach or step past: log1p(t) / t * x -> +-inf
            return math.inf if x > 0 else 0.0
        try:
            return math.exp(_log1p_over_x(t) * x)
        except OverflowError:
            return math.inf


def _log1p_over_x(x: float) -> float:
    """log(1 + x) / x, accurate near 0 (series) where the plain formula cancels."""
    if abs(x) > 1e-8:
        return math.log1p(x) / x
    return 1 - x * (0.5 - x * (1 / 3 - 0.25 * x))


def _expm1_over_x(x: float) -> float:
    """(exp(x) - 1) / x, accurate near 0 (series) where the plain formula cancels."""
    if abs(x) > 1e-8:
        return math.expm1(x) / x
    return 1 + x * 0.5 * (1 + x / 3 * (1 + 0.25 * x))


class KeyChooser:
    """Key numbers 0..keys-1, uniform or zipfian, from a source of uniform random numbers."""

    def __init__(self, keys: int, distribution: str, theta: float) -> None:
        if keys < 1:
            raise ValueError("--keys must be at least 1")
        if distribution not in ("uniform", "zipfian"):
            raise ValueError(f"unknown distribution {distribution!r}")
        self._zipfian = Zipfian(keys, theta if distribution == "zipfian" else 0.0)

    def index(self, random: Callable[[], float]) -> int:
        return self._zipfian.index(random)


def owned_index(index: int, connection: int, connections: int, keys: int) -> int:
    """The key of ``connection``'s in ``index``'s block of ``connections`` keys (its writes go there).

    Key k belongs to connection ``k % connections``. Requires ``keys >= connections``.
    """
    owned = index - index % connections + connection
    return owned if owned < keys else owned - connections


def key_name(index: int) -> bytes:
    return KEY_PREFIX + b"%0*d" % (KEY_DIGITS, index)


def make_value(connection: int, sequence: int, size: int) -> bytes:
    """The value of ``connection``'s write number ``sequence``: unique while ``size`` fits the tag."""
    tag = b"%d:%d:" % (connection, sequence)
    return (tag + b"." * max(size - len(tag), 0))[:size]


# --- pure: the read-back ledger --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class WriteToken:
    key: int
    expected: int | None  # the write's sequence number, or None for a DELETE


@dataclass
class WriteLedger:
    """Which write decides each key's final value, for the keys where that is known exactly.

    A write decides its key if it was acknowledged and no other write to the key was in flight at
    any moment of its flight. A write that overlapped another leaves the key unknown until a later,
    non-overlapping write; a failed write makes the key unknown for good.
    """

    expected: dict[int, int | None] = field(default_factory=dict)
    uncertain: set[int] = field(default_factory=set)
    written: set[int] = field(default_factory=set)
    _pending: Counter[int] = field(default_factory=Counter)
    _overlapped: set[int] = field(default_factory=set)

    def begin(self, key: int, expected: int | None) -> WriteToken:
        """Note a write about to be sent: ``expected`` is its sequence number, or None for DELETE."""
        if self._pending[key]:
            self._overlapped.add(key)
        self._pending[key] += 1
        self.written.add(key)
        return WriteToken(key, expected)

    def finish(self, token: WriteToken, ok: bool) -> None:
        key = token.key
        self._pending[key] -= 1
        if not ok:
            self.uncertain.add(key)
        elif key not in self._overlapped:
            self.expected[key] = token.expected
        if not self._pending[key]:
            del self._pending[key]
            if key in self._overlapped:
                self._overlapped.discard(key)
                self.expected.pop(key, None)

    def checkable(self) -> dict[int, int | None]:
        """Each key whose final state is known: its last sequence number, or None if deleted.

        A key with a write still pending (its lane was ended mid-request) is not: that write may land.
        """
        return {
            key: value for key, value in self.expected.items() if key not in self.uncertain and key not in self._pending
        }

    @property
    def skipped(self) -> int:
        """Keys written but not checkable: a failed write, or overlapping last writes."""
        return len(self.written) - len(self.checkable())


# --- pure: statistics and the report ---------------------------------------------------------------


@dataclass
class Stats:
    """What one process measured; mergeable, and plain-dict serialisable for the trip home."""

    histograms: dict[str, Histogram] = field(default_factory=lambda: {op: Histogram() for op in OPS})
    ops: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    error_examples: list[str] = field(default_factory=list)
    hits: int = 0
    misses: int = 0
    warmup_ops: int = 0
    elapsed: float = 0.0
    ended_by: str = "duration"
    check: dict[str, Any] = field(default_factory=dict)

    def error(self, kind: str, message: str) -> None:
        self.errors[kind] += 1
        if len(self.error_examples) < ERROR_EXAMPLES:
            self.error_examples.append(f"{kind}: {message}")

    @property
    def total_ops(self) -> int:
        return sum(self.ops.values())

    def overall(self) -> Histogram:
        merged = Histogram()
        for histogram in self.histograms.values():
            merged.merge(histogram)
        return merged

    def merge(self, other: Stats) -> None:
        for op in OPS:
            self.histograms[op].merge(other.histograms[op])
        self.ops.update(other.ops)
        self.errors.update(other.errors)
        room = ERROR_EXAMPLES - len(self.error_examples)
        self.error_examples += other.error_examples[: max(room, 0)]
        self.hits += other.hits
        self.misses += other.misses
        self.warmup_ops += other.warmup_ops
        self.elapsed = max(self.elapsed, other.elapsed)  # processes ran side by side
        if other.ended_by != "duration":
            self.ended_by = other.ended_by
        self.check = merge_checks(self.check, other.check) if self.check else dict(other.check)

    def to_dict(self) -> dict[str, Any]:
        return {
            "histograms": {op: histogram.to_dict() for op, histogram in self.histograms.items()},
            "ops": dict(self.ops),
            "errors": dict(self.errors),
            "error_examples": list(self.error_examples),
            "hits": self.hits,
            "misses": self.misses,
            "warmup_ops": self.warmup_ops,
            "elapsed": self.elapsed,
            "ended_by": self.ended_by,
            "check": dict(self.check),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Stats:
        fields = dict(data)
        fields["histograms"] = {op: Histogram.from_dict(h) for op, h in data["histograms"].items()}
        fields["ops"] = Counter(data["ops"])
        fields["errors"] = Counter(data["errors"])
        return cls(**fields)


def empty_check() -> dict[str, Any]:
    return {
        "keys_checked": 0,
        "expected_absent": 0,
        "mismatches": 0,
        "read_errors": 0,
        "unchecked": 0,
        "skipped_uncertain": 0,
        "mismatch_examples": [],
    }


def merge_checks(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    merged = {name: a.get(name, 0) + b.get(name, 0) for name in empty_check() if name != "mismatch_examples"}
    merged["mismatch_examples"] = (a.get("mismatch_examples", []) + b.get("mismatch_examples", []))[:MISMATCH_EXAMPLES]
    return merged


def check_passed(check: dict[str, Any]) -> bool:
    return check["mismatches"] == 0 and check["read_errors"] == 0 and check["unchecked"] == 0


def ratio(ours: float | None, theirs: float | None) -> float | None:
    """``ours / theirs``, or None when either is missing or ``theirs`` is zero."""
    if ours is None or theirs is None or theirs == 0:
        return None
    return ours / theirs


def latency_summary(histogram: Histogram) -> dict[str, float]:
    """Percentiles, min, max and mean of ``histogram`` in milliseconds."""
    summary = {f"p{p:g}": histogram.percentile(p) * 1e3 for p in PERCENTILES}
    summary.update(min=histogram.min * 1e3, mean=histogram.mean * 1e3, max=histogram.max * 1e3)
    return summary


def summarize_target(name: str, kind: str, address: str, stats: Stats) -> dict[str, Any]:
    """One target's section of the report."""
    overall = stats.overall()
    ops = stats.total_ops
    check = {**empty_check(), **stats.check}
    return {
        "name": name,
        "kind": kind,
        "address": address,
        "ops": ops,
        "ops_per_sec": ops / stats.elapsed if stats.elapsed > 0 else 0.0,
        "elapsed_s": stats.elapsed,
        "ended_by": stats.ended_by,
        "warmup_ops": stats.warmup_ops,
        "errors": {"total": sum(stats.errors.values()), "by_kind": dict(sorted(stats.errors.items()))},
        "error_examples": stats.error_examples,
        "latency_ms": latency_summary(overall),
        "by_op": {
            op: {"ops": stats.ops[op], "latency_ms": latency_summary(stats.histograms[op])}
            for op in OPS
            if stats.ops[op] or stats.histograms[op].count
        },
        "gets": {"hits": stats.hits, "misses": stats.misses},
        "check": {**check, "passed": check_passed(check)},
        "histogram": overall.to_dict(),
    }


def compare(targets: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """Ours / Redis for throughput and p99 latency, when both were measured."""
    by_kind = {target["kind"]: target for target in targets}
    ours, redis = by_kind.get("cluster"), by_kind.get("redis")
    if ours is None or redis is None:
        return None
    return {
        "throughput_ratio": ratio(ours["ops_per_sec"], redis["ops_per_sec"]),
        "p99_ratio": ratio(ours["latency_ms"]["p99"], redis["latency_ms"]["p99"]),
        "p50_ratio": ratio(ours["latency_ms"]["p50"], redis["latency_ms"]["p50"]),
    }


def _ms(value: float) -> str:
    return f"{value:.3f}" if value < 100 else f"{value:.1f}"


def _times(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}x"


def format_config(config: dict[str, Any]) -> list[str]:
    host = config["host"]
    run = (
        f"duration={config['duration']:g}s"
        if config["ops"] is None
        else f"ops={config['ops']} (cap {config['duration']:g}s)"
    )
    quorum = f"r={config['r'] or 'node default'} w={config['w'] or 'node default'}"
    distribution = config["distribution"]
    if distribution == "zipfian":
        distribution += f"(theta={config['zipf_theta']:g})"
    return [
        f"host: {host['hostname']}, {host['cpu_count']} CPUs, {host['platform']}, Python {host['python']}",
        f"run: {run} warmup={config['warmup']:g}s connections={config['connections']} "
        f"pipeline={config['pipeline']} processes={config['processes']} timeout={config['timeout']:g}s "
        f"seed={config['seed']}",
        f"load: keys={config['keys']} distribution={distribution} value-size={config['value_size']} "
        f"mix={config['mix']} {quorum}",
    ]


def format_target(target: dict[str, Any]) -> list[str]:
    latency = target["latency_ms"]
    errors = target["errors"]
    check = target["check"]
    label = "kv cluster" if target["kind"] == "cluster" else "redis"
    lines = [
        f"{label} {target['address']}",
        f"  throughput  {target['ops_per_sec']:,.0f} ops/s  ({target['ops']:,} ops in {target['elapsed_s']:.2f} s,"
        f" ended by {target['ended_by']}; warm-up {target['warmup_ops']:,} ops discarded)",
        "  latency ms  "
        + "  ".join(f"{name} {_ms(latency[name])}" for name in ("p50", "p90", "p99", "p99.9", "max"))
        + f"  (mean {_ms(latency['mean'])})",
    ]
    for op, data in target["by_op"].items():
        op_latency = data["latency_ms"]
        lines.append(
            f"    {op:<6}    {data['ops']:,} ops  "
            + "  ".join(f"{name} {_ms(op_latency[name])}" for name in ("p50", "p99", "max"))
        )
    by_kind = ", ".join(f"{kind} {count:,}" for kind, count in errors["by_kind"].items())
    lines.append(f"  errors      {errors['total']:,}" + (f" ({by_kind})" if by_kind else ""))
    for example in target["error_examples"]:
        lines.append(f"    e.g. {example}")
    gets = target["gets"]
    if gets["hits"] or gets["misses"]:
        lines.append(f"  gets        {gets['hits']:,} hits, {gets['misses']:,} misses")
    verdict = "PASSED" if check["passed"] else "FAILED"
    lines.append(
        f"  read-back   {verdict}: {check['keys_checked']:,} keys checked "
        f"({check['expected_absent']:,} expected deleted), {check['mismatches']:,} mismatches, "
        f"{check['read_errors']:,} read errors, {check['unchecked']:,} unchecked, "
        f"{check['skipped_uncertain']:,} skipped as uncertain"
    )
    for example in check["mismatch_examples"]:
        lines.append(f"    mismatch: {example}")
    return lines


def format_report(report: dict[str, Any]) -> str:
    """The human-readable report: configuration, each target, and the comparison."""
    lines = [f"kv bench report ({report['started_at']})", *format_config(report["config"]), ""]
    for target in report["targets"]:
        lines += [*format_target(target), ""]
    comparison = report.get("comparison")
    if comparison:
        lines.append(
            f"kv cluster / redis: throughput {_times(comparison['throughput_ratio'])}, "
            f"p99 latency {_times(comparison['p99_ratio'])}, p50 latency {_times(comparison['p50_ratio'])}"
        )
    return "\n".join(lines).rstrip() + "\n"


def progress_line(label: str, phase: int, *, elapsed: float, planned: float, ops: int, errors: int) -> str:
    """The live status: ``elapsed``, ``ops`` and ``errors`` are those of the current phase so far;
    ``planned`` is the phase's length in seconds, or 0 when it has none (the read-back check)."""
    rate = ops / elapsed if elapsed > 0 else 0.0
    clock = f"{elapsed:.1f}/{planned:g}s" if planned else f"{elapsed:.1f}s"
    return f"{label}: {PHASE_NAMES[phase]} {clock}  {ops:,} ops  {rate:,.0f} ops/s  {errors:,} errors"


def combine_progress(rows: Sequence[Sequence[float]]) -> tuple[int, float, int, int]:
    """Workers' (phase, ops, errors, seconds in phase) as one status: the phase the slowest worker
    is in, with the ops and errors of the workers in it and the longest time any spent in it."""
    phase = int(min(row[0] for row in rows))
    current = [row for row in rows if int(row[0]) == phase]
    return (
        phase,
        max(row[3] for row in current),
        int(sum(row[1] for row in current)),
        int(sum(row[2] for row in current)),
    )


# --- targets: one bench connection to the cluster or to Redis ----------------------------------------


class OpError(Exception):
    """An operation failed; ``kind`` is the error's code (TIMEOUT, UNAVAILABLE, ERR...)."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message


class BenchConnection(Protocol):
    def connect(self) -> None: ...

    def execute(self, op: str, key: bytes, value: bytes | None, timeout: float) -> bytes | None:
        """Run one op; a GET returns the value or None. Raises ``OpError``."""
        ...

    def read_back(self, key: bytes, timeout: float) -> bytes | None:
        """The key's value by the strongest read the target offers. Raises ``OpError``."""
        ...

    def close(self) -> None: ...


class Redial:
    """Holds one open connection made by ``dial``; after a failure dials again at most once a second."""

    def __init__(self, dial: Callable[[], Any], describe: str) -> None:
        self._dial = dial
        self._describe = describe
        self._current: Any = None
        self._dialled_at = -math.inf

    def open(self) -> Any:
        """The open connection, re-dialled if allowed; raises ``OpError`` UNREACHABLE otherwise."""
        current = self._current
        if current is not None and current.is_open:
            return current
        now = time.monotonic()
        if now - self._dialled_at < RECONNECT_INTERVAL:
            raise OpError("UNREACHABLE", f"{self._describe} is down; next re-dial within {RECONNECT_INTERVAL:g} s")
        self._dialled_at = now  # before dialling, which yields: other lanes do not dial too
        if current is not None:
            current.close()
        self._current = self._dial()
        return self._current

    def close(self) -> None:
        if self._current is not None:
            self._current.close()


@dataclass(frozen=True)
class ClusterMap:
    """What a bench connection needs to route: the ring, each node's address, N and the limits."""

    ring: Ring
    addresses: dict[str, str]
    replicas: int
    max_value_bytes: int


def discover_cluster(seeds: str, timeout: float) -> ClusterMap:
    """The ring and node addresses, learnt through ``Client`` from the seed addresses, and the
    value size limit from a HELLO to the first node."""
    with Client(seeds, timeout=timeout, connect_timeout=CONNECT_TIMEOUT, client_name="kv-bench") as client:
        try:
            topology = client.topology()
            addresses = {node.node_id: client.node_address(node.node_id) for node in topology.nodes}
        except KVError as exc:
            raise BenchError(f"cannot reach the cluster at {seeds}: {exc.message}") from None
    host, port = parse_address(addresses[topology.nodes[0].node_id])
    probe = Connection(host, port, connect_timeout=CONNECT_TIMEOUT, client_name="kv-bench")
    try:
        hello = probe.connect()
    except KVError as exc:
        raise BenchError(f"cannot reach {host}:{port}: {exc.message}") from None
    finally:
        probe.close()
    ring = Ring([node.node_id for node in topology.nodes], topology.partitions)
    return ClusterMap(ring, addresses, topology.replicas, hello.max_value_bytes)


class ClusterConnection:
    """A token-aware bench connection: one multiplexed ``Connection`` per node, requests to primaries."""

    def __init__(self, cluster: ClusterMap, r: int | None, w: int | None) -> None:
        self._cluster = cluster
        self._r = r or protocol.DEFAULT_QUORUM
        self._w = w or protocol.DEFAULT_QUORUM
        self._nodes = {
            node_id: Redial(self._dialler(address), address) for node_id, address in cluster.addresses.items()
        }

    def _dialler(self, address: str) -> Callable[[], Connection]:
        host, port = parse_address(address)

        def dial() -> Connection:
            connection = Connection(host, port, connect_timeout=CONNECT_TIMEOUT, client_name="kv-bench")
            try:
                connection.connect()
            except KVError as exc:
                raise OpError(exc.code, exc.message) from None
            return connection

        return dial

    def connect(self) -> None:
        for redial in self._nodes.values():
            redial.open()

    def _call(self, request: protocol.Get | protocol.Put | protocol.Delete, timeout: float) -> protocol.Frame:
        node_id = self._cluster.ring.primary(request.key)
        connection = self._nodes[node_id].open()
        try:
            return connection.call(request, timeout=timeout)
        except KVError as exc:
            raise OpError(exc.code, exc.message) from None

    def execute(self, op: str, key: bytes, value: bytes | None, timeout: float) -> bytes | None:
        if op == "get":
            frame = self._call(protocol.Get(key, self._r), timeout)
            return None if frame.code == Status.NOT_FOUND else protocol.decode_value(frame.body)[1]
        if op == "put":
            assert value is not None
            self._call(protocol.Put(key, value, self._w), timeout)
        else:
            self._call(protocol.Delete(key, self._w), timeout)
        return None

    def read_back(self, key: bytes, timeout: float) -> bytes | None:
        frame = self._call(protocol.Get(key, self._cluster.replicas), timeout)
        return None if frame.code == Status.NOT_FOUND else protocol.decode_value(frame.body)[1]

    def close(self) -> None:
        for redial in self._nodes.values():
            redial.close()


class RedisSocket:
    """One RESP2 socket to Redis with pipelining: replies come back in command order."""

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self._sock: socket.socket | None = None
        self._writer: FrameWriter | None = None
        self._waiting: list[AsyncResult] = []
        self._first = 0  # index in _waiting of the oldest command still without a reply
        self._parser = resp.ReplyParser()
        self._reader: gevent.Greenlet | None = None
        self._failure: OpError | None = None

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def is_open(self) -> bool:
        return self._sock is not None and self._failure is None

    def connect(self) -> None:
        try:
            sock = socket.create_connection((self.host, self.port), timeout=CONNECT_TIMEOUT)
        except (OSError, gevent.Timeout) as exc:
            raise OpError("UNREACHABLE", f"cannot connect to redis at {self.address}: {exc}") from None
        sock.settimeout(None)
        sock.setsockopt(stdlib_socket.IPPROTO_TCP, stdlib_socket.TCP_NODELAY, 1)
        self._sock = sock
        self._writer = FrameWriter(sock)  # the same coalescing writer our own connections use
        self._reader = gevent.spawn(self._read_replies)
        reply = self.call(resp.encode_command("PING"), CONNECT_TIMEOUT)
        if reply != "PONG":
            self.close()
            raise OpError("PROTOCOL", f"{self.address} answered PING with {reply!r}: is it Redis?")

    def call(self, command: bytes, timeout: float) -> resp.Reply:
        """Send an encoded command and wait for its reply (an ``ErrorReply`` is returned, not raised)."""
        if self._failure is not None:
            raise self._failure
        if self._writer is None:
            raise OpError("UNREACHABLE", f"connection to {self.address} is not open")
        done = AsyncResult()
        self._waiting.append(done)  # no yield between this and the write: order matches the wire
        try:
            self._writer.write(command)
        except OSError as exc:
            self._fail(OpError("UNREACHABLE", f"connection to {self.address} lost: {exc}"))
        try:
            return done.get(timeout=timeout)
        except gevent.Timeout:
            # The reply will still come, in order, and resolve this abandoned result.
            raise OpError("TIMEOUT", f"no reply from {self.address} within {timeout:g} s") from None

    def close(self) -> None:
        self._fail(OpError("UNREACHABLE", f"connection to {self.address} closed"))

    def _read_replies(self) -> None:
        sock = self._sock
        assert sock is not None
        try:
            while True:
                data = sock.recv(256 * 1024)
                if not data:
                    raise OpError("UNREACHABLE", f"{self.address} closed the connection")
                for reply in self._parser.feed(data):
                    if self._first >= len(self._waiting):
                        raise OpError("PROTOCOL", f"{self.address} sent a reply to no command")
                    self._waiting[self._first].set(reply)
                    self._first += 1
                if self._first > 1024 and self._first * 2 > len(self._waiting):  # amortised trim
                    del self._waiting[: self._first]
                    self._first = 0
        except OpError as exc:
            self._fail(exc)
        except resp.RespProtocolError as exc:
            self._fail(OpError("PROTOCOL", f"bad reply from {self.address}: {exc}"))
        except OSError as exc:
            self._fail(OpError("UNREACHABLE", f"connection to {self.address} lost: {exc}"))

    def _fail(self, error: OpError) -> None:
        if self._failure is not None:
            return
        self._failure = error
        if self._sock is not None:
            self._sock.close()
        waiting, self._waiting, self._first = self._waiting[self._first :], [], 0
        for done in waiting:
            done.set_exception(error)
        if self._reader is not None and self._reader is not gevent.getcurrent():
            self._reader.kill(block=False)


class RedisConnection:
    """A bench connection to Redis: GET, SET and DEL over one pipelined ``RedisSocket``."""

    COMMANDS = {"get": b"GET", "put": b"SET", "delete": b"DEL"}

    def __init__(self, address: str) -> None:
        host, port = parse_address(address, default_port=6379)

        def dial() -> RedisSocket:
            connection = RedisSocket(host, port)
            connection.connect()
            return connection

        self._redial = Redial(dial, f"redis at {host}:{port}")

    def connect(self) -> None:
        self._redial.open()

    def execute(self, op: str, key: bytes, value: bytes | None, timeout: float) -> bytes | None:
        name = self.COMMANDS[op]
        args = (name, key) if value is None else (name, key, value)
        command = resp.encode_command(*args)
        reply = self._redial.open().call(command, timeout)
        if isinstance(reply, resp.ErrorReply):
            raise OpError(reply.kind, reply.message)
        if op == "get":
            if reply is not None and not isinstance(reply, bytes):
                raise OpError("PROTOCOL", f"GET answered with {type(reply).__name__}")
            return reply
        return None

    def read_back(self, key: bytes, timeout: float) -> bytes | None:
        return self.execute("get", key, None, timeout)

    def close(self) -> None:
        self._redial.close()


# --- the worker: one process's connections, lanes and phases -------------------------------------


@dataclass(frozen=True)
class TargetSpec:
    name: str  # "kv" or "redis": how the report names it
    kind: str  # "cluster" or "redis"
    address: str


@dataclass(frozen=True)
class WorkerSpec:
    """Everything a worker needs, as plain values (it crosses to a spawned process)."""

    target: TargetSpec
    process: int
    first_connection: int  # global number of this worker's first connection
    connections: int  # this worker's connections
    total_connections: int  # across all workers: key ownership is global
    pipeline: int
    duration: float  # planned measurement, or the time cap with ops
    ops: int | None  # this worker's share of --ops
    warmup: float
    keys: int
    distribution: str
    zipf_theta: float
    mix: str
    value_size: int
    r: int | None
    w: int | None
    timeout: float
    seed: int


@dataclass
class LiveCounters:
    """What the progress line shows, updated by the lanes as they go."""

    phase: int = PHASE_CONNECTING
    phase_started: float = 0.0
    ops: int = 0
    errors: int = 0


class Worker:
    """Runs one process's share of the load: connect, warm up, measure, check."""

    def __init__(self, spec: WorkerSpec, connection_factory: Callable[[], BenchConnection] | None = None) -> None:
        """``connection_factory``: makes the bench connections; by default from ``spec.target``."""
        self.spec = spec
        self._factory = connection_factory
        self.mix = parse_mix(spec.mix)
        self.chooser = KeyChooser(spec.keys, spec.distribution, spec.zipf_theta)
        self.live = LiveCounters()
        self.stats = Stats(check=empty_check())
        self.connections: list[BenchConnection] = []
        self.ledgers: list[WriteLedger] = []
        self._budget = spec.ops
        self._last_completion = 0.0
        # Write numbers per connection, shared by its lanes so that every value written is unique.
        self._sequences: list[Iterator[int]] = [itertools.count(1) for _ in range(spec.connections)]

    def _set_phase(self, phase: int) -> None:
        self.live.phase = phase
        self.live.phase_started = time.monotonic()
        self.live.ops = self.live.errors = 0

    # --- connect ---

    def connect(self) -> None:
        """Open every connection, concurrently. Raises ``BenchError`` if any cannot be opened."""
        spec = self.spec
        factory: Callable[[], BenchConnection]
        if self._factory is not None:
            factory = self._factory
        elif spec.target.kind == "cluster":
            cluster = discover_cluster(spec.target.address, spec.timeout)
            if spec.value_size > cluster.max_value_bytes:
                raise BenchError(
                    f"--value-size {spec.value_size} exceeds the cluster's limit of {cluster.max_value_bytes}"
                )
            for name, quorum in (("--r", spec.r), ("--w", spec.w)):
                if quorum is not None and quorum > cluster.replicas:
                    raise BenchError(f"{name} {quorum} exceeds the cluster's {cluster.replicas} replicas (N)")
            factory = lambda: ClusterConnection(cluster, spec.r, spec.w)  # noqa: E731
        else:
            factory = lambda: RedisConnection(spec.target.address)  # noqa: E731
        self.connections = [factory() for _ in range(spec.connections)]
        self.ledgers = [WriteLedger() for _ in range(spec.connections)]
        attempts = [gevent.spawn(connection.connect) for connection in self.connections]
        gevent.joinall(attempts, timeout=STARTUP_TIMEOUT)
        for attempt in attempts:
            if not attempt.successful():
                error = attempt.exception
                self.close()
                gevent.killall(attempts, timeout=1)
                if error is None:
                    message = f"connecting took over {STARTUP_TIMEOUT:g} s"
                else:
                    message = error.message if isinstance(error, OpError | BenchError) else repr(error)
                raise BenchError(f"cannot connect to {spec.target.name} at {spec.target.address}: {message}")

    def close(self) -> None:
        for connection in self.connections:
            connection.close()

    # --- load ---

    def run(self) -> Stats:
        """Warm-up, measurement and the read-back check; the connections must be open."""
        spec = self.spec
        lanes = [
            gevent.spawn(self._lane, index, lane) for index in range(spec.connections) for lane in range(spec.pipeline)
        ]
        try:
            if spec.warmup > 0:
                self._set_phase(PHASE_WARMUP)
                gevent.sleep(spec.warmup)
            self._set_phase(PHASE_MEASURE)
            started = time.monotonic()
            self._last_completion = started
            if spec.ops is None:
                gevent.sleep(spec.duration)
                self._set_phase(PHASE_DONE)
                self.stats.elapsed = time.monotonic() - started
                gevent.joinall(lanes, timeout=LANE_DRAIN_SLACK + spec.timeout)
            else:
                gevent.joinall(lanes, timeout=spec.duration)
                if not all(lane.dead for lane in lanes):
                    self.stats.ended_by = "time cap"
                self._set_phase(PHASE_DONE)
                gevent.joinall(lanes, timeout=LANE_DRAIN_SLACK + spec.timeout)
                self.stats.elapsed = self._last_completion - started
        finally:
            gevent.killall(lanes, timeout=1)
        if spec.ops is not None and self.stats.ended_by == "duration":
            self.stats.ended_by = "ops"
        self._set_phase(PHASE_CHECK)
        self.stats.check = self._check()
        self._set_phase(PHASE_DONE)
        return self.stats

    def _lane(self, index: int, lane: int) -> None:
        spec, stats, live, mix, chooser = self.spec, self.stats, self.live, self.mix, self.chooser
        connection, ledger = self.connections[index], self.ledgers[index]
        owner = spec.first_connection + index
        rng = random.Random(f"{spec.seed}/{owner}/{lane}")  # same stream for every target
        sequences = self._sequences[index]
        limit = int((spec.warmup + spec.duration) * MAX_RATE_PER_LANE) + 1
        for _ in range(limit):
            phase = live.phase
            if phase == PHASE_DONE:
                return
            measured = phase == PHASE_MEASURE
            if measured and self._budget is not None:
                if self._budget <= 0:
                    return
                self._budget -= 1
            op = mix.choose(rng.random())
            key = chooser.index(rng.random)
            value = token = None
            if op != "get":
                key = owned_index(key, owner, spec.total_connections, spec.keys)
                if op == "put":
                    sequence = next(sequences)
                    value = make_value(owner, sequence, spec.value_size)
                    token = ledger.begin(key, sequence)
                else:
                    token = ledger.begin(key, None)
            start = time.perf_counter_ns()
            try:
                result = connection.execute(op, key_name(key), value, spec.timeout)
            except OpError as exc:
                if token is not None:
                    ledger.finish(token, ok=False)
                if measured:
                    stats.error(exc.kind, exc.message)
                    live.errors += 1
                    self._last_completion = time.monotonic()
                if exc.kind == "UNREACHABLE":
                    gevent.sleep(ERROR_PAUSE)
                continue
            latency = time.perf_counter_ns() - start
            if token is not None:
                ledger.finish(token, ok=True)
            live.ops += 1
            if not measured:
                stats.warmup_ops += 1
                continue
            stats.histograms[op].record_ns(latency)
            stats.ops[op] += 1
            if op == "get":
                if result is None:
                    stats.misses += 1
                else:
                    stats.hits += 1
            self._last_completion = time.monotonic()

    # --- read-back check ---

    def _check(self) -> dict[str, Any]:
        spec = self.spec
        check = empty_check()
        deadline = time.monotonic() + CHECK_TIME_LIMIT
        readers = []
        for index, (connection, ledger) in enumerate(zip(self.connections, self.ledgers, strict=True)):
            check["skipped_uncertain"] += ledger.skipped
            items = iter(sorted(ledger.checkable().items()))
            owner = spec.first_connection + index
            readers += [
                gevent.spawn(self._check_keys, connection, owner, items, check, deadline) for _ in range(spec.pipeline)
            ]
        gevent.joinall(readers, timeout=CHECK_TIME_LIMIT + spec.timeout)
        gevent.killall(readers, timeout=1)
        total = sum(len(ledger.checkable()) for ledger in self.ledgers)
        check["unchecked"] = total - check["keys_checked"] - check["read_errors"]
        return check

    def _check_keys(
        self,
        connection: BenchConnection,
        owner: int,
        items: Iterator[tuple[int, int | None]],
        check: dict[str, Any],
        deadline: float,
    ) -> None:
        for key, sequence in items:  # bounded: the items are this connection's written keys
            if time.monotonic() > deadline:
                return
            expected = None if sequence is None else make_value(owner, sequence, self.spec.value_size)
            try:
                actual = connection.read_back(key_name(key), self.spec.timeout)
            except OpError:
                check["read_errors"] += 1
                self.live.errors += 1
                continue
            check["keys_checked"] += 1
            self.live.ops += 1
            if expected is None:
                check["expected_absent"] += 1
            if actual != expected:
                check["mismatches"] += 1
                if len(check["mismatch_examples"]) < MISMATCH_EXAMPLES:
                    check["mismatch_examples"].append(
                        f"{key_name(key).decode()}: expected {_preview(expected)}, read {_preview(actual)}"
                    )


def _preview(value: bytes | None) -> str:
    if value is None:
        return "no value"
    text = value[:24].decode("utf-8", errors="backslashreplace")
    return repr(text + ("..." if len(value) > 24 else ""))


# --- running a target: in this process, or in worker processes -----------------------------------


class Progress:
    """The status line on stderr: in place on a terminal, one line a second otherwise."""

    def __init__(self, stream: TextIO, enabled: bool) -> None:
        self.stream = stream
        self.enabled = enabled
        self.in_place = enabled and stream.isatty()
        self._width = 0
        self._last: float | None = None

    def show(self, line: str) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if self._last is not None and now - self._last < PROGRESS_INTERVAL * 0.9:
            return
        self._last = now
        if self.in_place:
            self.stream.write("\r" + line.ljust(self._width))
            self._width = len(line)
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def done(self) -> None:
        if self.enabled and self.in_place and self._width:
            self.stream.write("\r" + " " * self._width + "\r")
            self.stream.flush()
        self._width = 0
        self._last = None


def _planned(spec: WorkerSpec, phase: int) -> float:
    if phase == PHASE_WARMUP:
        return spec.warmup
    if phase == PHASE_MEASURE:
        return spec.duration
    return 0.0  # the read-back check takes as long as its keys take


def run_here(spec: WorkerSpec, progress: Progress) -> Stats:
    """One worker in this process, with the status line drawn by a greenlet beside it."""
    worker = Worker(spec)
    worker.connect()

    def draw() -> None:
        while True:
            live = worker.live
            elapsed = time.monotonic() - live.phase_started
            if live.phase not in (PHASE_CONNECTING, PHASE_DONE) and elapsed >= MIN_PHASE_AGE:
                line = progress_line(
                    spec.target.name,
                    live.phase,
                    elapsed=elapsed,
                    planned=_planned(spec, live.phase),
                    ops=live.ops,
                    errors=live.errors,
                )
                progress.show(line)
            gevent.sleep(PROGRESS_INTERVAL / 4)

    drawer = gevent.spawn(draw) if progress.enabled else None
    try:
        return worker.run()
    finally:
        if drawer is not None:
            drawer.kill()
        progress.done()
        worker.close()


def _worker_process(spec: WorkerSpec, go: Any, counters: Any, results: Any) -> None:
    """Entry point of a worker process: connect, report ready, wait for go, run, send the stats."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C and ends us
    worker = Worker(spec)
    slot = spec.process * COUNTER_SLOTS
    try:
        worker.connect()
    except Exception as exc:
        results.put(("fatal", spec.process, str(exc)))
        return

    def publish() -> None:
        while True:
            live = worker.live
            elapsed = time.monotonic() - live.phase_started
            counters[slot : slot + COUNTER_SLOTS] = [live.phase, live.ops, live.errors, elapsed]
            gevent.sleep(PUBLISH_INTERVAL)

    results.put(("ready", spec.process, None))
    if not go.wait(STARTUP_TIMEOUT):
        worker.close()
        return
    publisher = gevent.spawn(publish)
    try:
        stats = worker.run()
        results.put(("result", spec.process, stats.to_dict()))
    except Exception as exc:
        results.put(("fatal", spec.process, f"worker {spec.process} failed: {exc!r}"))
    finally:
        publisher.kill()
        worker.close()


def run_in_processes(specs: list[WorkerSpec], progress: Progress) -> Stats:
    """Workers in spawned processes; waits cooperatively, so in-process nodes keep serving."""
    context = multiprocessing.get_context("spawn")
    go = context.Event()
    results = context.Queue()
    counters = context.Array("d", COUNTER_SLOTS * len(specs), lock=False)
    processes = [
        context.Process(target=_worker_process, args=(spec, go, counters, results), daemon=True) for spec in specs
    ]
    for process in processes:
        process.start()
    try:
        _await(results, processes, "ready", STARTUP_TIMEOUT, lambda: None)
        go.set()
        spec = specs[0]
        limit = spec.warmup + spec.duration + spec.timeout + CHECK_TIME_LIMIT + RESULT_SLACK

        def draw() -> None:
            values = list(counters)
            rows = [values[i : i + COUNTER_SLOTS] for i in range(0, len(values), COUNTER_SLOTS)]
            phase, elapsed, ops, errors = combine_progress(rows)
            if phase in (PHASE_CONNECTING, PHASE_DONE) or elapsed < MIN_PHASE_AGE:
                return
            line = progress_line(
                spec.target.name, phase, elapsed=elapsed, planned=_planned(spec, phase), ops=ops, errors=errors
            )
            progress.show(line)

        payloads = _await(results, processes, "result", limit, draw)
    finally:
        progress.done()
        for process in processes:
            if process.is_alive():
                process.terminate()
            process.join(timeout=5)
        results.close()
    merged = Stats(check=empty_check())
    for payload in payloads:
        merged.merge(Stats.from_dict(payload))
    return merged


def _await(results: Any, processes: list[Any], kind: str, timeout: float, tick: Callable[[], None]) -> list[Any]:
    """Every worker's message of ``kind``, polling so the gevent hub keeps running meanwhile."""
    payloads: dict[int, Any] = {}
    deadline = time.monotonic() + timeout
    while len(payloads) < len(processes):  # bounded by the deadline below
        try:
            message, index, payload = results.get_nowait()
        except queue.Empty:
            if time.monotonic() > deadline:
                raise BenchError(f"worker processes did not send their {kind} message within {timeout:g} s") from None
            if not all(process.is_alive() for process in processes) and results.empty():
                gevent.sleep(0.5)  # a result may still be in the pipe of a process that just exited
                if results.empty():
                    raise BenchError("a worker process exited without a result") from None
            tick()
            gevent.sleep(0.05)
            continue
        if message == "fatal":
            raise BenchError(payload)
        if message == kind:
            payloads[index] = payload
    return [payloads[index] for index in sorted(payloads)]


def worker_specs(target: TargetSpec, options: argparse.Namespace) -> list[WorkerSpec]:
    """Split connections and the op budget over the processes (the first ones take any remainder)."""
    processes = options.processes
    share, extra = divmod(options.connections, processes)
    specs = []
    first = 0
    for process in range(processes):
        connections = share + (1 if process < extra else 0)
        ops = None
        if options.ops is not None:
            ops_share, ops_extra = divmod(options.ops, processes)
            ops = ops_share + (1 if process < ops_extra else 0)
        specs.append(
            WorkerSpec(
                target=target,
                process=process,
                first_connection=first,
                connections=connections,
                total_connections=options.connections,
                pipeline=options.pipeline,
                duration=options.duration,
                ops=ops,
                warmup=options.warmup,
                keys=options.keys,
                distribution=options.distribution,
                zipf_theta=options.zipf_theta,
                mix=options.mix,
                value_size=options.value_size,
                r=options.r,
                w=options.w,
                timeout=options.timeout,
                seed=options.seed,
            )
        )
        first += connections
    return specs


def measure(target: TargetSpec, options: argparse.Namespace, progress: Progress) -> dict[str, Any]:
    """Run the whole load against one target and summarise it."""
    specs = worker_specs(target, options)
    stats = run_here(specs[0], progress) if len(specs) == 1 else run_in_processes(specs, progress)
    return summarize_target(target.name, target.kind, target.address, stats)


# --- the plot --------------------------------------------------------------------------------------


def plot_report(report: dict[str, Any], path: str) -> None:
    """Latency percentiles (log scale) and throughput of each target, side by side, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    targets = report["targets"]
    names = [f"{t['name']} {t['address']}" for t in targets]
    marks = ["p50", "p90", "p99", "p99.9", "max"]
    figure, (latency_axes, throughput_axes) = plt.subplots(1, 2, figsize=(11, 4.5))
    width = 0.8 / max(len(targets), 1)
    for i, (target, name) in enumerate(zip(targets, names, strict=True)):
        xs = [x + i * width for x in range(len(marks))]
        values = [max(target["latency_ms"][mark], 1e-3) for mark in marks]
        bars = latency_axes.bar(xs, values, width, label=name)
        latency_axes.bar_label(bars, fmt="%.3g", fontsize=8)
    latency_axes.set_xticks([x + width * (len(targets) - 1) / 2 for x in range(len(marks))], marks)
    latency_axes.set_yscale("log")
    latency_axes.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    latency_axes.yaxis.set_minor_formatter(FuncFormatter(_minor_label))
    bottom, top = latency_axes.get_ylim()
    latency_axes.set_ylim(bottom, top * 3)  # headroom for the legend above the tallest bar
    latency_axes.set_ylabel("latency (ms, log scale)")
    latency_axes.set_title("Latency percentiles")
    latency_axes.legend(loc="upper left", fontsize=8)
    bars = throughput_axes.bar(names, [t["ops_per_sec"] for t in targets], color=["C0", "C1"][: len(targets)])
    throughput_axes.bar_label(bars, fmt="{:,.0f}", fontsize=8)
    throughput_axes.set_ylabel("operations per second")
    throughput_axes.set_title("Throughput")
    config = report["config"]
    figure.suptitle(
        f"kv bench: {config['connections']} connections x pipeline {config['pipeline']}, "
        f"{config['processes']} process(es), {config['distribution']} over {config['keys']} keys, "
        f"mix {config['mix']}, {config['value_size']} B values"
    )
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def _minor_label(value: float, _position: int) -> str:
    """Label 2x and 5x of each decade only, so a log axis stays readable."""
    if value <= 0:
        return ""
    leading = round(value / 10 ** math.floor(math.log10(value)))
    return f"{value:g}" if leading in (2, 5) else ""


# --- command line ----------------------------------------------------------------------------------

EPILOG = """what is measured:
  Each connection keeps --pipeline requests in flight (closed loop). Against the
  cluster a connection is token-aware: one socket per node, each request to its
  key's primary replica. Against Redis it is one socket sending GET/SET/DEL.
  With both --cluster and --redis, the cluster is measured first, then Redis,
  with the same generator, seed and settings, and the ratios are reported.
  After measurement every key whose final value is known is read back.

  One Python process generates some 10-30 thousand ops/s; use --processes to
  drive a faster target (each process gets connections/processes connections).

where output goes:
  The report goes to stdout; with --json - the JSON goes there instead and the
  report to stderr. A status line on stderr, about once a second, when stderr is
  a terminal or with --progress (in place on a terminal, a line a second if not).

exit status: 0 done and read-back passed, 1 read-back failed, 2 could not run.

examples:
  kv bench --cluster 127.0.0.1:5000,127.0.0.1:5001,127.0.0.1:5002
  kv bench --cluster 127.0.0.1:7301 --redis 127.0.0.1:6390 --duration 5
  kv bench --redis 127.0.0.1:6390 --mix get=90,put=10 --distribution uniform
  kv bench --cluster 127.0.0.1:5000 --ops 100000 --pipeline 8 --processes 2 \\
           --json report.json --plot report.png
"""


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None


def _positive_int(text: str) -> int:
    value = _int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def _non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"must be a number >= 0, not {text}")
    return value


def _positive_float(text: str) -> float:
    value = _non_negative_float(text)
    if value == 0:
        raise argparse.ArgumentTypeError("must be above 0")
    return value


def _quorum(text: str) -> int:
    value = _int(text)
    if not 1 <= value <= 255:
        raise argparse.ArgumentTypeError(f"must be 1..255, not {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kv bench",
        description="Measure throughput and latency of the cluster and/or Redis under the same load.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    targets = parser.add_argument_group("targets (at least one)")
    targets.add_argument("--cluster", metavar="HOST:PORT,...", help="seed addresses of our cluster")
    targets.add_argument("--redis", metavar="HOST:PORT", help="a Redis server (port 6379 if omitted)")
    run = parser.add_argument_group("run")
    run.add_argument(
        "--connections", metavar="N", type=_positive_int, default=50, help="connections in total (default 50)"
    )
    run.add_argument(
        "--duration",
        metavar="SECONDS",
        type=_positive_float,
        help="seconds to measure (default 10); with --ops, a time cap instead (default 600)",
    )
    run.add_argument(
        "--ops", metavar="N", type=_positive_int, help="measure this many operations instead of a duration"
    )
    run.add_argument(
        "--warmup",
        metavar="SECONDS",
        type=_non_negative_float,
        default=2.0,
        help="seconds of load before measuring (default 2)",
    )
    run.add_argument(
        "--pipeline",
        metavar="DEPTH",
        type=_positive_int,
        default=1,
        help="requests each connection keeps in flight (default 1)",
    )
    run.add_argument(
        "--processes",
        metavar="N",
        type=_positive_int,
        default=1,
        help="worker processes generating load, each with connections/processes connections (default 1)",
    )
    run.add_argument(
        "--timeout",
        metavar="SECONDS",
        type=_positive_float,
        default=DEFAULT_TIMEOUT,
        help="seconds before a request is a TIMEOUT (default 5)",
    )
    run.add_argument("--seed", metavar="N", type=_int, default=1, help="random seed of keys and ops (default 1)")
    load = parser.add_argument_group("load")
    load.add_argument("--keys", metavar="N", type=_positive_int, default=10_000, help="distinct keys (default 10000)")
    load.add_argument(
        "--distribution", choices=("uniform", "zipfian"), default="zipfian", help="key popularity (default zipfian)"
    )
    load.add_argument(
        "--zipf-theta",
        metavar="THETA",
        type=_non_negative_float,
        default=0.99,
        help="zipfian exponent: 0 is uniform, 0.99 (the default) as in YCSB, higher is more skewed",
    )
    load.add_argument(
        "--value-size", metavar="BYTES", type=_positive_int, default=100, help="bytes per value written (default 100)"
    )
    load.add_argument(
        "--mix",
        metavar="RATIOS",
        default="get=50,put=50,delete=0",
        help="op ratios, e.g. get=90,put=9,delete=1 (default %(default)s)",
    )
    load.add_argument(
        "--r", metavar="N", type=_quorum, help="read quorum for the cluster's GETs (default: the node's R)"
    )
    load.add_argument(
        "--w", metavar="N", type=_quorum, help="write quorum for the cluster's PUTs/DELETEs (default: the node's W)"
    )
    output = parser.add_argument_group("output")
    output.add_argument("--json", metavar="FILE", help="write the full report as JSON ('-' for stdout)")
    output.add_argument("--plot", metavar="FILE.png", help="draw latency percentiles and throughput (needs matplotlib)")
    output.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="live status line on stderr (default: only when stderr is a terminal)",
    )
    return parser


def parse_options(argv: Sequence[str]) -> argparse.Namespace:
    """The options, checked together; exits with status 2 and the reason on a bad combination."""
    parser = build_parser()
    options = parser.parse_args(list(argv))
    if not options.cluster and not options.redis:
        parser.error("give --cluster, --redis, or both")
    try:
        if options.cluster:
            split_addresses(options.cluster)
            for address in split_addresses(options.cluster):
                parse_address(address)
        if options.redis:
            parse_address(options.redis, default_port=6379)
    except ValueError as exc:
        parser.error(str(exc))
    try:
        mix = parse_mix(options.mix)
    except ValueError as exc:
        parser.error(f"--mix: {exc}")
    options.mix = mix.describe()
    if not 0 <= options.zipf_theta <= MAX_THETA:
        parser.error(f"--zipf-theta must be from 0 (uniform) to {MAX_THETA:g}")
    if options.duration is None:
        options.duration = 10.0 if options.ops is None else OPS_MODE_TIME_CAP
    if options.processes > options.connections:
        parser.error("--processes cannot exceed --connections")
    if mix.writes and options.keys < options.connections:
        parser.error("--keys must be at least --connections: each connection writes keys of its own")
    if options.plot:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            parser.error("--plot needs matplotlib: pip install 'kvstore[bench]'")
    return options


def run_config(options: argparse.Namespace) -> dict[str, Any]:
    """The exact configuration for the report: every option, and the machine that generated load."""
    config = {name: value for name, value in vars(options).items() if name not in ("progress",)}
    config["host"] = {
        "hostname": platform.node(),
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "python": f"{platform.python_version()} ({platform.python_implementation()})",
    }
    return config


def main(argv: Sequence[str] | None = None) -> int:
    options = parse_options(sys.argv[1:] if argv is None else argv)
    progress = Progress(sys.stderr, sys.stderr.isatty() if options.progress is None else options.progress)
    targets = []
    if options.cluster:
        targets.append(TargetSpec("kv", "cluster", ",".join(split_addresses(options.cluster))))
    if options.redis:
        targets.append(TargetSpec("redis", "redis", options.redis))
    report: dict[str, Any] = {
        "tool": "kv bench",
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "config": run_config(options),
        "targets": [],
    }
    try:
        for target in targets:
            report["targets"].append(measure(target, options, progress))
    except BenchError as exc:
        print(f"kv bench: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("\nkv bench: interrupted", file=sys.stderr)
        return EXIT_ERROR
    report["comparison"] = compare(report["targets"])
    text = format_report(report)
    if options.json == "-":
        sys.stderr.write(text)
        json.dump(report, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        sys.stdout.write(text)
        if options.json:
            with open(options.json, "w", encoding="utf-8") as handle:
                json.dump(report, handle, indent=2)
                handle.write("\n")
    sys.stdout.flush()
    if options.plot:
        plot_report(report, options.plot)
    passed = all(target["check"]["passed"] for target in report["targets"])
    return EXIT_OK if passed else EXIT_CHECK_FAILED


if __name__ == "__main__":
    sys.exit(main())
