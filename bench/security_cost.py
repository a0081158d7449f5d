"""The cost of security: the same three-node cluster with and without TLS and authentication.

    python3 -m bench.security_cost [--runs 3] [--duration 10]

Starts each cluster itself on 127.0.0.1 (N=2, W=2, R=1, command logging off), as local processes:
``plain`` (no users, plaintext: a loopback-only node needs no ``KV_INSECURE``) and ``secured`` (users,
the cluster secret between members, ``KV_TLS_MODE=required`` on every port and peer link, secrets
made by ``service.make_secrets``). Each repetition runs ``kv bench`` against both, in turn, with the
same settings (the published comparison's workloads 1 and 2: 50 connections, and one), logged in as
the admin where there are users; then it times opening connections (TCP, TLS, HELLO, SCRAM) one
after another, the price each new connection pays once. A third cluster, ``users``, has users and
the secret but no TLS: authentication's share alone. It prints the medians and the ratios to
``plain``, and the nodes' CPU time per client request (from ``/proc`` and their ``kv_requests_total``),
which a machine shared with other work disturbs far less than throughput; ``BENCHMARKS.md`` ("The
cost of security") holds the figures.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import http.client
import json
import os
import ssl
import statistics
import subprocess
import sys
import tempfile
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

from prometheus_client.parser import text_string_to_metric_families

from bench.benchmarks import PYTHON, REPO, START_TIMEOUT, free_port, wait_for

NODES = ("node1", "node2", "node3")
CONNECTS = 200
"""Connections opened one after another to time the handshake."""

KV_BENCH_WORKLOADS = {
    "1": ["--connections", "50", "--mix", "get=50,put=50", "--distribution", "uniform"],
    "2": ["--connections", "1", "--mix", "get=50,put=50", "--distribution", "uniform"],
}
KV_BENCH_COMMON = ["--keys", "10000", "--value-size", "100", "--warmup", "2"]


def run_bench(kind: str, address: str, workload: str, duration: float) -> dict[str, Any]:
    """One ``kv bench`` run (the Python generator, which can measure relative costs such as these
    but tops out near 5,600 ops/s here: see BENCHMARKS.md) against the cluster at ``address``."""
    target = ["--cluster", address] if kind == "kv" else ["--redis", address]
    command = [PYTHON, "-m", "bench", *target, *KV_BENCH_WORKLOADS[workload], *KV_BENCH_COMMON]
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


def ready(http_port: int, https: bool) -> bool:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # a local probe of a node this script started
    url = f"{'https' if https else 'http'}://127.0.0.1:{http_port}/readyz"
    try:
        with urllib.request.urlopen(url, timeout=1, context=context) as response:
            return bool(response.status == 200)
    except (OSError, http.client.HTTPException):
        return False


CONFIGURATIONS = ("plain", "users", "secured")
"""No security; users and the cluster secret, plaintext (the cost of authentication alone); users
and TLS on every port and link."""


class Running(NamedTuple):
    """A started cluster: its seed addresses, and its nodes' processes and HTTP ports."""

    seeds: str
    pids: list[int]
    http_ports: list[int]
    tls: bool

    def cpu_seconds(self) -> float:
        """CPU time (user and system) the nodes have used so far (``/proc/<pid>/stat``)."""
        ticks = 0
        for pid in self.pids:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            ticks += int(fields[11]) + int(fields[12])  # utime, stime: fields 14 and 15 of stat(5)
        return ticks / os.sysconf("SC_CLK_TCK")

    def client_requests(self) -> float:
        """GET, PUT and DELETE the nodes have answered so far (their ``kv_requests_total``)."""
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        total = 0.0
        for port in self.http_ports:
            url = f"{'https' if self.tls else 'http'}://127.0.0.1:{port}/metrics"
            with urllib.request.urlopen(url, timeout=5, context=context) as response:
                for family in text_string_to_metric_families(response.read().decode()):
                    for sample in family.samples:
                        if sample.name == "kv_requests_total" and sample.labels.get("op") in CLIENT_OPS:
                            total += sample.value
        return total


CLIENT_OPS = ("GET", "PUT", "DELETE")


@contextlib.contextmanager
def cluster(workdir: Path, secrets: Path | None, tls: bool) -> Iterator[Running]:
    """Three nodes, with the users and secret in ``secrets`` (``None``: none) and TLS if ``tls``."""
    distinct: set[int] = set()
    while len(distinct) < 2 * len(NODES):  # free_port may hand out a port twice: it releases each
        distinct.add(free_port())
    chosen = sorted(distinct)
    ports = dict(zip(NODES, chosen[: len(NODES)], strict=True))
    http_ports = chosen[len(NODES) :]
    peers = ",".join(f"{node}=127.0.0.1:{port}" for node, port in ports.items())
    processes = []
    try:
        for (node, port), http_port in zip(ports.items(), http_ports, strict=True):
            env = {
                **os.environ,
                "KV_WORKERS": "1",  # one process per node: its CPU is read from /proc/<pid>
                "PYTHONPATH": str(REPO),
                "KV_NODE_ID": node,
                "KV_PEERS": peers,
                "KV_HOST": "127.0.0.1",
                "KV_PORT": str(port),
                "KV_HTTP_PORT": str(http_port),
                "KV_DATA_DIR": str(workdir / node),
                "KV_LOG_COMMANDS": "false",
            }
            if secrets is not None:
                env.update(KV_USERS_FILE=str(secrets / "users"), KV_CLUSTER_SECRET_FILE=str(secrets / "cluster-secret"))
            if secrets is not None and tls:
                env.update(
                    KV_TLS_MODE="required",
                    KV_TLS_CA=str(secrets / "ca.crt"),
                    # make_secrets' certificates also name 127.0.0.1, the address every peer has here.
                    KV_TLS_CERT=str(secrets / f"{node}.crt"),
                    KV_TLS_KEY=str(secrets / f"{node}.key"),
                )
            log = open(workdir / f"{node}.log", "w")  # noqa: SIM115 - closed with the process
            processes.append((subprocess.Popen([PYTHON, "-m", "service"], env=env, stdout=log, stderr=log), log))
        for http_port in http_ports:
            wait_for(functools.partial(ready, http_port, tls), START_TIMEOUT, f"node on {http_port}")
        seeds = ",".join(f"127.0.0.1:{port}" for port in ports.values())
        yield Running(seeds, [process.pid for process, _ in processes], http_ports, tls)
    finally:
        for process, _ in processes:
            process.terminate()
        for process, log in processes:
            process.wait(timeout=30)
            log.close()


@contextlib.contextmanager
def logged_in(secrets: Path | None, tls: bool) -> Iterator[None]:
    """``kv bench`` run meanwhile logs in as the admin (KV_USER, KV_PASSWORD), over TLS if ``tls``
    (KV_TLS_CA), which it reads as its --user, password and --tls-ca; a plain cluster needs none."""
    if secrets is None:
        yield
        return
    settings = {"KV_USER": "admin", "KV_PASSWORD": (secrets / "admin.password").read_text().strip()}
    if tls:
        settings["KV_TLS_CA"] = str(secrets / "ca.crt")
    saved = {name: os.environ.get(name) for name in settings}
    os.environ.update(settings)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


CONNECT_SCRIPT = """
import sys, time
from client.connection import Connection, Framing
from client.security import Credentials, Security, TlsSettings
host, port, user, password, ca, count = sys.argv[1:7]
credentials = Credentials(user, password) if user else None
security = Security.of(credentials, TlsSettings(ca=ca) if ca else None)
started = time.perf_counter()
for _ in range(int(count)):
    connection = Connection(host, int(port), framing=Framing(security=security))
    connection.connect()
    connection.close()
print((time.perf_counter() - started) / int(count) * 1000)
"""


def connect_ms(seeds: str, secrets: Path | None, tls: bool) -> float:
    """Milliseconds to open one connection and get it ready for requests (the client's CPU included)."""
    host, port = seeds.split(",", maxsplit=1)[0].rsplit(":", 1)
    user, password, ca = "", "", ""
    if secrets is not None:
        user, password = "admin", (secrets / "admin.password").read_text().strip()
        ca = str(secrets / "ca.crt") if tls else ""
    command = [PYTHON, "-c", CONNECT_SCRIPT, host, port, user, password, ca, str(CONNECTS)]
    output = subprocess.run(
        command, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True, check=True
    )
    return float(output.stdout.strip())


def main() -> int:
    parser = argparse.ArgumentParser(prog="python3 -m bench.security_cost", description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--out", help="write every run and the medians as JSON")
    options = parser.parse_args()
    from service.make_secrets import make_secrets

    runs: dict[str, dict[str, list[dict[str, Any]]]] = {name: {} for name in CONFIGURATIONS}
    connects: dict[str, list[float]] = {name: [] for name in CONFIGURATIONS}
    with tempfile.TemporaryDirectory(prefix="kv-security-cost-") as scratch:
        secrets = Path(scratch) / "secrets"
        make_secrets(secrets, list(NODES))
        for run in range(options.runs):
            for name in CONFIGURATIONS:
                files, tls = (None if name == "plain" else secrets), name == "secured"
                workdir = Path(scratch) / f"{name}-{run}"
                workdir.mkdir()
                with cluster(workdir, files, tls) as running:
                    seeds = running.seeds
                    for workload in ("1", "2"):
                        cpu_before, requests = running.cpu_seconds(), running.client_requests()
                        with logged_in(files, tls):
                            result = run_bench("kv", seeds, workload, options.duration)
                        served = running.client_requests() - requests
                        result["node_cpu_us_per_request"] = (running.cpu_seconds() - cpu_before) / served * 1e6
                        runs[name].setdefault(workload, []).append(result)
                        print(
                            f"run {run + 1} {name} workload {workload}: {result['ops_per_sec']:.0f} ops/s", flush=True
                        )
                    connects[name].append(connect_ms(seeds, files, tls))
    medians = {
        name: {w: median_of(results) for w, results in by_workload.items()} for name, by_workload in runs.items()
    }
    cpu_medians = {
        name: {
            w: statistics.median(run["node_cpu_us_per_request"] for run in found) for w, found in by_workload.items()
        }
        for name, by_workload in runs.items()
    }
    connect_medians = {name: statistics.median(values) for name, values in connects.items()}
    print()
    print("workload                     configuration  ops/s  ratio   p50 ms   p99 ms  node CPU us/request  ratio")
    for workload, label in (("1", "50 connections, 50% GET/PUT"), ("2", "1 connection, 50% GET/PUT")):
        plain, plain_cpu = medians["plain"][workload]["ops_per_sec"], cpu_medians["plain"][workload]
        for name in CONFIGURATIONS:
            figures, used = medians[name][workload], cpu_medians[name][workload]
            print(
                f"{label:<28} {name:<14} {figures['ops_per_sec']:>5.0f} {figures['ops_per_sec'] / plain:>6.2f} "
                f"{figures['p50_ms']:>8.2f} {figures['p99_ms']:>8.2f} {used:>20.0f} {used / plain_cpu:>6.2f}"
            )
    print(
        "opening a connection (TCP, TLS, HELLO, SCRAM): "
        + ", ".join(f"{name} {connect_medians[name]:.2f} ms" for name in CONFIGURATIONS)
    )
    if options.out:
        report = {"runs": runs, "medians": medians, "node_cpu_us_per_request": cpu_medians, "connect_ms": connects}
        Path(options.out).write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
