"""This node's running view of the cluster's membership: the record it holds, what its peers said of
themselves and of it, and whether it may coordinate requests.

No sockets: the peers' links call ``check_answer`` with the IDENTIFY reply they got, the request
handler calls ``identify`` with an IDENTIFY it received, and the heartbeat monitor reports each
peer's membership epoch and digest (``observe``) and hands over the records it pulls (``offer``).
Records are persisted through ``save`` (``membership_file.MembershipFile.save``) before they are
used, and the view adopts what was saved: on a node of several workers, the record merged with one
another worker saved first. Such a worker's record is also merged in when it is read back
(``reload``), so the workers of one node serve the same record.

**Peers prove who they are.** A link between members opens with IDENTIFY both ways (the dialler's
request, the receiver's reply): cluster id, node id, identity, address, epoch and digest. The
receiver refuses a sender from another cluster, one that is not a member, or one that claims a
member's id with another identity (or another address) than the record holds; the dialler refuses
a link where another node answers than the member it dialled. Each refusal is an ERROR naming
both sides (``MembershipEvents.peer_refused``). An identity not known yet is learnt from the first
member that proves it holds the cluster secret (trust on first use), and spreads with the record.
The process that answers at a member's own address is that member: one answering there with a new
identity was restarted on a new disk (a wiped node, rebuilt by anti-entropy), and the dialler makes
a new record (epoch + 1) with it; a process elsewhere claiming the id stays refused.

**Who may coordinate.** A node counts the peers that accepted it and the peers that refused it or
turned out to be someone else. While the second outnumber the first (a node started with the wrong
``KV_PEERS``, a second process with a member's id) it is not an accepted member: it answers
GET, PUT, DELETE and TOPOLOGY with NOT_A_MEMBER, and ``/readyz`` says why. A node none of whose
peers answered (the others are down) goes on serving as before.

**Views converge.** A peer whose heartbeat shows another epoch or digest is asked for its record
(``needs_pull``), which is merged (``membership.merge``) into this node's. Until every peer that
answers shares this node's ring (same epoch, same members in the same states), requests that
this node would coordinate get MEMBERSHIP_CHANGED: the client refreshes its ring and tries again.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Protocol

from client.errors import NodeUnreachableError
from client.protocol import IdentifyReply, MembershipVersion, PeerIdentity, Status
from service import membership
from service.membership import ClusterRecord, MembershipError
from service.membership_store import LocalMembership

REFUSAL_LOG_INTERVAL = 10.0
"""Seconds between two ERROR lines about the same refused peer: a refused node dials again with
every heartbeat, and one line every ten seconds says it as clearly as one a second."""


class MembershipRefusedError(NodeUnreachableError):
    """A link to a peer that did not prove to be the member dialled, or that refused this node."""

    code = "NOT_A_MEMBER"


class MembershipEvents:
    """What the view reports; ``events.NodeEvents`` turns these into metrics and log lines."""

    def record_changed(self, old: ClusterRecord, new: ClusterRecord, source: str) -> None:
        """The node adopted ``new`` in place of ``old`` (learnt from ``source``)."""

    def peer_refused(self, event: str, details: dict[str, object]) -> None:
        """A peer link was refused (``event`` says which side and why); an ERROR line."""

    def conflict(self, ours: ClusterRecord, theirs: ClusterRecord, winner: ClusterRecord, peer: str) -> None:
        """Two records of one epoch with different members; ``winner`` is the one kept."""

    def member_replaced(self, node_id: str, old: str, new: str, address: str) -> None:
        """``node_id`` answers at its address with identity ``new``, not ``old``: a new disk."""

    def save_failed(self, record: ClusterRecord, error: str) -> None:
        """``record`` could not be written to the data directory, so it was not adopted."""

    def publish_failed(self, epoch: int, error: str) -> None:
        """The other workers of this node could not be told it holds ``epoch``."""


class OtherWorkers(Protocol):
    """The other workers of this node, as far as the epochs they hold (``workers.WorkerEpochs``)."""

    def publish(self, epoch: int) -> None:
        """This worker holds ``epoch`` now; ``OSError`` if it could not say so."""
        ...

    def lowest(self) -> int | None:
        """The lowest epoch another worker holds, ``None`` if no other worker says."""
        ...

    def not_started(self) -> list[int]:
        """The other workers that have not served yet, by index (the node is not ready until none)."""
        ...


class SaveRecord(Protocol):
    """How the view makes a record durable (``membership_file.MembershipFile.save``)."""

    def __call__(self, local: LocalMembership, *, advance: bool = False) -> LocalMembership:
        """Save ``local`` merged with the record in the data directory, and return what is saved
        there now; with ``advance``, ``local`` is a change, saved only if its epoch is above the one
        there. ``OSError`` if it cannot be written."""
        ...


@dataclass(frozen=True)
class Verdict:
    accepted: bool
    reason: str


class MembershipView:
    """The record this node holds and its peers' verdicts (see the module docstring). ``save`` makes
    a record durable before it is used and returns the membership saved (the record merged with the
    one in the data directory; ``OSError`` if it could not be written); ``serving``: the record the
    node's ring was built from."""

    def __init__(
        self,
        local: LocalMembership,
        save: SaveRecord,
        events: MembershipEvents,
        now: Callable[[], float] = time.monotonic,
    ) -> None:
        self.local = local
        self.serving = local.record
        self._save = save
        self._events = events
        self._now = now
        self._verdicts: dict[str, Verdict] = {}  # peer -> whether it accepted this node (as the member it dialled)
        self._behind: dict[str, str] = {}  # peer -> why its ring is not this node's, while it answers
        self._logged: dict[tuple[str, str], float] = {}
        self.problem: tuple[Status, str] | None = None
        """Why this node may not coordinate requests now (status and message), or ``None``."""
        self.workers: OtherWorkers | None = None
        """The node's other workers, on a node of several (the node sets it): each adoption is
        published to them, and PING reports the lowest epoch any worker holds (``version``)."""
        self.apply_ring: Callable[[ClusterRecord], bool] = lambda record: False
        """Switch the node's ring to a record's; ``True`` if it did (the node sets it: ``Node._apply_ring``).
        Without it, a record with another ring keeps the node answering MEMBERSHIP_CHANGED."""
        self.digest = membership.digest(local.record)
        self._last_me = local.record.member(local.node_id)

    # --- what this node is ----------------------------------------------------------------------

    @property
    def record(self) -> ClusterRecord:
        return self.local.record

    @property
    def node_id(self) -> str:
        return self.local.node_id

    @property
    def epoch(self) -> int:
        """The membership epoch of the ring this node routes by (``serving``)."""
        return self.serving.epoch

    @property
    def left(self) -> bool:
        """Whether this node has left the cluster (a decommission ended): the record lacks it."""
        return self.record.member(self.node_id) is None

    def me(self) -> PeerIdentity:
        # After a decommission the record lacks this node; it still says who it was.
        member = self.record.member(self.node_id) or self.serving.member(self.node_id) or self._last_me
        self._last_me = member
        assert member is not None  # the store never loads a record without this node
        return PeerIdentity(
            self.record.cluster_id,
            self.node_id,
            self.local.identity,
            member.host,
            member.port,
            self.record.epoch,
            self.digest,
        )

    def version(self) -> MembershipVersion:
        """What PING reports: this node's epoch and digest; on a node of several workers, the lowest
        epoch any of them holds (a receiver waits until every worker routes by its change)."""
        epoch = self.record.epoch
        lowest = self.workers.lowest() if self.workers is not None else None
        return MembershipVersion(epoch if lowest is None else min(epoch, lowest), self.digest)

    def publish(self) -> None:
        """Tell the node's other workers the epoch this worker holds (at start, and after each
        adoption). A failure is logged: the others then go on reporting an older epoch, which
        makes receivers wait, never stream too early."""
        if self.workers is None:
            return
        try:
            self.workers.publish(self.record.epoch)
        except OSError as exc:
            self._events.publish_failed(self.record.epoch, str(exc))

    # --- IDENTIFY, as the receiver ---------------------------------------------------------------

    def identify(self, sender: PeerIdentity) -> IdentifyReply:
        """The answer to a peer's IDENTIFY: this node, and whether it accepts the sender."""
        reason = self._refusal(sender)
        if reason is None:
            self._learn_identity(sender.node_id, sender.identity)
            return IdentifyReply(self.me(), True)
        self._log_refusal(
            "peer_refused",
            sender.node_id,
            sender.identity,
            {
                "claimed_node": sender.node_id,
                "claimed_identity": sender.identity,
                "claimed_address": f"{sender.host}:{sender.port}",
                "claimed_cluster": sender.cluster_id,
                "reason": reason,
            },
        )
        return IdentifyReply(self.me(), False, reason)

    def _refusal(self, sender: PeerIdentity) -> str | None:
        record = self.record
        if sender.cluster_id != record.cluster_id:
            return (
                f"{self.node_id} is in cluster {record.cluster_id}, not {sender.cluster_id}: "
                "KV_CLUSTER_NAME, KV_PEERS or KV_PARTITIONS differ between the two nodes"
            )
        if sender.node_id == self.node_id:
            return f"{self.node_id} is this node (identity {self.local.identity}); {sender.identity} claims its id"
        member = record.member(sender.node_id)
        if member is None:
            return f"{sender.node_id} is not a member of {record.cluster_id} (epoch {record.epoch})"
        if member.identity and member.identity != sender.identity:
            return (
                f"{sender.node_id} is the process with identity {member.identity}, which answers at "
                f"{member.address}; {sender.identity} claims its id (if {sender.node_id} was reinstalled, "
                f"{self.node_id} accepts it once it answers at {member.address})"
            )
        if (member.host, member.port) != (sender.host, sender.port):
            return f"{sender.node_id} is at {member.address} in the record, not {sender.host}:{sender.port}"
        return None

    # --- IDENTIFY, as the dialler ----------------------------------------------------------------

    def check_answer(self, expected: str, address: str, reply: IdentifyReply) -> None:
        """Check who answered at ``address``, where member ``expected`` was dialled, and what it
        said of this node; ``MembershipRefusedError`` if the link must not be used."""
        other = reply.receiver
        record = self.record
        member = record.member(expected)
        problem = None
        if other.cluster_id != record.cluster_id:
            problem = f"{address} answers for cluster {other.cluster_id}, not {record.cluster_id}"
        elif other.node_id != expected:
            problem = f"{expected} was dialled at {address}, and {other.node_id} (identity {other.identity}) answered"
        elif not membership.IDENTITY_PATTERN.match(other.identity):
            problem = f"{expected} answered at {address} with identity {other.identity!r}, not 32 hex digits"
        if problem is None and member is not None and member.identity and member.identity != other.identity:
            # The process that answers at a member's own address is that member: it was restarted
            # on a new disk (the old identity went with the old one), as a wiped node is rebuilt.
            self._events.member_replaced(expected, member.identity, other.identity, address)
            replaced = [replace(m, identity=other.identity) if m.node_id == expected else m for m in record.members]
            self._adopt(membership.next_epoch(record, replaced), expected)
        if problem is not None:
            self._log_refusal(
                "peer_impostor",
                expected,
                other.identity,
                {
                    "expected_node": expected,
                    "expected_identity": member.identity if member is not None else "",
                    "address": address,
                    "answered_node": other.node_id,
                    "answered_identity": other.identity,
                    "answered_cluster": other.cluster_id,
                    "reason": problem,
                },
            )
            self._set_verdict(expected, Verdict(False, problem))
            raise MembershipRefusedError(problem)
        if not reply.accepted:
            self._log_refusal("refused_by_peer", expected, other.identity, {"peer": expected, "reason": reply.reason})
            self._set_verdict(expected, Verdict(False, f"{expected} refused this node: {reply.reason}"))
            raise MembershipRefusedError(f"{expected} refused this node: {reply.reason}")
        self._learn_identity(expected, other.identity)
        self._set_verdict(expected, Verdict(True, ""))

    def unreachable(self, peer: str) -> None:
        """No link to ``peer`` could be opened: what it said before no longer counts."""
        changed = self._verdicts.pop(peer, None) is not None
        changed |= self._behind.pop(peer, None) is not None
        if changed:
            self._update_problem()

    def _set_verdict(self, peer: str, verdict: Verdict) -> None:
        if not verdict.accepted and self._behind.pop(peer, None) is not None:
            self._update_problem()  # a link not used is no view to wait for
        if self._verdicts.get(peer) != verdict:
            self._verdicts[peer] = verdict
            self._update_problem()

    def _learn_identity(self, node_id: str, identity: str) -> None:
        member = self.record.member(node_id)
        if member is not None and not member.identity and membership.IDENTITY_PATTERN.match(identity):
            self._adopt(membership.with_identity(self.record, node_id, identity), node_id)

    # --- gossip -------------------------------------------------------------------------------------

    def observe(self, peer: str, version: MembershipVersion | None) -> bool:
        """``peer``'s heartbeat answered with ``version`` (``None``: it did not say); whether its record
        must be pulled. A peer at another epoch counts as not sharing this ring until pulled."""
        if version is None:
            return False
        if self.record.member(peer) is None and version.epoch <= self.record.epoch:
            # Not a member (removed, or never one): its view is nothing to wait for, and it holds
            # nothing newer to pull. A removed node restarted on its old disk must not stall the cluster.
            if self._behind.pop(peer, None) is not None:
                self._update_problem()
            return False
        if (version.epoch, version.digest) == (self.record.epoch, self.digest):
            if self._behind.pop(peer, None) is not None:
                self._update_problem()
            return False
        if version.epoch != self.record.epoch and peer not in self._behind:
            self._behind[peer] = f"{peer} holds membership epoch {version.epoch}, this node {self.record.epoch}"
            self._update_problem()
        return True

    def offer(self, peer: str, theirs: ClusterRecord) -> None:
        """``peer``'s record, pulled: merged into this node's, and whether ``peer`` shares its ring noted."""
        ours = self.record
        try:
            merged = membership.merge(ours, theirs)
        except MembershipError as exc:
            self._log_refusal("membership_refused", peer, theirs.cluster_id, {"peer": peer, "reason": str(exc)})
            return
        if membership.conflicting(ours, theirs):
            self._events.conflict(ours, theirs, merged, peer)
        same_epoch = ours.epoch == theirs.epoch  # across epochs a new identity is a replaced member
        for node_id in membership.identity_conflicts(ours, theirs) if same_epoch else ():
            self._log_refusal(
                "identity_conflict",
                node_id,
                peer,
                {"node": node_id, "peer": peer, "kept": getattr(merged.member(node_id), "identity", "")},
            )
        if merged != ours:
            self._adopt(merged, peer)
        if membership.same_ring(self.record, theirs) or self.record.member(peer) is None:
            self._behind.pop(peer, None)
        else:
            self._behind[peer] = f"{peer} holds membership epoch {theirs.epoch}, this node {self.record.epoch}"
        self._update_problem()

    def reload(self, record: ClusterRecord) -> None:
        """Another worker of this node saved ``record`` (``membership_file``): merged into this
        worker's as a peer's would be, but it is no peer whose view this node waits for."""
        ours = self.record
        merged = membership.merge(ours, record)  # one data directory: one cluster
        if membership.conflicting(ours, record):
            self._events.conflict(ours, record, merged, "worker")
        if merged != ours:
            self._adopt(merged, "worker")

    def change(self, record: ClusterRecord, source: str) -> bool:
        """Adopt ``record``, a membership change made on this node (``membership_changes``: the
        epoch after the record it was made from), which gossip then spreads; whether it was
        (``False``: it could not be saved, and was logged, or another worker of this node saved a
        record of that epoch or a later one first, which this one adopts instead)."""
        self._adopt(record, source, advance=True)
        return self.record == record

    def _adopt(self, record: ClusterRecord, source: str, *, advance: bool = False) -> None:
        old = self.record
        try:
            # Durable before it is used; merged with a record another worker saved meanwhile.
            local = self._save(replace(self.local, record=record), advance=advance)
        except OSError as exc:
            self._events.save_failed(record, str(exc))
            return  # kept the old record; the next heartbeat offers the new one again
        record = local.record
        if record == old:
            return  # the record saved is the one held: ``record`` lost the merge with it
        self.local = local
        self.digest = membership.digest(record)
        if membership.same_ring(record, self.serving) or self.apply_ring(record):
            self.serving = record
        self.publish()  # once it routes by the record
        self._events.record_changed(old, record, source)
        self._update_problem()

    # --- may this node coordinate? ------------------------------------------------------------------

    def _update_problem(self) -> None:
        against = {peer: v.reason for peer, v in self._verdicts.items() if not v.accepted}
        accepted = [peer for peer, v in self._verdicts.items() if v.accepted]
        if self.left:
            self.problem = (
                Status.NOT_A_MEMBER,
                f"{self.node_id} left cluster {self.record.cluster_id} at membership epoch {self.record.epoch}: "
                "it serves nothing now; stop it (its data directory can be wiped)",
            )
        elif len(against) > len(accepted):
            reasons = "; ".join(f"{reason}" for _, reason in sorted(against.items()))
            self.problem = (
                Status.NOT_A_MEMBER,
                f"{self.node_id} is not an accepted member of {self.record.cluster_id}, so it coordinates "
                f"nothing; ask another node. {reasons}",
            )
        elif not membership.same_ring(self.record, self.serving):
            self.problem = (
                Status.MEMBERSHIP_CHANGED,
                f"{self.node_id} holds membership epoch {self.record.epoch}, whose ring it cannot serve yet "
                f"(it serves epoch {self.serving.epoch}'s); ask another node",
            )
        elif behind := [why for peer, why in self._behind.items() if self.record.member(peer) is not None]:
            self.problem = (
                Status.MEMBERSHIP_CHANGED,
                f"membership views differ ({'; '.join(sorted(behind))}); refresh the topology and retry",
            )
        else:
            self.problem = None

    @property
    def verdicts(self) -> dict[str, Verdict]:
        return dict(self._verdicts)

    def _log_refusal(self, event: str, node: str, identity: str, details: dict[str, object]) -> None:
        now = self._now()
        key = (event, f"{node}/{identity}")
        if now - self._logged.get(key, -REFUSAL_LOG_INTERVAL) < REFUSAL_LOG_INTERVAL:
            return
        self._logged[key] = now
        self._events.peer_refused(event, details)
