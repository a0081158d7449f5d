"""This node's part in membership changes: making them, streaming what it receives, ending them.

The records are ``membership_changes``'s (pure); this module does the I/O around them.

* **Making a change** (``request``): one node makes every change, the claimant
  (``membership_changes.claimant``); any other node sends CLUSTER_JOIN, CLUSTER_LEAVE and
  CLUSTER_REMOVE on to it, marked forwarded, and answers what it answered. The claimant makes
  changes one at a time: it pulls every live peer's record, makes the next record from it and
  adopts it (``MembershipView.change``, saved before it is used); heartbeats spread it. Another
  change in progress is CHANGE_IN_PROGRESS. A forwarded request is never sent on again: a node
  that, with the records it pulled, takes another member for the claimant refuses it
  (UNAVAILABLE), as the forwarder does when the claimant cannot be reached, saying what to do.
* **Receiving** (``on_record``, called whenever the node switches to a record): the partitions the
  planner says this node will own after the change in progress, and does not own now, stream to it
  (``streaming.StreamQueue``, from their old owners, paced, checkpointed, digest-verified). It
  first waits until every live member holds the change's epoch, so that every coordinator already
  sends the writes to this node too (pending owners) before a page is copied: a write is then either
  in a copied page or sent here. A removal streams the dead node's replicas from the survivors.
* **Ending it.** A joining node that holds all its partitions makes the epoch that makes it normal.
  A receiver in a decommission tells the leaving node (STREAM_DONE, again every ``DONE_RESEND_S``
  until the change ends); the leaving node makes the epoch without itself once every receiver has.
  The reports are kept in the data directory (``stream_done``), since on a node of several workers
  any worker may take a receiver's link while worker 0 alone finishes the leave.
* **Restarts.** The change is in the persisted record and each stream's cursor in its checkpoint,
  so a restarted node picks up where it was: ``resume`` (at start) streams again what a record in
  progress gives it, or, after a removal, the partitions whose checkpoints remain.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import gevent
import gevent.lock
import structlog

from client import protocol
from client.errors import AbandonedRequestError, KVError, NodeUnreachableError, RequestTimeoutError
from client.protocol import Status
from service import membership, membership_changes, ownership
from service.member_parts import MemberParts, MemberWork
from service.membership import ClusterRecord, MemberState
from service.membership_changes import ChangeRefused
from service.peers import Peer
from service.stream_done import ReportedDone
from service.streaming import Checkpoints, StreamEvents, StreamQueue, StreamSettings

POLL_S = 0.5
"""Seconds between two looks at the peers' epochs while waiting for a change to reach them all."""
DONE_RESEND_S = 2.0
"""Seconds between two STREAM_DONE to a leaving node, until the epoch that removes it arrives."""
FORWARD_TIMEOUTS = 2
"""A request sent on to the claimant waits this many request timeouts for its answer: the claimant
first pulls its peers' records, each pull bounded by one request timeout."""

ChangeRequest = protocol.ClusterJoin | protocol.ClusterLeave | protocol.ClusterRemove


class ChangeError(Exception):
    """A change request refused: ``status`` (CHANGE_IN_PROGRESS, BAD_REQUEST; UNAVAILABLE or
    TIMEOUT when the claimant did not answer) and the reason."""

    def __init__(self, status: Status, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class ChangeParts:
    """What a ``ChangeRunner`` works with besides the ``MemberParts``: how it streams, and where
    it reports."""

    members: MemberParts
    settings: StreamSettings
    events: StreamEvents
    log: structlog.typing.FilteringBoundLogger


class ChangeRunner(MemberWork):
    """See the module docstring."""

    def __init__(self, parts: ChangeParts) -> None:
        super().__init__(parts.members)
        self.settings = parts.settings
        self.events = parts.events
        self.log = parts.log
        self.receiving_epoch = 0  # the change this node streams for now (0: none)
        self._planned = 0  # partitions to stream here, before their queue starts
        self.reported = ReportedDone(parts.settings.data_dir)  # receivers that said STREAM_DONE (a leaving node)
        self._queue: StreamQueue | None = None
        self._tasks: list[gevent.Greenlet] = []
        self._stopped = False
        self._leaving_epoch = 0  # the change whose end this (leaving) node waits for
        self._making = gevent.lock.BoundedSemaphore()  # held while a change is caught up, made and saved

    @property
    def pending(self) -> int:
        """Partitions still to stream here (0 when none remains)."""
        queue = self._queue
        return self._planned + (queue.pending if queue is not None and not queue.stopped else 0)

    # --- making a change ------------------------------------------------------------------------

    def request(self, request: ChangeRequest) -> ClusterRecord:
        """Have the change ``request`` asks for made, by the claimant: here if this node is it, else
        sent on to it (``_forward``); the record that holds the change. A forwarded request is
        made here only if this node takes itself for the claimant too, and is never sent on.
        Raises ``ChangeError``."""
        claimant = self._claimant()
        if claimant == self.node_id or request.forwarded:
            with self._making:  # one at a time: the next one is judged against the record this one saved
                self._catch_up()
                claimant = self._claimant()  # the records just pulled may name another member
                if claimant == self.node_id:
                    return self._make(request)
            if request.forwarded:
                raise self._not_the_claimant(claimant)
        if claimant is None:
            raise ChangeError(
                Status.UNAVAILABLE,
                f"no normal member that {self.node_id} sees up can make the change (the claimant is the "
                "lowest-id normal member not seen down); retry once one is up",
            )
        return self._forward(request, claimant)

    def _claimant(self) -> str | None:
        """``membership_changes.claimant`` by this node's record and failure detector."""
        return membership_changes.claimant(
            self.view.record, lambda node_id: node_id != self.node_id and self.is_down(node_id)
        )

    def _not_the_claimant(self, claimant: str | None) -> ChangeError:
        """The answer to a request forwarded here while this node takes ``claimant`` for the
        claimant: made here, it could run beside a change ``claimant`` makes."""
        named = f"takes {claimant} for it ({claimant} is not down here)" if claimant else "sees no normal member up"
        ask = f", or ask {claimant}" if claimant else ""
        return ChangeError(
            Status.UNAVAILABLE,
            f"this change was sent on to {self.node_id} as the claimant (the member that makes every membership "
            f"change), but {self.node_id} {named}: the members disagree on which are down, or hold different "
            f"records; nothing was changed. Retry in a few seconds, once they agree{ask}",
        )

    def _make(self, request: ChangeRequest) -> ClusterRecord:
        record = self.view.record
        try:
            match request:
                case protocol.ClusterJoin(node_id, host, port):
                    changed = membership_changes.admit(record, node_id, host, port)
                case protocol.ClusterLeave(node_id):
                    changed = membership_changes.decommission(record, node_id)
                    membership_changes.check_copies_left(record, node_id, self.n)
                case protocol.ClusterRemove(node_id):
                    peer = self.peers.get(node_id)
                    if node_id == self.node_id or (peer is not None and peer.ping() is not None):
                        raise ChangeRefused(
                            f"{node_id} is up: remove is for a dead node; decommission a live one with "
                            f"`kv cluster leave {node_id}`, which streams its data away first"
                        )
                    changed = membership_changes.remove(record, node_id)
                    membership_changes.check_copies_left(record, node_id, self.n)
        except ChangeRefused as exc:
            raise ChangeError(Status.CHANGE_IN_PROGRESS if exc.in_progress else Status.BAD_REQUEST, str(exc)) from None
        except membership.MembershipError as exc:
            raise ChangeError(Status.BAD_REQUEST, str(exc)) from None
        if changed is not record:
            self.log.info("membership_change_made", change=type(request).__name__, epoch=changed.epoch)
            if not self.view.change(changed, "admin"):
                held = self.view.record
                if held.epoch >= changed.epoch:  # another worker of this node saved a change first
                    raise ChangeError(
                        Status.CHANGE_IN_PROGRESS,
                        f"another membership change was made at the same time (epoch {held.epoch}); "
                        "see `kv cluster status`, then ask again",
                    )
                raise ChangeError(Status.INTERNAL_ERROR, "the new membership record could not be saved here")
        return self.view.record

    def _forward(self, request: ChangeRequest, claimant: str) -> ClusterRecord:
        """The claimant's answer to ``request``, marked forwarded; its record is offered to this
        node's view, so a change asked here next is judged against it."""
        role = f"{claimant} is the claimant, the member that makes every membership change"
        peer = self.peers.get(claimant)
        if peer is None:
            raise ChangeError(Status.UNAVAILABLE, f"{role}, and {self.node_id} has no connection to it")
        self.log.info("membership_change_forwarded", change=type(request).__name__, claimant=claimant)
        try:
            frame = peer.call(replace(request, forwarded=True), timeout=FORWARD_TIMEOUTS * peer.request_timeout)
            record = membership.decode(protocol.decode_membership_reply(frame.body))
        except (RequestTimeoutError, AbandonedRequestError) as exc:
            raise ChangeError(
                Status.TIMEOUT,
                f"{role}, and it did not answer ({exc.message}): the change may have been made; "
                "see `kv cluster status` before asking again",
            ) from None
        except NodeUnreachableError as exc:
            raise ChangeError(
                Status.UNAVAILABLE,
                f"{role}, and it cannot be reached ({exc.message}); nothing was changed. Retry once "
                f"{self.node_id} sees {claimant} down (the next member in node id order takes over), "
                f"then, if {claimant} is gone for good, `kv cluster remove {claimant}`",
            ) from None
        except KVError as exc:  # the claimant's own refusal, passed on as it is
            raise ChangeError(Status.__members__.get(exc.code, Status.INTERNAL_ERROR), exc.message) from None
        except (protocol.ProtocolError, membership.MembershipError) as exc:
            raise ChangeError(Status.INTERNAL_ERROR, f"{claimant} answered no membership record: {exc}") from None
        self.view.offer(claimant, record)
        return record

    def _catch_up(self) -> None:
        """Pull every live peer's record first, so that a record another member has just made (not
        gossiped here yet: the settle epoch of a joining or leaving node, or a change a former
        claimant made) is seen, and this change is refused or made after it rather than beside it."""

        def pull(peer: Peer) -> None:
            # A peer that cannot answer now (each call is bounded by the request timeout) learns of
            # the change by gossip.
            with contextlib.suppress(KVError, protocol.ProtocolError, membership.MembershipError):
                body = protocol.decode_membership_reply(peer.call(protocol.MembershipRecord()).body)
                self.view.offer(peer.node_id, membership.decode(body))

        live = [peer for node_id, peer in list(self.peers.items()) if not self.is_down(node_id)]
        gevent.joinall([gevent.spawn(pull, peer) for peer in live])

    def stream_done(self, epoch: int, node_id: str) -> None:
        """A receiver holds everything it receives in the change of ``epoch`` (STREAM_DONE), recorded
        for whichever worker finishes the leave. A sender that is not a member of the record held
        here is ignored (its id is no safe file name, and no receiver); ``OSError`` if the report
        cannot be written (the receiver sends it again)."""
        if self.view.record.member(node_id) is not None:
            self.reported.add(epoch, node_id)

    # --- following the records --------------------------------------------------------------------

    def on_record(self, old: ClusterRecord, new: ClusterRecord) -> None:
        """The node switched from ``old``'s ring to ``new``'s: start what ``new`` asks of this node."""
        if self._stopped:
            return
        if membership_changes.changing(new):
            if new.epoch != self.receiving_epoch:
                self._receive_change(new)
            me = new.member(self.node_id)
            if me is not None and me.state is MemberState.LEAVING and new.epoch != self._leaving_epoch:
                self._leaving_epoch = new.epoch
                self._spawn(self._finish_leaving, new)
            return
        if self._queue is not None and self.receiving_epoch:
            # The change ended (settled elsewhere): nothing here waits for these streams any more.
            self._queue.stop()
        removed = [node for node in old.owners if new.member(node) is None and node != self.node_id]
        leaving = [m.node_id for m in old.members if m.state is MemberState.LEAVING]
        if removed and not leaving and new.epoch == old.epoch + 1:
            moves = ownership.plan(membership.ring(old), membership.ring(new), self.n, unavailable=removed)
            self._stream(new, moves.receiving(self.node_id), then=None, owned=True)

    def resume(self) -> None:
        """At start: carry on with the change in the stored record, or the streams a crash cut."""
        record = self.view.record
        if membership_changes.changing(record):
            self.on_record(record, record)
            return
        saved = Checkpoints(self.settings.data_dir).saved()
        if saved:
            ring = membership.ring(record)
            moves = [(p, tuple(o for o in ring.partition_owners(p)[: self.n] if o != self.node_id)) for p in saved]
            self._spawn(self._run_queue, record, moves, None, True)

    def stop(self) -> None:
        self._stopped = True
        if self._queue is not None:
            self._queue.stop()
        gevent.killall(self._tasks, timeout=2)

    # --- receiving --------------------------------------------------------------------------------

    def _receive_change(self, record: ClusterRecord) -> None:
        plan = membership_changes.plan(record, self.n)
        me = record.member(self.node_id)
        joining = me is not None and me.state is MemberState.JOINING
        moves = plan.receiving(self.node_id)
        self.receiving_epoch = record.epoch
        if not moves and not joining:
            return
        self._stream(record, moves, then=self._finish_joining if joining else self._report_done)

    def _stream(
        self,
        record: ClusterRecord,
        moves: Sequence[ownership.Move],
        then: Callable[[ClusterRecord], None] | None,
        *,
        owned: bool = False,
    ) -> None:
        work = [(move.partition, move.sources[self.node_id]) for move in moves]
        if owned:  # at once, before any read reaches this node by the new ring
            self.store.arriving.update(partition for partition, _ in work)
        self._spawn(self._run_queue, record, work, then, owned)

    def _run_queue(
        self,
        record: ClusterRecord,
        work: Sequence[tuple[int, Sequence[str]]],
        then: Callable[[ClusterRecord], None] | None,
        owned: bool = False,
    ) -> None:
        """Stream ``work`` (partition, sources) here, then ``then(record)`` if all arrived.
        ``owned``: this node owns them already (a removal): until the stream ends they are
        ``LocalStore.arriving``, so that reads of them go to the surviving replicas."""
        self._planned = len(work)
        self.events.streams_pending(len(work))
        if owned:
            self.store.arriving.update(partition for partition, _ in work)
        try:
            if not self._wait_for_members(record):
                return
            if self._queue is not None:
                self._queue.stop()
            queue = self._queue = StreamQueue(self.store, self.peers, self.settings, self.events)
            self._planned = 0
            self.log.info("membership_streams_started", epoch=record.epoch, partitions=len(work))
            finished = queue.run(work)
        finally:
            if owned:
                self.store.arriving.difference_update(partition for partition, _ in work)
        if self._stopped or queue is not self._queue or queue.pending:
            return
        self.log.info(
            "membership_streams_finished",
            epoch=record.epoch,
            partitions=len(finished),
            keys=sum(machine.keys_copied for machine in finished),
            bytes=sum(machine.bytes_copied for machine in finished),
        )
        if then is not None:
            then(record)

    def _wait_for_members(self, record: ClusterRecord) -> bool:
        """Until every live member holds ``record``'s epoch (or a later one); ``False`` if stopped
        or this node's record moved to another change meanwhile."""
        while not self._stopped:
            if self.view.record.epoch != record.epoch:
                return False
            behind = []
            for member in record.members:
                peer = self.peers.get(member.node_id)
                if member.node_id == self.node_id or peer is None or self.is_down(member.node_id):
                    continue
                reply = peer.ping()
                held = reply.membership if reply is not None else None
                if reply is None or (held is not None and held.epoch < record.epoch):
                    behind.append(member.node_id)
            if not behind:
                return True
            gevent.sleep(POLL_S)
        return False

    # --- ending a change --------------------------------------------------------------------------

    def _finish_joining(self, record: ClusterRecord) -> None:
        current = self.view.record
        if current.epoch != record.epoch:
            return
        settled = membership_changes.settle(current)
        self.log.info("membership_join_complete", node=self.node_id, epoch=settled.epoch)
        self.view.change(settled, "join complete")

    def _report_done(self, record: ClusterRecord) -> None:
        leaving = [m for m in record.members if m.state is MemberState.LEAVING]
        while leaving and not self._stopped and self.view.record.epoch == record.epoch:
            for member in leaving:
                if member.node_id == self.node_id:
                    self.stream_done(record.epoch, self.node_id)
                    continue
                peer = self.peers.get(member.node_id)
                if peer is not None:
                    with contextlib.suppress(KVError):  # sent again below, until the change ends
                        peer.call(protocol.StreamDone(record.epoch, self.node_id))
            gevent.sleep(DONE_RESEND_S)

    def _finish_leaving(self, record: ClusterRecord) -> None:
        receivers = {r for move in membership_changes.plan(record, self.n).moves for r in move.receivers}
        self.reported.clear(record.epoch - 1)  # reports of changes that ended before this one
        while not self._stopped and self.view.record.epoch == record.epoch:
            if receivers <= self.reported.receivers(record.epoch):
                settled = membership_changes.settle(self.view.record)
                self.log.info("membership_leave_complete", node=self.node_id, epoch=settled.epoch)
                if self.view.change(settled, "leave complete"):
                    self.reported.clear(record.epoch)
                return
            gevent.sleep(POLL_S)

    def _spawn(self, function: Callable[..., None], *args: object) -> None:
        self._tasks = [task for task in self._tasks if not task.dead]
        self._tasks.append(gevent.spawn(function, *args))
