"""The published comparison: our store and Redis, side by side, every figure the median of several runs.

    python3 -m bench.benchmarks [--runs 3] [--duration 10] [--out results.json]

Starts everything itself on 127.0.0.1, in temporary directories, and stops it all at the end:

* Redis from Debian's package (``redis-server`` must be on PATH; ``apt-get install redis-server``) in
  two configurations: default (no per-write durability), and ``--appendonly yes --appendfsync
  always`` (an fsync before each reply, like our acknowledged writes);
* a single node with N=1; the same node with ``KV_FSYNC=periodic`` (fsync once a second, the
  counterpart of Redis's default); and, for the cost of command logging, the node with logging on;
* a three-node cluster with N=2, W=2, R=1, as local processes;
* the protocol floor (``bench/protocol_floor.py``): our protocol served from a dict in memory by
  a bare gevent server, the most any node on this stack could do here; the yardstick that splits
  the gap to Redis into the runtime's share and the node's.

Every node runs with ``KV_LOG_COMMANDS=false`` unless stated. Each repetition runs every target once,
in turn, with the same ``kv bench`` settings, so the targets share the machine's state; the report
gives each figure's median over the repetitions, and the ratios of medians.

Workloads (all: 100-byte values, 10,000 keys):
  1. 50 connections, uniform keys, 50% GET / 50% PUT
  2. 1 connection, the same data (latency bound)
  3. 50 connections, pipelined 16 deep
  4. 50 connections, zipfian (theta 0.99), 90% GET / 10% PUT
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
PYTHON = sys.executable

WORKLOADS = {
    "1": ["--connections", "50", "--mix", "get=50,put=50", "--distribution", "uniform"],
    "2": ["--connections", "1", "--mix", "get=50,put=50", "--distribution", "uniform"],
    "3": ["--connections", "50", "--pipeline", "16", "--mix", "get=50,put=50", "--distribution", "uniform"],
    "4": ["--connections", "50", "--mix", "get=90,put=10", "--distribution", "zipfian", "--zipf-theta", "0.99"],
}
COMMON = ["--keys", "10000", "--value-size", "100", "--warmup", "2"]
START_TIMEOUT = 30.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise RuntimeError(f"timed out waiting for {what}")


def healthy(http_port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/healthz", timeout=1) as response:
            return bool(response.status == 200)
    except OSError:
        return False


@contextlib.contextmanager
def redis(workdir: Path, name: str, extra: list[str]) -> Iterator[str]:
    port = free_port()
    data = workdir / name
    data.mkdir()
    process = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--dir", str(data), *extra],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for(lambda: _accepts(port), START_TIMEOUT, f"redis {name}")
        yield f"127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(timeout=30)


def _accepts(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
        return True
    return False


@contextlib.contextmanager
def protocol_floor(workdir: Path) -> Iterator[str]:
    port = free_port()
    log = open(workdir / "floor.log", "w")  # noqa: SIM115 - closed with the process
    process = subprocess.Popen(
        [PYTHON, "-m", "bench.protocol_floor", "--port", str(port)],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stdout=log,
        stderr=log,
    )
    try:
        wait_for(lambda: _accepts(port), START_TIMEOUT, "the protocol floor")
        yield f"127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(timeout=30)
        log.close()


@contextlib.contextmanager
def cluster(workdir: Path, name: str, size: int, settings: dict[str, str]) -> Iterator[str]:
    ports = [free_port() for _ in range(size)]
    ids = [f"{name}-{index + 1}" for index in range(size)]
    peers = ",".join(f"{node_id}=127.0.0.1:{port}" for node_id, port in zip(ids, ports, strict=True))
    processes = []
    http_ports = []
    try:
        for node_id, port in zip(ids, ports, strict=True):
            http_port = free_port()
            http_ports.append(http_port)
            env = {
                **os.environ,
                "PYTHONPATH": str(REPO),
                "KV_NODE_ID": node_id,
                "KV_PEERS": peers,
                "KV_HOST": "127.0.0.1",
                "KV_PORT": str(port),
                "KV_HTTP_PORT": str(http_port),
                "KV_DATA_DIR": str(workdir / node_id),
                "KV_LOG_COMMANDS": "false",
                **settings,
            }
            log = open(workdir / f"{node_id}.log", "w")  # noqa: SIM115 - closed with the process
            processes.append((subprocess.Popen([PYTHON, "-m", "service"], env=env, stdout=log, stderr=log), log))
        for http_port in http_ports:
            wait_for(functools.partial(healthy, http_port), START_TIMEOUT, f"{name} node on {http_port}")
        yield ",".join(f"127.0.0.1:{port}" for port in ports)
    finally:
        for process, _ in processes:
            process.terminate()
        for process, log in processes:
            process.wait(timeout=30)
            log.close()


def run_bench(kind: str, address: str, workload: str, duration: float) -> dict[str, Any]:
    target = ["--cluster", address] if kind == "kv" else ["--redis", address]
    command = [PYTHON, "-m", "bench", *target, *WORKLOADS[workload], *COMMON]
    command += ["--duration", str(duration), "--json", "-"]
    result = subprocess.run(
        command, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} exited {result.returncode}:\n{result.stderr[-2000:]}")
    report = json.loads(result.stdout)["targets"][0]
    return {
        "ops_per_sec": report["ops_per_sec"],
        "p50_ms": report["latency_ms"]["p50"],
        "p99_ms": report["latency_ms"]["p99"],
        "p999_ms": report["latency_ms"]["p99.9"],
        "errors": report["errors"]["total"],
        "check": report["check"],
    }


def median_of(runs: list[dict[str, Any]]) -> dict[str, float]:
    return {
        field: statistics.median(run[field] for run in runs) for field in ("ops_per_sec", "p50_ms", "p99_ms", "p999_ms")
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3, help="repetitions; each figure is their median (default 3)")
    parser.add_argument("--duration", type=float, default=10.0, help="measured seconds per run (default 10)")
    parser.add_argument("--workloads", default="1,2,3,4", help="which workloads (default all)")
    parser.add_argument("--out", help="also write every run and the medians as JSON here")
    options = parser.parse_args()
    if shutil.which("redis-server") is None:
        print("redis-server is not installed: apt-get install redis-server", file=sys.stderr)
        return 2
    workloads = options.workloads.split(",")
    results: dict[str, dict[str, list[dict[str, Any]]]] = {w: {} for w in workloads}
    with tempfile.TemporaryDirectory(prefix="kv-benchmarks-") as tmp, contextlib.ExitStack() as stack:
        workdir = Path(tmp)
        targets = {
            "redis default": ("redis", stack.enter_context(redis(workdir, "redis-default", []))),
            "redis always": (
                "redis",
                stack.enter_context(redis(workdir, "redis-always", ["--appendonly", "yes", "--appendfsync", "always"])),
            ),
            "protocol floor (in memory)": ("kv", stack.enter_context(protocol_floor(workdir))),
            "kv single N=1": (
                "kv",
                stack.enter_context(cluster(workdir, "single", 1, {"KV_N": "1", "KV_W": "1", "KV_R": "1"})),
            ),
            "kv single N=1, KV_FSYNC=periodic": (
                "kv",
                stack.enter_context(
                    cluster(workdir, "periodic", 1, {"KV_N": "1", "KV_W": "1", "KV_R": "1", "KV_FSYNC": "periodic"})
                ),
            ),
            "kv single N=1, command log on": (
                "kv",
                stack.enter_context(
                    cluster(workdir, "logged", 1, {"KV_N": "1", "KV_W": "1", "KV_R": "1", "KV_LOG_COMMANDS": "true"})
                ),
            ),
            "kv cluster N=2 W=2 R=1": (
                "kv",
                stack.enter_context(cluster(workdir, "cluster", 3, {"KV_N": "2", "KV_W": "2", "KV_R": "1"})),
            ),
        }
        for repetition in range(1, options.runs + 1):
            for workload in workloads:
                for name, (kind, address) in targets.items():
                    if name.endswith("log on") and workload != "1":
                        continue  # the logging cost is measured on workload 1 only
                    run = run_bench(kind, address, workload, options.duration)
                    results[workload].setdefault(name, []).append(run)
                    print(
                        f"run {repetition}/{options.runs} workload {workload} {name:32} "
                        f"{run['ops_per_sec']:>9,.0f} ops/s  p50 {run['p50_ms']:.2f} ms  p99 {run['p99_ms']:.2f} ms",
                        file=sys.stderr,
                        flush=True,
                    )
    medians = {w: {name: median_of(runs) for name, runs in by_target.items()} for w, by_target in results.items()}
    print_table(medians, options)
    if options.out:
        Path(options.out).write_text(json.dumps({"runs": results, "medians": medians}, indent=2))
    return 0


def print_table(medians: dict[str, dict[str, dict[str, float]]], options: argparse.Namespace) -> None:
    print(f"host: {platform.node()}, {os.cpu_count()} CPUs, {platform.platform()}, Python {platform.python_version()}")
    print(f"each figure: median of {options.runs} runs of {options.duration:g} s (after 2 s warm-up)\n")
    print("| workload | target | ops/s | p50 ms | p99 ms | p99.9 ms | vs redis always | vs redis default |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for workload, by_target in medians.items():
        always = by_target["redis always"]["ops_per_sec"]  # both Redis targets run in every workload
        default = by_target["redis default"]["ops_per_sec"]
        for name, figures in by_target.items():
            ops = figures["ops_per_sec"]
            print(
                f"| {workload} | {name} | {ops:,.0f} | {figures['p50_ms']:.2f} | {figures['p99_ms']:.2f} | "
                f"{figures['p999_ms']:.2f} | {ops / always:.2f} | {ops / default:.2f} |"
            )


if __name__ == "__main__":
    sys.exit(main())
