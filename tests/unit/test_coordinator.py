"""The coordinator against fake replicas: fan-out and quorum, early failure, timeouts, versions, sloppy
quorum with hinted writes to fallback nodes, skipping down replicas, and read repair.

What depends on time (failing at once rather than at the deadline, the timeout itself, the
speculative retry) is asserted against the pure decisions (``quorum.QuorumRound``,
``read_plan.ReadPlan``) on a clock the test sets; the coordinator around them is then checked for
the same outcome without measuring how long it took."""

from __future__ import annotations

from dataclasses import dataclass, field

import gevent
import pytest
from gevent.event import Event
from polling import wait_until

from client.errors import ReplicaBehindError, StorageFullError
from client.protocol import Record, Status, Version
from client.ring import Ring
from service.coordinator import Coordinator, CoordinatorEvents, CoordinatorSettings, MustWait
from service.placement import Placement
from service.quorum import WAIT, Answer, Ask, Fail, QuorumFailure, QuorumRound
from service.read_plan import SPECULATIVE_RETRY_FRACTION, ReadPlan, asks_all, read_targets
from service.versioning import LOGICAL_BITS, HybridLogicalClock

NODES = ["a", "b", "c"]
"""Three nodes and N=3 by default: every node is a preferred replica, so there is no fallback node."""
KEY = b"some-key"
GUARD = 1.0
"""Seconds a call that should return at once may take before the test fails (timeouts are 5 s)."""


class FakeReplica:
    """A replica in memory. ``gate``: every call waits for it; ``error``: every call raises it;
    ``write_error``: only ``write`` raises it (reads still work, as for a full disk);
    ``reads_block``: ``True`` like a peer, ``False`` like this node's own store."""

    reads_block = True

    def __init__(
        self,
        node_id: str,
        *,
        gate: Event | None = None,
        error: Exception | None = None,
        write_error: Exception | None = None,
    ) -> None:
        self.node_id = node_id
        self.gate = gate
        self.error = error
        self.write_error = write_error
        self.records: dict[bytes, Record] = {}
        self.writes: list[tuple[bytes, Record]] = []
        self.hints: list[tuple[bytes, Record, str]] = []
        self.reads = 0
        self.before_failing: Event | None = None  # a failing replica waits for this before raising
        self.behind = False  # its store is full or catching up: it refuses reads not marked behind_ok

    def _wait(self, timeout: float | None = None) -> None:
        if self.gate is not None and not self.gate.wait(timeout):
            raise TimeoutError(f"{self.node_id} did not answer within {timeout} s")
        if self.error is not None:
            if self.before_failing is not None:
                self.before_failing.wait()
            raise self.error

    def read(self, key: bytes, *, behind_ok: bool = False) -> Record | None:
        self.reads += 1
        self._wait()
        if self.behind and not behind_ok:
            raise ReplicaBehindError(f"{self.node_id}: storage full")
        return self.records.get(key)

    def write(self, key: bytes, record: Record, *, stalled_after: float | None = None) -> Version | None:
        self._wait(stalled_after)
        if self.write_error is not None:
            raise self.write_error
        self.writes.append((key, record))
        current = self.records.get(key)
        if current is None or record.version > current.version:
            self.records[key] = record
            return None
        return current.version if current.version > record.version else None

    def write_hint(self, key: bytes, record: Record, owner: str) -> None:
        self._wait()
        self.hints.append((key, record, owner))

    @property
    def calls(self) -> int:
        return self.reads + len(self.writes) + len(self.hints)


class RecordingEvents(CoordinatorEvents):
    def __init__(self) -> None:
        self.replica_writes: list[tuple[str, bool]] = []
        self.hinted_writes: list[tuple[str, str]] = []
        self.read_repairs: list[tuple[bytes, str, bool]] = []

    def replica_write(self, node_id: str, ok: bool) -> None:
        self.replica_writes.append((node_id, ok))

    def hinted_write(self, owner: str, holder: str) -> None:
        self.hinted_writes.append((owner, holder))

    def read_repair(self, key: bytes, node_id: str, ok: bool) -> None:
        self.read_repairs.append((key, node_id, ok))


@dataclass
class Harness:
    """A coordinator for node "a" over ``replicas``, with the options a test sets by keyword."""

    replica_list: list[FakeReplica]
    n: int = 3
    timeout: float = 5.0
    now_ms: int | None = None
    down: set[str] = field(default_factory=set)
    full: set[str] = field(default_factory=set)  # stores that refuse writes (their PING flag says so)
    catching_up: set[str] = field(default_factory=set)  # stores that take writes but may lack some
    read_repair_chance: float = 1.0
    chance: float = 0.5

    def __post_init__(self) -> None:
        self.ring = Ring([replica.node_id for replica in self.replica_list], partitions=16)
        self.replicas = {replica.node_id: replica for replica in self.replica_list}
        now_ms = self.now_ms
        self.clock = HybridLogicalClock(now_ms=lambda: now_ms) if now_ms is not None else HybridLogicalClock()
        self.events = RecordingEvents()
        self.coordinator = Coordinator(
            CoordinatorSettings("a", self.timeout, self.read_repair_chance, chance=lambda: self.chance),
            Placement(
                self.ring,
                self.n,
                lambda node_id: node_id in self.down,
                lambda node_id: node_id in self.full,
                lambda node_id: node_id in self.full or node_id in self.catching_up,
            ),
            self.replicas,
            self.clock,
            events=self.events,
        )

    @property
    def reports(self) -> list[tuple[str, bool]]:
        return self.events.replica_writes

    def owners(self, key: bytes = KEY) -> list[str]:
        return self.ring.preference_list(key, self.n)

    def ranking(self, key: bytes = KEY) -> list[str]:
        """Every node ranked for the key's partition: the N preferred replicas, then the fallbacks."""
        return list(self.ring.partition_owners(self.ring.partition(key)))


@pytest.fixture
def gates() -> list[Event]:
    """Events handed to slow replicas; all set at teardown so no greenlet is left waiting."""
    made: list[Event] = []
    yield made
    for gate in made:
        gate.set()
    gevent.sleep(0)


def run_until_idle() -> None:
    """Return once every greenlet that can run has run (and every one they started): after this,
    a call the coordinator sent in the background has reached its fake replica."""
    gevent.idle()


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

    def write_then_signal(key: bytes, rec: Record, *, stalled_after: float | None = None) -> None:
        original_write(key, rec, stalled_after=stalled_after)
        acked.set()

    ok.write = write_then_signal  # type: ignore[method-assign]

    # The decision: the failure that puts W out of reach fails the write then, with no tick of the
    # clock at all (the round was never told any time passed), while c is still outstanding.
    quorum = QuorumRound(3, 3, now=0.0, timeout=5.0)
    assert quorum.on_success("a", "a") is WAIT
    decision = quorum.on_failure("b", "disk on fire")
    assert isinstance(decision, Fail)
    assert decision.failure.status == Status.UNAVAILABLE
    assert (decision.failure.acked, decision.failure.required) == (1, 3)
    assert "disk on fire" in decision.failure.message
    assert quorum.outstanding == 1

    with gevent.Timeout(GUARD), pytest.raises(QuorumFailure) as caught:
        harness.coordinator.put(KEY, b"v", 3)
    error = caught.value
    assert error.status == Status.UNAVAILABLE
    assert (error.acked, error.required) == (1, 3)
    assert "disk on fire" in error.message
    assert ("b", False) in harness.reports


def test_write_with_every_replica_failing_reports_zero_acked() -> None:
    harness = Harness([FakeReplica(node_id, error=ConnectionError()) for node_id in NODES])
    with gevent.Timeout(GUARD), pytest.raises(QuorumFailure) as caught:
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
    # The decision: W=2 with one ack waits until the deadline, then fails TIMEOUT.
    quorum = QuorumRound(2, 3, now=10.0, timeout=0.05)
    assert quorum.on_success("a", "a") is WAIT
    assert quorum.wake_at == pytest.approx(10.05)
    assert quorum.tick(10.04) is WAIT
    decision = quorum.tick(10.05)
    assert isinstance(decision, Fail)
    assert decision.failure.status == Status.TIMEOUT
    assert (decision.failure.acked, decision.failure.required) == (1, 2)
    assert "0.05 s" in decision.failure.message

    harness = Harness(
        [FakeReplica("a"), FakeReplica("b", gate=new_gate(gates)), FakeReplica("c", gate=new_gate(gates))],
        timeout=0.05,
    )
    with gevent.Timeout(GUARD), pytest.raises(QuorumFailure) as caught:
        harness.coordinator.put(KEY, b"v", 2)
    assert caught.value.status == Status.TIMEOUT
    assert (caught.value.acked, caught.value.required) == (1, 2)
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
    with gevent.Timeout(GUARD), pytest.raises(QuorumFailure) as caught:
        harness.coordinator.get(KEY, 2)
    assert caught.value.status == Status.UNAVAILABLE
    assert (caught.value.acked, caught.value.required) == (0, 2)


def test_read_times_out_when_replicas_are_too_slow(gates: list[Event]) -> None:
    gate = new_gate(gates)
    harness = Harness([FakeReplica(node_id, gate=gate) for node_id in NODES], timeout=0.05)
    with gevent.Timeout(GUARD), pytest.raises(QuorumFailure) as caught:
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


def test_after_stamps_the_write_above_a_timestamp_the_client_has_seen() -> None:
    frozen_ms = 1_700_000_000_000
    harness = Harness([FakeReplica(node_id) for node_id in NODES], now_ms=frozen_ms)
    seen = (frozen_ms + 60_000) << LOGICAL_BITS  # from a coordinator whose clock runs a minute ahead
    version = harness.coordinator.put(KEY, b"v", 3, after=seen)
    assert version.timestamp > seen
    deleted = harness.coordinator.delete(KEY, 3, after=seen)  # an older `after` changes nothing
    assert deleted.timestamp == version.timestamp + 1
    assert harness.coordinator.delete(KEY, 3, after=deleted.timestamp + 10).timestamp > deleted.timestamp + 10
    # without `after` the clock still never goes back below what it observed
    assert harness.coordinator.put(KEY, b"w", 3).timestamp > deleted.timestamp + 10


def test_after_below_the_clock_does_not_move_it() -> None:
    frozen_ms = 1_700_000_000_000
    harness = Harness([FakeReplica(node_id) for node_id in NODES], now_ms=frozen_ms)
    assert harness.coordinator.put(KEY, b"v", 3, after=5).timestamp == frozen_ms << LOGICAL_BITS


# --- sloppy quorum: hinted writes to fallback nodes ------------------------------------------------

FIVE = ["a", "b", "c", "d", "e"]


def five_nodes(**overrides: FakeReplica) -> list[FakeReplica]:
    return [overrides.get(node_id, FakeReplica(node_id)) for node_id in FIVE]


def test_a_write_for_a_down_replica_goes_to_the_first_fallback_as_a_hint() -> None:
    harness = Harness(five_nodes(), n=2)
    first, second, fallback, *later = harness.ranking()
    harness.down.add(second)

    with gevent.Timeout(GUARD):
        version = harness.coordinator.put(KEY, b"v", 2)  # W=2 of N=2 with one replica down

    record = Record(version, b"v")
    assert harness.replicas[first].records == {KEY: record}
    assert harness.replicas[second].calls == 0  # nothing is sent to a down node
    assert harness.replicas[fallback].hints == [(KEY, record, second)]
    assert harness.replicas[fallback].records == {}  # held for its owner, not stored as its own
    assert all(harness.replicas[node_id].calls == 0 for node_id in later)
    assert harness.events.hinted_writes == [(second, fallback)]
    wait_until(lambda: harness.reports == [(first, True)], message="the one real replica write to be counted")


def test_a_failed_replica_write_falls_back_to_a_hint() -> None:
    harness = Harness(five_nodes(), n=2)
    first, second, fallback, *_ = harness.ranking()
    harness.replicas[second].error = OSError("connection refused")  # not known to be down: it is tried

    with gevent.Timeout(GUARD):
        version = harness.coordinator.put(KEY, b"v", 2)

    assert harness.replicas[first].records == {KEY: Record(version, b"v")}
    assert harness.replicas[fallback].hints == [(KEY, Record(version, b"v"), second)]
    assert harness.events.hinted_writes == [(second, fallback)]
    assert (second, False) in harness.reports


def test_a_down_or_failing_fallback_is_passed_over_for_the_next() -> None:
    harness = Harness(five_nodes(), n=2)
    first, second, fallback1, fallback2, fallback3 = harness.ranking()
    harness.down.update({second, fallback1})
    harness.replicas[fallback2].error = OSError("disk full")

    with gevent.Timeout(GUARD):
        version = harness.coordinator.put(KEY, b"v", 2)

    assert harness.replicas[first].records == {KEY: Record(version, b"v")}
    assert harness.replicas[fallback1].calls == 0
    assert harness.replicas[fallback3].hints == [(KEY, Record(version, b"v"), second)]
    assert harness.events.hinted_writes == [(second, fallback3)]


def test_two_down_replicas_get_two_different_fallbacks() -> None:
    harness = Harness(five_nodes(), n=3)
    first, second, third, fallback1, fallback2 = harness.ranking()
    harness.down.update({second, third})

    with gevent.Timeout(GUARD):
        version = harness.coordinator.put(KEY, b"v", 3)

    record = Record(version, b"v")
    assert harness.replicas[first].records == {KEY: record}
    holders = {
        owner: [
            node_id for node_id in (fallback1, fallback2) if (KEY, record, owner) in harness.replicas[node_id].hints
        ]
        for owner in (second, third)
    }
    assert sorted(holders[second] + holders[third]) == sorted([fallback1, fallback2])  # one hint on each
    assert sorted(harness.events.hinted_writes) == sorted([(second, holders[second][0]), (third, holders[third][0])])


def test_a_write_is_unavailable_when_no_fallback_can_take_the_hint() -> None:
    # Three nodes, N=2: one fallback only, and it fails too.
    harness = Harness([FakeReplica("a"), FakeReplica("b"), FakeReplica("c")], n=2)
    first, second, fallback = harness.ranking()
    harness.down.add(second)
    harness.replicas[fallback].error = OSError("disk full")

    with gevent.Timeout(GUARD), pytest.raises(QuorumFailure) as caught:
        harness.coordinator.put(KEY, b"v", 2)
    assert caught.value.status == Status.UNAVAILABLE
    assert (caught.value.acked, caught.value.required) == (1, 2)
    assert f"{second} is down" in caught.value.message
    assert "disk full" in caught.value.message
    assert "no fallback node took a hint" in caught.value.message
    assert harness.events.hinted_writes == []

    version = harness.coordinator.put(KEY, b"w", 1)  # W=1 is still reachable
    assert harness.replicas[first].records[KEY] == Record(version, b"w")


def test_a_write_with_every_node_down_fails_at_once_without_sending_anything() -> None:
    harness = Harness(five_nodes(), n=2, down=set(FIVE))
    with gevent.Timeout(GUARD), pytest.raises(QuorumFailure) as caught:
        harness.coordinator.put(KEY, b"v", 1)
    assert caught.value.status == Status.UNAVAILABLE
    assert (caught.value.acked, caught.value.required) == (0, 1)
    assert all(replica.calls == 0 for replica in harness.replicas.values())


def test_in_a_ring_of_exactly_n_nodes_a_down_replica_has_no_fallback() -> None:
    harness = Harness([FakeReplica(node_id) for node_id in NODES], n=3, down={"b"})
    with gevent.Timeout(GUARD), pytest.raises(QuorumFailure) as caught:
        harness.coordinator.put(KEY, b"v", 3)
    assert caught.value.status == Status.UNAVAILABLE
    assert caught.value.required == 3
    assert caught.value.acked <= 2  # fails as soon as b's write is known lost, whatever acked before
    assert "b: b is down; no fallback node took a hint" in caught.value.message
    assert harness.replicas["b"].calls == 0
    assert harness.events.hinted_writes == []


# --- full stores -----------------------------------------------------------------------------------


def test_a_write_for_a_full_replica_goes_to_a_fallback_as_a_hint_without_asking_it() -> None:
    harness = Harness(five_nodes(), n=2)
    first, second, fallback, *_ = harness.ranking()
    harness.full.add(second)

    with gevent.Timeout(GUARD):
        version = harness.coordinator.put(KEY, b"v", 2)

    assert harness.replicas[second].calls == 0  # its PING flag said it is full: no round trip
    assert harness.replicas[first].records == {KEY: Record(version, b"v")}
    assert harness.replicas[fallback].hints == [(KEY, Record(version, b"v"), second)]


def test_a_replica_answering_storage_full_is_routed_around_like_a_failed_one() -> None:
    harness = Harness(five_nodes(), n=2)
    _first, second, fallback, *_ = harness.ranking()
    harness.replicas[second].write_error = StorageFullError(f"{second}: storage full: the disk is full")

    with gevent.Timeout(GUARD):
        version = harness.coordinator.put(KEY, b"v", 2)

    assert harness.replicas[fallback].hints == [(KEY, Record(version, b"v"), second)]
    assert (second, False) in harness.reports


def test_a_tombstone_is_still_offered_to_a_full_replica_since_it_frees_room() -> None:
    harness = Harness(five_nodes(), n=2)
    _first, second, fallback, *_ = harness.ranking()
    harness.full.add(second)

    with gevent.Timeout(GUARD):
        version = harness.coordinator.delete(KEY, 2)

    assert harness.replicas[second].records == {KEY: Record(version, None)}
    assert harness.replicas[fallback].hints == []


def test_a_full_fallback_is_passed_over_for_the_next() -> None:
    harness = Harness(five_nodes(), n=2)
    _first, second, fallback1, fallback2, _ = harness.ranking()
    harness.full.update({second, fallback1})

    with gevent.Timeout(GUARD):
        version = harness.coordinator.put(KEY, b"v", 2)

    assert harness.replicas[fallback1].calls == 0
    assert harness.replicas[fallback2].hints == [(KEY, Record(version, b"v"), second)]


def test_a_write_that_cannot_reach_w_because_stores_are_full_fails_storage_full() -> None:
    # Three nodes, N=2: the full replica's only fallback is full too.
    harness = Harness([FakeReplica("a"), FakeReplica("b"), FakeReplica("c")], n=2)
    _first, second, fallback = harness.ranking()
    harness.full.add(second)
    harness.replicas[fallback].error = StorageFullError(f"{fallback}: storage full: the disk is full")

    with gevent.Timeout(GUARD), pytest.raises(QuorumFailure) as caught:
        harness.coordinator.put(KEY, b"v", 2)
    assert caught.value.status == Status.STORAGE_FULL  # not UNAVAILABLE: free space is the fix
    assert (caught.value.acked, caught.value.required) == (1, 2)
    assert f"{second}: storage full" in caught.value.message
    assert "UNAVAILABLE" not in caught.value.message
    assert len(caught.value.message) < 300  # one flat line, not nested replies


def test_a_write_short_of_w_for_another_reason_too_stays_unavailable() -> None:
    harness = Harness([FakeReplica("a"), FakeReplica("b"), FakeReplica("c")], n=2)
    first, second, fallback = harness.ranking()
    harness.full.add(second)
    harness.down.add(fallback)  # its copy failed for lack of a node, not of room
    harness.down.add(first)

    with gevent.Timeout(GUARD), pytest.raises(QuorumFailure) as caught:
        harness.coordinator.put(KEY, b"v", 2)
    assert caught.value.status == Status.UNAVAILABLE


@pytest.mark.parametrize("state", ["full", "catching_up"])
def test_a_read_asks_a_replica_whose_store_is_behind_only_when_no_other_is_left(state: str) -> None:
    replicas = [FakeReplica(node_id) for node_id in NODES]
    replicas[0].records[KEY] = record(100, "a", b"missing the newest write")
    replicas[1].records[KEY] = record(300, "b", b"newest")
    replicas[2].records[KEY] = record(300, "b", b"newest")
    for read_repair_chance in (0.0, 1.0):  # asking every replica asks every current one
        harness = Harness(replicas, read_repair_chance=read_repair_chance)
        getattr(harness, state).add("a")  # "a" is this node: even its own store is not read alone
        for _ in range(5):
            with gevent.Timeout(GUARD):
                assert harness.coordinator.get(KEY, 1) == record(300, "b", b"newest")
        run_until_idle()
        assert harness.replicas["a"].reads == 0

    harness.down.update({"b", "c"})  # no current replica left: the behind one answers, as it can
    with gevent.Timeout(GUARD):
        assert harness.coordinator.get(KEY, 1) == record(100, "a", b"missing the newest write")


def test_a_replica_known_to_be_behind_is_asked_to_answer_anyway_as_the_last_one() -> None:
    harness = Harness([FakeReplica(node_id) for node_id in NODES], n=2)
    first, second, _ = harness.ranking()
    other = first if first != "a" else second
    harness.replicas[other].behind = True
    harness.replicas[other].records[KEY] = record(100, other, b"v")
    harness.full.add(other)
    harness.down.update(set(harness.owners()) - {other})
    with gevent.Timeout(GUARD):
        assert harness.coordinator.get(KEY, 1) == record(100, other, b"v")


def test_a_behind_replica_not_yet_known_as_such_refuses_and_the_next_one_answers() -> None:
    harness = Harness([FakeReplica(node_id) for node_id in NODES], n=3)
    for replica in harness.replica_list:
        replica.records[KEY] = record(100, "b", b"v")
    first, second, _ = harness.ranking()
    behind = first if first != "a" else second  # not this node: its own state it always knows
    harness.replicas[behind].behind = True  # its PING flag has not reached the coordinator yet
    harness.replicas[behind].records[KEY] = record(50, "b", b"stale")
    with gevent.Timeout(GUARD):
        assert harness.coordinator.get(KEY, 2) == record(100, "b", b"v")


# --- reads skip down replicas ----------------------------------------------------------------------


def test_a_read_skips_down_replicas() -> None:
    replicas = [FakeReplica(node_id) for node_id in NODES]
    replicas[0].records[KEY] = record(100, "a", b"old")
    replicas[1].records[KEY] = record(300, "b", b"newest, but b is down")
    replicas[2].records[KEY] = record(200, "c", b"middle")
    harness = Harness(replicas, down={"b"})
    with gevent.Timeout(GUARD):
        assert harness.coordinator.get(KEY, 2) == record(200, "c", b"middle")
    assert harness.replicas["b"].reads == 0


def test_a_read_fails_at_once_when_fewer_than_r_replicas_are_up(gates: list[Event]) -> None:
    gate = new_gate(gates)  # a read actually sent would hang here
    harness = Harness([FakeReplica(node_id, gate=gate) for node_id in NODES], down={"b", "c"})
    # The decision is made from the placement alone, before any replica is asked or any time passes.
    with pytest.raises(QuorumFailure, match="only 1 of the key's 3 replicas are up"):
        read_targets(harness.owners(), harness.down.__contains__, "a", 2)
    with gevent.Timeout(GUARD), pytest.raises(QuorumFailure) as caught:
        harness.coordinator.get(KEY, 2)
    assert caught.value.status == Status.UNAVAILABLE
    assert (caught.value.acked, caught.value.required) == (0, 2)
    assert "only 1 of the key's 3 replicas are up" in caught.value.message
    assert all(replica.reads == 0 for replica in harness.replicas.values())


# --- reads ask R replicas --------------------------------------------------------------------------


def test_a_read_asks_only_r_replicas_this_node_first() -> None:
    replicas = [FakeReplica(node_id) for node_id in NODES]
    for replica in replicas:
        replica.records[KEY] = record(100, replica.node_id, replica.node_id.encode())
    harness = Harness(replicas, read_repair_chance=0.0)
    with gevent.Timeout(GUARD):
        assert harness.coordinator.get(KEY, 1) == record(100, "a", b"a")
    run_until_idle()
    assert [replica.reads for replica in replicas] == [1, 0, 0]

    with gevent.Timeout(GUARD):
        harness.coordinator.get(KEY, 2)
    assert replicas[0].reads == 2
    assert replicas[1].reads + replicas[2].reads == 1


def test_a_failed_read_is_replaced_by_the_next_replica_up() -> None:
    replicas = [FakeReplica("a", error=OSError("bad sector")), FakeReplica("b"), FakeReplica("c")]
    replicas[1].records[KEY] = replicas[2].records[KEY] = record(100, "b", b"v")
    harness = Harness(replicas, read_repair_chance=0.0)
    with gevent.Timeout(GUARD):
        assert harness.coordinator.get(KEY, 1) == record(100, "b", b"v")
    assert replicas[0].reads == 1
    assert replicas[1].reads + replicas[2].reads == 1  # one spare was enough


@pytest.mark.parametrize("local_fails", [False, True])
def test_a_read_of_this_nodes_own_store_alone_takes_the_direct_path_and_falls_back(local_fails: bool) -> None:
    local = FakeReplica("a", error=OSError("bad sector") if local_fails else None)
    local.reads_block = False  # like LocalStore: the direct path applies
    replicas = [local, FakeReplica("b"), FakeReplica("c")]
    for replica in replicas:
        replica.records[KEY] = record(100 + len(replica.node_id), replica.node_id, replica.node_id.encode())
    harness = Harness(replicas, read_repair_chance=0.0)
    with gevent.Timeout(GUARD):
        answer = harness.coordinator.get(KEY, 1)
    if local_fails:  # tried directly, then once more by the general path, which then asks a spare
        assert local.reads == 2 and answer in (replicas[1].records[KEY], replicas[2].records[KEY])
        assert replicas[1].reads + replicas[2].reads == 1
    else:
        assert answer == local.records[KEY]
        assert [replica.reads for replica in replicas] == [1, 0, 0]
        assert harness.clock.last >= 101  # the clock observed what it read


def test_a_read_stuck_on_a_hung_replica_also_asks_the_next_one(gates: list[Event]) -> None:
    hung = new_gate(gates)  # never opened during the test: a paused process the detector has not caught
    harness = Harness(five_nodes(), n=2, timeout=1.0, read_repair_chance=0.0)
    key = next(key for key in (b"k%d" % i for i in range(1000)) if "a" not in harness.owners(key))
    first, second = harness.owners(key)
    live = record(100, second, b"from the live replica")

    # The decision: the next replica is asked after the speculative retry delay, long before the timeout.
    plan = ReadPlan([first, second], 1, ask_all=False, now=0.0, timeout=1.0)
    assert plan.ask_first == [first]
    assert plan.wake_at == SPECULATIVE_RETRY_FRACTION * 1.0
    assert plan.tick(SPECULATIVE_RETRY_FRACTION * 1.0 - 0.001) is WAIT
    assert plan.tick(SPECULATIVE_RETRY_FRACTION * 1.0) == Ask(second)
    assert plan.on_success(second, live) == Answer(live)
    assert SPECULATIVE_RETRY_FRACTION * 1.0 < 0.5

    harness.replicas[first].gate = hung
    harness.replicas[second].records[key] = live
    with gevent.Timeout(GUARD):
        assert harness.coordinator.get(key, 1) == live
    assert harness.replicas[first].reads == harness.replicas[second].reads == 1


def test_a_read_that_must_not_wait_says_so_before_sending_anything() -> None:
    local = FakeReplica("a", error=OSError("bad sector"))
    local.reads_block = False
    harness = Harness([local, FakeReplica("b"), FakeReplica("c")], read_repair_chance=0.0)
    with pytest.raises(MustWait):
        harness.coordinator.get(KEY, 1, wait=False)  # the local read failed: only other nodes are left
    with pytest.raises(MustWait):
        harness.coordinator.get(KEY, 2, wait=False)  # R=2 needs another node anyway
    run_until_idle()
    assert harness.replicas["b"].reads == harness.replicas["c"].reads == 0


def test_a_direct_local_read_drawn_for_read_repair_repairs_the_others_in_the_background() -> None:
    newest = record(300, "a", b"newest")
    local = FakeReplica("a")
    local.reads_block = False
    local.records[KEY] = newest
    replicas = [local, FakeReplica("b"), FakeReplica("c")]
    replicas[1].records[KEY] = record(100, "b", b"old")  # c holds nothing
    harness = Harness(replicas, read_repair_chance=1.0)
    with gevent.Timeout(GUARD):
        assert harness.coordinator.get(KEY, 1, wait=False) == newest  # answered at once, locally
    wait_until(lambda: replicas[1].records[KEY] == newest and replicas[2].records.get(KEY) == newest)
    assert local.reads == 1 and local.writes == []


def test_a_read_is_unavailable_once_every_spare_failed_too() -> None:
    harness = Harness([FakeReplica(node_id, error=OSError("gone")) for node_id in NODES], read_repair_chance=0.0)
    with gevent.Timeout(GUARD), pytest.raises(QuorumFailure) as caught:
        harness.coordinator.get(KEY, 2)
    assert caught.value.status == Status.UNAVAILABLE
    assert (caught.value.acked, caught.value.required) == (0, 2)
    assert [replica.reads for replica in harness.replicas.values()] == [1, 1, 1]


def test_disagreeing_replies_among_the_r_asked_are_repaired_and_the_rest_left_alone() -> None:
    newest = record(300, "a", b"newest")
    replicas = [FakeReplica(node_id) for node_id in NODES]
    harness = Harness(replicas, read_repair_chance=0.0)
    second, third = [node_id for node_id in harness.owners() if node_id != "a"]  # asked after "a", in ring order
    harness.replicas["a"].records[KEY] = newest
    harness.replicas[second].records[KEY] = record(100, second, b"old")
    with gevent.Timeout(GUARD):
        assert harness.coordinator.get(KEY, 2) == newest
    wait_until(lambda: harness.replicas[second].records[KEY] == newest, message="the stale one repaired")
    assert harness.replicas[third].reads == 0
    assert harness.replicas[third].writes == []


@pytest.mark.parametrize(("chance", "asked"), [(0.05, [1, 1, 1]), (0.5, [1, 0, 0])])
def test_read_repair_chance_decides_whether_the_other_replicas_are_asked(chance: float, asked: list[int]) -> None:
    replicas = [FakeReplica(node_id) for node_id in NODES]
    harness = Harness(replicas, read_repair_chance=0.1, chance=chance)
    # The decision: a draw below the chance asks every replica up, another asks R of them.
    ask_all = asks_all(1, len(NODES), 0.1, lambda: chance)
    plan = ReadPlan(
        read_targets(harness.owners(), harness.down.__contains__, "a", 1), 1, ask_all=ask_all, now=0.0, timeout=5.0
    )
    assert sorted(plan.ask_first) == [node_id for node_id, count in zip(NODES, asked, strict=True) if count]

    with gevent.Timeout(GUARD):
        harness.coordinator.get(KEY, 1)
    wait_until(lambda: sum(replica.reads for replica in replicas) == sum(asked), message="the reads asked for")
    run_until_idle()  # and no more than those
    assert [replica.reads for replica in replicas] == asked


def test_a_read_with_r_equal_to_the_replicas_up_asks_them_all_whatever_the_chance() -> None:
    replicas = [FakeReplica(node_id) for node_id in NODES]
    harness = Harness(replicas, read_repair_chance=0.0, down={"c"})
    with gevent.Timeout(GUARD):
        harness.coordinator.get(KEY, 2)
    assert [replica.reads for replica in replicas] == [1, 1, 0]


def test_a_read_needs_no_wait_only_when_r_is_1_and_this_node_holds_the_key() -> None:
    local = FakeReplica("a")
    local.reads_block = False  # like LocalStore: the coordinator may read it without a timeout
    harness = Harness([local, *(FakeReplica(node_id) for node_id in FIVE[1:])], n=2)
    held = next(key for key in (b"k%d" % i for i in range(1000)) if "a" in harness.owners(key))
    elsewhere = next(key for key in (b"k%d" % i for i in range(1000)) if "a" not in harness.owners(key))
    with gevent.Timeout(GUARD):
        assert harness.coordinator.get(held, 1, wait=False) is None  # answered, no MustWait
    with pytest.raises(MustWait):
        harness.coordinator.get(held, 2, wait=False)
    with pytest.raises(MustWait):
        harness.coordinator.get(elsewhere, 1, wait=False)


# --- read repair -----------------------------------------------------------------------------------


def test_read_repair_sends_the_newest_version_to_every_stale_replica() -> None:
    newest = record(300, "a", b"newest")
    replicas = [FakeReplica(node_id) for node_id in NODES]
    replicas[0].records[KEY] = newest
    replicas[1].records[KEY] = record(100, "b", b"old")  # c holds nothing
    harness = Harness(replicas)

    assert harness.coordinator.get(KEY, 3) == newest
    wait_until(
        lambda: all(replica.records.get(KEY) == newest for replica in replicas), message="both stale replicas repaired"
    )
    assert replicas[0].writes == []  # the replica that had the newest is left alone
    assert replicas[1].writes == [(KEY, newest)]
    assert replicas[2].writes == [(KEY, newest)]
    wait_until(lambda: len(harness.events.read_repairs) == 2, message="two repairs reported")
    assert sorted(harness.events.read_repairs) == [(KEY, "b", True), (KEY, "c", True)]


def test_read_repair_reaches_a_stale_replica_that_answers_after_the_client_was(gates: list[Event]) -> None:
    newest = record(300, "a", b"newest")
    late = new_gate(gates)
    replicas = [FakeReplica("a"), FakeReplica("b", gate=late), FakeReplica("c", gate=late)]
    replicas[0].records[KEY] = newest
    replicas[1].records[KEY] = record(100, "b", b"old")
    harness = Harness(replicas)

    with gevent.Timeout(GUARD):
        assert harness.coordinator.get(KEY, 1) == newest  # answered with R=1 before b and c replied
    assert replicas[1].records[KEY] == record(100, "b", b"old")
    late.set()
    wait_until(lambda: replicas[1].records[KEY] == newest, message="the late stale replica to be repaired")
    wait_until(lambda: replicas[2].records.get(KEY) == newest, message="the late empty replica to be repaired")
    assert replicas[0].writes == []


def test_read_repair_also_fixes_the_replica_whose_stale_answer_was_returned(gates: list[Event]) -> None:
    newest = record(300, "b", b"newest")
    late = new_gate(gates)
    replicas = [FakeReplica("a"), FakeReplica("b", gate=late), FakeReplica("c", gate=late)]
    replicas[0].records[KEY] = record(100, "a", b"stale")
    replicas[1].records[KEY] = newest
    replicas[2].records[KEY] = newest
    harness = Harness(replicas)

    with gevent.Timeout(GUARD):
        assert harness.coordinator.get(KEY, 1) == record(100, "a", b"stale")  # R=1: the first answer wins
    late.set()
    wait_until(lambda: replicas[0].records[KEY] == newest, message="the stale replica to be repaired")
    assert replicas[1].writes == replicas[2].writes == []


def test_read_repair_spreads_a_tombstone() -> None:
    deleted = record(300, "c", None)
    replicas = [FakeReplica(node_id) for node_id in NODES]
    replicas[0].records[KEY] = record(100, "a", b"resurrect me")
    replicas[2].records[KEY] = deleted
    harness = Harness(replicas)
    assert harness.coordinator.get(KEY, 3) == deleted
    wait_until(lambda: replicas[0].records[KEY] == deleted and replicas[1].records.get(KEY) == deleted)


def test_a_failed_read_repair_is_reported_and_harmless() -> None:
    newest = record(300, "a", b"newest")
    replicas = [FakeReplica("a"), FakeReplica("b", write_error=OSError("read-only")), FakeReplica("c")]
    replicas[0].records[KEY] = newest
    replicas[1].records[KEY] = record(100, "b", b"old")
    harness = Harness(replicas)
    assert harness.coordinator.get(KEY, 3) == newest
    wait_until(lambda: len(harness.events.read_repairs) == 2, message="both repairs reported")
    assert sorted(harness.events.read_repairs) == [(KEY, "b", False), (KEY, "c", True)]
    assert replicas[1].records[KEY] == record(100, "b", b"old")


def test_replicas_that_agree_get_no_repair() -> None:
    same = record(200, "b", b"same")
    replicas = [FakeReplica(node_id) for node_id in NODES]
    for replica in replicas:
        replica.records[KEY] = same
    harness = Harness(replicas)
    assert harness.coordinator.get(KEY, 3) == same
    assert harness.coordinator.get(b"absent", 3) is None  # agreeing on nothing is agreement too
    run_until_idle()  # a repair greenlet, had one been spawned, would have run by now
    assert [replica.writes for replica in replicas] == [[], [], []]
    assert harness.events.read_repairs == []


def test_read_repair_skips_replicas_that_failed_or_are_down() -> None:
    newest = record(300, "a", b"newest")
    replicas = [FakeReplica(node_id) for node_id in FIVE]
    harness = Harness(replicas, n=3)
    first, second, third, *_ = harness.ranking()
    harness.replicas[first].records[KEY] = newest
    harness.replicas[second].error = OSError("unreachable")
    harness.down.add(third)
    assert harness.coordinator.get(KEY, 1) == newest
    run_until_idle()
    assert all(replica.writes == [] for replica in replicas)
    assert harness.events.read_repairs == []
