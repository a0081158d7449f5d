"""Quorum arithmetic: when enough replicas have answered, and when too many have failed for it to matter.

Pure: the coordinator feeds in each replica's outcome and asks whether the request is decided. A
quorum is reached at ``required`` successes and lost as soon as the replicas still outstanding
cannot make up the difference, so a request with two dead replicas fails at once instead of waiting
for its timeout.
"""

from __future__ import annotations

from enum import Enum

from client.protocol import Status


class Outcome(Enum):
    PENDING = "pending"
    REACHED = "reached"
    LOST = "lost"


class QuorumTracker:
    def __init__(self, required: int, replicas: int) -> None:
        if not 1 <= required <= replicas:
            raise ValueError(f"required={required} must be between 1 and replicas={replicas}")
        self.required = required
        self.replicas = replicas
        self.acked = 0
        self.failed = 0

    def succeed(self) -> Outcome:
        self.acked += 1
        return self.outcome

    def fail(self) -> Outcome:
        self.failed += 1
        return self.outcome

    @property
    def outcome(self) -> Outcome:
        if self.acked >= self.required:
            return Outcome.REACHED
        if self.replicas - self.failed < self.required:
            return Outcome.LOST
        return Outcome.PENDING


class QuorumError(Exception):
    """Too few replicas answered. ``status`` is UNAVAILABLE (they failed) or TIMEOUT (they were slow)."""

    def __init__(self, status: Status, acked: int, required: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.acked = acked
        self.required = required
        self.message = message


def resolve_quorum(requested: int, default: int, replicas: int, name: str) -> int:
    """The quorum a request runs with: its own if it asked (1..N), else the node's default."""
    if requested == 0:
        return default
    if requested > replicas:
        raise ValueError(f"{name}={requested} exceeds N={replicas}")
    return requested
