"""Policies: which nodes a request goes to, and when a failed endpoint may be dialled again.

Modelled on cassandra-driver's ``policies`` module, and pure: no sockets, and the clock is given.

* A ``RoutingPolicy`` turns a key into the nodes to try, in order (cassandra-driver's query plan).
  ``ReplicasFirst`` is the ``Client``'s default; ``PrimaryOnly`` is the benchmark's.
* A ``ReconnectionPolicy`` says how long to wait after a failure before the next dial, and
  ``Backoff`` applies it to one endpoint's run of failures. Everything that re-dials uses them:
  ``client.transport.ConnectionSlot`` keeps a ``Backoff`` for its endpoint, and ``Client``, the
  node's ``Peer`` and the benchmark's Redis connection each hold their connections in such slots.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from client.ring import Ring

RECONNECT_DELAY = 1.0
"""Seconds after a failure before the endpoint is dialled again. Long next to a refused connect,
which fails at once, and short next to a restart, so a dead node costs each client or peer about
one failed connect a second instead of one per request, and a node that is back is used again
within a second."""


class RoutingPolicy(Protocol):
    dials_backing_off: bool
    """Whether a node in the plan is dialled even while its reconnection policy says to wait; if
    not, a request finds it unreachable at once and moves on to the next node in the plan."""

    def plan(self, key: bytes, ring: Ring, n: int, backing_off: Callable[[str], bool]) -> Sequence[str]:
        """The node ids to try for ``key``, best first. ``n`` is the replication factor; ``backing_off``
        says which nodes failed so recently that the reconnection policy would rather wait."""
        ...


class ReplicasFirst:
    """The key's replicas in preference order, then every other node, since any node can coordinate;
    nodes backing off go last, and are still dialled when a request gets that far (a last resort)."""

    dials_backing_off = True

    def plan(self, key: bytes, ring: Ring, n: int, backing_off: Callable[[str], bool]) -> Sequence[str]:
        preferred = ring.preference_list(key, n)
        others = [node_id for node_id in ring.node_ids if node_id not in preferred]
        return sorted(preferred + others, key=backing_off)  # stable: the order holds within each group


class PrimaryOnly:
    """The key's primary replica alone: no failover, and no dial of a primary that is backing off,
    so a request for a dead node fails at once. The benchmark's routing: the cluster measured as a
    token-aware client drives it, with no work the Redis side does not do."""

    dials_backing_off = False

    def plan(self, key: bytes, ring: Ring, n: int, backing_off: Callable[[str], bool]) -> Sequence[str]:
        return (ring.primary(key),)


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
