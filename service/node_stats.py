"""What this node reports about itself: its view of the cluster (MEMBERS) and its figures (STATS).

``NodeReports`` reads the parts it is given at the moment it is asked, and keeps nothing of its own:
the store (keys, disk, hints), the failure detector (each peer up, suspect or down, and since when),
the request window (``metrics.RequestStats``), anti-entropy's progress, and the clock offsets to
peers. The request handler answers MEMBERS and STATS with it; the dashboard's ``ClusterView`` uses it
for the node that serves the page.

One figure is not free: hints held per owner take a scan of the hints. A node holding many (a peer
down for long under heavy writes) scans them at most every ``HINT_SCAN_INTERVAL`` seconds, so that
dashboards polling STATS every second cannot stall its event loop; the total is always exact.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from client.protocol import MemberView, PeerClockOffset, PeerState, RepairProgress, RequestWindow, StatsReply
from service.failure_detector import FailureDetector
from service.local_store import LocalStore

HINT_SCAN_INTERVAL = 5.0
"""Seconds a count of hints per owner serves once there are ``FEW_HINTS`` or more."""
FEW_HINTS = 10_000
"""Below this many hints, counting them per owner takes milliseconds: every ask counts afresh."""


def no_clock_offsets() -> Mapping[str, float]:
    """No peer's clock offset measured: the default ``clock_offsets`` source."""
    return {}


class WindowSource(Protocol):
    """The recent request window: ``metrics.RequestStats``, or every worker's gathered."""

    def window(self) -> RequestWindow: ...


class RepairSource(Protocol):
    """Anti-entropy's progress: ``anti_entropy.AntiEntropy``, or worker 0's gathered."""

    def progress(self) -> RepairProgress: ...


@dataclass
class NodeReports:
    """This node's MEMBERS and STATS answers, read from its parts when asked.

    ``detector`` uses ``time.monotonic``; its "since" times are turned into wall-clock milliseconds.
    ``clock_offsets`` returns each peer's wall clock minus this node's, in seconds, for the peers
    whose offset has been measured. ``clock`` times uptime and hint counts (tests fake it).
    """

    node_id: str
    store: LocalStore
    detector: FailureDetector
    requests: WindowSource
    anti_entropy: RepairSource
    clock_offsets: Callable[[], Mapping[str, float]] = no_clock_offsets
    store_flags: Callable[[str], int] = lambda node_id: 0
    streams_pending: Callable[[], int] = lambda: 0
    """Partitions still to stream here for a membership change (STATS, ``kv cluster status``)."""
    """Each node's store flags as last heard (``StoreFlags.flags``; this node's own for its id)."""
    clock: Callable[[], float] = time.monotonic
    started: float = field(default_factory=time.monotonic)
    started_wall: float = field(default_factory=time.time)
    _hints: tuple[float, dict[str, int]] | None = field(default=None, init=False, repr=False)
    """The last count of hints per owner, and when it was made."""

    def members(self) -> list[MemberView]:
        """This node's view of the cluster: itself (up), and each peer as the failure detector sees
        it; each with its store's flags as last heard."""
        hints = self.hint_counts()
        now_mono, now_wall = time.monotonic(), time.time()
        flags = self.store_flags
        view = [MemberView(self.node_id, PeerState.UP, int(self.started_wall * 1000), 0, flags(self.node_id))]
        for node_id, (state, since) in self.detector.view().items():
            since_ms = int((now_wall - (now_mono - since)) * 1000)
            view.append(MemberView(node_id, state, since_ms, hints.get(node_id, 0), flags(node_id)))
        return view

    def hint_counts(self) -> dict[str, int]:
        """Hints held per owner: counted afresh, unless they are many and were counted less than
        ``HINT_SCAN_INTERVAL`` seconds ago."""
        now = self.clock()
        last = self._hints
        if last is not None and now - last[0] < HINT_SCAN_INTERVAL and self.store.pending_hints() >= FEW_HINTS:
            return last[1]
        counts = self.store.hint_counts()
        self._hints = (now, counts)
        return counts

    def stats(self) -> StatsReply:
        """This node's figures now (STATS)."""
        disk = self.store.disk_usage()
        offsets = tuple(
            PeerClockOffset(node_id, round(seconds * 1_000_000))
            for node_id, seconds in sorted(self.clock_offsets().items())
        )
        return StatsReply(
            node_id=self.node_id,
            wall_ms=int(time.time() * 1000),
            uptime_ms=int((self.clock() - self.started) * 1000),
            flags=self.store.flags,
            live_keys=self.store.live_keys,
            disk_bytes=disk.file_bytes,
            disk_used_bytes=disk.used_bytes,
            storage_limit_bytes=disk.limit_bytes,
            hints=self.store.pending_hints(),
            requests=self.requests.window(),
            members=tuple(self.members()),
            clock_offsets=offsets,
            repair=self.anti_entropy.progress(),
            streams_pending=self.streams_pending(),
        )
