"""Chaos: writers overwrite and delete keys while random nodes are SIGKILLed and restarted, one at a time;
afterwards every acknowledged write reads back, no acknowledged delete comes back, and the replicas
converge to identical versions.

What counts as correct. Each writer owns its keys and runs one operation at a time, so each key's
operations are totally ordered. An operation that returned is acknowledged; one that raised failed,
and its effect is unknown (it may have reached a replica, and hinted handoff or anti-entropy may have
spread it). After the run, a key must read back the outcome of its last acknowledged operation (a
value, or nothing after a delete), or the outcome of a failed operation issued after it; a key with no
acknowledged operation may also read back nothing. Nothing else is accepted.

The run is seeded (``KV_CHAOS_SEED``); the counts are printed (run with ``-s`` to see them).
"""

from __future__ import annotations

import collections
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import gevent
import gevent.event
import gevent.pool
import pytest

from client.errors import KVError
from client.protocol import PeerState

if TYPE_CHECKING:
    from containers import Cluster

    from client.client import Client

NODE_IDS = ("node1", "node2", "node3")

SEED = int(os.environ.get("KV_CHAOS_SEED", "1234"))
WRITERS = 4
KEYS_PER_WRITER = 300
"""Keys each writer creates at most; after that it only overwrites and deletes."""
MIN_DURATION = 60.0
"""Seconds of load under chaos, at least."""
MIN_CYCLES = 5
"""Kill/restart cycles, at least."""
MAX_CYCLES = 15
MAX_DURATION = 150.0
"""Seconds after which no new cycle starts (the test fails if MIN_CYCLES were not reached by then)."""
PROGRESS = 40
"""Acknowledged writes that must follow a kill (and a restart) before the cycle goes on: the cluster
keeps accepting writes with a node down."""
PROGRESS_TIMEOUT = 20.0
DOWN_TIMEOUT = 15.0
FAILURE_BACKOFF = 0.05
"""Seconds a writer pauses after a failed operation, so a refused connection cannot make it spin."""
MAX_OPS_PER_WRITER = 200_000
READ_EVERY = 10
"""Every this many operations a writer also reads one of its keys (and so exercises read repair)."""

CHAOS_ENV = {
    "KV_ANTI_ENTROPY_INTERVAL_S": "3",
    "KV_LOG_COMMANDS": "false",  # tens of thousands of commands; the logs would only slow the nodes
}

COUNTERS = (
    "kv_hints_stored_total",
    "kv_hints_delivered_total",
    "kv_antientropy_keys_repaired_total",
    "kv_read_repairs_total",
)


@pytest.fixture(scope="module")
def cluster_env() -> dict[str, str]:
    return CHAOS_ENV


@dataclass
class Op:
    value: bytes | None  # None: a delete
    acked: bool


@dataclass
class Stats:
    puts_acked: int = 0
    puts_failed: int = 0
    deletes_acked: int = 0
    deletes_failed: int = 0
    reads: int = 0
    reads_failed: int = 0
    errors: collections.Counter = field(default_factory=collections.Counter)
    error_examples: dict[str, str] = field(default_factory=dict)  # the first message of each kind

    @property
    def acked(self) -> int:
        return self.puts_acked + self.deletes_acked


class Workload:
    """The writers, the client they share (replaced after every restart: ports change), and the history."""

    def __init__(self, client: Client, seed: int) -> None:
        self.client = client
        self.retired: list[Client] = []
        self.history: dict[str, list[Op]] = {}
        self.written: dict[str, set[bytes]] = collections.defaultdict(set)  # every value ever sent per key
        self.stats = Stats()
        self.stop = gevent.event.Event()
        self.anomalies: list[str] = []
        rng = random.Random(seed)
        self.writers = [gevent.spawn(self._write, number, random.Random(rng.random())) for number in range(WRITERS)]

    def replace_client(self, client: Client) -> None:
        # Carry the highest timestamp seen over, so the new client's writes are still stamped after
        # everything the old one wrote (the client's own ordering guarantee across coordinators).
        client._seen_timestamp = self.client._seen_timestamp
        self.retired.append(self.client)
        self.client = client

    def finish(self) -> None:
        self.stop.set()
        gevent.joinall(self.writers, timeout=30, raise_error=True)
        assert all(writer.dead for writer in self.writers), "a writer did not stop within 30 s"
        for client in self.retired:
            client.close()

    def _write(self, number: int, rng: random.Random) -> None:
        keys: list[str] = []
        for sequence in range(MAX_OPS_PER_WRITER):
            if self.stop.is_set():
                return
            choice = rng.random()
            if not keys or (choice < 0.3 and len(keys) < KEYS_PER_WRITER):
                key = f"chaos-{SEED}-w{number}-k{len(keys)}"
                keys.append(key)
                value: bytes | None = f"{key}-s{sequence}".encode()
            elif choice < 0.85:
                key = rng.choice(keys)
                value = f"{key}-s{sequence}".encode()
            else:
                key = rng.choice(keys)
                value = None
            client = self.client
            try:
                if value is None:
                    client.delete(key)
                else:
                    self.written[key].add(value)
                    client.put(key, value)
            except KVError as exc:
                self.history.setdefault(key, []).append(Op(value, acked=False))
                self.stats.errors[type(exc).__name__] += 1
                self.stats.error_examples.setdefault(type(exc).__name__, str(exc))
                if value is None:
                    self.stats.deletes_failed += 1
                else:
                    self.stats.puts_failed += 1
                gevent.sleep(FAILURE_BACKOFF)
                continue
            self.history.setdefault(key, []).append(Op(value, acked=True))
            if value is None:
                self.stats.deletes_acked += 1
            else:
                self.stats.puts_acked += 1
            if sequence % READ_EVERY == 0:
                self._read(rng.choice(keys))

    def _read(self, key: str) -> None:
        """A read under chaos may be stale (R=1, sloppy quorum), but never a value nobody wrote."""
        self.stats.reads += 1
        try:
            value = self.client.get(key)
        except KVError:
            self.stats.reads_failed += 1
            return
        if value is not None and value not in self.written[key]:
            self.anomalies.append(f"read of {key} returned {value!r}, never written to it")


def allowed_outcomes(ops: list[Op]) -> set[bytes | None]:
    """What the key may read back: its last acknowledged outcome, or that of a later failed operation."""
    last_acked = max((index for index, op in enumerate(ops) if op.acked), default=None)
    if last_acked is None:
        return {None} | {op.value for op in ops}
    return {ops[last_acked].value} | {op.value for op in ops[last_acked + 1 :]}


def wait_writes_progress(workload: Workload, wait_until: Callable[..., Any], what: str) -> None:
    start = workload.stats.acked
    wait_until(
        lambda: workload.stats.acked >= start + PROGRESS,
        PROGRESS_TIMEOUT,
        interval=0.1,
        message=f"{PROGRESS} more acknowledged writes {what} (errors so far: {dict(workload.stats.errors)})",
    )


def counters(cluster: Cluster, nodes: list[str]) -> collections.Counter:
    found: collections.Counter = collections.Counter()
    for name in COUNTERS:
        found[name] = cluster.total(name, nodes=nodes)
    return found


def test_acknowledged_writes_survive_repeated_sigkills(cluster: Cluster, wait_until: Callable[..., Any]) -> None:
    rng = random.Random(SEED)
    # Counters restart with their process, so each node's are added up just before it is killed.
    lost_with_kills: collections.Counter = collections.Counter()
    workload = Workload(cluster.client(), rng.random())
    started = time.monotonic()
    cycles = 0
    victims: list[str] = []
    try:
        wait_writes_progress(workload, wait_until, "before the first kill")
        while cycles < MAX_CYCLES and time.monotonic() - started < MAX_DURATION:
            if cycles >= MIN_CYCLES and time.monotonic() - started >= MIN_DURATION:
                break
            victim = rng.choice(NODE_IDS)
            survivors = [node for node in NODE_IDS if node != victim]
            lost_with_kills += counters(cluster, [victim])
            cluster.kill(victim)
            victims.append(victim)
            # Down long enough for the survivors to declare it DOWN, and writes go on meanwhile.
            for node in survivors:
                wait_until(
                    lambda node=node, victim=victim: cluster.members(node)[victim].state == PeerState.DOWN,
                    DOWN_TIMEOUT,
                    interval=0.2,
                    message=f"{node} to report {victim} DOWN",
                )
            wait_writes_progress(workload, wait_until, f"with {victim} down")
            cluster.start(victim)  # same volume; waits until it serves and every node sees every peer
            workload.replace_client(cluster.client())  # the restarted node has a new host port
            wait_writes_progress(workload, wait_until, f"after {victim} restarted")
            cycles += 1
        chaos_seconds = time.monotonic() - started
    finally:
        workload.finish()
        for node in NODE_IDS:
            if not cluster.is_running(node):
                cluster.start(node)
    assert cycles >= MIN_CYCLES, f"only {cycles} kill cycles in {MAX_DURATION:g} s"
    assert not workload.anomalies, workload.anomalies[:10]

    kv = workload.client
    # Hints first (every node is up, so each pending hint is deliverable), then an anti-entropy round
    # on every node, then a second one that must find nothing left to repair.
    wait_until(
        lambda: all(cluster.sample(node, "kv_hints_pending") == 0 for node in NODE_IDS),
        60,
        interval=0.25,
        message="kv_hints_pending to reach 0 on every node",
    )
    first = {node: kv.repair(node) for node in NODE_IDS}
    assert all(not reply.failed_peers for reply in first.values()), first
    second = {node: kv.repair(node) for node in NODE_IDS}
    assert all(not reply.failed_peers and reply.differing == 0 for reply in second.values()), second

    # Every key as the cluster serves it, and as each node stores it.
    keys = sorted(workload.history)
    with kv.pipeline() as pipe:
        for key in keys:
            pipe.get(key)
        served = pipe.execute()
    node_of = cluster.node_of_address(kv)
    admin_pool = gevent.pool.Pool(64)
    stored = {
        node: dict(zip(keys, admin_pool.map(lambda key, node=node: cluster.local_record(node, key), keys), strict=True))
        for node in NODE_IDS
    }

    wrong_reads, diverged, strays = {}, {}, {}
    for key, value in zip(keys, served, strict=True):
        allowed = allowed_outcomes(workload.history[key])
        if value not in allowed:
            wrong_reads[key] = (value, allowed, workload.history[key][-3:])
        replicas = [node_of[address] for address in kv.where(key)]
        records = {node: stored[node][key] for node in replicas}
        versions = {None if record is None else record.version for record in records.values()}
        outcomes = {None if record is None else record.value for record in records.values()}
        if len(versions) != 1 or outcomes != {value}:
            diverged[key] = (value, records)
        for node in NODE_IDS:
            if node not in replicas and stored[node][key] is not None:
                strays[key] = (node, stored[node][key])

    totals = counters(cluster, list(NODE_IDS)) + lost_with_kills
    stats = workload.stats
    print(
        f"\nchaos (seed {SEED}): {chaos_seconds:.1f} s, {cycles} kill cycles ({', '.join(victims)}); "
        f"{len(keys)} keys; puts acknowledged {stats.puts_acked}, puts failed {stats.puts_failed}, "
        f"deletes acknowledged {stats.deletes_acked}, deletes failed {stats.deletes_failed}, "
        f"errors {dict(stats.errors)} (first of each: {stats.error_examples}); "
        f"reads {stats.reads} ({stats.reads_failed} failed); "
        f"hints stored {totals['kv_hints_stored_total']:.0f}, "
        f"hints delivered {totals['kv_hints_delivered_total']:.0f}, "
        f"keys repaired by anti-entropy {totals['kv_antientropy_keys_repaired_total']:.0f}, "
        f"read repairs {totals['kv_read_repairs_total']:.0f}; "
        f"repair passes: first {[(n, r.differing, r.repaired) for n, r in first.items()]}, "
        f"second {[(n, r.differing) for n, r in second.items()]}"
    )
    assert not wrong_reads, f"{len(wrong_reads)} keys read back wrong: {list(wrong_reads.items())[:5]}"
    assert not diverged, f"{len(diverged)} keys differ between replicas: {list(diverged.items())[:5]}"
    assert not strays, f"{len(strays)} keys stored on a node that is no replica: {list(strays.items())[:5]}"
    # The run exercised what it claims to: deletes, and writes acknowledged through hints.
    assert stats.deletes_acked > 0 and stats.puts_acked > 0
    assert totals["kv_hints_stored_total"] > 0, "no write was ever hinted"
