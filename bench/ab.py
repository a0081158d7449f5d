"""A same-run A/B of two versions of the node: the CPU each spends per op, and its throughput.

    python3 -m bench.ab --base integration [--candidate WORKTREE] [--nodes 1] [--mix put=100]
                        [--connections 1] [--rate OPS] [--runs 5] [--duration 5]

Exports ``--base`` (a git ref of this repository) with ``git archive`` into a temporary directory and
starts it beside ``--candidate`` (a source tree; this checkout by default): one cluster of
``--nodes`` local processes each (``KV_N=W=min(nodes, 2)``, ``R=1``, durable, command logging off),
both up at once. Then it alternates kv-loadgen runs between them (base first in odd runs, candidate
first in even ones), so both see the same machine, and reports per run and as medians: ops/s, p50
and p99, the server's CPU per op (user + system, every node, from ``/proc`` over the measured
window, as ``bench.benchmarks`` measures it) and the generator's CPU per request; and the ratio
candidate / base of each pair, CPU per op and ops/s. ``--mix``, ``--connections`` and the rest of
the workload are kv-loadgen's (10,000 keys, 100-byte values, uniform, pipeline 1).

``--rate`` runs the generator open loop instead (kv-loadgen's ``--rate``: requests leave on a fixed
timetable, total over all connections, and latency counts from each one's intended send time), so
both versions get the same offered load, and the tail is what to compare: it reports p99.9 and the
achieved rate as well, and the ratios candidate / base of each pair's p99 and p99.9.

Traffic goes only to the local processes it started, which it stops at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench.benchmarks import COMMON, REPO, build_loadgen, cluster, run_loadgen


def export(ref: str, into: Path) -> Path:
    """The tree of ``ref`` (this repository's), written under ``into``."""
    tree = into / "base"
    tree.mkdir()
    archive = subprocess.run(["git", "-C", str(REPO), "archive", ref], check=True, capture_output=True, timeout=120)
    subprocess.run(["tar", "-x", "-C", str(tree)], input=archive.stdout, check=True, timeout=120)
    return tree


def loadgen_args(connections: int, mix: str, rate: int | None) -> list[str]:
    """kv-loadgen's workload arguments: closed loop, or open loop at ``rate`` requests per second."""
    args = ["--connections", str(connections), "--mix", mix, *COMMON]
    return args if rate is None else [*args, "--rate", str(rate)]


def pair_ratios(base: list[dict[str, Any]], candidate: list[dict[str, Any]], field: str) -> list[float]:
    """``candidate[i][field] / base[i][field]`` for each pair of runs, in run order."""
    return [c[field] / b[field] for b, c in zip(base, candidate, strict=True)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", required=True, help="git ref of the version to compare against")
    parser.add_argument("--candidate", type=Path, default=REPO, help="source tree of the other (default: this one)")
    parser.add_argument("--nodes", type=int, default=1, help="nodes per cluster (default 1)")
    parser.add_argument("--mix", default="put=100", help="kv-loadgen's --mix (default put=100)")
    parser.add_argument("--connections", type=int, default=1, help="kv-loadgen's --connections (default 1)")
    parser.add_argument(
        "--rate", type=int, default=None, help="open loop: kv-loadgen's --rate, requests/s (default: closed loop)"
    )
    parser.add_argument("--runs", type=int, default=5, help="runs of each (default 5)")
    parser.add_argument("--duration", type=float, default=5.0, help="measured seconds per run (default 5)")
    options = parser.parse_args()
    if options.nodes < 1 or options.runs < 1 or options.duration < 1 or (options.rate is not None and options.rate < 1):
        print("--nodes, --runs and --rate must be at least 1, --duration at least 1 s", file=sys.stderr)
        return 2
    replicas = str(min(options.nodes, 2))
    settings = {"KV_N": replicas, "KV_W": replicas, "KV_R": "1"}
    args = loadgen_args(options.connections, options.mix, options.rate)
    build_loadgen()
    rows: dict[str, list[dict[str, Any]]] = {"base": [], "candidate": []}
    with tempfile.TemporaryDirectory(prefix="kv-ab-") as tmp, contextlib.ExitStack() as stack:
        workdir = Path(tmp)
        base_tree = export(options.base, workdir)
        servers = {
            "base": stack.enter_context(cluster(workdir, "base", options.nodes, settings, repo=base_tree)),
            "candidate": stack.enter_context(
                cluster(workdir, "candidate", options.nodes, settings, repo=options.candidate.resolve())
            ),
        }
        loop = "closed loop" if options.rate is None else f"open loop at {options.rate:,}/s"
        print(f"base: {options.base}; candidate: {options.candidate}; {options.nodes} node(s) each, {settings}; {loop}")
        for run in range(options.runs):
            order = ["base", "candidate"] if run % 2 == 0 else ["candidate", "base"]
            for name in order:
                row = run_loadgen(servers[name], args, options.duration, warmup=1.0)
                rows[name].append(row)
                print(
                    f"run {run + 1} {name:9} {row['ops_per_s']:>8,.0f} ops/s  p50 {row['p50_ms']:.2f}  p99 "
                    f"{row['p99_ms']:.2f}  p99.9 {row['p999_ms']:.2f} ms  server {row['server_us_per_op']} us/op  "
                    f"generator {row['generator_us_per_request']} us/req",
                    flush=True,
                )
        print(f"command (candidate): {rows['candidate'][0]['command']}")
    compared = {"CPU per op": "server_us_per_op", "ops/s": "ops_per_s"}
    if options.rate is not None:
        compared |= {"p99": "p99_ms", "p99.9": "p999_ms"}
    for name, measured in rows.items():
        print(
            f"median {name:9} {statistics.median(r['ops_per_s'] for r in measured):>8,.0f} ops/s  p99 "
            f"{statistics.median(r['p99_ms'] for r in measured):.2f}  p99.9 "
            f"{statistics.median(r['p999_ms'] for r in measured):.2f} ms  server "
            f"{statistics.median(r['server_us_per_op'] for r in measured):.0f} us/op"
        )
    for what, field in compared.items():
        ratios = pair_ratios(rows["base"], rows["candidate"], field)
        each = " ".join(f"{ratio:.2f}" for ratio in ratios)
        print(f"candidate / base, per pair: {what} {each} (median {statistics.median(ratios):.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
