"""What ``kv bench`` measured, and how it is told; pure, no I/O.

``Stats`` is what one process measured: mergeable, and plain-dict serialisable for the trip home
from a worker process. From merged ``Stats`` come each target's section of the report (the JSON)
and the comparison of the two targets, and from the report its text. Here too are the phases a
run goes through and the live status line that names them.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from bench.histogram import Histogram
from bench.workload import OPS

PERCENTILES = (50.0, 90.0, 99.0, 99.9)
MISMATCH_EXAMPLES = 5
ERROR_EXAMPLES = 5
"""Report this many examples of mismatches and errors: enough to diagnose, short enough to read."""

PHASE_CONNECTING, PHASE_WARMUP, PHASE_MEASURE, PHASE_CHECK, PHASE_DONE = range(5)
PHASE_NAMES = {
    PHASE_CONNECTING: "connecting",
    PHASE_WARMUP: "warm-up",
    PHASE_MEASURE: "measuring",
    PHASE_CHECK: "read-back check",
    PHASE_DONE: "done",
}


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
    return bool(check["mismatches"] == 0 and check["read_errors"] == 0 and check["unchecked"] == 0)


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


class PhaseProgress(NamedTuple):
    """Where a run is: its phase, and the seconds, ops and errors of that phase so far."""

    phase: int
    elapsed: float
    ops: int
    errors: int


def progress_line(label: str, progress: PhaseProgress, *, planned: float) -> str:
    """The live status line; ``planned`` is the phase's length in seconds, or 0 when it has none
    (the read-back check)."""
    phase, elapsed, ops, errors = progress
    rate = ops / elapsed if elapsed > 0 else 0.0
    clock = f"{elapsed:.1f}/{planned:g}s" if planned else f"{elapsed:.1f}s"
    return f"{label}: {PHASE_NAMES[phase]} {clock}  {ops:,} ops  {rate:,.0f} ops/s  {errors:,} errors"


def combine_progress(rows: Sequence[Sequence[float]]) -> PhaseProgress:
    """Workers' (phase, ops, errors, seconds in phase) as one status: the phase the slowest worker
    is in, with the ops and errors of the workers in it and the longest time any spent in it."""
    phase = int(min(row[0] for row in rows))
    current = [row for row in rows if int(row[0]) == phase]
    return PhaseProgress(
        phase,
        max(row[3] for row in current),
        int(sum(row[1] for row in current)),
        int(sum(row[2] for row in current)),
    )
