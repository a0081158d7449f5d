"""Placement as this node uses it: which nodes hold a key or a partition, which are down, and
whose stores are full or behind.

Pure: the ring and N say where keys live; ``is_down`` is the failure detector's verdict, and
``is_full`` and ``is_behind`` the nodes' store flags (``store_flags``), injected as functions. The
coordinator, the read plan and anti-entropy ask it, so each takes this one value instead of a ring,
an N and a detector of its own.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from client.ring import Ring


def _never(_: str | bytes) -> bool:
    return False


@dataclass(frozen=True)
class Placement:
    """The ring, N (``n``: replicas per key), which nodes are down, whose stores are full (they take
    no writes that add data) and whose stores are behind (full, or catching up: they may lack
    acknowledged writes, so no read is answered from them). Default: none of any."""

    ring: Ring
    n: int
    is_down: Callable[[str], bool] = _never
    is_full: Callable[[str], bool] = _never
    is_behind: Callable[[str], bool] = _never
    arriving_here: Callable[[bytes], bool] = _never
    """Whether a key's partition is still streaming into this node, which owns it already (after a
    removal, ``LocalStore.arriving_key``): this node is behind for that key alone."""
    pending: Mapping[int, tuple[str, ...]] = field(default_factory=dict)
    """Partition -> its pending owners while a membership change moves it (``membership_changes``):
    nodes that will own it after the change, which a write goes to as well."""

    def pending_owners(self, key: bytes) -> tuple[str, ...]:
        """The pending owners of ``key``'s partition (none unless a change moves it)."""
        return self.pending.get(self.ring.partition(key), ()) if self.pending else ()

    def preference_list(self, key: bytes) -> list[str]:
        """The ``n`` nodes that hold ``key``, primary first, down or not."""
        return self.ring.preference_list(key, self.n)

    def ranking(self, key: bytes) -> tuple[str, ...]:
        """Every node ranked for ``key``: its ``n`` replicas, then the fallbacks that take hints."""
        return self.ring.owners(key)

    def partition_replicas(self, partition: int) -> tuple[str, ...]:
        """The ``n`` nodes that hold ``partition``."""
        return self.ring.partition_owners(partition)[: self.n]
