"""One worker of ``kv bench``: one process's connections, lanes and phases.

Phases. Warm-up (``--warmup`` seconds; counted, then discarded), measurement (``--duration``
seconds, or until ``--ops`` operations), then a read-back check. Only operations *started* during
measurement count; those still in flight at its end finish and are counted. Latency is from just
before a request is written to when its reply is in hand, for successful operations only (a miss
is a success); errors are counted by kind. The generator is closed-loop: a slow reply delays the
next request of its lane, so a stall is measured once, not for every request it held back
("coordinated omission"). Compare targets at equal settings rather than reading the latencies as
those of an open-loop arrival rate.
"""

from __future__ import annotations

import itertools
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import gevent

from bench.report import (
    MISMATCH_EXAMPLES,
    PHASE_CHECK,
    PHASE_CONNECTING,
    PHASE_DONE,
    PHASE_MEASURE,
    PHASE_WARMUP,
    Stats,
    empty_check,
)
from bench.targets import (
    CONNECT_TIMEOUT,
    BenchConnection,
    BenchError,
    ClusterConnection,
    OpError,
    RedisConnection,
    cluster_facts,
)
from bench.workload import KeyChooser, WriteLedger, key_name, make_value, owned_index, parse_mix
from client.security import Credentials, Security, TlsSettings

ERROR_PAUSE = 0.05
"""A lane pauses this long after an UNREACHABLE error, so a dead node does not make it spin."""
MAX_RATE_PER_LANE = 1_000_000
"""A lane's count bound is (warm-up + duration) x this: far above the tens of thousands of ops a
second one Python lane manages, so time always ends a run first, yet no loop is without a bound."""
CHECK_TIME_LIMIT = 120.0
"""The read-back check stops after this long; keys not read by then count as unchecked (a failure)."""
STARTUP_TIMEOUT = 60.0
"""Worker processes must import, connect and report ready within this."""
LANE_DRAIN_SLACK = CONNECT_TIMEOUT + ERROR_PAUSE + 1.0
"""Beyond --timeout, how long lanes get to finish their last request when measurement ends: enough
for a re-dial and an error pause, so a lane is not normally killed mid-request."""


@dataclass(frozen=True)
class TargetSpec:
    name: str  # "kv" or "redis": how the report names it
    kind: str  # "cluster" or "redis"
    address: str
    credentials: Credentials | None = None  # the cluster's user (kv bench --user)
    tls: TlsSettings | None = None  # the cluster's TLS (kv bench --tls...); contexts are built per process

    def security(self) -> Security:
        """How this process's connections to the target are secured."""
        return Security.of(self.credentials, self.tls)


@dataclass(frozen=True)
class WorkerSpec:
    """Everything a worker needs, as plain values (it crosses to a spawned process)."""

    target: TargetSpec
    process: int
    first_connection: int  # global number of this worker's first connection
    connections: int  # this worker's connections
    total_connections: int  # across all workers: key ownership is global
    pipeline: int
    duration: float  # planned measurement, or the time cap with ops
    ops: int | None  # this worker's share of --ops
    warmup: float
    keys: int
    distribution: str
    zipf_theta: float
    mix: str
    value_size: int
    r: int | None
    w: int | None
    timeout: float
    seed: int


@dataclass
class LiveCounters:
    """What the progress line shows, updated by the lanes as they go."""

    phase: int = PHASE_CONNECTING
    phase_started: float = 0.0
    ops: int = 0
    errors: int = 0


class Worker:
    """Runs one process's share of the load: connect, warm up, measure, check."""

    def __init__(self, spec: WorkerSpec, connection_factory: Callable[[], BenchConnection] | None = None) -> None:
        """``connection_factory``: makes the bench connections; by default from ``spec.target``."""
        self.spec = spec
        self._factory = connection_factory
        self.mix = parse_mix(spec.mix)
        self.chooser = KeyChooser(spec.keys, spec.distribution, spec.zipf_theta)
        self.live = LiveCounters()
        self.stats = Stats(check=empty_check())
        self.connections: list[BenchConnection] = []
        self.ledgers: list[WriteLedger] = []
        self._budget = spec.ops
        self._last_completion = 0.0
        # Write numbers per connection, shared by its lanes so that every value written is unique.
        self._sequences: list[Iterator[int]] = [itertools.count(1) for _ in range(spec.connections)]

    def _set_phase(self, phase: int) -> None:
        self.live.phase = phase
        self.live.phase_started = time.monotonic()
        self.live.ops = self.live.errors = 0

    # --- connect ---

    def connect(self) -> None:
        """Open every connection, concurrently. Raises ``BenchError`` if any cannot be opened."""
        spec = self.spec
        factory: Callable[[], BenchConnection]
        if self._factory is not None:
            factory = self._factory
        elif spec.target.kind == "cluster":
            cluster = cluster_facts(spec.target.address, spec.timeout, spec.target.security())
            if spec.value_size > cluster.max_value_bytes:
                raise BenchError(
                    f"--value-size {spec.value_size} exceeds the cluster's limit of {cluster.max_value_bytes}"
                )
            for name, quorum in (("--r", spec.r), ("--w", spec.w)):
                if quorum is not None and quorum > cluster.replicas:
                    raise BenchError(f"{name} {quorum} exceeds the cluster's {cluster.replicas} replicas (N)")
            security = spec.target.security()
            factory = lambda: ClusterConnection(spec.target.address, spec.r, spec.w, spec.timeout, security)  # noqa: E731
        else:
            factory = lambda: RedisConnection(spec.target.address)  # noqa: E731
        self.connections = [factory() for _ in range(spec.connections)]
        self.ledgers = [WriteLedger() for _ in range(spec.connections)]
        attempts = [gevent.spawn(_connect, connection) for connection in self.connections]
        gevent.joinall(attempts, timeout=STARTUP_TIMEOUT)
        for attempt in attempts:
            if not attempt.ready() or attempt.value is not None:
                error = attempt.value
                self.close()
                gevent.killall(attempts, timeout=1)
                if error is None:
                    raise BenchError(
                        f"connecting to {spec.target.name} at {spec.target.address} took over {STARTUP_TIMEOUT:g} s"
                    )
                raise BenchError(str(error))  # an OpError's or BenchError's str is its message

    def close(self) -> None:
        for connection in self.connections:
            connection.close()

    # --- load ---

    def run(self) -> Stats:
        """Warm-up, measurement and the read-back check; the connections must be open."""
        spec = self.spec
        lanes = [
            gevent.spawn(self._lane, index, lane) for index in range(spec.connections) for lane in range(spec.pipeline)
        ]
        try:
            if spec.warmup > 0:
                self._set_phase(PHASE_WARMUP)
                gevent.sleep(spec.warmup)
            self._set_phase(PHASE_MEASURE)
            started = time.monotonic()
            self._last_completion = started
            if spec.ops is None:
                gevent.sleep(spec.duration)
                self._set_phase(PHASE_DONE)
                self.stats.elapsed = time.monotonic() - started
                gevent.joinall(lanes, timeout=LANE_DRAIN_SLACK + spec.timeout)
            else:
                gevent.joinall(lanes, timeout=spec.duration)
                if not all(lane.dead for lane in lanes):
                    self.stats.ended_by = "time cap"
                self._set_phase(PHASE_DONE)
                gevent.joinall(lanes, timeout=LANE_DRAIN_SLACK + spec.timeout)
                self.stats.elapsed = self._last_completion - started
        finally:
            gevent.killall(lanes, timeout=1)
        if spec.ops is not None and self.stats.ended_by == "duration":
            self.stats.ended_by = "ops"
        self._set_phase(PHASE_CHECK)
        self.stats.check = self._check()
        self._set_phase(PHASE_DONE)
        return self.stats

    def _lane(self, index: int, lane: int) -> None:
        spec, stats, live, mix, chooser = self.spec, self.stats, self.live, self.mix, self.chooser
        connection, ledger = self.connections[index], self.ledgers[index]
        owner = spec.first_connection + index
        rng = random.Random(f"{spec.seed}/{owner}/{lane}")  # same stream for every target
        sequences = self._sequences[index]
        limit = int((spec.warmup + spec.duration) * MAX_RATE_PER_LANE) + 1
        for _ in range(limit):
            phase = live.phase
            if phase == PHASE_DONE:
                return
            measured = phase == PHASE_MEASURE
            if measured and self._budget is not None:
                if self._budget <= 0:
                    return
                self._budget -= 1
            op = mix.choose(rng.random())
            key = chooser.index(rng.random)
            value = token = None
            if op != "get":
                key = owned_index(key, owner, spec.total_connections, spec.keys)
                if op == "put":
                    sequence = next(sequences)
                    value = make_value(owner, sequence, spec.value_size)
                    token = ledger.begin(key, sequence)
                else:
                    token = ledger.begin(key, None)
            start = time.perf_counter_ns()
            try:
                result = connection.execute(op, key_name(key), value, spec.timeout)
            except OpError as exc:
                if token is not None:
                    ledger.finish(token, ok=False)
                if measured:
                    stats.error(exc.kind, exc.message)
                    live.errors += 1
                    self._last_completion = time.monotonic()
                if exc.kind == "UNREACHABLE":
                    gevent.sleep(ERROR_PAUSE)
                continue
            latency = time.perf_counter_ns() - start
            if token is not None:
                ledger.finish(token, ok=True)
            live.ops += 1
            if not measured:
                stats.warmup_ops += 1
                continue
            stats.histograms[op].record_ns(latency)
            stats.ops[op] += 1
            if op == "get":
                if result is None:
                    stats.misses += 1
                else:
                    stats.hits += 1
            self._last_completion = time.monotonic()

    # --- read-back check ---

    def _check(self) -> dict[str, Any]:
        spec = self.spec
        check = empty_check()
        deadline = time.monotonic() + CHECK_TIME_LIMIT
        readers = []
        for index, (connection, ledger) in enumerate(zip(self.connections, self.ledgers, strict=True)):
            check["skipped_uncertain"] += ledger.skipped
            items = iter(sorted(ledger.checkable().items()))
            owner = spec.first_connection + index
            readers += [
                gevent.spawn(self._check_keys, connection, owner, items, check, deadline) for _ in range(spec.pipeline)
            ]
        gevent.joinall(readers, timeout=CHECK_TIME_LIMIT + spec.timeout)
        gevent.killall(readers, timeout=1)
        total = sum(len(ledger.checkable()) for ledger in self.ledgers)
        check["unchecked"] = total - check["keys_checked"] - check["read_errors"]
        return check

    def _check_keys(
        self,
        connection: BenchConnection,
        owner: int,
        items: Iterator[tuple[int, int | None]],
        check: dict[str, Any],
        deadline: float,
    ) -> None:
        for key, sequence in items:  # bounded: the items are this connection's written keys
            if time.monotonic() > deadline:
                return
            expected = None if sequence is None else make_value(owner, sequence, self.spec.value_size)
            try:
                actual = connection.read_back(key_name(key), self.spec.timeout)
            except OpError:
                check["read_errors"] += 1
                self.live.errors += 1
                continue
            check["keys_checked"] += 1
            self.live.ops += 1
            if expected is None:
                check["expected_absent"] += 1
            if actual != expected:
                check["mismatches"] += 1
                if len(check["mismatch_examples"]) < MISMATCH_EXAMPLES:
                    check["mismatch_examples"].append(
                        f"{key_name(key).decode()}: expected {_preview(expected)}, read {_preview(actual)}"
                    )


def _preview(value: bytes | None) -> str:
    if value is None:
        return "no value"
    text = value[:24].decode("utf-8", errors="backslashreplace")
    return repr(text + ("..." if len(value) > 24 else ""))


def _connect(connection: BenchConnection) -> Exception | None:
    """Connect, returning the failure instead of raising it: an exception escaping a greenlet would
    be printed as a traceback for every connection, and the caller reports one clear line instead."""
    try:
        connection.connect()
    except (OpError, BenchError, OSError) as exc:
        return exc
    return None
