"""The dashboard's JSON: the cluster as one node sees it (``/api/cluster``) and where a key lives
(``/api/key``). Pure: what the nodes answered goes in, plain dicts and lists ready for ``json.dumps``
come out. ``docs/dashboard.md`` documents both shapes, and a unit test checks real output against
that schema.

Numbers that JavaScript cannot hold exactly (a version's 64-bit HLC timestamp) are strings; times
are Unix milliseconds; durations are seconds, except latencies, which are milliseconds.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from client.protocol import NodeAddress, PeerState, Record, StatsReply, Version
from client.ring import Ring
from service.versioning import LOGICAL_MASK, physical_ms

SCHEMA_VERSION = 1
"""Goes up when a field changes meaning or goes away; new fields may appear without it."""

Json = dict[str, Any]


def state_name(state: PeerState) -> str:
    """``up``, ``suspect`` or ``down``: a state as the JSON and the page name it."""
    return state.name.lower()


# --- the ring ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RingSummary:
    """The ring's partitions by primary owner, and each node's share as primary and as replica."""

    nodes: tuple[str, ...]  # node ids, in the ring's (sorted) order: the indexes ``primary`` uses
    primary: tuple[int, ...]  # per partition, its primary's index in ``nodes``
    primary_partitions: dict[str, int]  # partitions the node is the first replica of
    replica_partitions: dict[str, int]  # partitions it holds as one of the other N-1 replicas


def summarize_ring(ring: Ring, n: int) -> RingSummary:
    """Who is primary of each partition, and how many partitions each node holds, as primary and
    as one of the other ``n - 1`` replicas."""
    index = {node_id: position for position, node_id in enumerate(ring.node_ids)}
    primary_partitions = dict.fromkeys(ring.node_ids, 0)
    replica_partitions = dict.fromkeys(ring.node_ids, 0)
    primary = []
    for partition in range(ring.partitions):
        first, *others = ring.partition_owners(partition)[:n]
        primary.append(index[first])
        primary_partitions[first] += 1
        for node_id in others:
            replica_partitions[node_id] += 1
    return RingSummary(ring.node_ids, tuple(primary), primary_partitions, replica_partitions)


# --- /api/cluster --------------------------------------------------------------------------------


@dataclass(frozen=True)
class NodeReport:
    """One member as the serving node found it: its state in the serving node's failure detector
    (``up`` for the serving node itself), since when (Unix ms), its STATS answer or why there is
    none, and its clock's offset from the serving node's in seconds, if measured."""

    address: NodeAddress
    state: PeerState
    since_ms: int
    stats: StatsReply | None
    error: str | None = None
    clock_offset_s: float | None = None


@dataclass(frozen=True)
class ClusterShape:
    """What every node is configured alike with."""

    n: int
    read_quorum: int
    write_quorum: int
    partitions: int


def cluster_json(
    served_by: str, now_ms: int, shape: ClusterShape, nodes: Sequence[NodeReport], ring: RingSummary
) -> Json:
    """``/api/cluster``: every member with what it reported, and the ring, as ``served_by`` saw them
    at ``now_ms``."""
    return {
        "schema": SCHEMA_VERSION,
        "served_by": served_by,
        "generated_at_ms": now_ms,
        "config": {"n": shape.n, "r": shape.read_quorum, "w": shape.write_quorum, "partitions": shape.partitions},
        "nodes": [_node_json(node, ring) for node in nodes],
        "ring": {"partitions": len(ring.primary), "nodes": list(ring.nodes), "primary": list(ring.primary)},
    }


def _node_json(node: NodeReport, ring: RingSummary) -> Json:
    node_id = node.address.node_id
    return {
        "id": node_id,
        "address": node.address.address,
        "state": state_name(node.state),
        "state_since_ms": node.since_ms or None,
        "reachable": node.stats is not None,
        "error": node.error,
        "clock_offset_s": node.clock_offset_s,
        "partitions": {
            "primary": ring.primary_partitions.get(node_id, 0),
            "replica": ring.replica_partitions.get(node_id, 0),
        },
        "stats": None if node.stats is None else stats_json(node.stats),
    }


def stats_json(stats: StatsReply) -> Json:
    """One node's STATS answer as JSON."""
    window = stats.requests
    repair = stats.repair
    return {
        "wall_ms": stats.wall_ms,
        "uptime_s": stats.uptime_ms / 1000,
        "live_keys": stats.live_keys,
        "storage_full": stats.storage_full,
        "disk": {
            "file_bytes": stats.disk_bytes,
            "used_bytes": stats.disk_used_bytes,
            "limit_bytes": stats.storage_limit_bytes,
        },
        "hints": {
            "total": stats.hints,
            "by_owner": {member.node_id: member.hints for member in stats.members if member.hints},
        },
        "requests": {
            "window_s": window.window_ms / 1000,
            "all": _rate(window.requests, window.per_second, window.p99_us),
            "client": _rate(window.client_requests, window.client_per_second, window.client_p99_us),
        },
        "peers": {
            member.node_id: {"state": state_name(member.state), "since_ms": member.since_ms or None}
            for member in stats.members
            if member.node_id != stats.node_id
        },
        "clock_offsets_s": {offset.node_id: offset.offset_us / 1_000_000 for offset in stats.clock_offsets},
        "repair": {
            "running": repair.running,
            "started_ms": repair.started_ms or None,
            "finished_ms": repair.finished_ms or None,
            "partitions_total": repair.partitions_total,
            "partitions_compared": repair.partitions_compared,
            "keys_differing": repair.keys_differing,
            "keys_copied": repair.keys_copied,
        },
    }


def _rate(count: int, per_second: float, p99_us: int) -> Json:
    return {"count": count, "per_second": round(per_second, 2), "p99_ms": p99_us / 1000 if count else None}


# --- /api/key ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class KeyPlacement:
    """Where a key lives: its partition, its N replicas (primary first), and the nodes after them
    in the partition's ranking, which take its writes as hints while a replica is down."""

    key: bytes
    partition: int
    preference_list: tuple[str, ...]
    fallbacks: tuple[str, ...]


class Answer:
    """How a replica answered REPLICA_GET for the key (``ReplicaAnswer.outcome``)."""

    FOUND = "found"  # it holds a record: a value or a tombstone
    NOT_FOUND = "not_found"  # it holds nothing for the key
    DOWN = "down"  # the serving node's failure detector says it is down: not asked
    UNREACHABLE = "unreachable"  # asked, and the request failed


@dataclass(frozen=True)
class ReplicaAnswer:
    node_id: str
    state: PeerState  # as the serving node's failure detector sees it
    outcome: str  # an ``Answer``
    record: Record | None = None
    error: str | None = None


def lookup_json(served_by: str, now_ms: int, placement: KeyPlacement, answers: Sequence[ReplicaAnswer]) -> Json:
    """``/api/key``: the key's partition and replicas, and what each replica holds (version, and the
    value's size, never the value). ``current`` says whether a replica holds the newest version of
    those that answered; ``null`` if it did not answer."""
    records = [answer.record for answer in answers if answer.record is not None]
    newest = max((record.version for record in records), default=None)
    return {
        "schema": SCHEMA_VERSION,
        "served_by": served_by,
        "generated_at_ms": now_ms,
        "key": placement.key.decode("utf-8", errors="backslashreplace"),
        "key_hex": placement.key.hex(),
        "key_bytes": len(placement.key),
        "partition": placement.partition,
        "preference_list": list(placement.preference_list),
        "fallbacks": list(placement.fallbacks),
        "replicas": [_replica_json(answer, index, newest) for index, answer in enumerate(answers)],
    }


def _replica_json(answer: ReplicaAnswer, index: int, newest: Version | None) -> Json:
    answered = answer.outcome in (Answer.FOUND, Answer.NOT_FOUND)
    record = answer.record
    current = None
    if answered:
        current = newest is None or (record is not None and record.version == newest)
    return {
        "node": answer.node_id,
        "role": "primary" if index == 0 else "replica",
        "state": state_name(answer.state),
        "outcome": answer.outcome,
        "error": answer.error,
        "current": current,
        "record": None if record is None else _record_json(record),
    }


def _record_json(record: Record) -> Json:
    timestamp = record.version.timestamp
    return {
        "tombstone": record.value is None,
        "value_bytes": None if record.value is None else len(record.value),
        "version": {
            "timestamp": str(timestamp),
            "wall_ms": physical_ms(timestamp),
            "counter": timestamp & LOGICAL_MASK,
            "node": record.version.node_id,
        },
    }
