"""The live-node fuzz: mutated frames and random bytes sent to running nodes, which must stay up,
keep serving, and keep their memory bounded.

    PYTHONPATH=tests .venv/bin/python -m fuzz.live [--frames 100000] [--seconds 600] [--nodes 3] ...

Nodes run as ``python -m service`` subprocesses (``fuzz.nodes``), so the figures are the node's
alone. ``--connections`` greenlets each open a connection to a node, usually send HELLO, then a few
batches of frames from ``fuzz.mutations`` each followed by a PING whose reply marks the end of the
batch, and read the replies; a connection the node closes is replaced by a new one. Meanwhile a
normal ``Client`` writes, overwrites, reads back and deletes a fresh key every ``--health-interval``
seconds (``--no-overwrites``: writes and reads back only), and every node's RSS is sampled. The run
stops at ``--frames`` frames or ``--seconds``, whichever comes first, checks the client once more,
stops the nodes, and reports: frames sent by kind, connections opened and closed by whom, replies
by status, the fuzzer's socket errors, health checks, how far ahead the nodes' clocks were pushed,
node exits, RSS before, at the peak and after, and the nodes' log lines counted by event. The exit
status is 1 if anything in ``LiveReport.problems`` went wrong.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import random
import shutil
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gevent
from gevent import socket
from polling import wait_until

from client import protocol
from client.client import Client
from client.connection import Connection
from client.protocol import FrameDecoder, ProtocolError, Status
from fuzz.mutations import FrameSource
from fuzz.nodes import LOCALHOST, NodeProcess, start_nodes, stop_nodes

CONNECT_TIMEOUT = 2.0
SEND_TIMEOUT = 5.0
REPLY_WAIT = 2.0
"""How long a batch's replies may take when the batch's framing is intact (its PING must answer)."""
BROKEN_WAIT = 0.2
"""How long to wait for replies when the batch ends in a partial frame, which swallows the PING."""
BATCHES_PER_CONNECTION = 8
FRAMES_PER_BATCH = 12
HEALTH_TIMEOUT = 5.0
READY_TIMEOUT = 30.0


@dataclass(frozen=True)
class LiveSettings:
    frames: int = 100_000
    """Frames to send in all (a random-bytes blob counts as one)."""
    seconds: float = 600.0
    """Time limit for the sending; the run stops at whichever limit comes first."""
    nodes: int = 1
    """Nodes in the cluster; with 3, N=3, W=2, R=2, and the fuzz spreads over all of them."""
    connections: int = 16
    """Fuzzing connections open at once."""
    seed: int = 1
    health_interval: float = 0.5
    """Seconds between the normal client's write-and-read-back checks."""
    rss_growth_mib: int = 64
    """Largest growth of a node's RSS, after the run against before, that counts as bounded."""
    overwrites: bool = True
    """Whether the health check also overwrites and deletes its key: it then catches acknowledged
    writes lost to a clock that fuzzed timestamps pushed to its maximum (issue 9, part 1)."""


def node_settings(nodes: int) -> dict[str, str]:
    """The KV_* settings of the fuzzed nodes: small rings, anti-entropy every few seconds."""
    replicas = min(nodes, 3)
    return {
        "KV_N": str(replicas),
        "KV_W": str(min(replicas, 2)),
        "KV_R": str(min(replicas, 2)),
        "KV_PARTITIONS": "64",
        "KV_LOG_COMMANDS": "false",
        "KV_LOG_LEVEL": "info",
        "KV_STORAGE_LIMIT_MB": "256",
        "KV_ANTI_ENTROPY_INTERVAL_S": "5",
        "KV_REQUEST_TIMEOUT_MS": "2000",
    }


@dataclass
class LiveReport:
    settings: LiveSettings
    seconds: float = 0.0
    frames_sent: int = 0
    bytes_sent: int = 0
    frame_kinds: dict[str, int] = field(default_factory=dict)
    connections_opened: int = 0
    closed_by_node: int = 0
    closed_by_fuzzer: int = 0
    gave_up_waiting: int = 0
    """Connections the fuzzer closed because a batch's PING was not answered in time (normal when
    the batch ended in a partial frame: the PING became part of it)."""
    replies: Counter[str] = field(default_factory=Counter)
    bad_replies: list[str] = field(default_factory=list)
    fuzzer_errors: Counter[str] = field(default_factory=Counter)
    clock_ahead_s: float = 0.0
    """How far ahead of the wall clock the version of a health check's write was, at most: how far
    the fuzzed timestamps pushed the nodes' hybrid logical clocks (0 when they did not)."""
    health_ok: int = 0
    health_failures: list[str] = field(default_factory=list)
    node_exits: dict[str, int | None] = field(default_factory=dict)
    """Exit status of each node that exited during the run (a crash); empty when none did."""
    rss_before_kib: dict[str, int] = field(default_factory=dict)
    rss_peak_kib: dict[str, int] = field(default_factory=dict)
    rss_after_kib: dict[str, int] = field(default_factory=dict)
    node_logs: dict[str, dict[str, int]] = field(default_factory=dict)
    node_log_problems: list[str] = field(default_factory=list)

    def problems(self) -> list[str]:
        """What went wrong; empty when the nodes survived, served and stayed bounded."""
        found = [f"{node_id} exited with status {status}" for node_id, status in self.node_exits.items()]
        if self.health_failures:
            found.append(f"{len(self.health_failures)} health checks failed: {self.health_failures[:3]}")
        if self.bad_replies:
            found.append(f"{len(self.bad_replies)} replies did not decode: {self.bad_replies[:3]}")
        if self.node_log_problems:
            found.append(f"nodes logged errors or tracebacks: {self.node_log_problems[:3]}")
        for node_id, before in self.rss_before_kib.items():
            growth = self.rss_after_kib.get(node_id, 0) - before
            if growth > self.settings.rss_growth_mib * 1024:
                found.append(f"{node_id}'s RSS grew by {growth // 1024} MiB (bound {self.settings.rss_growth_mib})")
        if not self.frames_sent:
            found.append("no frame was sent")
        return found

    def as_json(self) -> dict[str, Any]:
        """The report as JSON values, with the problems found."""
        fields = {item.name: getattr(self, item.name) for item in dataclasses.fields(self)}
        return {**fields, "settings": dataclasses.asdict(self.settings), "problems": self.problems()}

    def summary(self) -> str:
        rate = self.frames_sent / self.seconds if self.seconds else 0.0
        lines = [
            f"frames sent       {self.frames_sent} ({self.bytes_sent} bytes) in {self.seconds:.1f} s, {rate:.0f}/s",
            f"frame kinds       {dict(sorted(self.frame_kinds.items()))}",
            f"connections       {self.connections_opened} opened, {self.closed_by_node} closed by the node, "
            f"{self.closed_by_fuzzer} by the fuzzer ({self.gave_up_waiting} after waiting in vain)",
            f"replies by status {dict(self.replies.most_common())}",
            f"bad replies       {len(self.bad_replies)}",
            f"fuzzer errors     {dict(self.fuzzer_errors.most_common())}",
            f"health checks     {self.health_ok} ok, {len(self.health_failures)} failed; "
            f"versions up to {self.clock_ahead_s:.0f} s ahead of the wall clock",
            f"node exits        {len(self.node_exits)} {self.node_exits or ''}".rstrip(),
        ]
        for node_id in self.rss_before_kib:
            lines.append(
                f"{node_id} RSS         before {self.rss_before_kib[node_id] / 1024:.1f} MiB, "
                f"peak {self.rss_peak_kib.get(node_id, 0) / 1024:.1f} MiB, "
                f"after {self.rss_after_kib.get(node_id, 0) / 1024:.1f} MiB"
            )
        for node_id, counts in self.node_logs.items():
            lines.append(f"{node_id} log         {dict(sorted(counts.items()))}")
        problems = self.problems()
        lines.append("problems          " + ("; ".join(problems) if problems else "none"))
        return "\n".join(lines)


class LiveFuzz:
    """One run: the fuzzing connections, the health checker and the RSS sampler, over ``nodes``."""

    def __init__(self, nodes: list[NodeProcess], settings: LiveSettings) -> None:
        self.nodes = nodes
        self.settings = settings
        self.report = LiveReport(settings)
        self.rng = random.Random(settings.seed)
        self.source = FrameSource(settings.seed)
        self._deadline = 0.0
        self._started = time.monotonic()
        self._health_checks = 0

    def _budget_left(self) -> bool:
        return self.report.frames_sent < self.settings.frames and time.monotonic() < self._deadline

    def run(self) -> LiveReport:
        report = self.report
        # Ready once every node coordinates a write: each has reached its peers (a node started
        # before the others waits out its reconnection backoff first), and connections are warm.
        for node in self.nodes:
            wait_until(lambda node=node: coordinates_a_write(node), READY_TIMEOUT, message=f"{node.node_id} to write")
        self._check_health()
        report.rss_before_kib = {node.node_id: node.rss_kib() for node in self.nodes}
        report.rss_peak_kib = dict(report.rss_before_kib)
        started = time.monotonic()
        self._deadline = started + self.settings.seconds
        workers = [gevent.spawn(self._fuzz_connections) for _ in range(self.settings.connections)]
        watchers = [gevent.spawn(self._watch_health), gevent.spawn(self._sample_rss)]
        gevent.joinall(workers, timeout=self.settings.seconds + 30)
        gevent.killall(workers + watchers, timeout=5)
        report.seconds = time.monotonic() - started
        self._check_health()
        self._sample_rss_once()
        report.rss_after_kib = {node.node_id: node.rss_kib() for node in self.nodes}
        report.frame_kinds = dict(self.source.counts)
        return report

    # --- health and memory ------------------------------------------------------------------------

    def _serve_a_client(self) -> None:
        """A normal client writes a fresh key and reads it back; with ``overwrites``, it also writes
        the key again, reads the second value back, deletes the key and finds it gone. Raises what
        the client raised, or ``AssertionError``."""
        self._health_checks += 1
        key = b"health:%d:%d" % (self.settings.seed, self._health_checks)
        values = [self.rng.randbytes(32) for _ in range(2 if self.settings.overwrites else 1)]
        client = Client([node.address for node in self.nodes], timeout=HEALTH_TIMEOUT, client_name="fuzz-health")
        try:
            for value in values:
                version = client.put(key, value)
            read = client.get(key)
            gone = None
            if self.settings.overwrites:
                client.delete(key)
                gone = client.get(key)
        finally:
            client.close()
        self.report.clock_ahead_s = max(self.report.clock_ahead_s, (version.timestamp >> 16) / 1000 - time.time())
        if read != values[-1]:
            raise AssertionError(f"{key!r} read back {read!r}, not the last value written, {values[-1]!r}")
        if gone is not None:
            raise AssertionError(f"{key!r} read back {gone!r} after its delete")

    def _check_health(self) -> None:
        report = self.report
        try:
            self._serve_a_client()
            report.health_ok += 1
        except Exception as exc:  # the check reports every failure; it must not stop the run
            report.health_failures.append(f"at {time.monotonic() - self._started:.1f} s: {type(exc).__name__}: {exc}")
        for node in self.nodes:
            if not node.alive and node.node_id not in report.node_exits:
                report.node_exits[node.node_id] = node.process.poll() if node.process else None

    def _watch_health(self) -> None:
        while self._budget_left():
            self._check_health()
            gevent.sleep(self.settings.health_interval)

    def _sample_rss_once(self) -> None:
        for node in self.nodes:
            peak = self.report.rss_peak_kib
            peak[node.node_id] = max(peak.get(node.node_id, 0), node.rss_kib())

    def _sample_rss(self) -> None:
        while self._budget_left():
            self._sample_rss_once()
            gevent.sleep(0.25)

    # --- fuzzing connections ----------------------------------------------------------------------

    def _fuzz_connections(self) -> None:
        while self._budget_left():
            node = self.rng.choice(self.nodes)
            try:
                self._one_connection(node)
            except OSError as exc:
                self.report.fuzzer_errors[type(exc).__name__] += 1

    def _one_connection(self, node: NodeProcess) -> None:
        report = self.report
        sock = socket.create_connection((LOCALHOST, node.port), timeout=CONNECT_TIMEOUT)
        report.connections_opened += 1
        replies = FrameDecoder(1 << 26)
        hello = protocol.encode_request(0, protocol.Hello(client_name="fuzz")) if self.rng.random() < 0.9 else b""
        try:
            for _ in range(self.rng.randint(1, BATCHES_PER_CONNECTION)):
                if not self._budget_left():
                    break
                count = min(self.rng.randint(1, FRAMES_PER_BATCH), self.settings.frames - report.frames_sent)
                frames = [self.source.next() for _ in range(count)]
                report.frames_sent += len(frames)
                marker = self.rng.randrange(1 << 32)
                payload = hello + b"".join(frames) + protocol.encode_request(marker, protocol.Ping())
                hello = b""
                report.bytes_sent += len(payload)
                sock.settimeout(SEND_TIMEOUT)
                try:
                    sock.sendall(payload)
                except (BrokenPipeError, ConnectionResetError):
                    report.closed_by_node += 1
                    return
                outcome = self._read_replies(sock, replies, marker, REPLY_WAIT if framed(payload) else BROKEN_WAIT)
                if outcome == "closed":
                    report.closed_by_node += 1
                    return
                if outcome == "waited":
                    report.gave_up_waiting += 1
                    break
            report.closed_by_fuzzer += 1
        finally:
            sock.close()

    def _read_replies(self, sock: socket.socket, replies: FrameDecoder, marker: int, wait: float) -> str:
        """Read until the PING ``marker`` is answered ("answered"), the node closes ("closed"), or
        ``wait`` s pass ("waited"); counts every reply by status and checks error bodies decode."""
        deadline = time.monotonic() + wait
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return "waited"
            sock.settimeout(remaining)
            try:
                data = sock.recv(1 << 20)
            except TimeoutError:
                return "waited"
            except ConnectionResetError:
                return "closed"
            if not data:
                return "closed"
            try:
                frames = replies.feed(data)
            except ProtocolError as exc:
                self.report.bad_replies.append(f"reply stream: {exc}")
                return "closed"
            answered = False
            for frame in frames:
                self._count_reply(frame)
                answered = answered or (frame.request_id == marker and frame.code == Status.OK)
            if answered:
                return "answered"

    def _count_reply(self, frame: protocol.Frame) -> None:
        self.report.replies[protocol.status_name(frame.code)] += 1
        if frame.code in (Status.OK, Status.NOT_FOUND):
            return
        try:
            protocol.decode_error(Status(frame.code), frame.body)
        except (ValueError, ProtocolError) as exc:
            self.report.bad_replies.append(f"status 0x{frame.code:02x} id {frame.request_id}: {exc}")


def coordinates_a_write(node: NodeProcess) -> bool:
    """Whether ``node``, asked directly, stores a write at the cluster's W."""
    connection = Connection(LOCALHOST, node.port, connect_timeout=CONNECT_TIMEOUT, client_name="fuzz-ready")
    try:
        connection.connect()
        reply = connection.call(protocol.Put(b"ready:" + node.node_id.encode(), b"1"), timeout=HEALTH_TIMEOUT)
    finally:
        connection.close()
    return reply.code == Status.OK


def framed(payload: bytes) -> bool:
    """Whether ``payload`` splits into whole frames with nothing left over, as the node will see it."""
    decoder = FrameDecoder()
    try:
        decoder.feed(payload)
        decoder.feed(b"")
    except ProtocolError:
        return False
    return decoder.buffered == 0


def run(settings: LiveSettings, directory: Path) -> LiveReport:
    """Start the nodes in ``directory``, fuzz them, stop them; the report."""
    nodes = start_nodes(directory, settings.nodes, node_settings(settings.nodes))
    try:
        report = LiveFuzz(nodes, settings).run()
    finally:
        exited_early = {node.node_id for node in nodes if not node.alive}
        statuses = stop_nodes(nodes)
    for node_id in exited_early:
        report.node_exits.setdefault(node_id, statuses[node_id])
    for node in nodes:
        counts, problems = node.log_summary()
        report.node_logs[node.node_id] = dict(counts)
        report.node_log_problems += problems
    return report


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m fuzz.live", description=__doc__.split("\n\n")[0])
    for setting in dataclasses.fields(LiveSettings):  # one option per setting, named as it is
        option = f"--{setting.name.replace('_', '-')}"
        if isinstance(setting.default, bool):
            parser.add_argument(option, action=argparse.BooleanOptionalAction, default=setting.default)
        else:
            parser.add_argument(option, type=type(setting.default), default=setting.default)
    parser.add_argument("--json", type=Path, help="also write the report here, as JSON")
    parser.add_argument("--keep", action="store_true", help="keep the nodes' data and logs; print where")
    args = parser.parse_args(argv)
    settings = LiveSettings(**{item.name: getattr(args, item.name) for item in dataclasses.fields(LiveSettings)})
    if settings.nodes not in (1, 3):
        parser.error("--nodes must be 1 or 3")
    directory = Path(tempfile.mkdtemp(prefix="fuzz-live-"))
    try:
        report = run(settings, directory)
    finally:
        if not args.keep:
            shutil.rmtree(directory, ignore_errors=True)
    print(report.summary())
    if args.keep:
        print(f"nodes' data and logs: {directory}")
    if args.json:
        args.json.write_text(json.dumps(report.as_json(), indent=2))
    return 1 if report.problems() else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
