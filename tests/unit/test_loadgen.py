"""kv-loadgen (``bench/loadgen``, Rust): built with cargo, then short smoke runs against a real
redis-server and an in-process node, asserting the JSON report's shape, never its speed.

Skipped with a reason where cargo (or redis-server) is not installed. The generator runs as a
child process through ``gevent.subprocess``, so the in-process node keeps serving while we wait.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gevent.subprocess
import pytest
from cluster import InProcessCluster, free_port

ROOT = Path(__file__).resolve().parents[2]
MANIFEST = ROOT / "bench" / "loadgen" / "Cargo.toml"
BINARY = ROOT / "bench" / "loadgen" / "target" / "release" / "kv-loadgen"
BUILD_TIMEOUT = 900.0
"""Seconds a release build from clean may take on a 2-core machine (about a minute in practice)."""
SHORT = ["--duration", "1", "--warmup", "0.2", "--connections", "4", "--timeout", "5", "--json", "-"]


@pytest.fixture(scope="module")
def loadgen() -> Path:
    cargo = shutil.which("cargo")
    if cargo is None:
        pytest.skip("cargo is not installed, so the Rust load generator (bench/loadgen) cannot be built")
    subprocess.run(
        [cargo, "build", "--release", "--quiet", "--manifest-path", str(MANIFEST)],
        check=True,
        timeout=BUILD_TIMEOUT,
    )
    assert BINARY.is_file()
    return BINARY


def run_loadgen(binary: Path, args: list[str], timeout: float = 30.0) -> tuple[int, dict[str, Any], str]:
    """Runs the generator cooperatively (the gevent hub keeps serving in-process nodes meanwhile);
    returns its exit status, its JSON report (stdout) and its text report (stderr)."""
    process = gevent.subprocess.Popen([str(binary), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = process.communicate(timeout=timeout)
    except gevent.subprocess.TimeoutExpired:
        process.kill()
        process.communicate()
        raise
    report = json.loads(out) if out.strip() else {}
    return process.returncode, report, err


def assert_report_shape(report: dict[str, Any], target: str) -> None:
    assert report["tool"] == "kv-loadgen"
    assert report["target"] == target
    assert report["config"]["target"] == target
    assert report["config"]["command"] == report["command"]
    assert report["command"].startswith(f"kv-loadgen --target {target} ")
    assert report["measured_s"] > 0
    assert report["ops"] > 0
    assert report["ops"] == report["ops_by_type"]["get"] + report["ops_by_type"]["put"]
    assert report["ops_per_s"] > 0
    assert report["errors"] == {"total": 0, "by_kind": {}}
    assert report["connections_lost"] == 0
    for name in ("all", "get", "put"):
        latency = report["latency_ms"][name]
        assert set(latency) >= {"p50", "p90", "p99", "p99_9", "max"}
        assert 0 < latency["p50"] <= latency["p90"] <= latency["p99"] <= latency["p99_9"] <= latency["max"]
    cpu = report["generator_cpu"]
    assert set(cpu) >= {"user_s", "sys_s", "total_s", "us_per_request"}
    assert cpu["total_s"] >= 0
    assert cpu["us_per_request"] is not None and cpu["us_per_request"] >= 0


def test_closed_loop_against_redis(loadgen: Path, redis_server: str) -> None:
    code, report, text = run_loadgen(loadgen, ["--target", "redis", "--nodes", redis_server, *SHORT, "--pipeline", "4"])
    assert code == 0, text
    assert_report_shape(report, "redis")
    assert report["config"]["pipeline"] == 4
    assert report["config"]["mode"] == "closed"
    assert report["open_loop"] is None
    assert report["command"] in text  # the exact configuration, in the text report too
    assert "us/request" in text


def test_open_loop_against_redis_reports_the_achieved_rate(loadgen: Path, redis_server: str) -> None:
    code, report, text = run_loadgen(loadgen, ["--target", "redis", "--nodes", redis_server, *SHORT, "--rate", "2000"])
    assert code == 0, text
    assert_report_shape(report, "redis")
    open_loop = report["open_loop"]
    assert open_loop["target_rate"] == 2000
    assert open_loop["achieved_rate"] > 0
    assert 0 < open_loop["achieved_fraction"] <= 1.05
    assert set(open_loop) >= {"scheduled", "dropped", "max_queue"}
    assert "achieved" in text


def test_closed_loop_against_an_in_process_node(loadgen: Path, make_cluster: Callable[..., InProcessCluster]) -> None:
    cluster = make_cluster(1, KV_N="1", KV_W="1", KV_R="1", KV_LOG_COMMANDS="false")
    code, report, text = run_loadgen(loadgen, ["--target", "kv", "--nodes", ",".join(cluster.addresses), *SHORT])
    assert code == 0, text
    assert_report_shape(report, "kv")
    assert [node["id"] for node in report["nodes"]] == cluster.node_ids
    assert report["nodes"][0]["address"] == cluster.addresses[0]


def test_token_aware_run_against_three_in_process_nodes(
    loadgen: Path, make_cluster: Callable[..., InProcessCluster]
) -> None:
    cluster = make_cluster(3, KV_LOG_COMMANDS="false")  # N=2, W=2, R=1
    seeds = ",".join(cluster.addresses[:1])  # one seed: the others are learned from TOPOLOGY
    code, report, text = run_loadgen(loadgen, ["--target", "kv", "--nodes", seeds, *SHORT, "--w", "2"])
    assert code == 0, text
    assert_report_shape(report, "kv")
    assert sorted(node["id"] for node in report["nodes"]) == cluster.node_ids
    assert report["config"]["w"] == 2


def test_a_refused_connection_is_one_line_and_exit_2(loadgen: Path) -> None:
    port = free_port()
    code, report, text = run_loadgen(loadgen, ["--target", "redis", "--nodes", f"127.0.0.1:{port}", *SHORT])
    assert code == 2
    assert report == {}
    assert text.strip() == f"kv-loadgen: cannot connect to 127.0.0.1:{port}: Connection refused (os error 111)"
