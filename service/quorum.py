"""Quorum arithmetic: when enough replicas have answered, and when too many have failed for it to matter.

Pure: the coordinator feeds in each replica's outcome and asks whether the request is decided. A
quorum is reached at ``required`` successes and lost as soon as the replicas still outstanding
cannot make up the difference, so a request with two dead replicas fails at once instead of waiting
for its timeout.
"""

from __future__ import annotations

from enum import Enum

from client.protocol import Status


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
