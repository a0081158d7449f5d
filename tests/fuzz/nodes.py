"""Real nodes for the live fuzz, each a ``python -m service`` subprocess on 127.0.0.1.

A node of its own process can be measured alone (``rss_kib`` reads its ``VmRSS``), can crash without
taking the fuzzer down, and is exactly what production runs. ``start_nodes`` picks free ports, starts
every node with its data and its log (stdout and stderr, JSON lines) in a scratch directory, and
waits until each answers PING. ``NodeProcess.log_summary`` counts the log's events by level and
name, and the tracebacks printed on stderr.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from polling import wait_until

from client import protocol
from client.connection import Connection

LOCALHOST = "127.0.0.1"
START_TIMEOUT = 30.0
STOP_TIMEOUT = 15.0


def free_port() -> int:
    """A port nothing listens on right now (bound, read, released)."""
    with socket.socket() as sock:
        sock.bind((LOCALHOST, 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class NodeProcess:
    node_id: str
    port: int
    directory: Path
    process: subprocess.Popen[bytes] | None = None
    log_path: Path = field(init=False)

    def __post_init__(self) -> None:
        self.log_path = self.directory / f"{self.node_id}.log"

    @property
    def address(self) -> str:
        return f"{LOCALHOST}:{self.port}"

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self, environ: dict[str, str]) -> None:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "service"], env=environ, stdout=log, stderr=subprocess.STDOUT
            )

    def rss_kib(self) -> int:
        """The node's resident set size in KiB (``VmRSS`` in ``/proc/PID/status``); 0 once it exited."""
        if self.process is None:
            return 0
        try:
            status = Path(f"/proc/{self.process.pid}/status").read_text()
        except OSError:
            return 0
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        return 0

    def answers_ping(self) -> bool:
        connection = Connection(LOCALHOST, self.port, connect_timeout=1.0, client_name="fuzz-probe")
        try:
            connection.connect()
            return connection.call(protocol.Ping(), timeout=2.0).code == protocol.Status.OK
        finally:
            connection.close()

    def answers_ping_or_exited(self) -> bool:
        """Whether start-up is over: the node answers PING, or its process exited."""
        return not self.alive or self.answers_ping()

    def terminate(self) -> None:
        """SIGTERM, if it still runs: it drains and exits."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()

    def stop(self) -> int | None:
        """SIGTERM, then SIGKILL if it has not exited in ``STOP_TIMEOUT`` s; its exit status."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.terminate()
            try:
                self.process.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(STOP_TIMEOUT)
        return self.process.returncode

    def log_summary(self) -> tuple[Counter[str], list[str]]:
        """Log lines counted as ``level:event``, and the lines that are errors or not JSON
        (a traceback on stderr), the first few of them."""
        counts: Counter[str] = Counter()
        problems: list[str] = []
        with contextlib.suppress(FileNotFoundError), self.log_path.open(encoding="utf-8", errors="replace") as log:
            for line in log:
                try:
                    entry = json.loads(line)
                    kind = f"{entry.get('level')}:{entry.get('event')}"
                except (json.JSONDecodeError, AttributeError):
                    entry, kind = None, "not-json"
                counts[kind] += 1
                if (entry is None or entry.get("level") in ("error", "critical")) and len(problems) < 20:
                    problems.append(line.rstrip()[:500])
        return counts, problems


def node_environ(node: NodeProcess, nodes: list[NodeProcess], settings: dict[str, str]) -> dict[str, str]:
    """The environment of ``node``'s process: the caller's, the fuzz's settings, and its place."""
    return {
        **os.environ,
        "KV_WORKERS": "1",  # one process per node: the RSS and exit checks watch that process
        **settings,
        "KV_NODE_ID": node.node_id,
        "KV_PEERS": ",".join(f"{other.node_id}={other.address}" for other in nodes),
        "KV_HOST": LOCALHOST,
        "KV_PORT": str(node.port),
        "KV_HTTP_PORT": "0",
        "KV_DATA_DIR": str(node.directory / node.node_id),
    }


def start_nodes(directory: Path, count: int, settings: dict[str, str]) -> list[NodeProcess]:
    """``count`` nodes (node1..) in ``directory``, each answering PING; stopped again on failure."""
    nodes = [NodeProcess(f"node{index}", free_port(), directory) for index in range(1, count + 1)]
    try:
        for node in nodes:
            (directory / node.node_id).mkdir(parents=True, exist_ok=True)
            node.start(node_environ(node, nodes, settings))
        for node in nodes:
            wait_until(node.answers_ping_or_exited, START_TIMEOUT, message=f"{node.node_id} to answer PING")
            if not node.alive:
                raise RuntimeError(f"{node.node_id} exited at start-up: {node.log_path.read_text()[-2000:]}")
    except BaseException:
        stop_nodes(nodes)
        raise
    return nodes


def stop_nodes(nodes: list[NodeProcess]) -> dict[str, int | None]:
    """Stop every node, all draining at once; each one's exit status."""
    for node in nodes:
        node.terminate()
    return {node.node_id: node.stop() for node in nodes}
