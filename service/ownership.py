"""The ownership planner: which partitions change owners when the membership changes, and how.

Pure: from the ring before a change and the ring after it (member ids, partition count) and N, the
planner lists every partition whose preference list changes. For each it gives

* the old and the new preference list;
* the **pending owners** (``receivers``): nodes in the new list but not the old one, which must
  receive the partition's data before ownership switches (Cassandra's pending ranges);
* the **retiring owners** (``retiring``): nodes in the old list but not the new one, which may drop
  the partition once the switch is made, and not before;
* for each receiver, the old owners it may stream from, best first (``sources``): the suggested
  source is the least loaded live old owner, so a join or a removal spreads its reads over every
  replica rather than over each partition's primary.

During the move a write goes to the old owners and the pending owners (``write_set``) and is
acknowledged only once the owners that will hold it after the change are covered; a read goes to
the old owners until the switch (``read_set``).

Placement is ``client.ring.Ring``: rendezvous hashing, so adding a node only inserts it into each
partition's ranking. A join therefore moves a replica of about N/(n+1) of the partitions, each to
the new node, which is 1/(n+1) of all replicas (Dynamo's ideal); a removal moves only the replicas
the node held, each to the next node in that partition's ranking.

After the switch, the retiring owners' copies go (``service.cleanup``): ``unowned_partitions`` says
which partitions a node holds data in and no longer owns, and ``sort_keys`` which of their keys
every current owner already holds (those may go) and which must be sent to an owner first.

The planner knows nothing of states, epochs or I/O: the membership record decides when a change
starts and ends; ``transfer`` drives one partition's handoff; ``streaming`` does the copying.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from client.protocol import Record, Version
from client.ring import Ring


@dataclass(frozen=True)
class Move:
    """One partition whose preference list changes.

    ``old`` and ``new`` are the preference lists (primary first, at most N nodes); ``receivers`` are
    in ``new`` and not ``old``, ``retiring`` in ``old`` and not ``new``, both in preference order.
    ``sources`` maps each receiver to the old owners it may copy from, suggested source first; it is
    empty for a receiver when no old owner is available (every copy was on removed or dead nodes:
    the partition's data cannot be re-created, see ``Plan.lost``).
    """

    partition: int
    old: tuple[str, ...]
    new: tuple[str, ...]
    receivers: tuple[str, ...]
    retiring: tuple[str, ...]
    sources: Mapping[str, tuple[str, ...]]

    @property
    def write_set(self) -> tuple[str, ...]:
        """Nodes a write to this partition goes to while it moves: the old owners, then the pending ones."""
        return self.old + self.receivers

    @property
    def read_set(self) -> tuple[str, ...]:
        """Nodes a read of this partition asks until the switch: the old owners."""
        return self.old

    def source(self, receiver: str) -> str | None:
        """The suggested source for ``receiver``, or ``None`` if no old owner can serve it."""
        candidates = self.sources[receiver]
        return candidates[0] if candidates else None


@dataclass(frozen=True)
class Plan:
    """Every move one membership change makes. ``old`` and ``new`` are the rings, ``n`` the replicas
    per key, ``moves`` the partitions whose preference list changes, in partition order."""

    old: Ring
    new: Ring
    n: int
    moves: tuple[Move, ...]

    @property
    def replicas_moved(self) -> int:
        """Partition replicas copied to a new owner (each receiver of each move counts once)."""
        return sum(len(move.receivers) for move in self.moves)

    @property
    def moved_fraction(self) -> float:
        """``replicas_moved`` as a share of all replicas after the change (partitions times N, or
        the member count when that is smaller)."""
        return self.replicas_moved / (self.new.partitions * min(self.n, len(self.new)))

    @property
    def lost(self) -> tuple[int, ...]:
        """Partitions some receiver has no source for: every old owner is gone or unavailable."""
        return tuple(move.partition for move in self.moves if any(not sources for sources in move.sources.values()))

    def receiving(self, node_id: str) -> list[Move]:
        """The moves ``node_id`` receives data in."""
        return [move for move in self.moves if node_id in move.receivers]

    def sending(self, node_id: str) -> list[Move]:
        """The moves in which ``node_id`` is the suggested source of some receiver."""
        return [move for move in self.moves if any(move.source(r) == node_id for r in move.receivers)]

    def move(self, partition: int) -> Move | None:
        """The move of ``partition``, or ``None`` if its owners do not change."""
        for move in self.moves:
            if move.partition == partition:
                return move
        return None


def replica_shares(ring: Ring, n: int) -> Counter[str]:
    """Partition replicas each member of ``ring`` holds (its top-``n`` appearances)."""
    shares: Counter[str] = Counter({node_id: 0 for node_id in ring.node_ids})
    for partition in range(ring.partitions):
        shares.update(ring.partition_owners(partition)[:n])
    return shares


def plan(old: Ring, new: Ring, n: int, unavailable: Iterable[str] = ()) -> Plan:
    """The moves that take placement from ``old`` to ``new`` with ``n`` replicas per key.

    ``unavailable``: nodes that cannot serve as a source (a dead node being removed); a node that
    leaves alive (decommission) is a source like any other old owner. Raises ``ValueError`` if the
    rings disagree on the partition count (a change never alters it: that would remap every key)
    or ``n`` is below 1.
    """
    if old.partitions != new.partitions:
        raise ValueError(f"the rings have {old.partitions} and {new.partitions} partitions: a change keeps the count")
    if n < 1:
        raise ValueError(f"n must be at least 1, not {n}")
    down = frozenset(unavailable)
    load: Counter[str] = Counter()  # transfers each source has been given so far, to spread them
    moves = []
    for partition in range(new.partitions):
        before = old.partition_owners(partition)[:n]
        after = new.partition_owners(partition)[:n]
        if before == after:
            continue
        receivers = tuple(node for node in after if node not in before)
        retiring = tuple(node for node in before if node not in after)
        if not receivers and not retiring:
            continue  # the same owners, only their order changed: nothing to copy or drop
        alive = [node for node in before if node not in down]
        sources = {}
        for receiver in receivers:
            # Least loaded first; ties keep the old preference order, so the primary is preferred.
            ranked = tuple(sorted(alive, key=lambda node: (load[node], alive.index(node))))
            if ranked:
                load[ranked[0]] += 1
            sources[receiver] = ranked
        moves.append(Move(partition, before, after, receivers, retiring, sources))
    return Plan(old, new, n, tuple(moves))


def plan_change(old_members: Iterable[str], new_members: Iterable[str], n: int, partitions: int) -> Plan:
    """``plan`` from two member lists: the rings they make with ``partitions`` partitions."""
    return plan(Ring(old_members, partitions), Ring(new_members, partitions), n)


def unowned_partitions(
    ring: Ring,
    n: int,
    node_id: str,
    held: Iterable[int],
    pending: Mapping[int, Sequence[str]] | None = None,
) -> list[int]:
    """The partitions of ``held`` (those this node has records in) that ``node_id`` neither owns
    (one of the first ``n`` of ``ring.partition_owners``) nor is a pending owner of (``pending``:
    partition -> pending owners, ``membership_changes.pending_owners``), in ascending order."""
    pending = pending or {}
    return sorted(
        {
            partition
            for partition in held
            if node_id not in ring.partition_owners(partition)[:n] and node_id not in pending.get(partition, ())
        }
    )


@dataclass
class KeyDecision:
    """What one page of a partition's keys needs: ``drop``, the keys every owner holds at this
    node's version or newer (key -> that version); ``send``, owner -> the keys it lacks or holds
    older, which it must be sent before they may go."""

    drop: dict[bytes, Version] = field(default_factory=dict)
    send: dict[str, list[bytes]] = field(default_factory=dict)


def sort_keys(mine: Iterable[tuple[bytes, Record]], owners: Mapping[str, Mapping[bytes, Version]]) -> KeyDecision:
    """Which of ``mine`` (this node's records, tombstones included) may be dropped, given each
    current owner's versions (``owners``: owner -> key -> version it holds). With no owners at all
    nothing is dropped."""
    decision = KeyDecision()
    for key, record in mine:
        lacking = [owner for owner, held in owners.items() if (have := held.get(key)) is None or have < record.version]
        for owner in lacking:
            decision.send.setdefault(owner, []).append(key)
        if owners and not lacking:
            decision.drop[key] = record.version
    return decision
