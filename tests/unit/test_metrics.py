"""The hot-path counters: what they expose, that a coordinator counts each replica write, and the
recent request window STATS reports."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
from cluster import InProcessCluster
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, generate_latest

from client import protocol
from client.address import parse_address
from client.connection import Connection
from service.metrics import (
    LATENCY_BUCKETS,
    WINDOW_SECONDS,
    WINDOW_TICK_SECONDS,
    HotCounter,
    Metrics,
    RequestStats,
    histogram_quantile,
)


def test_a_hot_counter_exposes_one_total_per_label_set() -> None:
    registry = CollectorRegistry()
    counter = HotCounter("kv_things", "Things, by colour", ["colour"])
    registry.register(counter)
    counter.inc("red")
    counter.inc("red")
    counter.inc("blue")
    assert registry.get_sample_value("kv_things_total", {"colour": "red"}) == 2
    assert registry.get_sample_value("kv_things_total", {"colour": "blue"}) == 1
    assert b"# TYPE kv_things_total counter" in generate_latest(registry)


def test_requests_are_counted_and_timed_by_op_and_status() -> None:
    metrics = Metrics()
    metrics.observe_request("GET", "OK", 0.00003)
    metrics.observe_request("GET", "NOT_FOUND", 0.2)
    registry = metrics.registry
    assert registry.get_sample_value("kv_requests_total", {"op": "GET", "status": "OK"}) == 1
    assert registry.get_sample_value("kv_requests_total", {"op": "GET", "status": "NOT_FOUND"}) == 1
    assert registry.get_sample_value("kv_request_duration_seconds_bucket", {"op": "GET", "le": "5e-05"}) == 1
    assert registry.get_sample_value("kv_request_duration_seconds_count", {"op": "GET"}) == 2


def test_the_coordinator_counts_each_replica_write(make_cluster: Callable[..., InProcessCluster]) -> None:
    cluster = make_cluster(3, KV_LOG_COMMANDS="false")  # N=2, W=2
    key = b"counted"
    primary, other = cluster.replicas_of(key)
    connection = Connection(*parse_address(cluster.address(primary)))
    connection.connect()
    try:
        connection.call(protocol.Put(key, b"v"))
    finally:
        connection.close()
    registry = cluster.node(primary).metrics.registry
    assert registry.get_sample_value("kv_replica_writes_total", {"peer": primary, "status": "ok"}) == 1
    assert registry.get_sample_value("kv_replica_writes_total", {"peer": other, "status": "ok"}) == 1


# --- the recent request window (STATS) -------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def bucket_counts(**by_bound: int) -> list[int]:
    """Counts per latency bucket, given as ``b<index>=count``; the rest 0."""
    counts = [0] * (len(LATENCY_BUCKETS) + 1)
    for name, count in by_bound.items():
        counts[int(name[1:])] = count
    return counts


def test_quantile_interpolates_within_its_bucket_as_prometheus_does() -> None:
    # 100 observations in (50 us, 100 us]: the 99th percentile is 99% of the way through that bucket.
    assert histogram_quantile(0.99, bucket_counts(b1=100)) == pytest.approx(0.0001 - 0.00005 * 0.01)
    # In the first bucket the lower bound is 0.
    assert histogram_quantile(0.5, bucket_counts(b0=10)) == pytest.approx(0.000025)
    # 98 fast and 2 slow ones: p99 falls in the slow bucket, half-way through it.
    assert histogram_quantile(0.99, bucket_counts(b0=98, b5=2)) == pytest.approx(0.001 + (0.0025 - 0.001) * 0.5)
    # Above the last bound there is no upper bound: the answer is the last one.
    assert histogram_quantile(0.99, bucket_counts(**{f"b{len(LATENCY_BUCKETS)}": 5})) == LATENCY_BUCKETS[-1]
    assert math.isnan(histogram_quantile(0.99, bucket_counts()))


@given(st.lists(st.integers(0, 50), min_size=len(LATENCY_BUCKETS) + 1, max_size=len(LATENCY_BUCKETS) + 1))
def test_quantiles_grow_with_the_quantile_and_stay_in_the_buckets_range(counts: list[int]) -> None:
    if not sum(counts):
        return
    low, median, high = (histogram_quantile(q, counts) for q in (0.01, 0.5, 0.99))
    assert 0 <= low <= median <= high <= LATENCY_BUCKETS[-1]


def test_the_window_counts_recent_requests_and_their_p99() -> None:
    clock = FakeClock()
    stats = RequestStats(now=clock)
    for _ in range(99):
        stats.observe("GET", "OK", 0.00003)  # first bucket
    stats.observe("PUT", "OK", 0.2)  # (0.1 s, 0.25 s]
    for _ in range(100):
        stats.observe("REPLICA_PUT", "OK", 0.00003)
    clock.now += 2.0
    window = stats.window()
    assert window.window_ms == 2000
    assert (window.requests, window.client_requests) == (200, 100)
    assert window.client_per_second == 50.0
    # 1 slow request in 100: the client p99 is at the very top of the first bucket's rank.
    assert window.client_p99_us == round(histogram_quantile(0.99, bucket_counts(b0=99, b11=1)) * 1_000_000)
    assert window.p99_us == round(histogram_quantile(0.99, bucket_counts(b0=199, b11=1)) * 1_000_000)


def test_requests_older_than_the_window_drop_out_of_it() -> None:
    clock = FakeClock()
    stats = RequestStats(now=clock)
    stats.observe("GET", "OK", 0.001)
    for _ in range(WINDOW_SECONDS + 1):  # one tick a second, as the node's task does
        clock.now += WINDOW_TICK_SECONDS
        stats.tick()
    window = stats.window()
    assert window.requests == 0
    assert (window.p99_us, window.client_p99_us) == (0, 0)
    assert window.window_ms == WINDOW_SECONDS * 1000
    stats.observe("DELETE", "OK", 0.001)
    assert stats.window().client_requests == 1
    # The exposition still counts everything: the window is a view, not a reset.
    registry = CollectorRegistry()
    registry.register(stats)
    assert registry.get_sample_value("kv_request_duration_seconds_count", {"op": "GET"}) == 1
