"""Hinted handoff: writes held here for a node that was down are delivered once it is up again.

Hints live in the store's ``hints`` database (durable, apart from the data, not served to reads),
reached through ``LocalStore``.
A delivery pass takes each owner that the failure detector sees as up (and whose store is not
full), sends its hints in batches as ordinary REPLICA_PUTs (the owner keeps whichever version is
newer), and drops each hint once the owner has acknowledged it. A failed send stops that owner's
pass, and is reported (``delivery_failed``); the next pass retries.

Hints older than the hint window (``KV_HINT_WINDOW_S``) are dropped undelivered: a node down that
long has missed too much for hints to be the way back, and anti-entropy brings it up to date.
The node runs a pass every ``PASS_INTERVAL`` seconds, and at once when a peer comes back up.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import gevent.pool

from service.local_store import LocalStore
from service.peers import Peer
from service.storage import Hint
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
    """What hinted handoff reports; ``events.NodeEvents`` turns these into metrics and logs. Ignored by default."""

    def delivered(self, owner: str, count: int) -> None:
        """``count`` hints reached ``owner`` and were dropped."""

    def expired(self, owner: str, count: int) -> None:
        """``count`` hints for ``owner`` outlived the hint window and were dropped undelivered."""

    def delivery_failed(self, owner: str, count: int, error: str) -> None:
        """``count`` hints could not be sent to ``owner`` (the last failure: ``error``); they stay
        for the next pass."""


@dataclass(frozen=True)
class HandoffSettings:
    window_s: float
    """Seconds a hint is kept (``KV_HINT_WINDOW_S``); older ones are dropped undelivered."""
    now_ms: Callable[[], int] = wall_clock_ms
    """The clock hints' creation times were stamped on, in Unix milliseconds: the node gives its
    steady clock, which ignores wall-clock jumps (tests fake it)."""
    may_expire: Callable[[], bool] = lambda: True
    """Whether this node's clock is trusted enough to drop hints as expired now
    (``ClockOffsets.trusted``); while it is not, old hints are kept (and still delivered)."""


class HintedHandoff:
    """Delivers the hints this node holds to their owners, one ``run_pass`` at a time.

    ``peers``: the other nodes by id (a hint for a node that is not one is kept); ``is_up(node_id)``:
    whether that owner can take its hints now (the failure detector sees it up and its store is not
    full), the only time they are sent.
    """

    def __init__(
        self,
        store: LocalStore,
        peers: Mapping[str, Peer],
        is_up: Callable[[str], bool],
        settings: HandoffSettings,
        events: HandoffEvents | None = None,
    ) -> None:
        self.store = store
        self.peers = peers
        self.is_up = is_up
        self.window_ms = int(settings.window_s * 1000)
        self.events = events or HandoffEvents()
        self.now_ms = settings.now_ms
        self._may_expire = settings.may_expire

    def run_pass(self) -> None:
        """Deliver (or expire) the hints held for each owner; a failed send ends that owner's part,
        and the next pass retries it."""
        for owner, count in self.store.hint_counts().items():
            if count:
                self._deliver_to(owner)

    def _deliver_to(self, owner: str) -> None:
        peer = self.peers.get(owner)
        delivered = expired = 0
        try:
            for _ in range(MAX_BATCHES_PER_PASS):
                hints = self.store.hints_for(owner, BATCH)
                if not hints:
                    return
                now_ms, expiring = self.now_ms(), self._may_expire()
                stale: list[Hint] = []
                fresh: list[Hint] = []
                for hint in hints:
                    (stale if expiring and now_ms - hint.created_ms > self.window_ms else fresh).append(hint)
                expired += self._drop(stale)
                if not fresh:
                    continue
                if peer is None or not self.is_up(owner):
                    return
                errors = self._send(peer, fresh)
                sent = [hint for hint, error in zip(fresh, errors, strict=True) if error is None]
                delivered += self._drop(sent)
                if len(sent) < len(fresh):
                    failures = [error for error in errors if error is not None]
                    self.events.delivery_failed(owner, len(failures), failures[-1])
                    return
        finally:
            if delivered:
                self.events.delivered(owner, delivered)
            if expired:
                self.events.expired(owner, expired)

    def _send(self, peer: Peer, hints: list[Hint]) -> list[str | None]:
        """Send each hint; per hint, ``None`` if the owner took it, else why not."""

        def send(hint: Hint) -> str | None:
            try:
                peer.write(hint.key, hint.record)
            except Exception as exc:  # the owner went away again, or is full; the hint stays
                return str(exc) or type(exc).__name__
            return None

        return list(gevent.pool.Pool(SEND_CONCURRENCY).imap(send, hints))

    def _drop(self, hints: list[Hint]) -> int:
        self.store.drop_hints(hints)
        return len(hints)
