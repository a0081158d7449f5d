"""The cluster as this node sees it, gathered for the dashboard: every node's STATS, and one key's
replicas. The I/O around ``cluster_report``, which shapes the JSON.

``cluster`` asks every peer for STATS at once, through the node's own ``Peer`` connections, with a
short timeout; a peer this node's failure detector calls down is not asked, and one that does not
answer stays in the answer without figures, with the detector's verdict and the reason. Viewers
share one gathering for ``VIEW_MAX_AGE`` seconds, so ten open pages cost the cluster what one does.

``lookup`` reads one key on each of its replicas (this node's store directly, the others with
REPLICA_GET) and reports versions and sizes, never the value.
"""

from __future__ import annotations

import time
from collections.abc import Mapping

import gevent
import gevent.lock

from client import protocol
from client.errors import KVError
from client.protocol import PeerState, StatsReply, Status
from service.cluster_report import (
    Answer,
    ClusterShape,
    Json,
    KeyPlacement,
    NodeReport,
    ReplicaAnswer,
    cluster_json,
    lookup_json,
    summarize_ring,
)
from service.config import Config
from service.node_stats import NodeReports
from service.peers import Peer
from service.placement import Placement

PEER_TIMEOUT = 1.0
"""Seconds a peer may take to answer STATS or REPLICA_GET for the dashboard: far above what either
costs a live node (milliseconds), and under the page's two-second refresh, so a hung peer delays a
refresh by at most this and refreshes never pile up."""
VIEW_MAX_AGE = 1.0
"""Seconds one gathering of the cluster serves every viewer."""
LOOKUP_CONCURRENCY = 8
"""Key lookups run at once; more wait their turn, so a flood of lookups cannot flood the peers."""


class ClusterView:
    """The dashboard's data, gathered from this node's parts and its peers.

    ``reports`` gives this node's own figures and its failure detector's view; ``peers`` are the
    other members, by id; ``placement`` says where keys live.
    """

    def __init__(self, config: Config, reports: NodeReports, peers: Mapping[str, Peer], placement: Placement) -> None:
        self.node_id = config.node_id
        self.members = config.cluster
        self.max_key_bytes = config.max_key_bytes
        self.reports = reports
        self.peers = peers
        self.placement = placement
        self.shape = ClusterShape(config.n, config.read_quorum, config.write_quorum, placement.ring.partitions)
        self.ring = summarize_ring(placement.ring, placement.n)
        self._gathering = gevent.lock.Semaphore()
        self._last: tuple[float, Json] | None = None
        self._lookups = gevent.lock.BoundedSemaphore(LOOKUP_CONCURRENCY)

    # --- /api/cluster ------------------------------------------------------------------------------

    def use_placement(self, placement: Placement) -> None:
        """A membership change switched the ring: show and look up keys by the new one."""
        self.placement = placement
        self.ring = summarize_ring(placement.ring, placement.n)

    def cluster(self, max_age: float = VIEW_MAX_AGE) -> Json:
        """Every member with its figures, and the ring, as this node sees them now: gathered at most
        ``max_age`` seconds ago."""
        with self._gathering:  # concurrent viewers wait for one gathering and share it
            if self._last is not None and time.monotonic() - self._last[0] < max_age:
                return self._last[1]
            view = self._gather()
            self._last = (time.monotonic(), view)
            return view

    def _gather(self) -> Json:
        own = self.reports.stats()
        seen = {member.node_id: member for member in own.members}
        offsets = self.reports.clock_offsets()
        asked = {
            node_id: gevent.spawn(self._peer_stats, peer)
            for node_id, peer in self.peers.items()
            if seen[node_id].state is not PeerState.DOWN
        }
        gevent.joinall(list(asked.values()))
        reports = []
        for address in self.members:
            node_id = address.node_id
            member = seen[node_id]
            if node_id == self.node_id:
                report = NodeReport(address, member.state, member.since_ms, own, clock_offset_s=0.0)
            else:
                stats, error = asked[node_id].value if node_id in asked else (None, "not asked while down")
                report = NodeReport(address, member.state, member.since_ms, stats, error, offsets.get(node_id))
            reports.append(report)
        return cluster_json(self.node_id, own.wall_ms, self.shape, reports, self.ring)

    @staticmethod
    def _peer_stats(peer: Peer) -> tuple[StatsReply | None, str | None]:
        try:
            frame = peer.call(protocol.Stats(), timeout=PEER_TIMEOUT)
            return protocol.decode_stats_reply(frame.body), None
        except KVError as exc:
            return None, exc.message
        except protocol.ProtocolError as exc:
            return None, f"bad STATS reply: {exc}"

    # --- /api/key ----------------------------------------------------------------------------------

    def lookup(self, key: bytes) -> Json:
        """``key``'s partition, replicas and fallbacks, and what each replica holds for it. Raises
        ``ValueError`` for an empty key or one over ``KV_MAX_KEY_BYTES``."""
        if not key:
            raise ValueError("give a key: /api/key?key=...")
        if len(key) > self.max_key_bytes:
            raise ValueError(f"a key of {len(key)} bytes exceeds the limit of {self.max_key_bytes}")
        ring = self.placement.ring
        preference = tuple(self.placement.preference_list(key))
        placement = KeyPlacement(
            key, ring.partition(key), preference, tuple(self.placement.ranking(key)[len(preference) :])
        )
        detector = self.reports.detector
        states = {
            node_id: PeerState.UP if node_id == self.node_id else detector.state(node_id) for node_id in preference
        }
        with self._lookups:
            reads = [gevent.spawn(self._read, node_id, states[node_id], key) for node_id in preference]
            gevent.joinall(reads)
        return lookup_json(self.node_id, int(time.time() * 1000), placement, [read.value for read in reads])

    def _read(self, node_id: str, state: PeerState, key: bytes) -> ReplicaAnswer:
        if node_id == self.node_id:
            record = self.reports.store.read(key)
        elif state is PeerState.DOWN:
            return ReplicaAnswer(node_id, state, Answer.DOWN)
        else:
            try:
                # What its store holds, whatever its state or ring: this view shows each copy.
                frame = self.peers[node_id].call(protocol.ReplicaGet(key, behind_ok=True), timeout=PEER_TIMEOUT)
                record = None if frame.code == Status.NOT_FOUND else protocol.decode_record(frame.body)
            except KVError as exc:
                return ReplicaAnswer(node_id, state, Answer.UNREACHABLE, error=exc.message)
            except protocol.ProtocolError as exc:
                return ReplicaAnswer(node_id, state, Answer.UNREACHABLE, error=f"bad REPLICA_GET reply: {exc}")
        outcome = Answer.NOT_FOUND if record is None else Answer.FOUND
        return ReplicaAnswer(node_id, state, outcome, record)
