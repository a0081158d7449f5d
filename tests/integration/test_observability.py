"""What operators see: Prometheus metrics on /metrics and JSON-lines logs on stdout."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from client import protocol
from client.protocol import PeerState, Status

if TYPE_CHECKING:
    from containers import Cluster

    from client.client import Client

NODE_IDS = ("node1", "node2", "node3")

TARGET = "node1"
PUTS = 25


def put_count(cluster: Cluster, node: str) -> float:
    return cluster.sample(node, "kv_requests_total", default=0.0, op="PUT", status="OK")


def test_metrics_parse_and_name_every_family(cluster: Cluster) -> None:
    for node in NODE_IDS:
        status, body = cluster.http(node, "/metrics")
        assert status == 200 and "# TYPE kv_requests_total counter" in body, body[:500]
        families = cluster.metrics(node)
        for family in ("kv_requests", "kv_request_duration_seconds", "kv_keys", "kv_peer_up", "kv_connections"):
            assert family in families, f"{node} /metrics lacks {family}: {sorted(families)}"
        assert families["kv_requests"].type == "counter"
        assert families["kv_request_duration_seconds"].type == "histogram"
        assert families["kv_keys"].type == "gauge"
        assert cluster.sample_value(families, "kv_keys") is not None


def test_put_counter_rises_by_the_puts_sent_to_that_node(cluster: Cluster, kv: Client) -> None:
    address = kv.node_address(TARGET)
    before = put_count(cluster, TARGET)
    for i in range(PUTS):
        frame = kv.call_node(address, protocol.Put(f"obs-{uuid.uuid4().hex[:8]}-{i}".encode(), b"v"))
        assert frame.code == Status.OK
    after = put_count(cluster, TARGET)
    assert after - before >= PUTS, f"kv_requests_total{{op=PUT,status=OK}} on {TARGET}: {before} -> {after}"

    # Every PUT counted was also timed by the latency histogram.
    families = cluster.metrics(TARGET)
    duration_count = cluster.sample_value(families, "kv_request_duration_seconds_count", op="PUT")
    assert duration_count is not None and duration_count >= after


def test_latency_histogram_has_a_50_microsecond_bucket(cluster: Cluster, kv: Client) -> None:
    address = kv.node_address(TARGET)
    kv.call_node(address, protocol.Put(f"hist-{uuid.uuid4().hex[:8]}".encode(), b"v"))
    kv.call_node(address, protocol.Ping())
    families = cluster.metrics(TARGET)
    for op in ("PUT", "PING"):
        small = cluster.sample_value(families, "kv_request_duration_seconds_bucket", op=op, le="5e-05")
        assert small is not None, f"no kv_request_duration_seconds_bucket{{op={op},le=5e-05}} on {TARGET}"
        # Buckets are cumulative and end in +Inf, which equals the count.
        inf = cluster.sample_value(families, "kv_request_duration_seconds_bucket", op=op, le="+Inf")
        count = cluster.sample_value(families, "kv_request_duration_seconds_count", op=op)
        assert inf is not None and inf == count and 0 <= small <= inf, (op, small, inf, count)
        assert count >= 1


def test_kv_keys_counts_live_keys(cluster: Cluster, kv: Client) -> None:
    before = sum(cluster.sample(node, "kv_keys") for node in NODE_IDS)
    key = f"count-{uuid.uuid4().hex[:8]}"
    kv.put(key, b"v")
    assert sum(cluster.sample(node, "kv_keys") for node in NODE_IDS) == before + 2
    kv.delete(key)
    assert sum(cluster.sample(node, "kv_keys") for node in NODE_IDS) == before


def test_every_node_reports_its_peers_up(cluster: Cluster) -> None:
    for node in NODE_IDS:
        families = cluster.metrics(node)
        for peer in NODE_IDS:
            value = cluster.sample_value(families, "kv_peer_up", peer=peer)
            if peer == node:
                assert value is None, f"{node} reports itself as a peer"
            else:
                assert value == 1, f"{node} reports kv_peer_up{{peer={peer}}} = {value}"


def test_every_log_line_is_json_with_the_common_fields(
    cluster: Cluster, kv: Client, wait_until: Callable[..., Any]
) -> None:
    key = f"logged-{uuid.uuid4().hex[:8]}"
    address = kv.node_address(TARGET)
    kv.call_node(address, protocol.Put(key.encode(), b"v"))
    kv.call_node(address, protocol.Get(key.encode()))

    def command_line_logged() -> dict:
        lines = [line for line in cluster.log_lines(TARGET) if line.get("event") == "command"]
        return next((line for line in lines if line.get("key") == key and line.get("op") == "GET"), None)

    command = wait_until(command_line_logged, 10, message=f"a command log line for GET {key} on {TARGET}")
    assert command["status"] == "OK"
    assert isinstance(command["duration_ms"], int | float) and command["duration_ms"] >= 0
    assert command["node"] == TARGET

    for node in NODE_IDS:
        lines = cluster.log_lines(node)
        assert lines, f"{node} logged nothing"
        for line in lines:
            missing = {"timestamp", "level", "event", "node"} - set(line)
            assert not missing, f"{node} log line lacks {missing}: {line}"
            assert line["node"] == node, line
        events = {line["event"] for line in lines}
        assert "node_started" in events, events
        for line in lines:
            if line["event"] == "command":
                missing = {"op", "key", "status", "duration_ms"} - set(line)
                assert not missing, f"{node} command line lacks {missing}: {line}"


def test_hung_peer_is_reported_down(cluster: Cluster, wait_until: Callable[..., Any]) -> None:
    victim, observer = "node3", "node1"
    cluster.pause(victim)  # frozen: its connections stay open, but PINGs get no reply
    try:
        # Peers are pinged every second with a 1 s ping timeout; silence makes a peer suspect after
        # 2 s (kv_peer_up 0) and down after 5 s: 8 s is ample to notice.
        wait_until(
            lambda: cluster.sample(observer, "kv_peer_up", peer=victim) == 0,
            8,
            interval=0.2,
            message=f"{observer} to report kv_peer_up{{peer={victim}}} = 0 while {victim} is frozen",
        )
        # And after 5 s of silence the failure detector declares it down, so writes stop waiting on it.
        wait_until(
            lambda: cluster.members(observer)[victim].state == PeerState.DOWN,
            12,
            interval=0.2,
            message=f"{observer}'s MEMBERS to show {victim} DOWN while it is frozen",
        )
    finally:
        cluster.unpause(victim)  # waits until every node sees every peer up again
    assert cluster.members(observer)[victim].state == PeerState.UP


def test_killed_peer_is_reported_down_then_up_again(cluster: Cluster, wait_until: Callable[..., Any]) -> None:
    victim, observer = "node3", "node1"
    cluster.kill(victim)
    try:
        for node in NODE_IDS:
            if node == victim:
                continue
            wait_until(
                lambda node=node: cluster.sample(node, "kv_peer_up", peer=victim) == 0,
                15,
                interval=0.2,
                message=f"{node} to report kv_peer_up{{peer={victim}}} = 0 after SIGKILL",
            )
        assert cluster.sample(observer, "kv_peer_up", peer="node2") == 1
        assert any(
            line.get("event") == "peer_down" and line.get("peer") == victim for line in cluster.log_lines(observer)
        ), f"{observer} logged no peer_down for {victim}"
    finally:
        cluster.start(victim)  # waits until every node reports every peer up again
    assert cluster.sample(observer, "kv_peer_up", peer=victim) == 1
