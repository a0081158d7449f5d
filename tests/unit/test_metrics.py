"""The hot-path counters: what they expose, and that a coordinator counts each replica write."""

from __future__ import annotations

from collections.abc import Callable

from cluster import InProcessCluster
from prometheus_client import CollectorRegistry, generate_latest

from client import protocol
from client.address import parse_address
from client.connection import Connection
from service.metrics import HotCounter, Metrics


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
