"""Throughput of one durable node at KV_WORKERS=1 and 2, side by side in one run (issue 13's scaling target).

Usage: ``.venv/bin/python bench/workers_scaling.py [--reps 3] [--duration 8] [--loadgen PATH]``

Each repetition starts a fresh node per worker count (``python -m service``, 127.0.0.1, its own
data directory, ``KV_N=1 KV_W=1 KV_R=1 KV_LOG_COMMANDS=false``, durable defaults) and drives it with
the compiled generator (``bench/loadgen``), workload 1: 50 connections, pipeline 1, 50/50 GET/PUT,
100-byte values, 10,000 keys, uniform, 2 s warm-up. The order of the two counts alternates between
repetitions, so drift on a shared machine falls on both. Prints the exact configuration, each run
(ops/s, p50/p99, the node's CPU in cores, summed over the supervisor and its workers, from
``/proc``; the generator's own CPU per request), and the medians and their ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from bench.benchmarks import free_port

REPO = Path(__file__).resolve().parents[1]
LOADGEN = REPO / "bench" / "loadgen" / "target" / "release" / "kv-loadgen"
START_TIMEOUT = 30.0
TICKS = os.sysconf("SC_CLK_TCK")


def tree_cpu_seconds(root: int) -> float:
    """User + system CPU of ``root`` and its children (the supervisor's workers), from ``/proc``."""
    total = 0.0
    pids = [root]
    for task in Path(f"/proc/{root}/task").iterdir():
        children = Path(f"/proc/{root}/task/{task.name}/children")
        if children.exists():
            pids += [int(pid) for pid in children.read_text().split()]
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / TICKS  # utime, stime (fields 14 and 15)
    return total


def wait_ready(http_port: int, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:  # bounded by the deadline
        if process.poll() is not None:
            raise SystemExit(f"the node exited with {process.returncode} before it was ready")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/readyz", timeout=1) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise SystemExit("the node was not ready in time")


def run_once(workers: int, duration: int, loadgen: Path, workdir: Path, mix: str) -> dict[str, float]:
    port, http_port = free_port(), free_port()
    data_dir = tempfile.mkdtemp(prefix=f"w{workers}-", dir=workdir)
    environ = {
        **os.environ,
        "KV_WORKERS": str(workers),
        "KV_NODE_ID": "bench",
        "KV_PEERS": f"bench=127.0.0.1:{port}",
        "KV_HOST": "127.0.0.1",
        "KV_PORT": str(port),
        "KV_HTTP_PORT": str(http_port),
        "KV_N": "1",
        "KV_W": "1",
        "KV_R": "1",
        "KV_DATA_DIR": data_dir,
        "KV_LOG_COMMANDS": "false",
    }
    node = subprocess.Popen(
        [sys.executable, "-m", "service"], cwd=REPO, env=environ, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        wait_ready(http_port, node)
        command = [
            str(loadgen), "--target", "kv", "--nodes", f"127.0.0.1:{port}", "--connections", "50",
            "--pipeline", "1", "--mix", mix, "--keys", "10000", "--value-size", "100",
            "--distribution", "uniform", "--duration", str(duration), "--warmup", "2", "--json", "-",
        ]  # fmt: skip
        cpu_before, wall_before = tree_cpu_seconds(node.pid), time.monotonic()
        result = subprocess.run(command, capture_output=True, text=True, timeout=duration + 60, check=False)
        cpu = tree_cpu_seconds(node.pid) - cpu_before
        wall = time.monotonic() - wall_before
        if result.returncode not in (0, 1):
            raise SystemExit(f"kv-loadgen failed: {result.stderr.strip()}")
        report = json.loads(result.stdout)
        return {
            "ops_per_s": report["ops_per_s"],
            "p50_ms": report["latency_ms"]["all"]["p50"],
            "p99_ms": report["latency_ms"]["all"]["p99"],
            "errors": report["errors"]["total"],
            "node_cores": cpu / wall,
            "node_us_per_op": cpu / wall * 1e6 / max(1.0, report["ops_per_s"]),
            "generator_us_per_req": report["generator_cpu"]["us_per_request"],
        }
    finally:
        node.send_signal(signal.SIGTERM)
        try:
            node.wait(timeout=30)
        except subprocess.TimeoutExpired:
            node.kill()
            node.wait()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--duration", type=int, default=8)
    parser.add_argument("--loadgen", type=Path, default=LOADGEN)
    parser.add_argument("--mix", default="get=50,put=50", help="workload 1 is get=50,put=50 (other mixes: to diagnose)")
    options = parser.parse_args()
    if not options.loadgen.exists():
        print(f"no {options.loadgen}: cargo build --release --manifest-path bench/loadgen/Cargo.toml", file=sys.stderr)
        return 2
    print(
        f"config: one node, 127.0.0.1, KV_N=1 KV_W=1 KV_R=1 KV_FSYNC={os.environ.get('KV_FSYNC', 'always')} "
        "KV_LOG_COMMANDS=false; "
        f"kv-loadgen --target kv --connections 50 --pipeline 1 --mix {options.mix} --keys 10000 "
        f"--value-size 100 --distribution uniform --duration {options.duration} --warmup 2; "
        f"reps {options.reps}, order alternating; cores available {len(os.sched_getaffinity(0))}"
    )
    results: dict[int, list[dict[str, float]]] = {1: [], 2: []}
    with tempfile.TemporaryDirectory(prefix="kv-workers-bench-") as workdir:
        for rep in range(options.reps):
            for workers in (1, 2) if rep % 2 == 0 else (2, 1):
                figures = run_once(workers, options.duration, options.loadgen, Path(workdir), options.mix)
                results[workers].append(figures)
                print(
                    f"rep {rep + 1} KV_WORKERS={workers}: {figures['ops_per_s']:,.0f} ops/s, "
                    f"p50 {figures['p50_ms']:.2f} ms, p99 {figures['p99_ms']:.2f} ms, errors {figures['errors']:.0f}, "
                    f"node {figures['node_cores']:.2f} cores ({figures['node_us_per_op']:.0f} µs/op), "
                    f"generator {figures['generator_us_per_req']:.1f} µs/req",
                    flush=True,
                )
    medians = {workers: statistics.median(run["ops_per_s"] for run in runs) for workers, runs in results.items()}
    print(f"median ops/s: KV_WORKERS=1 {medians[1]:,.0f}, KV_WORKERS=2 {medians[2]:,.0f}")
    print(f"ratio 2/1: {medians[2] / medians[1]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
