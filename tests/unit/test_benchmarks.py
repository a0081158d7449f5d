"""The published comparison's script (``bench/benchmarks.py``): short runs against real redis-servers
through the real generator, asserting the shape of what it reports (closed loop, the open-loop
latency table at fractions of each target's peak, the medians and in-run ratios), never its speed.

Skipped with a reason where cargo or redis-server is not installed.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench import benchmarks

BUILD_TIMEOUT = 900.0


@pytest.fixture(scope="module")
def built() -> None:
    if shutil.which("cargo") is None:
        pytest.skip("cargo is not installed, so the generator (bench/loadgen) cannot be built")
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed")
    manifest = str(benchmarks.LOADGEN_CRATE / "Cargo.toml")
    subprocess.run(
        ["cargo", "build", "--release", "--quiet", "--manifest-path", manifest], check=True, timeout=BUILD_TIMEOUT
    )


@pytest.fixture
def two_redis(built: None, tmp_path: Path) -> Iterator[list[benchmarks.Server]]:
    with (
        benchmarks.redis(tmp_path, "redis default", []) as default,
        benchmarks.redis(tmp_path, "redis always", ["--appendonly", "yes", "--appendfsync", "always"]) as always,
    ):
        yield [default, always]


def test_a_run_row_has_throughput_latency_and_both_cpus(two_redis: list[benchmarks.Server]) -> None:
    server = two_redis[0]
    row = benchmarks.run_loadgen(server, ["--connections", "2", *benchmarks.COMMON], duration=1, warmup=0.2)
    assert row["ops_per_s"] > 0 and row["errors"] == 0
    assert 0 < row["p50_ms"] <= row["p99_ms"] <= row["p999_ms"]
    assert row["generator_us_per_request"] >= 0
    assert row["server_cores"] >= 0 and row["server_us_per_op"] is not None
    assert row["command"].startswith(f"kv-loadgen --target redis --nodes {server.address} ")
    assert "target_rate" not in row  # closed loop


def test_closed_loop_medians_and_in_run_ratios(two_redis: list[benchmarks.Server]) -> None:
    closed = benchmarks.closed_loop(two_redis, runs=2, duration=1, warmup=0.2)
    assert set(closed) == set(benchmarks.WORKLOADS)
    for by_target in closed.values():
        assert set(by_target) == {"redis default", "redis always"}
        assert all(len(rows) == 2 for rows in by_target.values())
    summary = benchmarks.summarize(closed)
    always = summary["1"]["redis always"]
    assert always["vs_redis_always"] == 1.0 and always["vs_redis_always_runs"] == [1.0, 1.0]
    default = summary["2"]["redis default"]
    assert set(default) >= {*benchmarks.FIELDS, "vs_redis_always", "vs_redis_default"}
    assert len(default["vs_redis_always_runs"]) == 2


def test_open_loop_reports_p50_p99_p999_at_each_fraction_of_the_peak(two_redis: list[benchmarks.Server]) -> None:
    server = two_redis[0]
    opened = benchmarks.open_loop([server], {server.name: 2000.0}, runs=1, duration=1, warmup=0.2)
    by_fraction = opened[server.name]
    assert list(by_fraction) == ["0.25", "0.5", "0.8"]
    for fraction, rows in by_fraction.items():
        (row,) = rows
        assert row["target_rate"] == round(2000 * float(fraction))
        assert row["achieved_rate"] > 0 and row["dropped"] >= 0
        assert 0 < row["p50_ms"] <= row["p99_ms"] <= row["p999_ms"]
        assert "--rate" in row["command"]
        median = benchmarks.median_row(rows)
        assert {"p50_ms", "p99_ms", "p999_ms", "target_rate", "achieved_rate", "dropped"} <= set(median)


def test_the_printed_report_has_every_section(
    two_redis: list[benchmarks.Server], capsys: pytest.CaptureFixture[str]
) -> None:
    closed = benchmarks.closed_loop(two_redis, runs=1, duration=1, warmup=0.2)
    summary = benchmarks.summarize(closed)
    peaks = {name: row["ops_per_s"] for name, row in summary["1"].items()}
    opened = benchmarks.open_loop(two_redis, peaks, runs=1, duration=1, warmup=0.2)
    open_summary = {name: {f: benchmarks.median_row(rows) for f, rows in by.items()} for name, by in opened.items()}
    proof = [
        {
            "workload": "1",
            "connections": 50,
            "op": "SET",
            "kv_loadgen_ops_per_s": 90,
            "redis_benchmark_ops_per_s": 100,
            "ratio": 0.9,
            "kv_loadgen_us_per_request": 4.0,
            "redis_benchmark_us_per_request": 7.0,
        }
    ]
    config = {"runs": 1, "duration_s": 1.0, "targets": {server.name: server.settings for server in two_redis}}
    capsys.readouterr()
    benchmarks.print_report(config, proof, summary, open_summary, closed)
    out = capsys.readouterr().out
    assert "lowest ratio 0.90: passes the required 0.80" in out
    assert "## Closed loop" in out and "## Open loop" in out
    assert out.count("| redis always |") == 2 + 3  # two workloads, three open-loop fractions
    assert "| redis default | 50% |" in out
