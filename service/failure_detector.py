"""Failure detection: each node's view of its peers as up, suspect or down, and since when.

Pure: the monitor reports heartbeats (a peer answered) and failures (it did not), with the time from
an injected clock, and asks for the states. A peer is

* UP while it answered within ``suspect_after`` seconds and has not failed since;
* SUSPECT once it failed or fell silent, until ``down_after`` seconds without an answer;
* DOWN after that, until it answers again, which makes it UP at once.

The coordinator sends nothing to a DOWN peer (its writes go to a fallback node with a hint) and
still tries a SUSPECT one, so a single lost ping never diverts traffic.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from client.protocol import PeerState

SUSPECT_AFTER = 2.0
"""Seconds of silence before a peer is suspect: two missed heartbeats at one per second."""
DOWN_AFTER = 5.0
"""Seconds of silence before a peer is down: long enough that a busy peer is not declared dead."""


@dataclass
class PeerRecord:
    state: PeerState
    since: float  # clock time the state began
    last_heard: float | None = None
    failed_since_heard: bool = False


class FailureDetector:
    """Each peer's state (UP, SUSPECT or DOWN) and since when, from the evidence it is given.

    ``peers``: the ids to track, each SUSPECT until first heard from; ``now``: the clock, in seconds
    (``time.monotonic`` in a node, a fake in tests); ``suspect_after`` and ``down_after``: seconds of
    silence before those states. ``heartbeat``, ``failure`` and ``evaluate`` return the changes they
    cause as ``(peer, old, new)``. Raises ``ValueError`` unless ``0 < suspect_after <= down_after``.
    """

    def __init__(
        self,
        peers: Iterable[str],
        now: Callable[[], float],
        suspect_after: float = SUSPECT_AFTER,
        down_after: float = DOWN_AFTER,
    ) -> None:
        if not 0 < suspect_after <= down_after:
            raise ValueError("need 0 < suspect_after <= down_after")
        self._now = now
        self.suspect_after = suspect_after
        self.down_after = down_after
        started = now()
        # Until a peer answers once it is suspect: we have no evidence either way.
        self._peers = {peer: PeerRecord(PeerState.SUSPECT, started) for peer in peers}

    def add(self, peer: str) -> None:
        """Track ``peer`` too (a member that joined): suspect until it answers."""
        self._peers.setdefault(peer, PeerRecord(PeerState.SUSPECT, self._now()))

    def heartbeat(self, peer: str) -> list[tuple[str, PeerState, PeerState]]:
        """The peer answered. Returns the state changes this caused, as (peer, old, new)."""
        record = self._peers[peer]
        record.last_heard = self._now()
        record.failed_since_heard = False
        return self.evaluate()

    def failure(self, peer: str) -> list[tuple[str, PeerState, PeerState]]:
        """A request to the peer failed. Returns the state changes this caused."""
        self._peers[peer].failed_since_heard = True
        return self.evaluate()

    def evaluate(self) -> list[tuple[str, PeerState, PeerState]]:
        """Bring every state up to the clock; return the changes as (peer, old, new)."""
        now = self._now()
        changes = []
        for peer, record in self._peers.items():
            new_state = self._state_at(record, now)
            if new_state is not record.state:
                changes.append((peer, record.state, new_state))
                record.state = new_state
                record.since = now
        return changes

    def _state_at(self, record: PeerRecord, now: float) -> PeerState:
        silence = now - (record.last_heard if record.last_heard is not None else record.since)
        if silence >= self.down_after:
            return PeerState.DOWN
        if record.failed_since_heard or silence >= self.suspect_after or record.last_heard is None:
            # A down peer stays down until it answers; failing again does not make it merely suspect.
            return PeerState.DOWN if record.state is PeerState.DOWN else PeerState.SUSPECT
        return PeerState.UP

    def state(self, peer: str) -> PeerState:
        return self._peers[peer].state

    def is_down(self, peer: str) -> bool:
        record = self._peers.get(peer)
        return record is not None and record.state is PeerState.DOWN

    def since(self, peer: str) -> float:
        return self._peers[peer].since

    def undecided(self) -> list[str]:
        """Peers with no verdict yet: never heard from since start, and not yet given up on (DOWN).
        A node that coordinates before it has a verdict on each may find a live peer unreachable."""
        return [
            peer
            for peer, record in self._peers.items()
            if record.last_heard is None and record.state is not PeerState.DOWN
        ]

    def view(self) -> dict[str, tuple[PeerState, float]]:
        return {peer: (record.state, record.since) for peer, record in self._peers.items()}
