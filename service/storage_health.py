"""Whether this node's store takes writes, and whether it can be read alone: one small state machine.

Pure: ``LocalStore`` reports what its commits and probes found, with the time, and asks the state.

* WRITABLE: the normal state.
* FULL, from the first write that found no room (a full disk, or ``KV_STORAGE_LIMIT_MB`` reached):
  the store refuses writes that add data, without trying them, so one full disk costs one log line
  and not a failed commit per write; reads of its own records still work. Writes meant for it are
  held elsewhere as hints, so it lacks acknowledged writes and must not be read from alone.
* CATCHING_UP, once a probe commit found room again: it takes writes, but the hints written
  meanwhile have not all arrived, so it is still not read from alone (``recovery`` decides when
  they have). A node with no peers has no hints to wait for and goes straight to WRITABLE. A store
  that was full or catching up when the node stopped starts CATCHING_UP (``LocalStore`` keeps a
  marker file for that): the hints it missed are still out there.

Any write that finds no room makes the store FULL again, whatever the state.
"""

from __future__ import annotations

from enum import Enum

from client.protocol import PING_FLAG_CATCHING_UP, PING_FLAG_STORAGE_FULL


class StoreState(Enum):
    WRITABLE = "writable"
    FULL = "full"
    CATCHING_UP = "catching up"


class StorageHealth:
    """The store's state (``state``), since when (``since``, seconds on the caller's clock) and, when
    FULL, why (``cause``, a phrase such as "the disk holding /data is full ...").

    Each method returns whether the state changed, so the caller reports each change once.
    """

    def __init__(self, now: float, *, catching_up: bool = False) -> None:
        self.state = StoreState.CATCHING_UP if catching_up else StoreState.WRITABLE
        self.since = now
        self.cause = ""

    @property
    def full(self) -> bool:
        return self.state is StoreState.FULL

    @property
    def readable_alone(self) -> bool:
        """Whether the store holds every write acknowledged for it, as far as this node knows."""
        return self.state is StoreState.WRITABLE

    @property
    def flags(self) -> int:
        """The state as PING and MEMBERS carry it (``client.protocol`` store flags)."""
        if self.state is StoreState.FULL:
            return PING_FLAG_STORAGE_FULL
        if self.state is StoreState.CATCHING_UP:
            return PING_FLAG_CATCHING_UP
        return 0

    def no_room(self, cause: str, now: float) -> bool:
        """A write found no room, because of ``cause``."""
        if self.state is StoreState.FULL:
            return False
        self._enter(StoreState.FULL, now)
        self.cause = cause
        return True

    def room_found(self, now: float, *, has_peers: bool) -> bool:
        """A probe commit found room again: CATCHING_UP (WRITABLE without peers)."""
        if self.state is not StoreState.FULL:
            return False
        self._enter(StoreState.CATCHING_UP if has_peers else StoreState.WRITABLE, now)
        return True

    def caught_up(self, now: float) -> bool:
        """Every write held for this node elsewhere has arrived."""
        if self.state is not StoreState.CATCHING_UP:
            return False
        self._enter(StoreState.WRITABLE, now)
        return True

    def _enter(self, state: StoreState, now: float) -> None:
        self.state = state
        self.since = now
        self.cause = ""
