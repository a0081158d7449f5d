"""The routing policies, on a ring; the reconnection policy, the backoff it drives, and the
connection slot that keeps it, on a clock the test moves by hand: no sleeps, no sockets (but for
the Peer at the end, which meets a closed port)."""

from __future__ import annotations

import gevent
import pytest
from cluster import free_port
from gevent.event import Event

from client import protocol
from client.errors import NodeUnreachableError
from client.policies import RECONNECT_DELAY, Backoff, ConstantReconnectionPolicy, PrimaryOnly, ReplicasFirst
from client.ring import Ring
from client.transport import ConnectionSlot
from service.peers import Peer, PeerSettings

RING = Ring(["n1", "n2", "n3", "n4"], 64)
KEYS = [f"key-{i}".encode() for i in range(50)]


def never(node_id: str) -> bool:
    return False


def test_replicas_first_plans_the_preference_list_then_every_other_node() -> None:
    for key in KEYS:
        preferred = RING.preference_list(key, 2)
        plan = list(ReplicasFirst().plan(key, RING, 2, never))
        assert plan[:2] == preferred
        assert plan[2:] == [node_id for node_id in RING.node_ids if node_id not in preferred]


def test_replicas_first_moves_nodes_backing_off_to_the_end_in_their_order() -> None:
    for key in KEYS:
        primary, second = RING.preference_list(key, 2)
        plan = list(ReplicasFirst().plan(key, RING, 2, lambda node_id, down=primary: node_id == down))
        assert plan[0] == second
        assert plan[-1] == primary
        assert sorted(plan) == list(RING.node_ids)
    assert ReplicasFirst.dials_backing_off  # the last resort is still tried


def test_primary_only_plans_the_primary_alone_and_does_not_dial_it_while_backing_off() -> None:
    assert all(list(PrimaryOnly().plan(key, RING, 2, never)) == [RING.primary(key)] for key in KEYS)
    assert not PrimaryOnly.dials_backing_off


class Clock:
    """A monotonic clock that moves only when told."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Recording:
    """A reconnection policy that records the failure counts it is asked about."""

    def __init__(self) -> None:
        self.asked: list[int] = []

    def delay(self, failures: int) -> float:
        self.asked.append(failures)
        return 2.0 * failures


class FakeConnection:
    def __init__(self) -> None:
        self.is_open = True

    def close(self) -> None:
        self.is_open = False


class Dialler:
    """A dial function whose outcomes the test sets: fail, or open a ``FakeConnection``."""

    def __init__(self) -> None:
        self.fail = False
        self.dials = 0
        self.gate: Event | None = None  # when set, each dial waits on it (to hold a dial in flight)

    def __call__(self) -> FakeConnection:
        self.dials += 1
        if self.gate is not None:
            self.gate.wait()
        if self.fail:
            raise NodeUnreachableError("cannot connect to n1:5000: connection refused")
        return FakeConnection()


def test_the_constant_policy_waits_the_same_after_every_failure() -> None:
    policy = ConstantReconnectionPolicy()
    assert [policy.delay(failures) for failures in (1, 2, 10)] == [RECONNECT_DELAY] * 3
    assert ConstantReconnectionPolicy(0.25).delay(3) == 0.25


def test_a_failure_holds_off_dials_for_the_policys_delay_exactly() -> None:
    clock = Clock()
    backoff = Backoff(ConstantReconnectionPolicy(1.0), clock)
    assert not backoff.waiting and backoff.retry_in == 0
    backoff.failed()
    assert backoff.waiting and backoff.retry_in == 1.0
    clock.now += 0.999
    assert backoff.waiting
    clock.now += 0.001
    assert not backoff.waiting and backoff.retry_in == 0


def test_the_policy_sees_the_run_of_failures_and_a_success_ends_it() -> None:
    clock, policy = Clock(), Recording()
    backoff = Backoff(policy, clock)
    backoff.failed()
    backoff.failed()
    assert backoff.retry_in == 4.0  # the second failure in a row: 2 s x 2
    backoff.succeeded()
    assert not backoff.waiting
    backoff.failed()
    assert policy.asked == [1, 2, 1]


def slot_on(clock: Clock, dialler: Dialler) -> ConnectionSlot[FakeConnection]:
    return ConnectionSlot(dialler, "n1:5000", Backoff(ConstantReconnectionPolicy(1.0), clock))


def slot_after_a_failed_dial() -> tuple[Clock, Dialler, ConnectionSlot[FakeConnection]]:
    """A slot whose first dial, just now, failed; its dialler fails until told otherwise."""
    clock, dialler = Clock(), Dialler()
    slot = slot_on(clock, dialler)
    dialler.fail = True
    with pytest.raises(NodeUnreachableError):
        slot.get()
    return clock, dialler, slot


def test_a_failed_dial_makes_the_slot_back_off_until_the_delay_is_over() -> None:
    clock, dialler, slot = slot_after_a_failed_dial()
    assert slot.backing_off and slot.retry_in == 1.0
    clock.now += 1.0
    assert not slot.backing_off
    dialler.fail = False
    assert slot.get().is_open
    assert not slot.backing_off


def test_backing_off_is_advice_a_get_still_dials() -> None:
    """Whether to wait is the owner's call: a heartbeat, or a client's last resort, dials anyway."""
    _, dialler, slot = slot_after_a_failed_dial()
    dialler.fail = False
    assert slot.get().is_open
    assert dialler.dials == 2
    assert not slot.backing_off  # the dial succeeded: the run of failures is over


def test_an_owner_that_honours_the_backoff_is_refused_at_once_without_a_dial() -> None:
    clock, dialler, slot = slot_after_a_failed_dial()
    clock.now += 0.4
    with pytest.raises(NodeUnreachableError, match=r"^n1:5000 is down; next dial within 0\.6 s$"):
        slot.get(dial_backing_off=False)
    assert dialler.dials == 1
    assert slot.retry_in == pytest.approx(0.6)  # a refusal is not another failure: the wait is unchanged
    clock.now += 0.6
    dialler.fail = False
    assert slot.get(dial_backing_off=False).is_open


def test_a_request_failure_reported_to_the_slot_backs_off_once_the_connection_is_gone() -> None:
    clock, dialler = Clock(), Dialler()
    slot = slot_on(clock, dialler)
    connection = slot.get()
    slot.failed()
    assert not slot.backing_off  # its connection is still open: nothing to dial, nothing to wait for
    connection.close()
    assert slot.backing_off
    clock.now += 1.0
    assert not slot.backing_off


def test_many_greenlets_asking_at_once_share_one_dial_and_its_failure() -> None:
    clock, dialler = Clock(), Dialler()
    slot = slot_on(clock, dialler)
    dialler.gate = Event()
    dialler.fail = True
    asking = [gevent.spawn(slot.get) for _ in range(5)]
    gevent.sleep(0)
    assert dialler.dials == 1
    assert slot.usable and not slot.backing_off  # a dial is under way
    dialler.gate.set()
    gevent.joinall(asking, timeout=5)
    assert all(isinstance(greenlet.exception, NodeUnreachableError) for greenlet in asking)
    assert dialler.dials == 1
    assert slot.backing_off


def test_a_peer_that_refused_a_connect_fails_requests_at_once_but_its_heartbeat_dials() -> None:
    peer = Peer(
        protocol.NodeAddress("n2", "127.0.0.1", free_port()),
        PeerSettings(
            local_node_id="n1",
            connect_timeout=0.5,
            request_timeout=0.5,
            max_frame_bytes=protocol.DEFAULT_MAX_FRAME_BYTES,
        ),
    )
    try:
        with pytest.raises(NodeUnreachableError, match=r"cannot connect to 127\.0\.0\.1:"):
            peer.call(protocol.Ping())
        with pytest.raises(NodeUnreachableError, match=r"^n2 is unreachable \(cannot connect to"):
            peer.call(protocol.Ping())  # within the reconnection delay: no dial
        assert not peer.ping()  # the heartbeat dials whatever the policy says
        assert peer.last_error.startswith("cannot connect to")
    finally:
        peer.close()
