"""Hinted handoff over a real store and group committer, with fake peers and a fake clock: delivery to
owners that are up, hints kept while an owner is down or failing, expiry after the hint window."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import gevent
import pytest
from gevent.event import Event

from client.protocol import Record, Version
from service.handoff import BATCH, HandoffEvents, HandoffSettings, HintedHandoff
from service.local_store import LocalStore
from service.storage import PutHint, Storage
from service.versioning import HybridLogicalClock

WINDOW_S = 10
START_MS = 1_700_000_000_000


class FakePeer:
    """An owner's replica: records what it is sent; ``error`` makes sends fail, ``fail_keys`` only
    those keys', and ``gate`` holds every send until set."""

    def __init__(self, node_id: str) -> None:
        self.node_id = node_id
        self.received: list[tuple[bytes, Record]] = []
        self.error: Exception | None = None
        self.fail_keys: set[bytes] = set()
        self.gate: Event | None = None
        self.sending = Event()  # set once a send has begun

    def write(self, key: bytes, record: Record) -> None:
        self.sending.set()
        if self.gate is not None:
            self.gate.wait()
        if self.error is not None or key in self.fail_keys:
            raise self.error or OSError(f"{self.node_id} refused {key!r}")
        self.received.append((key, record))


class RecordingEvents(HandoffEvents):
    def __init__(self) -> None:
        self.delivered_counts: list[tuple[str, int]] = []
        self.expired_counts: list[tuple[str, int]] = []

    def delivered(self, owner: str, count: int) -> None:
        self.delivered_counts.append((owner, count))

    def expired(self, owner: str, count: int) -> None:
        self.expired_counts.append((owner, count))


class Harness:
    def __init__(self, storage: Storage) -> None:
        self.storage = storage
        self.store = LocalStore("a", storage, HybridLogicalClock())
        self.peers = {node_id: FakePeer(node_id) for node_id in ("b", "c")}
        self.up: set[str] = set()
        self.now_ms = START_MS
        self.events = RecordingEvents()
        self.handoff = HintedHandoff(
            self.store,
            self.peers,  # type: ignore[arg-type]
            lambda node_id: node_id in self.up,
            HandoffSettings(WINDOW_S, now_ms=lambda: self.now_ms),
            events=self.events,
        )

    def hold(
        self, owner: str, key: bytes, timestamp: int, value: bytes | None = b"v", created_ms: int = START_MS
    ) -> Record:
        record = Record(Version(timestamp, "a"), value)
        assert self.storage.apply([PutHint(owner, key, record, created_ms)]) == [True]
        return record

    def held(self, owner: str) -> dict[bytes, Record]:
        return {hint.key: hint.record for hint in self.storage.hints_for(owner, 10_000)}


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[Harness]:
    storage = Storage(str(tmp_path / "store"), 64 * 1024 * 1024)
    made = Harness(storage)
    yield made
    made.store.committer.flush()
    storage.close()


def test_hints_for_an_owner_that_is_up_are_delivered_then_dropped(harness: Harness) -> None:
    sent = {f"k{i}".encode(): harness.hold("b", f"k{i}".encode(), 10 + i) for i in range(3)}
    tombstone = harness.hold("b", b"deleted", 20, value=None)
    for_c = harness.hold("c", b"kc", 30)
    harness.up.add("b")

    harness.handoff.run_pass()

    assert sorted(harness.peers["b"].received) == sorted([*sent.items(), (b"deleted", tombstone)])
    assert harness.held("b") == {}
    assert harness.peers["c"].received == []  # c is not up: its hint waits
    assert harness.held("c") == {b"kc": for_c}
    assert harness.storage.hint_counts() == {"c": 1}
    assert harness.events.delivered_counts == [("b", 4)]
    assert harness.events.expired_counts == []


def test_hints_wait_while_the_owner_is_not_up_and_go_once_it_is(harness: Harness) -> None:
    record = harness.hold("b", b"k", 10)
    harness.handoff.run_pass()
    assert harness.peers["b"].received == []
    assert harness.held("b") == {b"k": record}
    assert harness.events.delivered_counts == []

    harness.up.add("b")
    harness.handoff.run_pass()
    assert harness.peers["b"].received == [(b"k", record)]
    assert harness.storage.pending_hints() == 0


def test_a_failed_send_keeps_the_hint_for_a_later_pass(harness: Harness) -> None:
    records = {f"k{i}".encode(): harness.hold("b", f"k{i}".encode(), 10 + i) for i in range(4)}
    harness.up.add("b")
    harness.peers["b"].error = ConnectionError("b went away again")

    harness.handoff.run_pass()
    assert harness.held("b") == records
    assert harness.events.delivered_counts == []

    harness.peers["b"].error = None
    harness.handoff.run_pass()
    assert sorted(harness.peers["b"].received) == sorted(records.items())
    assert harness.held("b") == {}
    assert harness.events.delivered_counts == [("b", 4)]


def test_only_the_hints_that_failed_to_send_are_kept(harness: Harness) -> None:
    for i in range(5):
        harness.hold("b", f"k{i}".encode(), 10 + i)
    harness.up.add("b")
    harness.peers["b"].fail_keys = {b"k3"}
    harness.handoff.run_pass()
    assert sorted(key for key, _ in harness.peers["b"].received) == [b"k0", b"k1", b"k2", b"k4"]
    assert list(harness.held("b")) == [b"k3"]
    assert harness.events.delivered_counts == [("b", 4)]


def test_hints_older_than_the_window_are_dropped_without_being_sent(harness: Harness) -> None:
    harness.hold("b", b"stale", 10, created_ms=START_MS)
    harness.hold("b", b"at-the-edge", 11, created_ms=START_MS + 1)
    fresh = harness.hold("b", b"fresh", 12, created_ms=START_MS + 5_000)
    harness.up.add("b")
    harness.now_ms = START_MS + WINDOW_S * 1000 + 1  # "stale" is one millisecond past the window

    harness.handoff.run_pass()

    assert harness.events.expired_counts == [("b", 1)]
    assert sorted(key for key, _ in harness.peers["b"].received) == [b"at-the-edge", b"fresh"]
    assert (b"fresh", fresh) in harness.peers["b"].received
    assert harness.storage.pending_hints() == 0
    assert harness.events.delivered_counts == [("b", 2)]


def test_hints_expire_even_while_their_owner_is_down(harness: Harness) -> None:
    harness.hold("b", b"stale", 10, created_ms=START_MS)
    kept = harness.hold("b", b"fresh", 11, created_ms=START_MS + 9_000)
    harness.now_ms = START_MS + WINDOW_S * 1000 + 500
    harness.handoff.run_pass()
    assert harness.peers["b"].received == []
    assert harness.held("b") == {b"fresh": kept}
    assert harness.events.expired_counts == [("b", 1)]
    assert harness.events.delivered_counts == []


def test_a_hint_replaced_while_it_was_being_sent_is_not_lost(harness: Harness) -> None:
    older = harness.hold("b", b"k", 10)
    harness.up.add("b")
    gate = Event()
    harness.peers["b"].gate = gate
    delivery = gevent.spawn(harness.handoff.run_pass)
    assert harness.peers["b"].sending.wait(timeout=5)  # the pass is now blocked sending the older hint
    assert harness.peers["b"].received == []
    newer = harness.hold("b", b"k", 11)  # a new write for b arrives meanwhile
    gate.set()
    delivery.get(timeout=5)
    # dropping the delivered older hint did not drop the newer one: the same pass found and sent it
    assert harness.peers["b"].received == [(b"k", older), (b"k", newer)]
    assert harness.storage.pending_hints() == 0
    assert harness.events.delivered_counts == [("b", 2)]


def test_hints_for_a_node_that_is_not_a_peer_are_kept(harness: Harness) -> None:
    record = harness.hold("stranger", b"k", 10)
    harness.up.add("stranger")
    harness.handoff.run_pass()
    assert harness.held("stranger") == {b"k": record}


def test_one_pass_delivers_more_than_one_batch(harness: Harness) -> None:
    count = BATCH + 44
    harness.storage.apply(
        [PutHint("b", f"key-{i:04d}".encode(), Record(Version(i + 1, "a"), b"v"), START_MS) for i in range(count)]
    )
    harness.up.add("b")
    harness.handoff.run_pass()
    assert len(harness.peers["b"].received) == count
    assert harness.storage.pending_hints() == 0
    assert harness.events.delivered_counts == [("b", count)]
