"""The coordinator's fan-out against fake replicas: quorum, early failure, timeouts and versions."""

from __future__ import annotations

import time

import gevent
import pytest
from cluster import wait_until
from gevent.event import Event

from client.protocol import Record, Status, Version
from client.ring import Ring
from service.coordinator import Coordinator
from service.quorum import QuorumError
from service.versioning import LOGICAL_BITS, HybridLogicalClock

NODES = ["a", "b", "c"]
KEY = b"some-key"
GUARD = 1.0
"""Seconds a call that should return at once may take before the test fails (timeouts are 5 s)."""


class FakeReplica:
    """A replica in memory. ``gate``: reads and writes wait for it; ``error``: they raise it."""

    def __init__(self, node_id: str, *, gate: Event | None = None, error: Exception | None = None) -> None:
        self.node_id = node_id
        self.gate = gate
        self.error = error
        self.records: dict[bytes, Record] = {}
        self.writes: list[tuple[bytes, Record]] = []
        self.reads = 0
        self.before_failing: Event | None = None  # a failing replica waits for this before raising

    def _wait(self) -> None:
        if self.gate is not None:
            self.gate.wait()
        if self.error is not None:
            if self.before_failing is not None:
                self.before_failing.wait()
            raise self.error

    def read(self, key: bytes) -> Record | None:
        self.reads += 1
        self._wait()
        return self.records.get(key)

    def write(self, key: bytes, record: Record) -> None:
        self._wait()
        self.writes.append((key, record))
        current = self.records.get(key)
        if current is None or record.version > current.version:
            self.records[key] = record


class Harness:
    def __init__(self, replicas: list[FakeReplica], *, n: int = 3, timeout: float = 5.0, now_ms: int | None = None):
        self.ring = Ring(NODES, partitions=16)
        self.replicas = {replica.node_id: replica for replica in replicas}
        self.clock = HybridLogicalClock(now_ms=lambda: now_ms) if now_ms is not None else HybridLogicalClock()
        self.reports: list[tuple[str, bool]] = []
        self.coordinator = Coordinator(
            "a",
            self.ring,
            self.replicas,
            n=n,
            clock=self.clock,
            timeout=timeout,
            on_replica_write=lambda node_id, ok: self.reports.append((node_id, ok)),
        )

    def owners(self, key: bytes = KEY) -> list[str]:
        return self.ring.preference_list(key, self.coordinator.n)


@pytest.fixture
def gates() -> list[Event]:
    """Events handed to slow replicas; all set at teardown so no greenlet is left waiting."""
    made: list[Event] = []
    yield made
    for gate in made:
        gate.set()
    gevent.sleep(0)


def new_gate(gates: list[Event]) -> Event:
    gate = Event()
    gates.append(gate)
    return gate


def record(timestamp: int, node_id: str, value: bytes | None) -> Record:
    return Record(Version(timestamp, node_id), value)


# --- writes ----------------------------------------------------------------------------------------


def test_write_returns_after_w_acks_and_the_slow_replica_still_gets_it(gates: list[Event]) -> None:
    slow_gate = new_gate(gates)
    harness = Harness([FakeReplica("a"), FakeReplica("b"), FakeReplica("c", gate=slow_gate)])
    slow = harness.replicas["c"]

    with gevent.Timeout(GUARD):
        version = harness.coordinator.put(KEY, b"value", 2)

    assert harness.replicas["a"].records[KEY] == Record(version, b"value")
    assert harness.replicas["b"].records[KEY] == Record(version, b"value")
    assert slow.writes == []  # the client was answered while c was still working
    assert ("c", True) not in harness.reports

    slow_gate.set()
    wait_until(lambda: KEY in slow.records, message="the slow replica to receive the write")
    assert slow.records[KEY] == Record(version, b"value")
    wait_until(lambda: ("c", True) in harness.reports, message="the slow replica's ack to be counted")


def test_write_goes_only_to_the_keys_n_owners() -> None:
    harness = Harness([FakeReplica(node_id) for node_id in NODES], n=2)
    version = harness.coordinator.put(KEY, b"v", 2)
    wait_until(lambda: len(harness.reports) == 2, message="both owners to report")
    owners = harness.owners()
    assert len(owners) == 2
    for node_id in NODES:
        expected = {KEY: Record(version, b"v")} if node_id in owners else {}
        assert harness.replicas[node_id].records == expected, node_id


def test_delete_writes_a_tombstone_with_a_newer_version() -> None:
    harness = Harness([FakeReplica(node_id) for node_id in NODES])
    written = harness.coordinator.put(KEY, b"v", 3)
    deleted = harness.coordinator.delete(KEY, 3)
    assert deleted > written
    for replica in harness.replicas.values():
        assert replica.records[KEY] == Record(deleted, None)
    assert harness.coordinator.get(KEY, 3) == Record(deleted, None)


def test_write_is_unavailable_as_soon_as_too_many_replicas_fail(gates: list[Event]) -> None:
    # W=3 of N=3: one replica acks, one fails, one hangs. After the failure W cannot be reached, so
    # the coordinator must answer at once, not after its 5 s timeout, with 1 of 3 acked.
    acked = Event()
    ok = FakeReplica("a")
    failing = FakeReplica("b", error=OSError("disk on fire"))
    failing.before_failing = acked  # fail only once a's ack is in, so acked=1 is deterministic
    hanging = FakeReplica("c", gate=new_gate(gates))
    harness = Harness([ok, failing, hanging], timeout=5.0)
    original_write = ok.write

    def write_then_signal(key: bytes, rec: Record) -> None:
        original_write(key, rec)
        acked.set()

    ok.write = write_then_signal  # type: ignore[method-assign]

    started = time.monotonic()
    with gevent.Timeout(GUARD), pytest.raises(QuorumError) as caught:
        harness.coordinator.put(KEY, b"v", 3)
    assert time.monotonic() - started < GUARD
    error = caught.value
    assert error.status == Status.UNAVAILABLE
    assert (error.acked, error.required) == (1, 3)
    assert "disk on fire" in error.message
    assert ("b", False) in harness.reports


def test_write_with_every_replica_failing_reports_zero_acked() -> None:
    harness = Harness([FakeReplica(node_id, error=ConnectionError()) for node_id in NODES])
    with gevent.Timeout(GUARD), pytest.raises(QuorumError) as caught:
        harness.coordinator.put(KEY, b"v", 2)
    assert caught.value.status == Status.UNAVAILABLE
    assert (caught.value.acked, caught.value.required) == (0, 2)
    # an exception with no message is still named in the reason
    assert "ConnectionError" in caught.value.message
    wait_until(lambda: len(harness.reports) == 3, message="the three failed writes to be counted")
    assert sorted(harness.reports) == [("a", False), ("b", False), ("c", False)]


def test_write_succeeds_when_the_failures_leave_w_reachable(gates: list[Event]) -> None:
    harness = Harness([FakeReplica("a"), FakeReplica("b", error=OSError("down")), FakeReplica("c")])
    with gevent.Timeout(GUARD):
        version = harness.coordinator.put(KEY, b"v", 2)
    assert harness.replicas["a"].records[KEY].version == version
    assert harness.replicas["c"].records[KEY].version == version


def test_write_times_out_when_replicas_are_too_slow(gates: list[Event]) -> None:
    harness = Harness(
        [FakeReplica("a"), FakeReplica("b", gate=new_gate(gates)), FakeReplica("c", gate=new_gate(gates))],
        timeout=0.05,
    )
    started = time.monotonic()
    with gevent.Timeout(GUARD), pytest.raises(QuorumError) as caught:
        harness.coordinator.put(KEY, b"v", 2)
    elapsed = time.monotonic() - started
    assert caught.value.status == Status.TIMEOUT
    assert (caught.value.acked, caught.value.required) == (1, 2)
    assert 0.04 <= elapsed < GUARD
    assert "0.05 s" in caught.value.message


# --- reads -----------------------------------------------------------------------------------------


def test_read_returns_the_newest_version_among_r_replies(gates: list[Event]) -> None:
    late_gate = new_gate(gates)
    old, middle, newest = record(100, "a", b"old"), record(200, "b", b"middle"), record(300, "c", b"newest")
    replicas = [FakeReplica("a"), FakeReplica("b"), FakeReplica("c", gate=late_gate)]
    for replica, stored in zip(replicas, (old, middle, newest), strict=True):
        replica.records[KEY] = stored
    harness = Harness(replicas)

    with gevent.Timeout(GUARD):
        assert harness.coordinator.get(KEY, 2) == middle  # c has not answered yet
    late_gate.set()
    with gevent.Timeout(GUARD):
        assert harness.coordinator.get(KEY, 3) == newest


def test_read_prefers_a_newer_tombstone_over_an_older_value() -> None:
    replicas = [FakeReplica(node_id) for node_id in NODES]
    replicas[0].records[KEY] = record(100, "a", b"v")
    replicas[1].records[KEY] = record(200, "b", None)
    harness = Harness(replicas)
    assert harness.coordinator.get(KEY, 3) == record(200, "b", None)


def test_read_of_a_missing_key_is_none() -> None:
    harness = Harness([FakeReplica(node_id) for node_id in NODES])
    assert harness.coordinator.get(b"missing", 2) is None


def test_read_is_unavailable_when_too_many_replicas_fail(gates: list[Event]) -> None:
    harness = Harness(
        [
            FakeReplica("a", error=OSError("x")),
            FakeReplica("b", error=OSError("y")),
            FakeReplica("c", gate=new_gate(gates)),
        ]
    )
    with gevent.Timeout(GUARD), pytest.raises(QuorumError) as caught:
        harness.coordinator.get(KEY, 2)
    assert caught.value.status == Status.UNAVAILABLE
    assert (caught.value.acked, caught.value.required) == (0, 2)


def test_read_times_out_when_replicas_are_too_slow(gates: list[Event]) -> None:
    gate = new_gate(gates)
    harness = Harness([FakeReplica(node_id, gate=gate) for node_id in NODES], timeout=0.05)
    with gevent.Timeout(GUARD), pytest.raises(QuorumError) as caught:
        harness.coordinator.get(KEY, 1)
    assert caught.value.status == Status.TIMEOUT
    assert (caught.value.acked, caught.value.required) == (0, 1)


# --- versions --------------------------------------------------------------------------------------


def test_versions_are_stamped_by_the_clock_and_increase() -> None:
    frozen_ms = 1_700_000_000_000
    harness = Harness([FakeReplica(node_id) for node_id in NODES], now_ms=frozen_ms)
    versions = [harness.coordinator.put(KEY, str(i).encode(), 3) for i in range(5)]
    versions.append(harness.coordinator.delete(KEY, 3))

    assert all(version.node_id == "a" for version in versions)
    timestamps = [version.timestamp for version in versions]
    # the wall clock stands still, so the logical counter orders them
    assert timestamps == [(frozen_ms << LOGICAL_BITS) + i for i in range(6)]
    assert harness.clock.last == timestamps[-1]
    for replica in harness.replicas.values():
        assert [rec.version for _, rec in replica.writes] == versions


def test_a_read_moves_the_clock_past_the_version_it_returns() -> None:
    replicas = [FakeReplica(node_id) for node_id in NODES]
    future = (2_000_000_000_000 << LOGICAL_BITS) + 7
    replicas[1].records[KEY] = record(future, "b", b"from the future")
    harness = Harness(replicas, now_ms=1_700_000_000_000)
    assert harness.coordinator.get(KEY, 3).version.timestamp == future
    assert harness.coordinator.put(KEY, b"later", 3).timestamp > future
