"""Recovery after this node's store was full: finding room again, then catching up on what it missed.

While the store is full (``storage_health``), writes meant for this node are held by other nodes as
hints, and this node is read from by no one. ``StorageRecovery.run_pass`` runs every
``PASS_INTERVAL`` seconds (the node's ``storage_recovery`` task):

* while the store is FULL it probes (``LocalStore.probe``): once a 256 KiB commit fits again (files
  deleted beside the store, the volume grown, keys deleted), the store takes writes, CATCHING_UP;
* while CATCHING_UP it asks every peer that is not down, with MEMBERS, how that peer sees this node,
  and ``CatchUp`` decides when the hints held for it have all arrived: the store is then read from
  again (WRITABLE).

So reads are answered only by replicas that hold every acknowledged write, through the whole episode,
as long as each write was acknowledged by at least one replica that is not full (one full node at a
time, with the others up). A peer that is down when this node catches up is not waited for; writes
it holds for this node arrive when it is back, and until then a read answered by this node alone
can miss them, as after any failure (``ARCHITECTURE.md``, "What we promise").
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping

import gevent

from client import protocol
from client.errors import KVError
from client.protocol import MemberView, PeerState
from service.local_store import LocalStore
from service.peers import Peer
from service.storage_health import StoreState

PASS_INTERVAL = 1.0
"""Seconds between passes: a freed disk is found within a second, and a probe every second costs two
small commits only while the store is full."""


class CatchUp:
    """When every write held elsewhere for ``node_id`` (this node) has arrived, from its peers' views.

    Pure. ``step(now, views)`` takes, for each peer that is not down, its MEMBERS entry for this node
    (``None`` if it could not be asked), and returns ``True`` once both hold, over all those peers:

    1. each sees this node up and its store not full, and has since the same moment (``since_ms``):
       from then on no coordinator sends this node's share of a new write elsewhere because it was
       full. A write already under way may still store a hint for it, within the request timeout.
    2. ``settle`` seconds (``now``'s unit) after (1) first held, with (1) holding throughout, none of
       them holds a hint for this node.
    """

    def __init__(self, node_id: str, settle: float) -> None:
        self.node_id = node_id
        self.settle = settle
        self._writable_at: float | None = None
        self._seen: dict[str, int] = {}

    def reset(self) -> None:
        """Start again (the store was full again)."""
        self._writable_at = None
        self._seen = {}

    def step(self, now: float, views: Mapping[str, MemberView | None]) -> bool:
        if any(view is None or view.state is not PeerState.UP or view.storage_full for view in views.values()):
            self.reset()
            return False
        seen = {peer: view.since_ms for peer, view in views.items() if view is not None}
        if self._writable_at is None or seen != self._seen:
            self._writable_at, self._seen = now, seen
            return False
        if now - self._writable_at < self.settle:
            return False
        return all(view is not None and view.hints == 0 for view in views.values())


class StorageRecovery:
    """Runs ``LocalStore.probe`` while the store is full, and ``CatchUp`` while it catches up.

    ``peers``: the other nodes by id; ``is_down(peer)``: the failure detector's verdict (a down peer
    is not waited for); ``settle``: seconds ``CatchUp`` waits for writes under way (twice the
    request timeout).
    """

    def __init__(
        self, store: LocalStore, peers: Mapping[str, Peer], is_down: Callable[[str], bool], settle: float
    ) -> None:
        self.store = store
        self.peers = peers
        self.is_down = is_down
        self.catch_up = CatchUp(store.node_id, settle)

    def run_pass(self) -> None:
        state = self.store.health.state
        if state is StoreState.FULL:
            self.catch_up.reset()
            self.store.probe(has_peers=bool(self.peers))
        elif state is StoreState.CATCHING_UP and (
            not self.peers or self.catch_up.step(time.monotonic(), self._views())
        ):
            self.store.caught_up()  # (a node with no peers has no hints to wait for)

    def _views(self) -> dict[str, MemberView | None]:
        """Each peer not down, and its MEMBERS entry for this node (``None`` if it did not answer)."""
        asked = {
            peer_id: gevent.spawn(self._view_from, peer)
            for peer_id, peer in self.peers.items()
            if not self.is_down(peer_id)
        }
        gevent.joinall(list(asked.values()))
        return {peer_id: job.value for peer_id, job in asked.items()}

    def _view_from(self, peer: Peer) -> MemberView | None:
        try:
            members = protocol.decode_members_reply(peer.call(protocol.Members()).body)
        except (KVError, protocol.ProtocolError):
            return None
        return next((member for member in members if member.node_id == self.store.node_id), None)
