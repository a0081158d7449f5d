"""Placement as this node uses it: which nodes hold a key or a partition, and which are down.

Pure: the ring and N say where keys live; ``is_down`` is the failure detector's verdict, injected
as a function. The coordinator, the read plan and anti-entropy ask it, so each takes this one
value instead of a ring, an N and a detector of its own.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from client.ring import Ring


def _never_down(node_id: str) -> bool:
    return False


@dataclass(frozen=True)
class Placement:
    """The ring, N (``n``: replicas per key) and which nodes are down (default: none)."""

    ring: Ring
    n: int
    is_down: Callable[[str], bool] = _never_down

    def preference_list(self, key: bytes) -> list[str]:
        """The ``n`` nodes that hold ``key``, primary first, down or not."""
        return self.ring.preference_list(key, self.n)

    def ranking(self, key: bytes) -> tuple[str, ...]:
        """Every node ranked for ``key``: its ``n`` replicas, then the fallbacks that take hints."""
        return self.ring.owners(key)

    def partition_replicas(self, partition: int) -> tuple[str, ...]:
        """The ``n`` nodes that hold ``partition``."""
        return self.ring.partition_owners(partition)[: self.n]
