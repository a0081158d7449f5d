"""Policies: when a failed endpoint may be dialled again. Pure: no sockets, the clock is given.

Modelled on cassandra-driver's ``policies`` module. A ``ReconnectionPolicy`` says how long to wait
after a failure before the next dial, and ``Backoff`` applies it to one endpoint's run of failures.
Everything that re-dials uses them: ``client.transport.ConnectionSlot`` keeps a ``Backoff`` for its
endpoint, and ``Client``, the node's ``Peer`` and the benchmark's Redis connection each hold their
connections in such slots.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

RECONNECT_DELAY = 1.0
"""Seconds after a failure before the endpoint is dialled again. Long next to a refused connect,
which fails at once, and short next to a restart, so a dead node costs each client or peer about
one failed connect a second instead of one per request, and a node that is back is used again
within a second."""


class ReconnectionPolicy(Protocol):
    def delay(self, failures: int) -> float:
        """Seconds to wait, after the ``failures``-th failure in a row, before dialling again."""
        ...


@dataclass(frozen=True)
class ConstantReconnectionPolicy:
    """The same wait after every failure, however many in a row (as cassandra-driver's)."""

    seconds: float = RECONNECT_DELAY

    def delay(self, failures: int) -> float:
        return self.seconds


DEFAULT_RECONNECTION = ConstantReconnectionPolicy()


class Backoff:
    """One endpoint's run of failures and what the policy makes of it: may it be dialled now?"""

    def __init__(
        self, policy: ReconnectionPolicy = DEFAULT_RECONNECTION, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._policy = policy
        self._clock = clock
        self._failures = 0
        self._retry_at = -math.inf

    def failed(self) -> None:
        """The endpoint failed a dial or a request: wait before dialling it again."""
        self._failures += 1
        self._retry_at = self._clock() + self._policy.delay(self._failures)

    def succeeded(self) -> None:
        """A dial succeeded: the run of failures is over."""
        self._failures = 0
        self._retry_at = -math.inf

    @property
    def waiting(self) -> bool:
        """Whether the policy says not to dial yet."""
        return self._clock() < self._retry_at

    @property
    def retry_in(self) -> float:
        """Seconds until the endpoint may be dialled again; 0 if it may be now."""
        return max(0.0, self._retry_at - self._clock())
