"""Fixtures for tests that run real in-process nodes (see ``cluster.py``)."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from cluster import LOG_SINK, InProcessCluster, LogSink, free_port, start_cluster
from polling import wait_until_listening
from raw_connection import RawConnection


@pytest.fixture
def make_cluster(tmp_path: Path) -> Iterator[Callable[..., InProcessCluster]]:
    """Starts clusters with chosen settings: ``make_cluster(1, KV_LOG_COMMANDS="false")``, and
    ``proxied=("node3",)`` to put nodes behind a ``PausableProxy``.

    Every node of every cluster started is stopped at teardown, whatever the test did.
    """
    clusters: list[InProcessCluster] = []

    def make(n_nodes: int = 3, **settings: Any) -> InProcessCluster:
        directory = tmp_path / f"cluster{len(clusters)}"
        directory.mkdir()
        cluster = start_cluster(directory, n_nodes, **settings)
        clusters.append(cluster)
        return cluster

    try:
        yield make
    finally:
        for cluster in clusters:
            cluster.stop_all()


@pytest.fixture
def cluster(make_cluster: Callable[..., InProcessCluster]) -> InProcessCluster:
    """Three nodes with N=2, W=2, R=1 (the production defaults)."""
    return make_cluster(3)


@pytest.fixture
def log_sink() -> Iterator[LogSink]:
    """The node log lines written during this test (JSON, one dict per line via ``events()``)."""
    LOG_SINK.clear()
    yield LOG_SINK
    LOG_SINK.clear()


@pytest.fixture
def connect() -> Iterator[Callable[[str], RawConnection]]:
    """Opens ``RawConnection``s to an address; every one is closed after the test."""
    opened: list[RawConnection] = []

    def open_connection(address: str) -> RawConnection:
        connection = RawConnection(address)
        opened.append(connection)
        return connection

    yield open_connection
    for connection in opened:
        connection.close()


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[str]:
    """A throw-away redis-server on 127.0.0.1 with no persistence; skipped where none is installed."""
    executable = shutil.which("redis-server")
    if executable is None:
        pytest.skip("redis-server is not installed")
    port = free_port()
    directory = tmp_path / "redis"
    directory.mkdir()
    command = [executable, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    process = subprocess.Popen(
        [*command, "--dir", str(directory)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        wait_until_listening(port, process, "redis-server")
        yield f"127.0.0.1:{port}"
    finally:
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
