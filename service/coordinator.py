"""The coordinator: runs one client GET, PUT or DELETE against the key's replicas.

Any node coordinates any key. A write is stamped with a version from this node's hybrid logical
clock (above any timestamp the client says it has seen) and sent to the key's N preferred replicas
at once; the client is answered after W acks, and calls still running are left to finish.

Sloppy quorum: when a preferred replica is down, or its write fails, the write goes instead to the
next node in the partition's ranking that is not down, as a hint naming the replica it was meant
for; that node hands it over when the owner is back (``handoff``). A hinted write counts toward W,
so with N=2, W=2 and one node down, writes go on succeeding. A replica whose store is full is
routed around the same way (a tombstone is still offered to it first: it frees room there), and
so is a full fallback. Only when W is out of reach because of full stores does the client get
STORAGE_FULL rather than UNAVAILABLE.

A read asks R of the preferred replicas that are up, this node first when it is one of them (its
answer costs no round trip), and a replica whose store is behind (full, or catching up: it may
lack acknowledged writes) only when no other is left; it answers with the newest version among
their replies. A replica that fails is replaced by the next one up, and one still silent after a
tenth of the timeout is joined by the next one (speculative retry). Any replica that answered with
an older version (or nothing) is then sent the newest one, in the background: read repair. Asking
only R replicas means a stale replica outside them goes unseen, so a read also asks all of them,
and repairs what it finds, with probability ``read_repair_chance`` (always when R is every replica
up); hints and anti-entropy repair the rest. Asking every replica on every read would double the
cross-node work of an R=1 read for the sake of replicas that are almost always current.

Every one of those decisions is made by the pure ``read_plan.ReadPlan`` (and, for writes,
``quorum.QuorumRound``); this module is the I/O around them: it calls replicas in greenlets
(``FanOut``), feeds their outcomes and the clock to the plan, and does what the plan says.

Replicas are anything with ``read``, ``write``, ``write_hint`` and ``reads_block`` (the ``Replica``
protocol): the local store, a peer over the network, or a fake in tests, so fan-out, fallback and
timeouts are tested without sockets.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import gevent
from gevent.queue import Empty, Queue

from client.errors import StorageFullError
from client.protocol import Record, Status, Version, clip_message
from service import greenlets
from service.placement import Placement
from service.quorum import WAIT, Answer, Ask, Decision, Fail, QuorumFailure, QuorumRound
from service.read_plan import ReadPlan, asks_all, read_targets
from service.storage import StorageFull
from service.versioning import ClockSkew, HybridLogicalClock

HINT_AFTER = 0.25
"""The share of the request timeout (0.5 s by default) a write waits on a replica that answers
nothing at all, to it or to anyone, before it gives up on it and hands its copy to a fallback as a
hint, as for a replica that is down. A replica that accepts writes but does not answer (paused,
swapping) must not hold every write to its keys for the whole timeout; if its answer comes after
all, the copy is merely stored twice, under one version. A replica that is busy but answering is
waited for."""
MAX_RESTAMPS = 2
"""Times a write is stamped again above a newer version a replica reported. One restamp suffices
against clocks that disagree (the new stamp is above every version the replicas held); a newer
version met after it was written concurrently, and a second restamp is slack for races."""

STORAGE_FULL_ERRORS = (StorageFull, StorageFullError)
"""A replica's refusal for lack of room: this node's store raises ``StorageFull``, a peer answers
STORAGE_FULL (``StorageFullError``)."""


class MustWait(Exception):
    """A read asked not to wait (``get(wait=False)``) cannot be answered without waiting."""


class Replica(Protocol):
    """A node's copy of the data as the coordinator reaches it: this node's store, or a peer."""

    node_id: str

    @property
    def reads_block(self) -> bool:
        """Whether a read may wait on something slow (the network: a peer says ``True``), so the
        coordinator bounds it with the timeout; the local store, one LMDB lookup, says ``False``."""
        ...

    def read(self, key: bytes, *, behind_ok: bool = False) -> Record | None:
        """The replica's record for ``key``, or ``None``. A replica whose store is behind (full, or
        catching up) refuses unless ``behind_ok``."""
        ...

    def write(self, key: bytes, record: Record, *, stalled_after: float | None = None) -> Version | None:
        """Store ``record`` durably, unless the replica holds a newer version: return that version
        (the replica keeps it), else ``None``. Raise if it cannot, or (over the network, with
        ``stalled_after``) once the replica has answered nothing at all for that many seconds."""
        ...

    def write_hint(self, key: bytes, record: Record, owner: str) -> object:
        """Hold ``record`` durably for ``owner``, to hand over later; raise if it cannot."""
        ...


REASON_BYTES = 120
"""The most of a failed replica's error quoted in an UNAVAILABLE message, so the message names every
failed replica within the protocol's cap on error messages."""


class CoordinatorEvents:
    """What the coordinator reports as it works; ``events.NodeEvents`` turns these into metrics and logs."""

    def replica_write(self, node_id: str, ok: bool) -> None:
        """A write to a preferred replica succeeded or failed."""

    def hinted_write(self, owner: str, holder: str) -> None:
        """``holder`` took a write meant for ``owner``, as a hint."""

    def read_repair(self, key: bytes, node_id: str, ok: bool) -> None:
        """A stale replica was (or could not be) sent the newest version after a read."""

    def write_restamped(self, key: bytes, superseded: Version, newer: Version) -> None:
        """A write stamped ``superseded`` found a replica holding ``newer`` (a clock behind another
        node's) and was stamped again above it."""

    def clock_skew_refused(self, source: str, reason: str) -> None:
        """A write was refused: its ``after``, or a version it met, was too far ahead of this clock,
        or this node's own clock is fenced (``source`` says which)."""


@dataclass(frozen=True)
class CoordinatorSettings:
    node_id: str
    """This node: it stamps its writes' versions and reads its own store first."""
    timeout: float
    """Seconds a request waits for its replicas (``KV_REQUEST_TIMEOUT_MS``)."""
    read_repair_chance: float = 1.0
    """Share of reads (0..1) that ask every replica up, not only R (``KV_READ_REPAIR_PERCENT``)."""
    chance: Callable[[], float] = random.random
    """Draws the read repair lottery, uniform in [0, 1) (tests fix it)."""
    clock_fenced: Callable[[], str | None] = lambda: None
    """Why this node's clock must not stamp writes now, or ``None`` (``ClockOffsets.fenced``)."""


class FanOut:
    """Calls running on several replicas at once, and their outcomes as they arrive.

    Each call runs in a raw greenlet of its own (``_outcome_of`` catches what a call raises, so none
    needs the Greenlet object that ``gevent.spawn`` builds), except the ``inline`` target's (this node's store):
    that one runs in the caller's greenlet once the others are under way, which saves a greenlet
    and a queue round trip on every request, and on a single-replica key saves all of them.
    ``inline_timeout`` bounds it (a write waiting on a stalled disk); ``None`` leaves it unbounded.
    """

    def __init__(
        self,
        targets: Sequence[str],
        call: Callable[[str], Any],
        *,
        inline: str | None = None,
        inline_timeout: float | None = None,
    ) -> None:
        self._call = call
        self._outcomes: Queue | None = None
        self._ready: list[tuple[str, bool, Any]] = []
        for node_id in targets:
            if node_id != inline:
                self.add(node_id)
        if inline is not None and inline in targets:
            self._ready.append(_outcome_of(call, inline, inline_timeout))

    def add(self, node_id: str) -> None:
        """Call one more target, in a greenlet of its own."""
        if self._outcomes is None:
            self._outcomes = Queue()
        greenlets.spawn(self._run, node_id)

    def _run(self, node_id: str) -> None:
        assert self._outcomes is not None
        self._outcomes.put(_outcome_of(self._call, node_id, None))

    def next_outcome(self, deadline: float) -> tuple[str, bool, Any] | None:
        """Wait for one more outcome, ``(node_id, ok, result or failure reason)``; ``None`` if the
        deadline (``time.monotonic()``) passed first."""
        if self._ready:
            return self._ready.pop()
        if self._outcomes is None:  # nothing was sent, so nothing will come: wait out the deadline
            self._outcomes = Queue()
        try:
            outcome: tuple[str, bool, Any] = self._outcomes.get(timeout=max(0.0, deadline - time.monotonic()))
        except Empty:
            return None
        return outcome


class Coordinator:
    """Runs client GETs, PUTs and DELETEs against the key's replicas, as this node (``settings``).

    ``placement`` says which nodes hold a key and which are down; ``replicas`` reaches each node by
    id, this one included (its ``LocalStore``); ``clock`` stamps writes and observes what is read.
    Failures surface as ``quorum.QuorumFailure``; reads that cannot be answered without waiting, when
    asked not to wait, as ``MustWait``.
    """

    def __init__(
        self,
        settings: CoordinatorSettings,
        placement: Placement,
        replicas: Mapping[str, Replica],
        clock: HybridLogicalClock,
        events: CoordinatorEvents | None = None,
    ) -> None:
        self.node_id = settings.node_id
        self.placement = placement
        self.replicas = replicas
        self.clock = clock
        self.timeout = settings.timeout
        self.events = events or CoordinatorEvents()
        self.read_repair_chance = settings.read_repair_chance
        self._chance = settings.chance
        self._clock_fenced = settings.clock_fenced
        self._hint_after = settings.timeout * HINT_AFTER
        self._local = replicas.get(self.node_id)
        self.set_placement(placement)

    def set_placement(self, placement: Placement) -> None:
        """Route by ``placement`` from now on (a membership change switched the ring, or started or
        ended moving partitions); requests under way finish on the one they started with."""
        self.placement = placement
        # Looked up once: every request uses them.
        self._ring, self._n, self._is_down = placement.ring, placement.n, placement.is_down
        self._is_full, self._is_behind = placement.is_full, placement.is_behind
        self._arriving_here = placement.arriving_here
        self._pending = placement.pending_owners

    # --- reads ------------------------------------------------------------------------------------

    def get(self, key: bytes, r: int, *, wait: bool = True) -> Record | None:
        """The newest record among the first ``r`` replies (a tombstone means deleted), or ``None``.

        Raises ``QuorumFailure``. ``wait=False`` (a session answering a request without a greenlet of
        its own) raises ``MustWait`` instead of waiting on another node, before anything is sent.
        """
        is_behind = self._is_behind
        if self._arriving_here(key):  # this node is behind for this key: it is still streaming in
            here, anywhere = self.node_id, self._is_behind
            is_behind = lambda node_id: node_id == here or anywhere(node_id)  # noqa: E731
        # Plan: which replicas, and whether all of them (pure, see read_plan).
        targets = read_targets(self._ring.preference_list(key, self._n), self._is_down, self.node_id, r, is_behind)
        # Asking them all is for read repair; with a replica behind (full: a repair cannot land; or
        # about to get its hints) the read asks R and keeps the behind one as the last spare, so its
        # reply is never among the first R while another can answer.
        behind = is_behind(targets[-1])  # read_targets puts behind replicas last
        ask_all = not behind and asks_all(r, len(targets), self.read_repair_chance, self._chance)
        # Local read: this node's store answers alone, and at once; the common read.
        local = self._local
        if r == 1 and targets[0] == self.node_id and local is not None and not local.reads_block:
            try:
                record = local.read(key)
            except Exception:  # the fan-out below tries it again, then the other replicas
                if not wait:
                    raise MustWait from None
            else:
                return self._answer_locally(key, record, targets, ask_all)
        if not wait:
            raise MustWait
        # Fan-out: everything else.
        return self._read_replicas(key, r, targets, ask_all)

    def _answer_locally(self, key: bytes, record: Record | None, targets: list[str], ask_all: bool) -> Record | None:
        """Return this node's own ``record``; if the read was drawn to ask every replica, ask the
        others in the background and repair what they hold."""
        if record is not None:
            self.clock.observe_within_bound(record.version.timestamp)
        if ask_all and len(targets) > 1:
            plan = ReadPlan(targets, 1, ask_all=True, now=time.monotonic(), timeout=self.timeout)
            plan.on_success(self.node_id, record)
            fan = FanOut(targets[1:], lambda node_id: self._read_from(node_id, key))
            gevent.spawn(self._repair_after_read, key, fan, plan)
        return record

    def _read_replicas(self, key: bytes, r: int, targets: list[str], ask_all: bool) -> Record | None:
        plan = ReadPlan(targets, r, ask_all=ask_all, now=time.monotonic(), timeout=self.timeout)
        fan = FanOut(
            plan.ask_first,
            lambda node_id: self._read_from(node_id, key),
            inline=self.node_id,
            inline_timeout=self.timeout if self._local is None or self._local.reads_block else None,
        )
        answer = self._settle(fan, plan)
        assert isinstance(answer, Answer)
        if answer.record is not None:
            self.clock.observe_within_bound(answer.record.version.timestamp)
        if plan.needs_repair:
            gevent.spawn(self._repair_after_read, key, fan, plan)
        return answer.record

    def _read_from(self, node_id: str, key: bytes) -> Record | None:
        """One replica's record; a replica known to be behind is asked to answer anyway (it is asked
        only when no current replica is left), one not known to be refuses if it is."""
        return self.replicas[node_id].read(key, behind_ok=self._is_behind(node_id))

    def _repair_after_read(self, key: bytes, fan: FanOut, plan: ReadPlan) -> None:
        """Collect the replies still due (until the plan's deadline), then send the newest record
        to every replica that answered an older one or nothing."""
        while plan.outstanding:
            outcome = fan.next_outcome(plan.deadline)
            if outcome is None:
                break
            node_id, ok, result = outcome
            if ok:
                plan.on_success(node_id, result)
            else:
                plan.on_failure(node_id, result)
        repairs = plan.repairs()
        if repairs is None:
            return
        winner, stale = repairs
        for node_id in stale:
            try:
                self.replicas[node_id].write(key, winner)
            except Exception:  # the replica is unreachable now; anti-entropy will get there
                self.events.read_repair(key, node_id, False)
            else:
                self.events.read_repair(key, node_id, True)

    # --- writes -----------------------------------------------------------------------------------

    def put(self, key: bytes, value: bytes, w: int, after: int = 0) -> Version:
        """Write ``value`` to the key's replicas, stamped above ``after``; return its version once
        ``w`` have it. Raises ``QuorumFailure``, or ``ClockSkew`` (see ``_write``)."""
        return self._write(key, value, w, after)

    def delete(self, key: bytes, w: int, after: int = 0) -> Version:
        """Write a tombstone for ``key``, as ``put`` writes a value."""
        return self._write(key, None, w, after)

    def _write(self, key: bytes, value: bytes | None, w: int, after: int) -> Version:
        """Stamp the write and send it to the key's replicas until ``w`` have it.

        A write is never acknowledged while it loses to a version stamped earlier in real time. A
        replica that holds a newer version than the write's says so (``Replica.write`` returns it);
        that happens when another node's clock runs ahead of this one's, so the version the replica
        holds may well be older in real time. The write is then stamped again above it and sent
        again, up to ``MAX_RESTAMPS`` times; a newer version met after a restamp was written while
        this write was under way (a concurrent write, which last-writer-wins may order either way).

        Raises ``ClockSkew``, writing nothing, when ``after`` is too far ahead of this node's clock,
        when a replica's newer version is (so stamping above it would drag the clock there), or when
        this node's own clock disagrees with its peers' (``CoordinatorSettings.clock_fenced``).
        """
        fenced = self._clock_fenced()
        if fenced is not None:
            self.events.clock_skew_refused("fenced", fenced)
            raise ClockSkew(fenced)
        self._observe(after, "after")
        for attempt in range(MAX_RESTAMPS + 1):
            record = Record(Version(self.clock.now(), self.node_id), value)
            newer = self._write_round(key, record, w)
            if newer is None or attempt == MAX_RESTAMPS:
                return record.version
            self._observe(newer.timestamp, "replica_version")
            self.events.write_restamped(key, record.version, newer)
        raise AssertionError("unreachable: the last attempt returns")

    def _observe(self, timestamp: int, source: str) -> None:
        try:
            self.clock.observe(timestamp)
        except ClockSkew as exc:
            self.events.clock_skew_refused(source, str(exc))
            raise

    def _write_round(self, key: bytes, record: Record, w: int) -> Version | None:
        """Send ``record`` to the key's replicas (a fallback takes a hint for one that is down or
        fails) until ``w`` acked; return the newest version an acking replica holds instead, if
        any is newer than ``record``'s. Raises ``QuorumFailure``."""
        owners = self._ring.owners(key)
        # While a membership change moves the key's partition, its pending owners (which will hold
        # it after the switch) get the write too, and each must ack it on top of W: Cassandra's
        # pending ranges. They are no fallbacks meanwhile: a fallback's hint is for another owner.
        pending = self._pending(key)
        preferred = [*owners[: self._n], *pending]
        fallbacks = [node for node in owners[self._n :] if node not in pending]
        newer: list[Version] = []

        full: dict[str, str] = {}  # owner -> why it or a fallback could not take its copy for lack of room

        def next_fallback() -> str | None:
            # Shared by every owner's greenlet: each fallback node is claimed by one owner only, so
            # two hints for one write never land on the same node.
            while fallbacks:
                candidate = fallbacks.pop(0)
                if not self._is_down(candidate) and not self._is_full(candidate):
                    return candidate
            return None

        def write_to(owner: str) -> str:
            if self._is_down(owner):
                failure = f"{owner} is down"
            elif record.value is not None and owner != self.node_id and self._is_full(owner):
                # This node's own store is asked anyway: it refuses at once, and says why.
                failure = full[owner] = f"{owner}: storage full"
            else:
                # With a fallback left to take a hint, a replica that answers nothing at all (paused,
                # not merely busy) is given up on soon; with none, it is waited for to the deadline.
                patience = self._hint_after if fallbacks else None
                try:
                    held = self.replicas[owner].write(key, record, stalled_after=patience)
                except Exception as exc:
                    self.events.replica_write(owner, False)
                    failure = clip_message(str(exc) or type(exc).__name__, REASON_BYTES // 2)
                    if isinstance(exc, STORAGE_FULL_ERRORS):  # its cause and fix, whole: the client's answer
                        full[owner] = clip_message(str(exc), 2 * REASON_BYTES)
                else:
                    self.events.replica_write(owner, True)
                    if held is not None:
                        newer.append(held)
                    return owner
            hint_failures: list[str] = []
            while (holder := next_fallback()) is not None:
                try:
                    self.replicas[holder].write_hint(key, record, owner)
                except Exception as exc:
                    if not isinstance(exc, STORAGE_FULL_ERRORS):
                        full.pop(owner, None)  # not for lack of room alone
                    hint_failures.append(f"hint to {holder} failed: {clip_message(str(exc), REASON_BYTES // 3)}")
                    continue
                self.events.hinted_write(owner, holder)
                return holder
            # The summary before the details, so that clipping the reason cuts only details.
            if len(hint_failures) > 1:
                hint_failures[1:] = [f"{len(hint_failures) - 1} more failed"]
            details = f" ({', '.join(hint_failures)})" if hint_failures else ""
            raise RuntimeError(f"{failure}; no fallback node took a hint{details}")

        quorum = QuorumRound(w + len(pending), len(preferred), now=time.monotonic(), timeout=self.timeout)
        try:
            self._settle(FanOut(preferred, write_to, inline=self.node_id, inline_timeout=self.timeout), quorum)
        except QuorumFailure as failure:
            if failure.status is Status.UNAVAILABLE and quorum.errors and set(quorum.errors) <= set(full):
                raise _storage_full(failure, [full[owner] for owner in sorted(quorum.errors)]) from None
            raise
        return max(newer, default=None)

    # --- the loop around a round ------------------------------------------------------------------

    def _settle(self, fan: FanOut, quorum: QuorumRound) -> Decision:
        """Feed ``quorum`` the fan-out's outcomes and the clock, and do what it says, until it is
        decided: return its ``Reached`` or ``Answer``; raise its ``Fail``'s ``QuorumFailure``."""
        while True:
            outcome = fan.next_outcome(quorum.wake_at)
            if outcome is None:
                decision = quorum.tick(time.monotonic())
            elif outcome[1]:
                decision = quorum.on_success(outcome[0], outcome[2])
            else:
                decision = quorum.on_failure(outcome[0], outcome[2])
            if decision is WAIT:
                continue
            if type(decision) is Ask:
                fan.add(decision.node_id)
            elif type(decision) is Fail:
                raise decision.failure
            else:
                return decision


def _storage_full(failure: QuorumFailure, reasons: list[str]) -> QuorumFailure:
    """A write's UNAVAILABLE, when every replica short of W failed for lack of room, as STORAGE_FULL:
    the client learns the cause it must act on (free space), not a quorum error."""
    return QuorumFailure(
        Status.STORAGE_FULL,
        failure.acked,
        failure.required,
        f"{failure.acked} of {failure.required} required replicas acked; {'; '.join(reasons)}; "
        "no other node could take a hint",
    )


def _outcome_of(call: Callable[[str], Any], node_id: str, timeout: float | None) -> tuple[str, bool, Any]:
    try:
        if timeout is None:
            return node_id, True, call(node_id)
        with gevent.Timeout(max(0.0, timeout), TimeoutError(f"{node_id} did not answer in time")):
            return node_id, True, call(node_id)
    except Exception as exc:  # one replica's failure is its vote, not the request's end
        return node_id, False, clip_message(str(exc) or type(exc).__name__, REASON_BYTES)
