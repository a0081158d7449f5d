"""STATS on real in-process nodes: what a node reports of itself, anti-entropy's progress while a
round runs, and ``kv repair`` drawing that progress on a terminal; and how often hints are counted."""

from __future__ import annotations

import io
import re
from typing import Any

import gevent
import pytest
from cluster import InProcessCluster
from gevent.event import Event

from client import cli, protocol
from client.protocol import PeerState, Record, Version
from service.node_stats import FEW_HINTS, HINT_SCAN_INTERVAL, NodeReports


def test_stats_reports_the_nodes_figures(cluster: InProcessCluster) -> None:
    with cluster.running_client() as kv:
        for i in range(30):
            kv.put(f"stat-{i}", b"x")
        node = cluster.node("node2")
        stats = kv.stats("node2")
    assert stats.node_id == "node2"
    assert stats.live_keys == node.store.live_keys > 0
    assert stats.storage_limit_bytes == cluster.config.storage_limit_bytes
    assert 0 < stats.disk_used_bytes <= stats.storage_limit_bytes
    assert stats.disk_bytes > 0
    assert stats.hints == 0 and not stats.storage_full
    assert [(member.node_id, member.state) for member in stats.members] == [
        ("node2", PeerState.UP),
        ("node1", PeerState.UP),
        ("node3", PeerState.UP),
    ]
    assert stats.requests.requests > 0 and stats.requests.p99_us > 0
    # Measured by the heartbeats: each peer's clock, which here is this machine's clock too.
    assert {offset.node_id for offset in stats.clock_offsets} == {"node1", "node3"}
    assert all(abs(offset.offset_us) < 100_000 for offset in stats.clock_offsets)
    assert stats.repair == protocol.RepairProgress(False, 0, 0, 0, 0, 0, 0)  # no round yet


def test_stats_carries_the_clock_offsets_the_node_measured(cluster: InProcessCluster) -> None:
    cluster.node("node1").reports.clock_offsets = lambda: {"node3": 0.25, "node2": -0.0000014}
    with cluster.running_client() as kv:
        offsets = kv.stats("node1").clock_offsets
    assert offsets == (protocol.PeerClockOffset("node2", -1), protocol.PeerClockOffset("node3", 250_000))


def diverge(cluster: InProcessCluster, node_id: str, count: int) -> None:
    """Write ``count`` keys to ``node_id``'s store alone, each in a partition it shares with a peer,
    as if every write to the other replica had been lost."""
    node = cluster.node(node_id)
    written = 0
    for i in range(10 * count):
        key = f"diverged-{i}".encode()
        if written < count and node_id in cluster.replicas_of(key):
            node.store.write(key, Record(Version(node.clock.now(), node_id), b"v"))
            written += 1


def test_a_rounds_progress_is_visible_while_it_runs_and_after(cluster: InProcessCluster) -> None:
    diverge(cluster, "node1", 20)
    node1 = cluster.node("node1")
    round_ = gevent.spawn(node1.anti_entropy.run_round)
    gevent.sleep(0)  # the round starts, and waits for its first peer's digests
    running = node1.anti_entropy.progress()
    assert running.running and running.finished_ms == 0 and running.started_ms > 0
    ring, n = cluster.ring(), cluster.config.n
    holders = [ring.partition_owners(p)[:n] for p in range(ring.partitions)]
    assert running.partitions_total == sum(len(owners) - 1 for owners in holders if "node1" in owners)
    assert running.partitions_compared < running.partitions_total
    result = round_.get(timeout=10)
    done = node1.anti_entropy.progress()
    assert not done.running and done.finished_ms >= done.started_ms
    assert done.partitions_compared == done.partitions_total == result.partitions
    assert (done.keys_differing, done.keys_copied) == (result.differing, result.repaired) == (20, 20)
    with cluster.running_client() as kv:
        assert kv.stats("node1").repair == done


class Terminal(io.StringIO):
    """stderr as a terminal; ``saw`` is set once a progress line is drawn on it."""

    def __init__(self) -> None:
        super().__init__()
        self.saw = Event()

    def isatty(self) -> bool:
        return True

    def write(self, text: str) -> int:
        if "partitions compared (" in text:
            self.saw.set()
        return super().write(text)


class HeldPeer:
    """A peer whose partition listings wait until ``go`` is set: a round that takes as long as the
    test needs."""

    def __init__(self, peer: Any, go: Event) -> None:
        self._peer = peer
        self._go = go

    def call(self, request: protocol.Request, **options: Any) -> protocol.Frame:
        if isinstance(request, protocol.PartitionKeys):
            self._go.wait(timeout=5)
        result: protocol.Frame = self._peer.call(request, **options)
        return result

    def __getattr__(self, name: str) -> Any:
        return getattr(self._peer, name)


def test_kv_repair_draws_the_rounds_progress_on_a_terminal(
    cluster: InProcessCluster, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    diverge(cluster, "node1", 5)
    terminal = Terminal()
    node1 = cluster.node("node1")
    node1.anti_entropy.peers = {peer_id: HeldPeer(peer, terminal.saw) for peer_id, peer in node1.peers.items()}
    monkeypatch.setattr(cli, "REPAIR_POLL_INTERVAL", 0.01)
    monkeypatch.setattr("sys.stderr", terminal)
    code = cli.main(["--nodes", ",".join(cluster.addresses), "repair"])
    out = capsys.readouterr().out
    assert code == 0
    assert re.fullmatch(r"OK \d+ partitions compared, 5 keys differed, 5 copied\n", out)  # one line on stdout
    drawn = terminal.getvalue()
    progress = re.search(r"\rrepair 1/3 node1: (\d+)/(\d+) partitions compared \((\d+)%\), \d+ keys differed", drawn)
    assert progress, drawn
    compared, total, share = map(int, progress.groups())
    assert compared < total and share == 100 * compared // total
    # The status line is wiped before each node's result line, which starts on a clean line.
    assert re.search(r"\r +\rrepair 1/3 node1: \d+ partitions compared, 5 keys differed, 5 copied\n", drawn)
    assert "repair 3/3 node3: " in drawn


def test_kv_repair_draws_no_status_line_off_a_terminal(
    cluster: InProcessCluster, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    polled: list[str] = []
    monkeypatch.setattr(cli.Client, "stats", lambda self, node_id: polled.append(node_id))
    assert cli.main(["--nodes", ",".join(cluster.addresses), "repair"]) == 0
    err = capsys.readouterr().err
    assert "\r" not in err and len(err.splitlines()) == 3
    assert polled == []


class CountingStore:
    """Just what hint counting asks of a store, counting the scans."""

    def __init__(self, held: dict[str, int]) -> None:
        self.held = held
        self.scans = 0

    def pending_hints(self) -> int:
        return sum(self.held.values())

    def hint_counts(self) -> dict[str, int]:
        self.scans += 1
        return dict(self.held)


def reports_over(store: CountingStore, clock: list[float]) -> NodeReports:
    return NodeReports("node1", store, None, None, None, clock=lambda: clock[0])  # type: ignore[arg-type]


def test_few_hints_are_counted_afresh_on_every_ask() -> None:
    store, clock = CountingStore({"node2": 3}), [100.0]
    reports = reports_over(store, clock)
    assert reports.hint_counts() == {"node2": 3}
    store.held = {"node2": 2, "node3": 1}  # one delivered, one stored: the same total
    assert reports.hint_counts() == {"node2": 2, "node3": 1} and store.scans == 2


def test_many_hints_are_scanned_at_most_every_interval() -> None:
    store, clock = CountingStore({"node2": FEW_HINTS}), [100.0]
    reports = reports_over(store, clock)
    assert reports.hint_counts() == {"node2": FEW_HINTS}
    store.held["node2"] += 500  # a peer down under heavy writes: hints grow on every ask
    clock[0] += HINT_SCAN_INTERVAL / 2
    assert reports.hint_counts() == {"node2": FEW_HINTS} and store.scans == 1
    clock[0] += HINT_SCAN_INTERVAL / 2
    assert reports.hint_counts() == {"node2": FEW_HINTS + 500} and store.scans == 2
