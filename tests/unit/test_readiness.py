"""Readiness (``/readyz``): a node says it can coordinate only once its store is open and it has a
verdict on every peer, so writes sent the moment every node is ready succeed; ``/healthz`` says
whether the node is whole; the failure detector's verdicts behind it; and the container
HEALTHCHECK, which passes on readiness and reports a degraded node without failing it."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from cluster import DEFAULT_SETTINGS, InProcessCluster, configure_logging, http_get
from gevent import subprocess
from polling import wait_until

from client.protocol import PeerState
from service.failure_detector import FailureDetector


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_peer_is_undecided_until_heard_from_or_given_up_on() -> None:
    clock = FakeClock()
    detector = FailureDetector(["b", "c"], clock)
    assert detector.undecided() == ["b", "c"]
    detector.heartbeat("b")
    detector.failure("c")  # one failed ping is no verdict: c may be starting
    assert detector.undecided() == ["c"]
    clock.now = detector.down_after
    detector.evaluate()
    assert detector.state("c") is PeerState.DOWN
    assert detector.undecided() == []  # given up on
    detector.failure("b")
    assert detector.undecided() == []  # heard from once: a verdict, whatever it is now


@pytest.fixture
def unstarted(tmp_path: Path) -> Iterator[InProcessCluster]:
    """Three configured nodes, none started yet (each test starts them as it needs)."""
    configure_logging()
    settings = {**DEFAULT_SETTINGS, "KV_LOG_COMMANDS": "false"}
    cluster = InProcessCluster(tmp_path, ["node1", "node2", "node3"], settings)
    yield cluster
    cluster.stop_all()


def test_a_node_is_not_ready_until_it_has_heard_from_its_peers(unstarted: InProcessCluster) -> None:
    node1 = unstarted.start("node1")
    node1.monitor.beat()  # its peers do not answer yet
    status, body = http_get(node1.http_port, "/readyz")
    assert status == 503
    assert "node2" in body
    assert "node3" in body
    assert http_get(node1.http_port, "/healthz") == (200, "ok\n")  # alive and whole, just not ready
    assert http_get(node1.http_port, "/livez") == (200, "ok\n")

    unstarted.start("node2")
    unstarted.start("node3")
    wait_until(lambda: http_get(node1.http_port, "/readyz") == (200, "ok\n"), 5, message="node1 to be ready")


def test_writes_sent_as_soon_as_every_node_is_ready_all_succeed(unstarted: InProcessCluster) -> None:
    for node_id in unstarted.node_ids:
        unstarted.start(node_id)
    for node_id in unstarted.node_ids:
        port = unstarted.node(node_id).http_port
        wait_until(lambda port=port: http_get(port, "/readyz")[0] == 200, 5, message=f"{node_id} to be ready")
    with unstarted.running_client() as client:
        for i in range(200):
            client.put(f"ready{i}", b"v")  # raises on any UNAVAILABLE
        assert all(client.get(f"ready{i}") == b"v" for i in range(200))


def test_a_draining_node_is_neither_healthy_nor_ready(unstarted: InProcessCluster) -> None:
    node = unstarted.start("node1")
    node._serving = False  # what stop() does first
    try:
        assert http_get(node.http_port, "/healthz")[0] == 503
        assert http_get(node.http_port, "/readyz")[0] == 503
        assert http_get(node.http_port, "/livez") == (200, "ok\n")  # alive: no reason to restart it
    finally:
        node._serving = True


def healthcheck(port: int) -> tuple[int, str]:
    """The container HEALTHCHECK against ``port``: its exit status, and what it printed."""
    result = subprocess.run(
        [sys.executable, "-m", "service.healthcheck"],
        env={**os.environ, "KV_HTTP_PORT": str(port)},
        capture_output=True,
        text=True,
        timeout=10,
        check=False,
    )
    return result.returncode, result.stdout + result.stderr


def test_the_container_healthcheck_passes_once_ready_and_says_when_degraded(unstarted: InProcessCluster) -> None:
    node1 = unstarted.start("node1")
    node1.monitor.beat()
    status, output = healthcheck(node1.http_port)
    assert status == 1
    assert "not ready" in output
    assert "node2" in output

    for node_id in ("node2", "node3"):
        unstarted.start(node_id)
    wait_until(lambda: healthcheck(node1.http_port)[0] == 0, 5, message="the healthcheck to pass")
    node1.store.health.no_room("the disk holding /data is full", 0.0)
    status, output = healthcheck(node1.http_port)
    assert status == 0  # still healthy: restarting it would not free the disk
    assert "degraded: node1: storage full: the disk holding /data is full" in output
