"""Hinted handoff: writes held here for a node that was down are delivered once it is up again.

Hints live in the store's ``hints`` database (durable, apart from the data, not served to reads).
A delivery pass takes each owner that the failure detector sees as up, sends its hints in batches
as ordinary REPLICA_PUTs (the owner keeps whichever version is newer), and drops each hint once the
owner has acknowledged it. A failed send stops that owner's pass; the next pass retries.

Hints older than the hint window (``KV_HINT_WINDOW_S``) are dropped undelivered: a node down that
long has missed too much for hints to be the way back, and anti-entropy brings it up to date.
The node runs a pass every ``PASS_INTERVAL`` seconds, and at once when a peer comes back up.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import gevent
import gevent.pool

from service.group_commit import GroupCommitter
from service.peers import Peer
from service.storage import DropHint, Hint, Storage
from service.versioning import wall_clock_ms

BATCH = 256
"""Hints read and sent per step: bounds memory, and lets a pass stop early when the owner fails."""
SEND_CONCURRENCY = 32
"""Hints in flight to one owner at once, pipelined on the shared peer connection."""
MAX_BATCHES_PER_PASS = 1000
"""Batches one pass sends to one owner before yielding to the others (256,000 hints)."""
PASS_INTERVAL = 1.0
"""Seconds between delivery passes when nothing wakes the loop sooner."""


class HandoffEvents:
    """What hinted handoff reports; the node turns these into metrics and logs. Ignored by default."""

    def delivered(self, owner: str, count: int) -> None:
        """``count`` hints reached ``owner`` and were dropped."""

    def expired(self, owner: str, count: int) -> None:
        """``count`` hints for ``owner`` outlived the hint window and were dropped undelivered."""


class HintedHandoff:
    def __init__(
        self,
        storage: Storage,
        committer: GroupCommitter,
        peers: Mapping[str, Peer],
        *,
        is_up: Callable[[str], bool],
        window_s: float,
        events: HandoffEvents | None = None,
        now_ms: Callable[[], int] = wall_clock_ms,
    ) -> None:
        self.storage = storage
        self.committer = committer
        self.peers = peers
        self.is_up = is_up
        self.window_ms = int(window_s * 1000)
        self.events = events or HandoffEvents()
        self.now_ms = now_ms

    def run_pass(self) -> None:
        for owner, count in self.storage.hint_counts().items():
            if count:
                self._deliver_to(owner)

    def _deliver_to(self, owner: str) -> None:
        peer = self.peers.get(owner)
        delivered = expired = 0
        try:
            for _ in range(MAX_BATCHES_PER_PASS):
                hints = self.storage.hints_for(owner, BATCH)
                if not hints:
                    return
                now_ms = self.now_ms()
                stale = [hint for hint in hints if now_ms - hint.created_ms > self.window_ms]
                fresh = [hint for hint in hints if now_ms - hint.created_ms <= self.window_ms]
                expired += self._drop(stale)
                if not fresh:
                    continue
                if peer is None or not self.is_up(owner):
                    return
                sent = [hint for hint, ok in zip(fresh, self._send(peer, fresh), strict=True) if ok]
                delivered += self._drop(sent)
                if len(sent) < len(fresh):
                    return
        finally:
            if delivered:
                self.events.delivered(owner, delivered)
            if expired:
                self.events.expired(owner, expired)

    def _send(self, peer: Peer, hints: list[Hint]) -> list[bool]:
        def send(hint: Hint) -> bool:
            try:
                peer.write(hint.key, hint.record)
            except Exception:  # the owner went away again; the hint stays for the next pass
                return False
            return True

        return list(gevent.pool.Pool(SEND_CONCURRENCY).imap(send, hints))

    def _drop(self, hints: list[Hint]) -> int:
        drops = [gevent.spawn(self.committer.submit, DropHint(h.owner, h.key, h.record.version)) for h in hints]
        gevent.joinall(drops, raise_error=True)
        return len(hints)
