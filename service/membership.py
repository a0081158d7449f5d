"""The cluster's membership record: its identity, its members and their states, versioned by an epoch; pure.

A ``ClusterRecord`` says which cluster this is (``cluster_id``), how many partitions its ring has
(fixed for the cluster's life), and who its members are: each member's node id, address, state
(``normal``, ``joining``, ``leaving``) and identity (a random id the node minted on its first start,
so that a second process claiming the same node id can be told apart). Every node keeps one in its
data directory (``membership_store``) and gossips its ``epoch`` and ``digest`` with its heartbeats.

* **Cluster id.** The founding nodes start independently and must agree on the id without talking,
  so it is derived, as Cassandra's ``cluster_name`` is compared: from ``KV_CLUSTER_NAME``, the
  founding member ids (``KV_PEERS``) and the partition count. A node whose ``KV_PEERS`` or
  partition count differs from its peers' derives another id, and they refuse it.
* **Epoch.** A membership change is a new record with ``epoch + 1``; the higher epoch wins.
* **Merge** (``merge``): which of two records of one cluster wins. The higher epoch; at one epoch,
  two records whose members differ (addresses, states, the member set) are a conflict, resolved
  deterministically by the larger ``shape_digest`` (and logged by the caller); records of one epoch
  and one shape differ only in the identities learnt so far, which are joined member by member
  (an identity learnt beats none; two different ones, which only a conflict between two processes
  claiming one id can produce, resolve to the larger). This makes ``merge`` a join: commutative,
  associative and idempotent, so nodes that exchange records in any order converge on one record.
* **Ring.** ``ring`` is the ``client.ring.Ring`` over the members that own data: ``normal`` and
  ``leaving`` ones (a ``joining`` member owns nothing until its partitions have streamed to it).

Encoded as canonical JSON (sorted keys, no blanks), the same bytes on disk and on the wire, so the
digest of a record is the same on every node. ``decode`` validates everything and raises
``MembershipError`` (a ``ValueError``) for anything malformed.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Any

from client.address import format_address
from client.ring import Ring

NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
"""Node ids and cluster names: 1-64 letters, digits, '.', '_' or '-' (``service.config`` checks the same)."""
IDENTITY_PATTERN = re.compile(r"^[0-9a-f]{32}$")
"""A node's identity: 16 random bytes in hex (``new_identity``)."""
FORMAT = 1
"""The record's JSON layout; a later layout gets a new number and ``decode`` refuses what it does not know."""
DIGEST_BYTES = 8
"""Bytes of BLAKE2b in a record's digest: heartbeats carry it to tell records apart, and 64 bits make
an accidental match between two different records of one cluster negligible."""
MAX_EPOCH = (1 << 64) - 1  # the epoch travels as a u64


class MembershipError(ValueError):
    """A record that is malformed, or two records that cannot be compared (other clusters)."""


class MemberState(StrEnum):
    """A member's part in the ring, as Cassandra's nodetool shows it (the N, J and L of UN, UJ, UL)."""

    NORMAL = "normal"
    JOINING = "joining"
    LEAVING = "leaving"


OWNING_STATES = frozenset({MemberState.NORMAL, MemberState.LEAVING})
"""States whose members own partitions: a joining member owns none until it has its data."""


@dataclass(frozen=True, slots=True)
class Member:
    node_id: str
    host: str
    port: int
    state: MemberState = MemberState.NORMAL
    identity: str = ""  # "" until this node has learnt it (from the member itself, or a peer's record)

    @property
    def address(self) -> str:
        return format_address(self.host, self.port)


@dataclass(frozen=True, slots=True)
class ClusterRecord:
    """One version of the cluster's membership. ``members`` is sorted by node id; ``founders`` are
    the member ids the cluster was formed with, which with ``name`` and ``partitions`` give
    ``cluster_id`` (``derive_cluster_id``)."""

    cluster_id: str
    name: str
    partitions: int
    founders: tuple[str, ...]
    epoch: int
    members: tuple[Member, ...]

    def member(self, node_id: str) -> Member | None:
        for member in self.members:
            if member.node_id == node_id:
                return member
        return None

    @property
    def node_ids(self) -> tuple[str, ...]:
        return tuple(member.node_id for member in self.members)

    @property
    def owners(self) -> tuple[str, ...]:
        """The members that own partitions (``OWNING_STATES``), sorted by id."""
        return tuple(member.node_id for member in self.members if member.state in OWNING_STATES)


# --- forming a cluster -------------------------------------------------------------------------------


def derive_cluster_id(name: str, founders: Iterable[str], partitions: int) -> str:
    """``<name>-<16 hex digits>``: the name, then BLAKE2b of the name, the sorted founding ids and the
    partition count. Every founding node computes the same id from its own configuration, with no
    exchange; any difference in the three gives another id."""
    material = "\0".join(["kv-cluster", name, str(partitions), *sorted(set(founders))])
    return f"{name}-{hashlib.blake2b(material.encode(), digest_size=8).hexdigest()}"


def form(
    name: str, nodes: Sequence[tuple[str, str, int]], partitions: int, node_id: str, identity: str
) -> ClusterRecord:
    """The record a node forms on its first start, at epoch 1, from ``KV_PEERS`` (``nodes``: id,
    host, port each): every member ``normal``, and only this node's own identity known."""
    founders = tuple(sorted(node for node, _, _ in nodes))
    members = tuple(
        sorted(
            (Member(node, host, port, identity=identity if node == node_id else "") for node, host, port in nodes),
            key=lambda member: member.node_id,
        )
    )
    record = ClusterRecord(derive_cluster_id(name, founders, partitions), name, partitions, founders, 1, members)
    validate(record)
    return record


def describe_founding(name: str, founders: Iterable[str], partitions: int) -> str:
    """How a cluster id was made, for messages: ``name kv, members node1, node2, 4096 partitions``."""
    return f"name {name}, members {', '.join(sorted(founders))}, {partitions} partitions"


# --- changes ------------------------------------------------------------------------------------------


def with_identity(record: ClusterRecord, node_id: str, identity: str) -> ClusterRecord:
    """``record`` with ``node_id``'s identity set (learnt when it proved itself); the same epoch, since
    identities are joined by ``merge`` rather than ordered by epochs. ``MembershipError`` if
    ``node_id`` is not a member or already has another identity."""
    member = record.member(node_id)
    if member is None:
        raise MembershipError(f"{node_id} is not a member of {record.cluster_id}")
    if member.identity == identity:
        return record
    if member.identity:
        raise MembershipError(f"{node_id} already has identity {member.identity}, not {identity}")
    members = tuple(replace(m, identity=identity) if m.node_id == node_id else m for m in record.members)
    return replace(record, members=members)


def next_epoch(record: ClusterRecord, members: Iterable[Member]) -> ClusterRecord:
    """A membership change: ``record`` with ``members`` (any order) at ``epoch + 1``. The join,
    leave and remove steps make their records with this."""
    changed = replace(record, epoch=record.epoch + 1, members=tuple(sorted(members, key=lambda m: m.node_id)))
    validate(changed)
    return changed


# --- which record wins -------------------------------------------------------------------------------


def merge(a: ClusterRecord, b: ClusterRecord) -> ClusterRecord:
    """The record two nodes holding ``a`` and ``b`` both end up with (see the module docstring).
    ``MembershipError`` if they belong to different clusters."""
    if a.cluster_id != b.cluster_id:
        raise MembershipError(f"records of two clusters, {a.cluster_id} and {b.cluster_id}, cannot be merged")
    key_a, key_b = (a.epoch, shape_digest(a)), (b.epoch, shape_digest(b))
    if key_a != key_b:
        return a if key_a > key_b else b
    if a == b:
        return a
    members = tuple(replace(x, identity=max(x.identity, y.identity)) for x, y in zip(a.members, b.members, strict=True))
    return replace(a, members=members)


def conflicting(a: ClusterRecord, b: ClusterRecord) -> bool:
    """Whether ``a`` and ``b`` are two different memberships at one epoch: two changes made without
    seeing each other, or nodes formed from different addresses. ``merge`` still picks one; the
    caller logs it, since one of the changes is dropped."""
    return a.epoch == b.epoch and shape_digest(a) != shape_digest(b)


def identity_conflicts(a: ClusterRecord, b: ClusterRecord) -> list[str]:
    """Member ids that ``a`` and ``b`` give two different identities: two processes claim one id."""
    ids = {m.node_id: m.identity for m in a.members if m.identity}
    return [m.node_id for m in b.members if m.identity and ids.get(m.node_id, m.identity) != m.identity]


def same_ring(a: ClusterRecord, b: ClusterRecord) -> bool:
    """Whether ``a`` and ``b`` place every key on the same nodes: one cluster, the same members in
    the same states (addresses and identities do not move data, whatever the epochs)."""
    return (a.cluster_id, _states(a)) == (b.cluster_id, _states(b))


def _states(record: ClusterRecord) -> tuple[tuple[str, str], ...]:
    return tuple((member.node_id, member.state.value) for member in record.members)


def ring(record: ClusterRecord) -> Ring:
    """The ring the record implies: its owning members (``OWNING_STATES``) over its partitions."""
    return Ring(record.owners, record.partitions)


# --- encoding -------------------------------------------------------------------------------------------


def to_json(record: ClusterRecord) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "cluster_id": record.cluster_id,
        "name": record.name,
        "partitions": record.partitions,
        "founders": list(record.founders),
        "epoch": record.epoch,
        "members": [
            {"id": m.node_id, "host": m.host, "port": m.port, "state": m.state.value, "identity": m.identity}
            for m in record.members
        ],
    }


def encode(record: ClusterRecord) -> bytes:
    """Canonical JSON: the same record gives the same bytes on every node."""
    return json.dumps(to_json(record), sort_keys=True, separators=(",", ":")).encode()


def decode(data: bytes) -> ClusterRecord:
    """The record in ``data`` (``encode``'s bytes), validated; ``MembershipError`` otherwise."""
    try:
        obj = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise MembershipError(f"a membership record is JSON: {exc}") from None
    return from_json(obj)


def from_json(obj: object) -> ClusterRecord:
    if not isinstance(obj, dict):
        raise MembershipError("a membership record is a JSON object")
    if obj.get("format") != FORMAT:
        raise MembershipError(f"unknown membership record format {obj.get('format')!r}; this node reads {FORMAT}")
    try:
        members = tuple(
            Member(
                _field(m, "id", str),
                _field(m, "host", str),
                _field(m, "port", int),
                MemberState(_field(m, "state", str)),
                _field(m, "identity", str),
            )
            for m in _field(obj, "members", list)
        )
        founders = _field(obj, "founders", list)
        record = ClusterRecord(
            _field(obj, "cluster_id", str),
            _field(obj, "name", str),
            _field(obj, "partitions", int),
            tuple(_text(f) for f in founders),
            _field(obj, "epoch", int),
            members,
        )
    except (TypeError, ValueError, AttributeError) as exc:
        raise MembershipError(f"bad membership record: {exc}") from None
    validate(record)
    return record


def _field(obj: object, name: str, kind: type) -> Any:
    if not isinstance(obj, dict) or name not in obj:
        raise MembershipError(f"a membership record lacks {name!r}")
    value = obj[name]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise MembershipError(f"{name!r} must be a {kind.__name__}, not {type(value).__name__}")
    return value


def _text(value: object) -> str:
    if not isinstance(value, str):
        raise MembershipError(f"a member id is text, not {type(value).__name__}")
    return value


def validate(record: ClusterRecord) -> None:
    """``MembershipError`` naming the first thing wrong with ``record``."""
    if not NAME_PATTERN.match(record.name):
        raise MembershipError(f"cluster name {record.name!r} must be 1-64 letters, digits, '.', '_' or '-'")
    if not 1 <= record.partitions <= 0xFFFF:
        raise MembershipError(f"partitions must be from 1 to 65535, not {record.partitions}")
    if not 1 <= record.epoch <= MAX_EPOCH:
        raise MembershipError(f"epoch must be from 1 to 2^64-1, not {record.epoch}")
    if not record.founders or any(not NAME_PATTERN.match(f) for f in record.founders):
        raise MembershipError("founders must be one or more node ids")
    if record.cluster_id != derive_cluster_id(record.name, record.founders, record.partitions):
        raise MembershipError(f"cluster id {record.cluster_id!r} does not match its name, founders and partitions")
    if not record.members:
        raise MembershipError("a cluster has at least one member")
    ids = [m.node_id for m in record.members]
    if ids != sorted(set(ids)):
        raise MembershipError("members must be sorted by node id, each once")
    for m in record.members:
        if not NAME_PATTERN.match(m.node_id):
            raise MembershipError(f"node id {m.node_id!r} must be 1-64 letters, digits, '.', '_' or '-'")
        if not m.host or len(m.host.encode()) > 0xFF or not 1 <= m.port <= 0xFFFF:
            raise MembershipError(f"{m.node_id}'s address {m.host!r}:{m.port} is not host:port")
        if m.identity and not IDENTITY_PATTERN.match(m.identity):
            raise MembershipError(f"{m.node_id}'s identity {m.identity!r} is not 32 hex digits")
    if not any(m.state in OWNING_STATES for m in record.members):
        raise MembershipError("a cluster needs at least one member that owns partitions (normal or leaving)")


def digest(record: ClusterRecord) -> bytes:
    """``DIGEST_BYTES`` of BLAKE2b over the whole encoded record: equal digests, equal records."""
    return hashlib.blake2b(encode(record), digest_size=DIGEST_BYTES).digest()


def shape_digest(record: ClusterRecord) -> bytes:
    """The digest of the record without its identities: what ``merge`` orders conflicts by."""
    members = tuple(replace(member, identity="") for member in record.members)
    return digest(replace(record, members=members))
