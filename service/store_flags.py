"""Which nodes' stores refuse writes, or may lack acknowledged writes, as this node knows it.

Pure. A peer's flags (``client.protocol`` store flags: storage full, catching up) come from its PING
replies, which ``peers.PeerMonitor`` feeds in every heartbeat, and between heartbeats from its
refusals: a write answered STORAGE_FULL, or a replica read answered REPLICA_BEHIND, is evidence at
once. The next PING reply replaces that evidence, so a peer that recovered is trusted again within
a heartbeat. This node's own flags are its store's, read when asked.

The coordinator asks through ``placement.Placement``: a full node gets no writes that add data (they
go to a fallback as hints), and neither a full nor a catching-up node is read from.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from client.protocol import PING_FLAG_STORAGE_FULL, STORE_FLAGS


def _ignore_change(node_id: str, old: int, new: int) -> None:
    """The default ``on_change``: nothing to do."""


class StoreFlags:
    """Every node's store flags: ``node_id`` (this node) reads ``local_flags()``; its ``peers`` start
    with none.

    ``on_change(peer, old, new)`` runs whenever a peer's flags change, from a PING reply or a refusal.
    """

    def __init__(
        self,
        node_id: str,
        local_flags: Callable[[], int],
        peers: Iterable[str],
        on_change: Callable[[str, int, int], None] = _ignore_change,
    ) -> None:
        self._node_id = node_id
        self._local_flags = local_flags
        self._on_change = on_change
        self._peers: dict[str, int] = dict.fromkeys(peers, 0)

    def add(self, peer: str) -> None:
        """Keep ``peer``'s flags too (a member that joined)."""
        self._peers.setdefault(peer, 0)

    def observe(self, peer: str, flags: int) -> None:
        """``peer`` answered a PING with ``flags``: its state as it says it now."""
        self._set(peer, flags & STORE_FLAGS)

    def refused(self, peer: str, flag: int) -> None:
        """``peer`` refused a request in a way that shows ``flag`` (STORAGE_FULL: the full flag)."""
        self._set(peer, self._peers.get(peer, 0) | flag)

    def _set(self, peer: str, flags: int) -> None:
        old = self._peers.get(peer, 0)
        self._peers[peer] = flags
        if flags != old:
            self._on_change(peer, old, flags)

    def flags(self, node_id: str) -> int:
        if node_id == self._node_id:
            return self._local_flags()
        return self._peers.get(node_id, 0)

    def is_full(self, node_id: str) -> bool:
        """Whether the node's store refuses writes that add data."""
        return bool(self.flags(node_id) & PING_FLAG_STORAGE_FULL)

    def is_behind(self, node_id: str) -> bool:
        """Whether the node's store may lack acknowledged writes (full, or catching up): it must not
        answer a read alone. A node with no peers lacks nothing: no other node took a write for it."""
        if node_id == self._node_id and not self._peers:
            return False
        return bool(self.flags(node_id) & STORE_FLAGS)
