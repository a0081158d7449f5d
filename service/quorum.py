"""Quorum arithmetic: when enough replicas have answered, and when too many have failed for it to matter.

Pure: the coordinator feeds in each replica's outcome and asks whether the request is decided. A
quorum is reached at ``required`` successes and lost as soon as the replicas still outstanding
cannot make up the difference, so a request with two dead replicas fails at once instead of waiting
for its timeout.

``QuorumTracker`` is the counting. ``QuorumRound`` adds time, in the step/tick style: fed each
outcome and the clock, it says what to do next (a decision: ``WAIT``, ``REACHED``, ``Fail``), so the
coordinator is a thin I/O loop around it and every rule is tested without greenlets or sleeps.
``read_plan.ReadPlan`` extends it for reads (spare replicas, speculative retry, the answer, read
repair).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Any

from client.protocol import Record, Status


class QuorumState(Enum):
    """Where a request's quorum stands: still open, reached, or out of reach."""

    PENDING = "pending"
    REACHED = "reached"
    LOST = "lost"


class QuorumTracker:
    """Counts successes and failures among ``total`` replica calls, of which ``required`` must succeed."""

    def __init__(self, required: int, total: int) -> None:
        if not 1 <= required <= total:
            raise ValueError(f"required={required} must be between 1 and total={total}")
        self.required = required
        self.total = total
        self.acked = 0
        self.failed = 0

    def succeed(self) -> QuorumState:
        self.acked += 1
        return self.outcome

    def fail(self) -> QuorumState:
        self.failed += 1
        return self.outcome

    @property
    def outcome(self) -> QuorumState:
        if self.acked >= self.required:
            return QuorumState.REACHED
        if self.total - self.failed < self.required:
            return QuorumState.LOST
        return QuorumState.PENDING


class QuorumFailure(Exception):
    """Too few replicas answered. ``status`` is UNAVAILABLE (they failed) or TIMEOUT (they were slow).

    The node's side of a quorum error: the handler sends it as an error reply, which a client
    raises as ``client.errors.QuorumError``."""

    def __init__(self, status: Status, acked: int, required: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.acked = acked
        self.required = required
        self.message = message


def resolve_quorum(requested: int, default: int, n: int, name: str) -> int:
    """The quorum a request runs with: its own if it asked (1..``n``), else the node's default."""
    if requested == 0:
        return default
    if requested > n:
        raise ValueError(f"{name}={requested} exceeds N={n}")
    return requested


# --- decisions: what a round tells the coordinator to do next -------------------------------------


@dataclass(frozen=True, slots=True)
class Wait:
    """Nothing to do until the next outcome arrives or the clock reaches the round's ``wake_at``."""


@dataclass(frozen=True, slots=True)
class Reached:
    """Enough replicas succeeded: answer the client (a write's version)."""


@dataclass(frozen=True, slots=True)
class Ask:
    """Call one more replica, ``node_id``; its outcome is fed in like the others'."""

    node_id: str


@dataclass(frozen=True, slots=True)
class Answer:
    """A read has its R replies: answer with ``record`` (``None``: no replica holds the key)."""

    record: Record | None


@dataclass(frozen=True, slots=True)
class Fail:
    """The request failed: send ``failure`` (UNAVAILABLE, or TIMEOUT at the deadline)."""

    failure: QuorumFailure


WAIT = Wait()
REACHED = Reached()

Decision = Wait | Reached | Ask | Answer | Fail


class QuorumRound(QuorumTracker):
    """One request's quorum over time: ``required`` successes among ``total`` replica calls, of which
    ``asked`` are under way, before ``now + timeout`` (times in seconds on one monotonic clock).

    ``on_success``, ``on_failure`` and ``tick`` each return the next decision: ``REACHED`` at the
    ``required``-th success; ``Fail`` UNAVAILABLE as soon as the rest cannot make up the difference,
    naming each failure's reason; ``Fail`` TIMEOUT once ``tick`` reaches the deadline; else ``WAIT``.
    Once decided, a round says ``WAIT`` to everything, and late outcomes are only counted.
    """

    def __init__(self, required: int, total: int, *, now: float, timeout: float) -> None:
        super().__init__(required, total)
        self.asked = total
        self.timeout = timeout
        self.deadline = now + timeout
        self.errors: dict[str, str] = {}  # node id -> why its call failed
        self.decided = False

    @property
    def wake_at(self) -> float:
        """When ``tick`` may next decide something, if no outcome arrives first."""
        return self.deadline

    @property
    def outstanding(self) -> int:
        """Calls under way whose outcome has not been fed in yet."""
        return self.asked - self.acked - self.failed

    def on_success(self, node_id: str, result: Any) -> Decision:
        """``node_id``'s call succeeded with ``result``."""
        return self._decide(self.succeed())

    def on_failure(self, node_id: str, reason: str) -> Decision:
        """``node_id``'s call failed, for ``reason``."""
        self.errors[node_id] = reason
        return self._decide(self.fail())

    def tick(self, now: float) -> Decision:
        """The clock reads ``now``."""
        if self.decided or now < self.deadline:
            return WAIT
        self.decided = True
        return Fail(
            QuorumFailure(
                Status.TIMEOUT,
                self.acked,
                self.required,
                f"{self.acked} of {self.required} required replicas answered within {self.timeout:g} s",
            )
        )

    def _decide(self, state: QuorumState) -> Decision:
        if self.decided or state is QuorumState.PENDING:
            return WAIT
        self.decided = True
        if state is QuorumState.REACHED:
            return self._reached()
        reasons = "; ".join(f"{node}: {reason}" for node, reason in sorted(self.errors.items()))
        return Fail(
            QuorumFailure(
                Status.UNAVAILABLE,
                self.acked,
                self.required,
                f"{self.acked} of {self.required} required replicas acked; "
                f"{self.failed} of {self.asked} failed ({reasons})",
            )
        )

    def _reached(self) -> Decision:
        return REACHED
