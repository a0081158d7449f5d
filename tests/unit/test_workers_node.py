"""A node of two worker processes (``KV_WORKERS=2``), run as ``python -m service`` on 127.0.0.1: both
workers serve one port and one store, ``/metrics`` is one set for the node, and every write
acknowledged survives a SIGKILL of either worker (the supervisor starts it again, clients
reconnect). In-process is impossible here: the workers are processes."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gevent
import pytest
from gevent import subprocess
from gevent.event import Event
from polling import wait_until

from client.client import Client
from client.errors import KVError

REPO = Path(__file__).resolve().parents[2]
WRITERS = 16
"""Clients writing at once, each on its own connection: the kernel spreads them over both workers
(all 16 on one worker: a chance of 1 in 32,768)."""
START_TIMEOUT = 30.0


class WorkerNode:
    """A supervised two-worker node whose stdout (JSON log lines) goes to ``log_path``; ``env``:
    settings over the defaults (a lone node, N=W=R=1, on ports the kernel picks)."""

    def __init__(self, data_dir: Path, log_path: Path, env: dict[str, str] | None = None) -> None:
        self.log_path = log_path
        environ = {
            **os.environ,
            "KV_WORKERS": "2",
            "KV_NODE_ID": "solo",
            "KV_PEERS": "solo=127.0.0.1:1",  # the port is only this node's name in the ring
            "KV_HOST": "127.0.0.1",
            "KV_PORT": "0",
            "KV_HTTP_PORT": "0",
            "KV_N": "1",
            "KV_W": "1",
            "KV_R": "1",
            "KV_DATA_DIR": str(data_dir),
            "KV_DRAIN_TIMEOUT_S": "2",
            **(env or {}),
        }
        self._log = log_path.open("wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "service"], cwd=REPO, env=environ, stdout=self._log, stderr=subprocess.STDOUT
        )
        started = wait_until(lambda: self.events("supervisor_started"), START_TIMEOUT, message="supervisor started")
        self.port: int = started[0]["port"]
        self.http_port: int = started[0]["http_port"]

    def events(self, name: str) -> list[dict[str, Any]]:
        lines = []
        for raw in self.log_path.read_text().splitlines():
            try:
                line = json.loads(raw)
            except ValueError:
                continue
            if line.get("event") == name:
                lines.append(line)
        return lines

    def worker_pid(self, index: int) -> int:
        """The pid of the newest process started for worker ``index``."""
        pid: int = [line for line in self.events("worker_started") if line["worker"] == index][-1]["pid"]
        return pid

    def http(self, path: str) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}{path}", timeout=2) as response:
            text: str = response.read().decode()
            return text

    def metric(self, name: str) -> float:
        for line in self.http("/metrics").splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
        raise AssertionError(f"{name} not exported")

    def wait_ready(self) -> None:
        wait_until(lambda: self.http("/readyz") == "ok\n", START_TIMEOUT, message="node ready")
        wait_until(lambda: self.metric("kv_workers_reporting") == 2, START_TIMEOUT, message="both workers report")

    def stop(self) -> int | None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
                return None
        self._log.close()
        return self.process.returncode


@pytest.fixture
def node(tmp_path: Path) -> Iterator[WorkerNode]:
    started = WorkerNode(tmp_path / "data", tmp_path / "node.log")
    try:
        started.wait_ready()
        yield started
    finally:
        started.stop()


def test_two_workers_serve_one_store_and_lose_no_acknowledged_write_when_either_is_killed(node: WorkerNode) -> None:
    acked: dict[bytes, bytes] = {}
    failures: list[str] = []
    stop = Event()

    def writer(number: int) -> None:
        client = Client(f"127.0.0.1:{node.port}", timeout=5, connect_timeout=1)
        sequence = 0
        try:
            while not stop.is_set() and sequence < 100_000:  # bounded; the test stops it far sooner
                key = f"w{number}-{sequence}".encode()
                value = f"value {number}.{sequence}".encode()
                sequence += 1
                try:
                    client.put(key, value)
                except KVError as exc:  # the worker died under this connection: not acknowledged
                    failures.append(type(exc).__name__)
                    stop.wait(0.05)  # the client reconnects on its next request
                    continue
                acked[key] = value
        finally:
            client.close()

    writers = [gevent.spawn(writer, number) for number in range(WRITERS)]
    try:
        for index in (1, 0):  # either worker, worker 0 (the owner of handoff and anti-entropy) too
            before = len(acked)
            wait_until(lambda before=before: len(acked) >= before + 200, 20, message="writes acknowledged")
            old_pid = node.worker_pid(index)
            os.kill(old_pid, signal.SIGKILL)
            wait_until(
                lambda index=index, old_pid=old_pid: node.worker_pid(index) != old_pid,
                20,
                message=f"worker {index} started again",
            )
            died = [line for line in node.events("worker_died") if line["pid"] == old_pid]
            assert died and died[0]["signal"] == "SIGKILL"
            node.wait_ready()
            after_restart = len(acked)
            wait_until(lambda after=after_restart: len(acked) >= after + 200, 20, message="writes after the restart")
    finally:
        stop.set()
        gevent.joinall(writers, timeout=20)

    print(f"acknowledged {len(acked)}, failed {len(failures)}: {sorted(set(failures))}")
    # Both workers answered writes: the command log names the worker of each.
    served_by = {line.get("worker") for line in node.events("command") if line.get("op") == "PUT"}
    assert served_by == {0, 1}, served_by

    reader = Client(f"127.0.0.1:{node.port}", timeout=5)
    try:
        missing = [key for key, value in acked.items() if reader.get(key) != value]
    finally:
        reader.close()
    assert not missing, f"{len(missing)} of {len(acked)} acknowledged writes lost, e.g. {missing[:3]}"
    # One consistent set: kv_keys is the store's count, read once, not once per worker.
    assert node.metric("kv_keys") >= len(acked)
    assert node.metric("kv_keys") < 2 * len(acked)

    assert node.stop() == 0
    assert node.events("supervisor_stopped")


def test_stats_counts_the_requests_of_every_worker(node: WorkerNode) -> None:
    writers = [Client(f"127.0.0.1:{node.port}", timeout=5) for _ in range(WRITERS)]
    try:
        for number, kv in enumerate(writers):
            for sequence in range(25):
                kv.put(f"stats-{number}-{sequence}", b"v")
        served_by = {line.get("worker") for line in node.events("command") if line.get("op") == "PUT"}
        assert served_by == {0, 1}, served_by  # else this test proves nothing
        # Whichever worker answers STATS, it counts every worker's requests in its window.
        for _ in range(4):  # each on a new connection, which the kernel hands to either worker
            asker = Client(f"127.0.0.1:{node.port}", timeout=5)
            try:
                reply = asker.stats("solo")
            finally:
                asker.close()
            assert reply.requests.client_requests >= WRITERS * 25, reply.requests
    finally:
        for kv in writers:
            kv.close()


def test_sighup_reaches_every_worker_and_sigterm_drains_them(node: WorkerNode) -> None:
    node.process.send_signal(signal.SIGHUP)
    wait_until(lambda: {line.get("worker") for line in node.events("reloaded")} == {0, 1}, 10, message="both reloaded")
    started = time.monotonic()
    assert node.stop() == 0
    assert time.monotonic() - started < 15
    assert {line.get("worker") for line in node.events("node_stopped")} == {0, 1}


def test_the_supervisor_forms_the_membership_record_once_for_every_worker(node: WorkerNode, tmp_path: Path) -> None:
    # Workers forming it each on an empty directory would mint two identities for one node.
    assert len(node.events("membership_formed")) == 1
    saved = json.loads((tmp_path / "data" / "membership.json").read_text())
    assert {line.get("worker") for line in node.events("node_started")} == {0, 1}
    assert not [path for path in (tmp_path / "data").iterdir() if path.name.endswith(".tmp")]
    assert saved["identity"]


def test_a_data_directory_that_cannot_be_written_stops_the_node_before_any_worker(tmp_path: Path) -> None:
    not_a_directory = tmp_path / "data"
    not_a_directory.write_text("a file where the data directory should be")
    environ = {**os.environ, "KV_WORKERS": "2", "KV_NODE_ID": "solo", "KV_PEERS": "solo=127.0.0.1:1"}
    environ |= {"KV_HOST": "127.0.0.1", "KV_PORT": "0", "KV_HTTP_PORT": "0", "KV_N": "1", "KV_W": "1", "KV_R": "1"}
    environ["KV_DATA_DIR"] = str(not_a_directory)
    finished = subprocess.run(
        [sys.executable, "-m", "service"], cwd=REPO, env=environ, capture_output=True, timeout=START_TIMEOUT
    )
    assert finished.returncode == 2, finished.stderr
    assert b"KV_DATA_DIR" in finished.stderr
    assert b"worker_started" not in finished.stdout


def test_a_worker_that_cannot_open_the_store_stops_the_node_with_status_1(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    (data_dir / "data.mdb").mkdir(parents=True)  # where LMDB's data file should be: it cannot open the store
    log_path = tmp_path / "node.log"
    started = WorkerNode(data_dir, log_path)
    try:
        assert started.process.wait(timeout=START_TIMEOUT) == 1
    finally:
        started.stop()
    assert started.events("worker_could_not_start")
    assert started.events("startup_failed")
    assert not started.events("worker_died")  # not started again and again


def process_gone(pid: int) -> bool:
    """Whether ``pid`` has exited (gone, or a zombie waiting for whoever adopted it)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return True
    return "\nState:\tZ" in status


def test_workers_stop_when_the_supervisor_is_killed(node: WorkerNode) -> None:
    workers = [node.worker_pid(0), node.worker_pid(1)]
    node.process.kill()  # SIGKILL: the supervisor forwards nothing
    node.process.wait(timeout=10)
    # Each worker asked the kernel for SIGTERM when its parent dies: no orphan keeps the ports.
    wait_until(lambda: all(process_gone(pid) for pid in workers), 20, message="the orphaned workers to exit")
    shutil.rmtree(node.events("supervisor_started")[0]["run_dir"], ignore_errors=True)  # its own cleanup never ran
