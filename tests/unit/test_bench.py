"""``kv bench``: its pure parts (key choice, op mix, ledger, report), its worker against in-memory
fakes, and short smoke runs against in-process nodes and, where installed, a real redis-server."""

from __future__ import annotations

import json
import math
import os
import random
import subprocess
import sys
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import gevent
import pytest
from cluster import InProcessCluster, free_port
from hypothesis import given
from hypothesis import strategies as st
from polling import wait_until_listening

from bench.cli import EXIT_ERROR, EXIT_OK, OPS_MODE_TIME_CAP, parse_options, run_config
from bench.cli import main as bench_main
from bench.histogram import Histogram
from bench.report import (
    PHASE_CHECK,
    PHASE_MEASURE,
    PhaseProgress,
    Stats,
    check_passed,
    combine_progress,
    compare,
    empty_check,
    format_report,
    progress_line,
    ratio,
    summarize_target,
)
from bench.runner import worker_specs
from bench.targets import OpError
from bench.worker import TargetSpec, Worker, WorkerSpec
from bench.workload import (
    MAX_REJECTIONS,
    MAX_THETA,
    OPS,
    KeyChooser,
    Mix,
    WriteLedger,
    Zipfian,
    make_value,
    owned_index,
    parse_mix,
)
from client import cli

GRID = 100_000
"""Evenly spaced u values for exact frequency checks: u = (i + 0.5) / GRID."""


def grid() -> Iterator[float]:
    return ((i + 0.5) / GRID for i in range(GRID))


# --- op mix ----------------------------------------------------------------------------------------


def test_a_mix_is_normalised_and_missing_ops_are_zero() -> None:
    assert parse_mix("get=50,put=50,delete=0") == Mix(0.5, 0.5, 0.0)
    assert parse_mix("get=9, put=1") == Mix(0.9, 0.1, 0.0)
    assert parse_mix("PUT=1") == Mix(0.0, 1.0, 0.0)
    assert parse_mix("get=2,put=1,delete=1").describe() == "get=50,put=25,delete=25"


@pytest.mark.parametrize("text", ["", "get=0", "read=5", "get", "get=x", "get=-1", "get=inf", "get=nan"])
def test_a_bad_mix_is_refused_with_the_reason(text: str) -> None:
    with pytest.raises(ValueError):
        parse_mix(text)


@pytest.mark.parametrize("text", ["get=50,put=50,delete=0", "get=90,put=9,delete=1", "get=1,put=2,delete=3", "put=1"])
def test_op_choice_follows_the_ratios_exactly_over_a_grid(text: str) -> None:
    mix = parse_mix(text)
    counts = Counter(mix.choose(u) for u in grid())
    for op in OPS:
        assert counts[op] / GRID == pytest.approx(getattr(mix, op), abs=1 / GRID)


def test_op_choice_by_random_numbers_is_near_the_ratios() -> None:
    mix = parse_mix("get=70,put=20,delete=10")
    rng = random.Random(3)
    counts = Counter(mix.choose(rng.random()) for _ in range(50_000))
    assert counts["get"] / 50_000 == pytest.approx(0.7, abs=0.01)
    assert counts["put"] / 50_000 == pytest.approx(0.2, abs=0.01)
    assert counts["delete"] / 50_000 == pytest.approx(0.1, abs=0.01)


def test_an_op_with_ratio_zero_is_never_chosen_even_at_the_edge() -> None:
    mix = parse_mix("get=1,put=1")
    assert {mix.choose(u) for u in (0.0, 0.5, 1 - 1e-16, 1.0)} == {"get", "put"}


# --- key choice ------------------------------------------------------------------------------------


def zipf_probabilities(n: int, theta: float) -> list[float]:
    weights = [(rank + 1) ** -theta for rank in range(n)]
    total = math.fsum(weights)
    return [weight / total for weight in weights]


def draw(zipfian: Zipfian, samples: int, seed: int = 1) -> Counter[int]:
    rng = random.Random(seed)
    return Counter(zipfian.index(rng.random) for _ in range(samples))


@pytest.mark.parametrize(("n", "theta"), [(1, 0.99), (2, 0.99), (3, 0.5), (10, 0.99), (10_000, 0.99), (100, 3.0)])
def test_zipfian_ranks_stay_in_bounds(n: int, theta: float) -> None:
    counts = draw(Zipfian(n, theta), 20_000)
    assert min(counts) == 0
    assert max(counts) <= n - 1


@given(
    st.integers(min_value=1, max_value=10**9),
    st.floats(min_value=0, max_value=MAX_THETA),
    st.lists(st.floats(0, 1, exclude_max=True), min_size=1, max_size=8),
)
def test_every_zipfian_rank_is_a_valid_key_whatever_the_random_numbers(
    n: int, theta: float, uniforms: list[float]
) -> None:
    source = iter(uniforms * MAX_REJECTIONS)
    assert 0 <= Zipfian(n, theta).index(lambda: next(source)) < n


@pytest.mark.parametrize(("n", "theta"), [(10_000, 0.99), (1_000_000, 0.99), (10_000, 0.5), (1000, 1.5)])
def test_zipfian_frequencies_are_those_of_zipf(n: int, theta: float) -> None:
    samples = 200_000
    counts = draw(Zipfian(n, theta), samples)
    probabilities = zipf_probabilities(n, theta)
    # The hottest ranks one by one (YCSB's approximation is 10-20% off on ranks 2-4), then decades.
    ranges = [(rank, rank + 1) for rank in range(5)] + [(5, 10), (10, 100), (100, 1000), (1000, n)]
    for low, high in ranges:
        if low >= n:
            continue
        expected = math.fsum(probabilities[low:high])
        observed = sum(counts[rank] for rank in range(low, min(high, n))) / samples
        sigma = math.sqrt(expected * (1 - expected) / samples)
        assert abs(observed - expected) < 5 * sigma, (low, high, observed, expected)


def test_zipfian_is_skewed_toward_the_first_keys() -> None:
    n = 10_000
    counts = draw(Zipfian(n, 0.99), 100_000)
    assert counts[0] > 500 * 100_000 / n  # far above the 10 a uniform key would get
    assert counts[0] > counts[1] > counts[3] > counts[30] > counts[3000]


def test_zipfian_theta_zero_is_uniform() -> None:
    counts = draw(Zipfian(50, 0.0), 50_000)
    assert set(counts) == set(range(50))
    assert all(abs(count - 1000) < 5 * math.sqrt(1000) for count in counts.values())


@pytest.mark.parametrize(("n", "theta"), [(0, 0.5), (10, -0.1), (10, MAX_THETA + 1)])
def test_zipfian_refuses_bad_parameters(n: int, theta: float) -> None:
    with pytest.raises(ValueError):
        Zipfian(n, theta)


def test_uniform_key_choice_covers_every_key_evenly() -> None:
    chooser = KeyChooser(100, "uniform", 0.99)
    uniforms = grid()
    counts = Counter(chooser.index(lambda: next(uniforms)) for _ in range(GRID))
    assert set(counts) == set(range(100))
    assert set(counts.values()) == {GRID // 100}
    assert chooser.index(lambda: 1 - 1e-17) == 99


@given(st.integers(min_value=1, max_value=200), st.integers(min_value=0, max_value=10_000), st.data())
def test_each_key_is_written_by_exactly_one_connection(connections: int, extra_keys: int, data: st.DataObject) -> None:
    keys = connections + extra_keys
    index = data.draw(st.integers(min_value=0, max_value=keys - 1))
    connection = data.draw(st.integers(min_value=0, max_value=connections - 1))
    owned = owned_index(index, connection, connections, keys)
    assert 0 <= owned < keys
    assert owned % connections == connection
    assert abs(owned - index) < 2 * connections  # the drawn key's block, or the one before it


def test_values_have_the_size_asked_and_are_unique_per_write() -> None:
    assert len(make_value(3, 17, 100)) == 100
    assert make_value(3, 17, 100).startswith(b"3:17:")
    assert len(make_value(3, 17, 2)) == 2
    assert len({make_value(c, s, 32) for c in range(10) for s in range(100)}) == 1000


# --- the read-back ledger --------------------------------------------------------------------------


def test_an_acknowledged_lone_write_decides_its_key() -> None:
    ledger = WriteLedger()
    ledger.finish(ledger.begin(7, 1), ok=True)
    ledger.finish(ledger.begin(7, 2), ok=True)
    ledger.finish(ledger.begin(8, None), ok=True)
    assert ledger.checkable() == {7: 2, 8: None}
    assert ledger.skipped == 0


def test_overlapping_writes_make_a_key_unknown_until_a_lone_write_follows() -> None:
    ledger = WriteLedger()
    first = ledger.begin(7, 1)
    second = ledger.begin(7, 2)
    ledger.finish(second, ok=True)
    ledger.finish(first, ok=True)  # acked last, but which version won is unknown
    assert ledger.checkable() == {}
    assert ledger.skipped == 1
    ledger.finish(ledger.begin(7, 3), ok=True)
    assert ledger.checkable() == {7: 3}
    assert ledger.skipped == 0


def test_an_earlier_value_is_not_kept_while_overlapping_writes_are_in_flight() -> None:
    ledger = WriteLedger()
    ledger.finish(ledger.begin(7, 1), ok=True)
    first, second = ledger.begin(7, 2), ledger.begin(7, 3)
    ledger.finish(first, ok=True)
    ledger.finish(second, ok=True)
    assert 7 not in ledger.checkable()


def test_a_failed_write_makes_its_key_unknown_for_good() -> None:
    ledger = WriteLedger()
    ledger.finish(ledger.begin(7, 1), ok=False)
    ledger.finish(ledger.begin(7, 2), ok=True)
    ledger.finish(ledger.begin(9, 1), ok=True)
    assert ledger.checkable() == {9: 1}
    assert ledger.skipped == 1


# --- statistics and the report ---------------------------------------------------------------------


def test_ratio_is_ours_over_theirs_and_none_without_a_denominator() -> None:
    assert ratio(50.0, 200.0) == 0.25
    assert ratio(3.0, 0.0) is None
    assert ratio(None, 1.0) is None
    assert ratio(1.0, None) is None


def stats_with(latencies_ms: list[float], **fields: Any) -> Stats:
    stats = Stats(check=empty_check(), **fields)
    for i, latency in enumerate(latencies_ms):
        op = "get" if i % 2 else "put"
        stats.histograms[op].record(latency / 1e3)
        stats.ops[op] += 1
    return stats


def test_stats_round_trip_through_a_dict_and_merge_like_one_run() -> None:
    a = stats_with([1.0, 2.0, 3.0], elapsed=2.0, hits=1)
    b = stats_with([10.0, 20.0], elapsed=2.5, misses=4)
    a.error("TIMEOUT", "slow")
    restored = Stats.from_dict(json.loads(json.dumps(b.to_dict())))
    assert restored.to_dict() == b.to_dict()
    a.merge(restored)
    assert a.total_ops == 5
    assert a.elapsed == 2.5
    assert (a.hits, a.misses, a.errors["TIMEOUT"]) == (1, 4, 1)
    assert a.overall().max == pytest.approx(0.02)


def test_the_comparison_divides_ours_by_redis() -> None:
    ours = summarize_target("kv", "cluster", "a:1", stats_with([4.0] * 10, elapsed=1.0))
    redis = summarize_target("redis", "redis", "b:2", stats_with([1.0] * 40, elapsed=1.0))
    comparison = compare([ours, redis])
    assert comparison is not None
    assert comparison["throughput_ratio"] == pytest.approx(10 / 40)
    assert comparison["p99_ratio"] == pytest.approx(4.0, rel=0.01)
    assert compare([ours]) is None


def test_the_text_report_shows_configuration_targets_and_ratios() -> None:
    options = parse_options(["--cluster", "127.0.0.1:1", "--redis", "127.0.0.1:2", "--duration", "3"])
    ours = summarize_target("kv", "cluster", "127.0.0.1:1", stats_with([2.0, 4.0], elapsed=1.0))
    theirs = summarize_target("redis", "redis", "127.0.0.1:2", stats_with([1.0, 1.0, 1.0, 1.0], elapsed=1.0))
    report = {
        "started_at": "now",
        "config": run_config(options),
        "targets": [ours, theirs],
        "comparison": compare([ours, theirs]),
    }
    text = format_report(report)
    assert "duration=3s warmup=2s connections=50 pipeline=1 processes=1" in text
    assert f"{os.cpu_count()} CPUs" in text
    assert "Python 3." in text
    assert "kv cluster 127.0.0.1:1" in text and "redis 127.0.0.1:2" in text
    assert "throughput  2 ops/s" in text
    assert "kv cluster / redis: throughput 0.50x" in text
    assert "read-back   PASSED" in text


def test_worker_progress_combines_into_the_slowest_phase() -> None:
    rows = [
        [PHASE_MEASURE, 100, 1, 2.0],
        [PHASE_MEASURE, 50, 0, 2.5],
        [PHASE_CHECK, 7, 0, 0.1],
    ]
    assert combine_progress(rows) == (PHASE_MEASURE, 2.5, 150, 1)


def test_the_progress_line_shows_phase_rate_and_errors() -> None:
    line = progress_line("kv", PhaseProgress(PHASE_MEASURE, elapsed=2.0, ops=5000, errors=3), planned=10)
    assert line == "kv: measuring 2.0/10s  5,000 ops  2,500 ops/s  3 errors"
    assert "check 1.0s " in progress_line("kv", PhaseProgress(PHASE_CHECK, elapsed=1.0, ops=1, errors=0), planned=0)


# --- options ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "argv",
    [
        [],  # no target
        ["--cluster", "127.0.0.1:x"],
        ["--redis", "127.0.0.1:1", "--mix", "get=0"],
        ["--redis", "127.0.0.1:1", "--keys", "10", "--connections", "20"],
        ["--redis", "127.0.0.1:1", "--processes", "4", "--connections", "2"],
        ["--redis", "127.0.0.1:1", "--zipf-theta", "-1"],
        ["--redis", "127.0.0.1:1", "--connections", "0"],
        ["--redis", "127.0.0.1:1", "--duration", "-1"],
        ["--cluster", "127.0.0.1:1", "--r", "0"],
    ],
)
def test_bad_options_exit_2_with_a_message(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        parse_options(argv)
    assert exit_info.value.code == 2
    assert "kv bench: error:" in capsys.readouterr().err


def test_ops_turn_the_duration_into_a_cap() -> None:
    assert parse_options(["--redis", "h:1"]).duration == 10.0
    assert parse_options(["--redis", "h:1", "--ops", "5"]).duration == OPS_MODE_TIME_CAP
    assert parse_options(["--redis", "h:1", "--ops", "5", "--duration", "2"]).duration == 2.0


def test_a_read_only_mix_may_use_fewer_keys_than_connections() -> None:
    assert parse_options(["--redis", "h:1", "--mix", "get=1", "--keys", "1"]).keys == 1


def test_kv_bench_dispatches_from_the_kv_cli(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["bench", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for text in ("--cluster", "--redis", "--pipeline", "--processes", "--json", "--plot", "examples:"):
        assert text in out
    assert "kv bench" in cli.build_parser().format_help()


def test_split_of_connections_and_ops_over_processes() -> None:
    options = parse_options(["--redis", "h:1", "--connections", "7", "--processes", "3", "--ops", "10"])
    specs = worker_specs(TargetSpec("redis", "redis", "h:1"), options)
    assert [spec.connections for spec in specs] == [3, 2, 2]
    assert [spec.first_connection for spec in specs] == [0, 3, 5]
    assert [spec.ops for spec in specs] == [4, 3, 3]
    assert {spec.total_connections for spec in specs} == {7}


# --- the worker against in-memory fakes ------------------------------------------------------------


class FakeStore:
    """A key-value store that applies each write at a random moment while it is in flight."""

    def __init__(self, seed: int = 0, lose_every: int = 0, fail_every: int = 0) -> None:
        self.data: dict[bytes, bytes] = {}
        self.rng = random.Random(seed)
        self.lose_every = lose_every  # silently drop every n-th PUT (a store that loses writes)
        self.fail_every = fail_every  # answer every n-th write with an error
        self.writes = 0

    def connection(self) -> FakeConnection:
        return FakeConnection(self)


class FakeConnection:
    def __init__(self, store: FakeStore) -> None:
        self.store = store

    def connect(self) -> None:
        """Nothing to open: the store is in memory."""

    def execute(self, op: str, key: bytes, value: bytes | None, timeout: float) -> bytes | None:
        store = self.store
        gevent.sleep(store.rng.random() * 0.001)
        if op == "get":
            return store.data.get(key)
        store.writes += 1
        if store.fail_every and store.writes % store.fail_every == 0:
            raise OpError("UNAVAILABLE", "1 of 2 replicas acked")
        if op == "put":
            assert value is not None
            if not (store.lose_every and store.writes % store.lose_every == 0):
                store.data[key] = value
        else:
            store.data.pop(key, None)
        gevent.sleep(store.rng.random() * 0.001)
        return None

    def read_back(self, key: bytes, timeout: float) -> bytes | None:
        return self.store.data.get(key)

    def close(self) -> None:
        """Nothing to close."""


def make_spec(**overrides: Any) -> WorkerSpec:
    fields: dict[str, Any] = {
        "target": TargetSpec("fake", "fake", "nowhere"),
        "process": 0,
        "first_connection": 0,
        "connections": 4,
        "total_connections": 4,
        "pipeline": 4,
        "duration": 0.3,
        "ops": None,
        "warmup": 0.05,
        "keys": 40,
        "distribution": "zipfian",
        "zipf_theta": 0.99,
        "mix": "get=40,put=40,delete=20",
        "value_size": 32,
        "r": None,
        "w": None,
        "timeout": 1.0,
        "seed": 1,
    }
    fields.update(overrides)
    return WorkerSpec(**fields)


def run_worker(spec: WorkerSpec, store: FakeStore) -> Stats:
    worker = Worker(spec, connection_factory=store.connection)
    worker.connect()
    try:
        return worker.run()
    finally:
        worker.close()


def test_the_read_back_check_passes_on_a_store_that_keeps_every_write() -> None:
    stats = run_worker(make_spec(), FakeStore())
    check = stats.check
    assert stats.total_ops > 0 and stats.warmup_ops > 0
    assert check["keys_checked"] > 0 and check["expected_absent"] > 0
    assert check["mismatches"] == 0 and check_passed(check)
    assert check["keys_checked"] + check["skipped_uncertain"] <= 40


def test_the_read_back_check_catches_a_store_that_loses_writes() -> None:
    stats = run_worker(make_spec(mix="put=1", pipeline=1), FakeStore(lose_every=5))
    assert stats.check["mismatches"] > 0
    assert not check_passed(stats.check)
    example = stats.check["mismatch_examples"][0]
    assert example.startswith("bench:") and ": expected '" in example and ", read " in example


def test_failed_writes_are_counted_by_kind_and_their_keys_skipped() -> None:
    stats = run_worker(make_spec(), FakeStore(fail_every=7))
    assert stats.errors["UNAVAILABLE"] > 0
    assert stats.error_examples[0] == "UNAVAILABLE: 1 of 2 replicas acked"
    assert stats.check["skipped_uncertain"] > 0
    assert stats.check["mismatches"] == 0


def test_ops_mode_measures_exactly_the_ops_asked() -> None:
    stats = run_worker(make_spec(ops=250, duration=30.0), FakeStore())
    assert stats.total_ops == 250
    assert stats.ended_by == "ops"
    assert 0 < stats.elapsed < 30


def test_the_same_seed_draws_the_same_operations() -> None:
    def ops_of(seed: int) -> list[tuple[str, bytes]]:
        seen: list[tuple[str, bytes]] = []

        class Recording(FakeConnection):
            def execute(self, op: str, key: bytes, value: bytes | None, timeout: float) -> bytes | None:
                seen.append((op, key))
                return super().execute(op, key, value, timeout)

        store = FakeStore()
        run_worker(
            make_spec(seed=seed, connections=1, total_connections=1, pipeline=1, ops=50), _with(store, Recording)
        )
        return seen[:50]

    assert ops_of(5) == ops_of(5)
    assert ops_of(5) != ops_of(6)


def _with(store: FakeStore, connection_class: type[FakeConnection]) -> FakeStore:
    store.connection = lambda: connection_class(store)  # type: ignore[method-assign]
    return store


# --- smoke runs against real servers ---------------------------------------------------------------

PERCENTILE_KEYS = ("p50", "p90", "p99", "p99.9", "max")


def assert_report_shape(report: dict[str, Any], kinds: list[str]) -> None:
    assert set(report) >= {"config", "targets", "comparison", "started_at"}
    config = report["config"]
    assert config["host"]["cpu_count"] == os.cpu_count()
    assert config["host"]["python"]
    assert [target["kind"] for target in report["targets"]] == kinds
    for target in report["targets"]:
        assert set(target) >= {"ops", "ops_per_sec", "errors", "latency_ms", "by_op", "check", "histogram"}
        assert target["ops"] > 0 and target["ops_per_sec"] > 0
        latencies = [target["latency_ms"][key] for key in PERCENTILE_KEYS]
        assert latencies == sorted(latencies), latencies
        assert latencies[0] > 0
        assert Histogram.from_dict(target["histogram"]).count == target["ops"]
        check = target["check"]
        assert check["passed"] and check["mismatches"] == 0 and check["keys_checked"] > 0
        assert target["errors"]["total"] == 0, target["error_examples"]


def run_bench(argv: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, dict, str]:
    path = tmp_path / "report.json"
    code = bench_main([*argv, "--json", str(path)])
    out = capsys.readouterr().out
    return code, json.loads(path.read_text()), out


SHORT = ["--duration", "0.4", "--warmup", "0.1", "--connections", "4"]  # a smoke run: shape, not speed


def test_smoke_run_against_an_in_process_node(
    make_cluster: Callable[..., InProcessCluster], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cluster = make_cluster(1, KV_LOG_COMMANDS="false")
    code, report, out = run_bench(["--cluster", cluster.addresses[0], *SHORT], tmp_path, capsys)
    assert code == EXIT_OK
    assert_report_shape(report, ["cluster"])
    assert report["comparison"] is None
    assert "kv cluster" in out and "read-back   PASSED" in out


def test_requests_go_to_the_node_that_holds_the_key(
    make_cluster: Callable[..., InProcessCluster], capsys: pytest.CaptureFixture[str]
) -> None:
    # With N=1 a node that coordinated a key it does not hold would send REPLICA_* requests.
    cluster = make_cluster(3, KV_N="1", KV_W="1", KV_R="1", KV_LOG_COMMANDS="false")
    code = bench_main(["--cluster", ",".join(cluster.addresses), *SHORT, "--pipeline", "2", "--json", "-"])
    captured = capsys.readouterr()
    assert code == EXIT_OK
    report = json.loads(captured.out)  # with --json -, stdout is the JSON alone
    assert "read-back   PASSED" in captured.err
    assert_report_shape(report, ["cluster"])
    for node_id in cluster.node_ids:
        registry = cluster.node(node_id).metrics.registry
        served = registry.get_sample_value("kv_requests_total", {"op": "GET", "status": "OK"}) or 0
        served += registry.get_sample_value("kv_requests_total", {"op": "GET", "status": "NOT_FOUND"}) or 0
        assert served > 0, node_id
        for op in ("REPLICA_GET", "REPLICA_PUT"):
            assert registry.get_sample_value("kv_requests_total", {"op": op, "status": "OK"}) is None


def test_smoke_run_against_a_replicated_cluster_with_worker_processes(
    make_cluster: Callable[..., InProcessCluster], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cluster = make_cluster(3, KV_LOG_COMMANDS="false")  # N=2, W=2, R=1
    argv = ["--cluster", ",".join(cluster.addresses), "--duration", "0.5", "--warmup", "0", "--connections", "4"]
    code, report, _ = run_bench([*argv, "--processes", "2", "--mix", "get=50,put=40,delete=10"], tmp_path, capsys)
    assert code == EXIT_OK
    assert_report_shape(report, ["cluster"])
    assert report["config"]["processes"] == 2


def test_a_quorum_above_the_replica_count_is_refused_before_any_load(
    make_cluster: Callable[..., InProcessCluster], capsys: pytest.CaptureFixture[str]
) -> None:
    cluster = make_cluster(1, KV_LOG_COMMANDS="false")
    assert bench_main(["--cluster", cluster.addresses[0], "--w", "2", "--duration", "0.2"]) == EXIT_ERROR
    assert "--w 2 exceeds the cluster's 1 replicas" in capsys.readouterr().err


def test_an_unreachable_target_exits_2_with_the_reason(capsys: pytest.CaptureFixture[str]) -> None:
    code = bench_main(["--redis", f"127.0.0.1:{free_port()}", "--duration", "0.2", "--warmup", "0"])
    assert code == EXIT_ERROR
    assert "cannot connect to redis" in capsys.readouterr().err


def test_smoke_run_against_redis(redis_server: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, report, out = run_bench(["--redis", redis_server, *SHORT, "--pipeline", "4"], tmp_path, capsys)
    assert code == EXIT_OK
    assert_report_shape(report, ["redis"])
    assert f"redis {redis_server}" in out


def test_both_targets_in_one_run_report_the_ratio(
    redis_server: str,
    make_cluster: Callable[..., InProcessCluster],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    cluster = make_cluster(1, KV_LOG_COMMANDS="false")
    argv = ["--cluster", cluster.addresses[0], "--redis", redis_server, *SHORT, "--plot", str(tmp_path / "p.png")]
    if not _has_matplotlib():
        argv = argv[:-2]
    code, report, out = run_bench(argv, tmp_path, capsys)
    assert code == EXIT_OK
    assert_report_shape(report, ["cluster", "redis"])
    comparison = report["comparison"]
    assert comparison["throughput_ratio"] == pytest.approx(
        report["targets"][0]["ops_per_sec"] / report["targets"][1]["ops_per_sec"]
    )
    assert comparison["p99_ratio"] > 0
    assert "kv cluster / redis: throughput" in out
    if _has_matplotlib():
        assert (tmp_path / "p.png").read_bytes().startswith(b"\x89PNG")


def _has_matplotlib() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def test_the_protocol_floor_serves_a_run_that_reads_back(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The yardstick in bench/benchmarks.py must be a correct store, or its figure means nothing."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "bench.protocol_floor", "--port", str(port)],
        cwd=Path(__file__).resolve().parents[2],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_until_listening(port, process, "the protocol floor")
        argv = ["--cluster", f"127.0.0.1:{port}", *SHORT, "--mix", "get=50,put=40,delete=10", "--pipeline", "4"]
        code, report, out = run_bench(argv, tmp_path, capsys)
    finally:
        process.terminate()
        process.wait(timeout=10)
    assert code == EXIT_OK
    assert_report_shape(report, ["cluster"])
    assert "read-back   PASSED" in out
