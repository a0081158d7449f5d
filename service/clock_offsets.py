"""The clock offset this node measures against each peer, and what it concludes from them.

Pure: the peer monitor reports each heartbeat's timing (``record``) and asks for verdicts. A PING
reply carries the peer's wall clock; with this node's wall clock read just before the PING went out
and just after its reply came back, the peer's offset is its clock minus the midpoint of the two,
give or take half the round trip (Cristian's algorithm). Two verdicts follow, against the maximum
clock offset the cluster tolerates (``KV_MAX_CLOCK_OFFSET_MS``, as CockroachDB's ``--max-offset``):

* ``fenced``: this node's own clock is the odd one out. When more than half of its peers, measured
  recently, are further off than the maximum (beyond any doubt the round trip leaves), this node's
  clock is wrong, not theirs: it must not stamp writes (they would be silently ordered before, or
  far after, writes made earlier in real time), so its coordinator refuses them with CLOCK_SKEW.
  CockroachDB stops a node in this state; refusing writes keeps its reads available.
* ``trusted``: whether timers that destroy data may act on this node's clock: a hint expiring
  undelivered, a tombstone being purged. They wait while the node is fenced, and until at least one
  peer has confirmed the clock (a node with no peers trusts itself), so a clock that jumped, or a
  node restarted with a wrong clock, cannot expire the hint or purge the tombstone that stops a
  delete from coming back.

Times are milliseconds: ``now`` is this node's steady clock (``versioning.NodeClock.steady_ms``),
the samples' wall readings are Unix milliseconds.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

VERDICT_TTL_MS = 1_000
"""``fenced`` is asked on every request; its verdict is worked out again at most this often, or at
once when a new offset is recorded."""
FRESH_FOR_MS = 60_000
"""A peer's offset counts towards the verdicts for this long after it was measured: heartbeats run
every second, so a minute covers a peer that is down for a while, but not a stale picture."""


@dataclass(frozen=True, slots=True)
class OffsetSample:
    """One measurement: the peer's clock minus this node's, give or take ``uncertainty_ms``."""

    offset_ms: float
    uncertainty_ms: float
    measured_at_ms: int  # on the steady clock


class ClockOffsets:
    """The latest offset measured against each of ``peers``, judged against ``max_offset_ms``."""

    def __init__(self, peers: Iterable[str], max_offset_ms: int, now_ms: Callable[[], int]) -> None:
        self.max_offset_ms = max_offset_ms
        self._peers = list(peers)
        self._now_ms = now_ms
        self._samples: dict[str, OffsetSample] = {}
        self._verdict: tuple[int, str | None] | None = None  # (worked out at, fenced's answer)

    def add(self, peer: str) -> None:
        """Judge against ``peer`` too (a member that joined)."""
        if peer not in self._peers:
            self._peers.append(peer)
            self._verdict = None

    def record(self, peer: str, sent_wall_ms: int, received_wall_ms: int, peer_wall_ms: int) -> OffsetSample:
        """A heartbeat to ``peer`` left at ``sent_wall_ms`` and its reply, stamped ``peer_wall_ms`` by
        the peer, arrived at ``received_wall_ms`` (this node's wall clock)."""
        midpoint = (sent_wall_ms + received_wall_ms) / 2
        sample = OffsetSample(peer_wall_ms - midpoint, max(0.0, (received_wall_ms - sent_wall_ms) / 2), self._now_ms())
        self._samples[peer] = sample
        self._verdict = None
        return sample

    def offset_ms(self, peer: str) -> float | None:
        """The peer's clock minus this node's at the last measurement, or ``None`` if never measured."""
        sample = self._samples.get(peer)
        return None if sample is None else sample.offset_ms

    def offsets(self) -> dict[str, float]:
        """Every measured peer's latest offset, in milliseconds."""
        return {peer: sample.offset_ms for peer, sample in self._samples.items()}

    def beyond_bound(self, peer: str) -> bool:
        """Whether ``peer``'s clock is surely further off than the maximum offset, either way."""
        sample = self._samples.get(peer)
        return sample is not None and abs(sample.offset_ms) - sample.uncertainty_ms > self.max_offset_ms

    def _fresh(self) -> list[str]:
        now = self._now_ms()
        return [peer for peer, sample in self._samples.items() if now - sample.measured_at_ms <= FRESH_FOR_MS]

    def fenced(self) -> str | None:
        """Why this node's clock must not stamp writes (a sentence naming the offsets), or ``None``."""
        now = self._now_ms()
        if self._verdict is None or now - self._verdict[0] > VERDICT_TTL_MS:
            self._verdict = (now, self._judge())
        return self._verdict[1]

    def _judge(self) -> str | None:
        off = [peer for peer in self._fresh() if self.beyond_bound(peer)]
        if len(off) * 2 <= len(self._peers):
            return None
        described = ", ".join(f"{peer} {self._samples[peer].offset_ms / 1000:+.3f} s" for peer in sorted(off))
        return (
            f"this node's clock disagrees with {len(off)} of its {len(self._peers)} peers by more than "
            f"KV_MAX_CLOCK_OFFSET_MS={self.max_offset_ms} (their clocks minus ours: {described}); fix its time source"
        )

    def trusted(self) -> bool:
        """Whether timers that destroy data (hint expiry, tombstone purges) may run on this clock."""
        if not self._peers:
            return True
        return bool(self._fresh()) and self.fenced() is None
