"""Proves kv-loadgen is not the bottleneck: it and ``redis-benchmark`` drive the same local
redis-server with the same workload, interleaved, and the ratio of their throughputs is reported.

    python3 bench/loadgen/compare.py [--repeat 3] [--seconds 8] [--json out.json]

Starts its own redis-server on a free 127.0.0.1 port (no persistence) and stops it at the end.
redis-benchmark has no GET/SET mix, so each workload is measured SET-only and GET-only by both tools
(kv-loadgen with ``--mix put=100`` and ``--mix get=100``); SET runs come first, so every GET finds
its key. Both tools send the same keys (``key:`` and 12 digits, 10,000 of them, uniform) and 100-byte
values. Each figure is the median of ``--repeat`` runs; the two tools alternate which goes first.
Beside each figure: the generator's CPU per request (kv-loadgen's own getrusage over its measured
window; redis-benchmark's from this process's children, over its whole run).
Every run is bounded in time; traffic goes only to 127.0.0.1.
"""

from __future__ import annotations

import argparse
import json
import re
import resource
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

CRATE = Path(__file__).resolve().parent
BINARY = CRATE / "target" / "release" / "kv-loadgen"
KEYS = 10_000
VALUE_SIZE = 100
WORKLOADS = [  # (name, connections, pipeline)
    ("workload 1: 50 connections, pipeline 1", 50, 1),
    ("workload 2: 1 connection, pipeline 1", 1, 1),
    ("50 connections, pipeline 16", 50, 16),
]
OPS = [("SET", "put"), ("GET", "get")]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_redis_benchmark(port: int, command: str, connections: int, pipeline: int, requests: int) -> float:
    argv = ["redis-benchmark", "-h", "127.0.0.1", "-p", str(port), "-c", str(connections), "-n", str(requests)]
    argv += ["-d", str(VALUE_SIZE), "-r", str(KEYS), "-t", command.lower(), "-P", str(pipeline), "-q"]
    output = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=True).stdout
    found = re.findall(rf"{command}: ([0-9.]+) requests per second", output)
    if not found:
        raise RuntimeError(f"no result in redis-benchmark output: {output[-300:]!r}")
    return float(found[-1])


def run_loadgen(port: int, op: str, connections: int, pipeline: int, seconds: float) -> dict[str, Any]:
    argv = [str(BINARY), "--target", "redis", "--nodes", f"127.0.0.1:{port}", "--mix", f"{op}=100"]
    argv += ["--connections", str(connections), "--pipeline", str(pipeline), "--keys", str(KEYS)]
    argv += ["--value-size", str(VALUE_SIZE), "--duration", str(seconds), "--warmup", "1", "--json", "-"]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 30, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"kv-loadgen failed ({result.returncode}): {result.stderr.strip()}")
    report: dict[str, Any] = json.loads(result.stdout)
    return report


def compare(port: int, repeat: int, seconds: float) -> list[dict[str, Any]]:
    rows = []
    for name, connections, pipeline in WORKLOADS:
        for command, op in OPS:
            ours: list[dict[str, Any]] = []
            theirs: list[dict[str, float]] = []
            for attempt in range(repeat):
                order = ["ours", "theirs"] if attempt % 2 == 0 else ["theirs", "ours"]
                for tool in order:
                    if tool == "ours":
                        ours.append(run_loadgen(port, op, connections, pipeline, seconds))
                    else:
                        # Size the run to about ``seconds`` at the rate kv-loadgen just saw.
                        rate = ours[-1]["ops_per_s"] if ours else 50_000
                        requests = max(int(rate * seconds), 10_000)
                        before = children_cpu()
                        rps = run_redis_benchmark(port, command, connections, pipeline, requests)
                        cpu_us = (children_cpu() - before) * 1e6 / requests
                        theirs.append({"ops_per_s": rps, "cpu_us": cpu_us, "requests": requests})
            our_rate = statistics.median(r["ops_per_s"] for r in ours)
            their_rate = statistics.median(r["ops_per_s"] for r in theirs)
            row = {
                "workload": name,
                "op": command,
                "connections": connections,
                "pipeline": pipeline,
                "redis_benchmark_ops_per_s": round(their_rate),
                "kv_loadgen_ops_per_s": round(our_rate),
                "ratio": round(our_rate / their_rate, 3),
                "kv_loadgen_cpu_us_per_request": statistics.median(r["generator_cpu"]["us_per_request"] for r in ours),
                "redis_benchmark_cpu_us_per_request": round(statistics.median(r["cpu_us"] for r in theirs), 2),
                "kv_loadgen_p99_ms": statistics.median(r["latency_ms"]["all"]["p99"] for r in ours),
                "runs": {
                    "kv_loadgen_ops_per_s": [r["ops_per_s"] for r in ours],
                    "redis_benchmark_ops_per_s": [r["ops_per_s"] for r in theirs],
                },
                "kv_loadgen_command": ours[0]["command"],
            }
            rows.append(row)
            print(
                f"{name:<42} {command:<4} redis-benchmark {their_rate:>10,.0f}  kv-loadgen {our_rate:>10,.0f}"
                f"  ratio {row['ratio']:.2f}  gen CPU {row['kv_loadgen_cpu_us_per_request']:.1f} us/req"
                f" (redis-benchmark {row['redis_benchmark_cpu_us_per_request']:.1f})",
                flush=True,
            )
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=3, help="runs per tool and workload (default 3)")
    parser.add_argument("--seconds", type=float, default=8.0, help="seconds per run (default 8)")
    parser.add_argument("--json", metavar="PATH", help="write the rows as JSON here")
    args = parser.parse_args()
    subprocess.run(["cargo", "build", "--release", "--quiet", "--manifest-path", str(CRATE / "Cargo.toml")], check=True)
    port = free_port()
    server = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        rows = compare(port, args.repeat, args.seconds)
    finally:
        server.terminate()
        server.wait(timeout=10)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")
    worst = min(row["ratio"] for row in rows)
    print(f"lowest ratio kv-loadgen / redis-benchmark: {worst:.2f} (must be >= 0.80)")
    return 0 if worst >= 0.8 else 1


if __name__ == "__main__":
    sys.exit(main())
