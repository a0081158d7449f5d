"""The failure detector on a fake clock: up, suspect and down, when each begins, and what is reported."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from client.protocol import PeerState, PingReply
from service.clock_offsets import ClockOffsets
from service.failure_detector import DOWN_AFTER, SUSPECT_AFTER, FailureDetector
from service.peers import HeartbeatRecords, MonitorEvents, Peer, PeerMonitor
from service.store_flags import StoreFlags
from service.versioning import wall_clock_ms

UP, SUSPECT, DOWN = PeerState.UP, PeerState.SUSPECT, PeerState.DOWN


class FakeClock:
    """Seconds that move only when the test says so."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def detector_for(clock: FakeClock, *peers: str) -> FailureDetector:
    return FailureDetector(peers or ("b",), clock, suspect_after=2.0, down_after=5.0)


def test_the_defaults_suspect_after_two_missed_beats_and_call_down_later() -> None:
    detector = FailureDetector(["b"], FakeClock())
    assert (detector.suspect_after, detector.down_after) == (SUSPECT_AFTER, DOWN_AFTER) == (2.0, 5.0)


@pytest.mark.parametrize(("suspect_after", "down_after"), [(0, 5), (-1, 5), (3, 2)])
def test_thresholds_must_be_positive_and_ordered(suspect_after: float, down_after: float) -> None:
    with pytest.raises(ValueError, match="suspect_after"):
        FailureDetector(["b"], FakeClock(), suspect_after=suspect_after, down_after=down_after)


def test_a_peer_never_heard_from_is_suspect_then_down(clock: FakeClock) -> None:
    detector = detector_for(clock)
    assert detector.state("b") is SUSPECT
    assert detector.since("b") == clock.now
    assert not detector.is_down("b")

    clock.advance(4.9)
    assert detector.evaluate() == []
    assert detector.state("b") is SUSPECT
    clock.advance(0.1)
    assert detector.evaluate() == [("b", SUSPECT, DOWN)]
    assert detector.is_down("b")
    assert detector.since("b") == clock.now

    clock.advance(100)  # down stays down while silent, and is not reported again
    assert detector.evaluate() == []
    assert detector.is_down("b")


def test_a_heartbeat_makes_a_peer_up_at_once(clock: FakeClock) -> None:
    detector = detector_for(clock)
    assert detector.heartbeat("b") == [("b", SUSPECT, UP)]
    assert detector.state("b") is UP
    assert detector.since("b") == clock.now


def test_a_heartbeat_brings_a_down_peer_straight_back_up(clock: FakeClock) -> None:
    detector = detector_for(clock)
    clock.advance(5)
    detector.evaluate()
    assert detector.is_down("b")
    clock.advance(1)
    assert detector.heartbeat("b") == [("b", DOWN, UP)]
    assert not detector.is_down("b")


def test_silence_makes_an_up_peer_suspect_then_down(clock: FakeClock) -> None:
    detector = detector_for(clock)
    detector.heartbeat("b")
    heard = clock.now

    clock.advance(1.9)
    assert detector.evaluate() == []
    assert detector.state("b") is UP
    clock.advance(0.1)  # suspect_after (2 s) since the last answer
    assert detector.evaluate() == [("b", UP, SUSPECT)]
    assert detector.since("b") == heard + 2
    clock.advance(2.9)
    assert detector.evaluate() == []
    clock.advance(0.1)  # down_after (5 s) since the last answer
    assert detector.evaluate() == [("b", SUSPECT, DOWN)]
    assert detector.since("b") == heard + 5


def test_a_long_silence_noticed_late_goes_straight_to_down(clock: FakeClock) -> None:
    detector = detector_for(clock)
    detector.heartbeat("b")
    clock.advance(60)
    assert detector.evaluate() == [("b", UP, DOWN)]


def test_a_failure_makes_an_up_peer_suspect_at_once(clock: FakeClock) -> None:
    detector = detector_for(clock)
    detector.heartbeat("b")
    clock.advance(0.5)
    assert detector.failure("b") == [("b", UP, SUSPECT)]
    assert detector.since("b") == clock.now
    assert not detector.is_down("b")  # one failed request never diverts traffic
    assert detector.failure("b") == []  # nor does a second one change anything
    clock.advance(4.5)  # still down_after counted from the last answer, not from the failure
    assert detector.evaluate() == [("b", SUSPECT, DOWN)]


def test_failures_do_not_lift_a_down_peer_to_suspect(clock: FakeClock) -> None:
    detector = detector_for(clock)
    detector.heartbeat("b")
    clock.advance(5)
    assert detector.evaluate() == [("b", UP, DOWN)]
    since = detector.since("b")
    for _ in range(3):
        clock.advance(1)
        assert detector.failure("b") == []
        assert detector.is_down("b")
    assert detector.since("b") == since


def test_a_down_peer_never_heard_from_stays_down_on_failures(clock: FakeClock) -> None:
    detector = detector_for(clock)
    clock.advance(5)
    assert detector.failure("b") == [("b", SUSPECT, DOWN)]
    clock.advance(0.1)
    assert detector.failure("b") == []
    assert detector.is_down("b")


def test_a_heartbeat_after_a_failure_clears_it(clock: FakeClock) -> None:
    detector = detector_for(clock)
    detector.heartbeat("b")
    detector.failure("b")
    clock.advance(0.2)
    assert detector.heartbeat("b") == [("b", SUSPECT, UP)]


def test_since_changes_only_when_the_state_does(clock: FakeClock) -> None:
    detector = detector_for(clock)
    detector.heartbeat("b")
    became_up = clock.now
    for _ in range(5):
        clock.advance(0.5)
        detector.heartbeat("b")  # more answers keep it up, since when it came up
        assert detector.since("b") == became_up
    assert detector.view() == {"b": (UP, became_up)}


def test_each_change_is_reported_once_and_concerns_every_peer(clock: FakeClock) -> None:
    detector = detector_for(clock, "b", "c", "d")
    assert detector.heartbeat("b") == [("b", SUSPECT, UP)]
    assert detector.heartbeat("c") == [("c", SUSPECT, UP)]
    clock.advance(2)
    # b's heartbeat evaluates everyone: c fell silent meanwhile, and that is reported here
    assert detector.heartbeat("b") == [("c", UP, SUSPECT)]
    clock.advance(3)
    assert detector.evaluate() == [("b", UP, SUSPECT), ("c", SUSPECT, DOWN), ("d", SUSPECT, DOWN)]
    assert detector.evaluate() == []
    assert detector.view() == {"b": (SUSPECT, clock.now), "c": (DOWN, clock.now), "d": (DOWN, clock.now)}


def test_unknown_peers_are_not_down_but_cannot_be_reported_on(clock: FakeClock) -> None:
    detector = detector_for(clock)
    assert not detector.is_down("stranger")
    with pytest.raises(KeyError):
        detector.heartbeat("stranger")
    with pytest.raises(KeyError):
        detector.state("stranger")


# --- property: the state always follows the rules ---------------------------------------------------


@dataclass
class Model:
    """The rules, restated: what each peer's state must be, from what happened to it."""

    start: float
    last_heard: float | None = None
    failed_since_heard: bool = False

    def state(self, now: float, suspect_after: float, down_after: float) -> PeerState:
        silence = now - (self.start if self.last_heard is None else self.last_heard)
        if silence >= down_after:
            return DOWN
        if self.last_heard is None or self.failed_since_heard or silence >= suspect_after:
            return SUSPECT
        return UP


PEERS = ["p", "q", "r"]
events = st.one_of(
    st.tuples(st.just("advance"), st.integers(0, 4)),
    st.tuples(st.sampled_from(["heartbeat", "failure"]), st.sampled_from(PEERS)),
    st.tuples(st.just("evaluate"), st.none()),
)


@settings(max_examples=150)
@given(st.lists(events, max_size=40), st.integers(1, 4), st.integers(0, 4))
def test_every_state_and_reported_change_follows_the_rules(
    sequence: list[tuple[str, object]], suspect_after: int, extra: int
) -> None:
    # Whole seconds and integer thresholds: the boundaries (exactly suspect_after, exactly down_after)
    # are hit exactly, with no floating-point doubt about which side of them a moment is.
    down_after = suspect_after + extra
    clock = FakeClock(100)
    detector = FailureDetector(PEERS, clock, suspect_after=suspect_after, down_after=down_after)
    models = {peer: Model(start=100) for peer in PEERS}
    states = {peer: SUSPECT for peer in PEERS}
    since = {peer: 100.0 for peer in PEERS}

    for kind, argument in sequence:
        if kind == "advance":
            assert isinstance(argument, int)
            clock.advance(argument)
            continue  # nothing is evaluated until the detector is told something or asked to
        if kind == "heartbeat":
            models[argument].last_heard = clock.now  # type: ignore[index]
            models[argument].failed_since_heard = False  # type: ignore[index]
            changes = detector.heartbeat(argument)  # type: ignore[arg-type]
        elif kind == "failure":
            models[argument].failed_since_heard = True  # type: ignore[index]
            changes = detector.failure(argument)  # type: ignore[arg-type]
        else:
            changes = detector.evaluate()

        expected_changes = []
        for peer in PEERS:
            new = models[peer].state(clock.now, suspect_after, down_after)
            if new is not states[peer]:
                expected_changes.append((peer, states[peer], new))
                states[peer] = new
                since[peer] = clock.now
        assert changes == expected_changes
        for peer in PEERS:
            assert detector.state(peer) is states[peer]
            assert detector.since(peer) == since[peer]
            assert detector.is_down(peer) == (states[peer] is DOWN)
        assert all(old is not new for _, old, new in changes)


# --- the heartbeat monitor feeding the detector -----------------------------------------------------


class FakePeer:
    """A peer that answers PING or not, as the test says."""

    def __init__(self, node_id: str, answers: bool = True) -> None:
        self.node_id = node_id
        self.answers = answers
        self.pings = 0

    def ping(self) -> PingReply | None:
        self.pings += 1
        return PingReply(wall_clock_ms()) if self.answers else None


class MonitorHarness:
    def __init__(self, *peers: FakePeer) -> None:
        self.clock = FakeClock()
        self.peers = {peer.node_id: peer for peer in peers}
        self.detector = FailureDetector(self.peers, self.clock, suspect_after=2.0, down_after=5.0)
        self.changes: list[tuple[str, PeerState, PeerState]] = []
        self.offsets = ClockOffsets(self.peers, max_offset_ms=500, now_ms=wall_clock_ms)
        harness = self

        class Events(MonitorEvents):
            def peer_state_changed(self, peer: Peer, old: PeerState, new: PeerState) -> None:
                harness.changes.append((peer.node_id, old, new))

        self.store_flags = StoreFlags("a", lambda: 0, self.peers)
        self.monitor = PeerMonitor(
            peers,  # type: ignore[arg-type]
            self.detector,
            Events(),
            HeartbeatRecords(self.offsets, self.store_flags, wall_clock_ms),
        )


def test_a_beat_pings_every_peer_and_reports_each_change_once() -> None:
    harness = MonitorHarness(FakePeer("b"), FakePeer("c", answers=False))
    harness.monitor.beat()
    assert [peer.pings for peer in harness.peers.values()] == [1, 1]
    assert harness.changes == [("b", SUSPECT, UP)]  # c never answered: still suspect, no change
    harness.monitor.beat()
    assert harness.changes == [("b", SUSPECT, UP)]

    harness.clock.advance(5)
    harness.monitor.beat()
    assert harness.changes[1:] == [("c", SUSPECT, DOWN)]
    assert harness.detector.is_down("c")

    harness.peers["c"].answers = True
    harness.monitor.beat()
    assert harness.changes[2:] == [("c", DOWN, UP)]


def test_a_failed_request_makes_a_peer_suspect_before_the_next_beat() -> None:
    harness = MonitorHarness(FakePeer("b"))
    harness.monitor.beat()
    harness.monitor.request_failed("b")
    assert harness.changes == [("b", SUSPECT, UP), ("b", UP, SUSPECT)]
    assert not harness.detector.is_down("b")
    harness.monitor.beat()  # it answers the next ping: up again
    assert harness.changes[-1] == ("b", SUSPECT, UP)
