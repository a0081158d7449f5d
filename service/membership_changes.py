"""Membership changes as records: join, leave and remove, one at a time; pure.

A change is two epochs, as in Cassandra's bootstrap and decommission:

* **join**: ``admit`` makes epoch + 1 with the new node ``joining``. It owns nothing yet (reads
  still go to the old owners), but it is a *pending owner* of the partitions it will hold: writes
  go to it too. Once it has streamed them, ``settle`` makes epoch + 2 with it ``normal``.
* **leave** (decommission): ``decommission`` makes epoch + 1 with the node ``leaving``. It still
  owns its partitions; their new owners are pending owners and stream them. Once every receiver
  has them, ``settle`` makes epoch + 2 without it.
* **remove** (a dead node): ``remove`` makes epoch + 1 without it at once; the new owners of its
  replicas stream them from the surviving copies (nothing can come from the dead node).

**Who makes a change**: ``claimant``, Riak's term, the one member every other sends its requests
on to, so that changes asked at the same moment anywhere are made one after the other in one
place. It is a function of the record and the failure detector's verdicts only, so nodes that
hold the same record and see the same members down name the same claimant without any exchange.

``target`` is the record a change in progress ends in, and ``pending_owners`` the planner's
receivers per partition (``ownership.plan`` between the two rings): the coordinator adds them to
a write's replicas. ``ChangeRefused`` carries the reason a change cannot start: another change is
in progress (changes are serialized), or the node is unknown, already a member, or the last owner.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

from service import membership, ownership
from service.membership import ClusterRecord, Member, MemberState


class ChangeRefused(ValueError):
    """A change that may not start now. ``in_progress``: because another is still running."""

    def __init__(self, message: str, *, in_progress: bool = False) -> None:
        super().__init__(message)
        self.in_progress = in_progress


def changing(record: ClusterRecord) -> list[Member]:
    """The members that are joining or leaving: a change is in progress while this is not empty."""
    return [m for m in record.members if m.state is not MemberState.NORMAL]


def claimant(record: ClusterRecord, seen_down: Callable[[str], bool]) -> str | None:
    """The member that makes every membership change: the lowest node id (as strings compare)
    among ``record``'s ``normal`` members that ``seen_down(node_id)`` (the asking node's failure
    detector) does not call down; ``None`` when there is none. Joining and leaving members are
    never it (the record that makes one of them normal or gone is made by that node itself, see
    ``settle``)."""
    candidates = (m.node_id for m in record.members if m.state is MemberState.NORMAL and not seen_down(m.node_id))
    return min(candidates, default=None)


def _check_idle(record: ClusterRecord, what: str) -> None:
    busy = changing(record)
    if busy:
        names = ", ".join(f"{m.node_id} is {m.state.value}" for m in busy)
        raise ChangeRefused(
            f"cannot {what} now: a membership change is in progress at epoch {record.epoch} ({names}); "
            "changes are made one at a time, so retry when `kv cluster status` shows every member normal",
            in_progress=True,
        )


def admit(record: ClusterRecord, node_id: str, host: str, port: int) -> ClusterRecord:
    """Epoch + 1 with ``node_id`` at ``host``:``port`` joining. A node already joining at that
    address gets ``record`` back unchanged (a joining node that restarted asks again).
    ``ChangeRefused`` otherwise, if it is a member already or another change runs."""
    member = record.member(node_id)
    if member is not None:
        if (member.host, member.port) != (host, port):
            raise ChangeRefused(f"{node_id} is already a member, at {member.address}, not {host}:{port}")
        return record  # already admitted (joining, or done): asking again is harmless
    _check_idle(record, f"add {node_id}")
    return membership.next_epoch(record, [*record.members, Member(node_id, host, port, MemberState.JOINING)])


def decommission(record: ClusterRecord, node_id: str) -> ClusterRecord:
    """Epoch + 1 with ``node_id`` leaving (it is ``leaving`` already: ``record`` unchanged)."""
    member = _member(record, node_id)
    if member.state is MemberState.LEAVING:
        return record
    _check_idle(record, f"decommission {node_id}")
    _check_owners_left(record, node_id)
    return membership.next_epoch(record, [_with_state(m, node_id, MemberState.LEAVING) for m in record.members])


def remove(record: ClusterRecord, node_id: str) -> ClusterRecord:
    """Epoch + 1 without ``node_id`` (a dead node: its data is re-created from the survivors). A
    joining node may be removed while its own join runs: that abandons the join."""
    member = _member(record, node_id)
    if member.state is not MemberState.JOINING:
        _check_idle(record, f"remove {node_id}")
    _check_owners_left(record, node_id)
    return membership.next_epoch(record, [m for m in record.members if m.node_id != node_id])


def settle(record: ClusterRecord) -> ClusterRecord:
    """The record that ends the change in progress (``target``) as epoch + 1; ``record`` itself if
    none is in progress."""
    if not changing(record):
        return record
    return membership.next_epoch(record, target(record).members)


def target(record: ClusterRecord) -> ClusterRecord:
    """``record`` as it will be once its change is done (same epoch): joining members normal,
    leaving ones gone."""
    members = tuple(replace(m, state=MemberState.NORMAL) for m in record.members if m.state is not MemberState.LEAVING)
    return replace(record, members=members)


def plan(record: ClusterRecord, n: int) -> ownership.Plan:
    """The planner's moves for the change in progress in ``record`` (none if there is none)."""
    return ownership.plan(membership.ring(record), membership.ring(target(record)), n)


def pending_owners(record: ClusterRecord, n: int) -> dict[int, tuple[str, ...]]:
    """Partition -> the nodes that will own it after the change in progress and do not yet (the
    pending owners a write also goes to); empty when no change runs."""
    if not changing(record):
        return {}
    return {move.partition: move.receivers for move in plan(record, n).moves if move.receivers}


def check_copies_left(record: ClusterRecord, node_id: str, n: int) -> None:
    """``ChangeRefused`` if taking ``node_id`` out (leave or remove) would leave fewer owning members
    than ``n`` copies of each key: every write at W = N would fail, and some keys would have fewer
    than N copies for good. Cassandra refuses such a decommission too."""
    left = [owner for owner in record.owners if owner != node_id]
    if node_id in record.owners and len(left) < n:
        raise ChangeRefused(
            f"without {node_id}, {len(left)} member{'s' if len(left) != 1 else ''} would be left to hold "
            f"KV_N={n} copies of each key; add a member first (kv cluster join), then take {node_id} out"
        )


def _member(record: ClusterRecord, node_id: str) -> Member:
    member = record.member(node_id)
    if member is None:
        raise ChangeRefused(f"{node_id} is not a member of {record.cluster_id} (epoch {record.epoch})")
    return member


def _check_owners_left(record: ClusterRecord, node_id: str) -> None:
    if [owner for owner in record.owners if owner != node_id] == []:
        raise ChangeRefused(f"{node_id} is the last member that owns data; a cluster cannot lose it")


def _with_state(member: Member, node_id: str, state: MemberState) -> Member:
    return replace(member, state=state) if member.node_id == node_id else member
