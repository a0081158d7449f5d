"""The coordinator: runs one client GET, PUT or DELETE against the key's replicas.

Any node coordinates any key. A write is stamped with a version from this node's hybrid logical
clock (above any timestamp the client says it has seen) and sent to the key's N preferred replicas
at once; the client is answered after W acks, and calls still running are left to finish.

Sloppy quorum: when a preferred replica is down, or its write fails, the write goes instead to the
next node in the partition's ranking that is not down, as a hint naming the replica it was meant
for; that node hands it over when the owner is back (``handoff``). A hinted write counts toward W,
so with N=2, W=2 and one node down, writes go on succeeding.

A read asks R of the preferred replicas that are up, this node first when it is one of them (its
answer costs no round trip), and answers with the newest version among their replies; a replica
that fails is replaced by the next one up, and one still silent after a tenth of the timeout is
joined by the next one (speculative retry). Any replica that answered with an older version (or
nothing) is then sent the newest one, in the background: read repair. Asking only R replicas
means a stale replica outside them goes unseen, so a read also asks all of them, and repairs
what it finds, with probability ``read_repair_chance`` (always when R is every replica up); hints
and anti-entropy repair the rest. Asking every replica on every read would double the
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

from client.protocol import Record, Version, clip_message
from service.placement import Placement
from service.quorum import WAIT, Answer, Ask, Decision, Fail, QuorumRound
from service.read_plan import ReadPlan, asks_all, read_targets
from service.versioning import HybridLogicalClock


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

    def read(self, key: bytes) -> Record | None:
        """The replica's record for ``key``, or ``None``."""
        ...

    def write(self, key: bytes, record: Record) -> object:
        """Store ``record`` durably (unless the replica holds a newer one); raise if it cannot."""
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
        gevent.spawn_raw(self._run, node_id)

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
        # Looked up once: every request uses them.
        self._ring, self._n, self._is_down = placement.ring, placement.n, placement.is_down
        self._local = replicas.get(self.node_id)

    # --- reads ------------------------------------------------------------------------------------

    def get(self, key: bytes, r: int, *, wait: bool = True) -> Record | None:
        """The newest record among the first ``r`` replies (a tombstone means deleted), or ``None``.

        Raises ``QuorumFailure``. ``wait=False`` (a session answering a request without a greenlet of
        its own) raises ``MustWait`` instead of waiting on another node, before anything is sent.
        """
        # Plan: which replicas, and whether all of them (pure, see read_plan).
        targets = read_targets(self._ring.preference_list(key, self._n), self._is_down, self.node_id, r)
        ask_all = asks_all(r, len(targets), self.read_repair_chance, self._chance)
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
            self.clock.observe(record.version.timestamp)
        if ask_all and len(targets) > 1:
            plan = ReadPlan(targets, 1, ask_all=True, now=time.monotonic(), timeout=self.timeout)
            plan.on_success(self.node_id, record)
            fan = FanOut(targets[1:], lambda node_id: self.replicas[node_id].read(key))
            gevent.spawn(self._repair_after_read, key, fan, plan)
        return record

    def _read_replicas(self, key: bytes, r: int, targets: list[str], ask_all: bool) -> Record | None:
        plan = ReadPlan(targets, r, ask_all=ask_all, now=time.monotonic(), timeout=self.timeout)
        fan = FanOut(
            plan.ask_first,
            lambda node_id: self.replicas[node_id].read(key),
            inline=self.node_id,
            inline_timeout=self.timeout if self._local is None or self._local.reads_block else None,
        )
        answer = self._settle(fan, plan)
        assert isinstance(answer, Answer)
        if answer.record is not None:
            self.clock.observe(answer.record.version.timestamp)
        if plan.needs_repair:
            gevent.spawn(self._repair_after_read, key, fan, plan)
        return answer.record

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
        ``w`` have it. Raises ``QuorumFailure``."""
        return self._write(key, value, w, after)

    def delete(self, key: bytes, w: int, after: int = 0) -> Version:
        """Write a tombstone for ``key``, as ``put`` writes a value."""
        return self._write(key, None, w, after)

    def _write(self, key: bytes, value: bytes | None, w: int, after: int) -> Version:
        self.clock.observe(after)
        record = Record(Version(self.clock.now(), self.node_id), value)
        owners = self._ring.owners(key)
        preferred, fallbacks = owners[: self._n], list(owners[self._n :])

        def next_fallback() -> str | None:
            # Shared by every owner's greenlet: each fallback node is claimed by one owner only, so
            # two hints for one write never land on the same node.
            while fallbacks:
                candidate = fallbacks.pop(0)
                if not self._is_down(candidate):
                    return candidate
            return None

        def write_to(owner: str) -> str:
            failure = f"{owner} is down"
            if not self._is_down(owner):
                try:
                    self.replicas[owner].write(key, record)
                except Exception as exc:
                    self.events.replica_write(owner, False)
                    failure = clip_message(str(exc) or type(exc).__name__, REASON_BYTES // 2)
                else:
                    self.events.replica_write(owner, True)
                    return owner
            hint_failures: list[str] = []
            while (holder := next_fallback()) is not None:
                try:
                    self.replicas[holder].write_hint(key, record, owner)
                except Exception as exc:
                    hint_failures.append(f"hint to {holder} failed: {clip_message(str(exc), REASON_BYTES // 3)}")
                    continue
                self.events.hinted_write(owner, holder)
                return holder
            # The summary before the details, so that clipping the reason cuts only details.
            if len(hint_failures) > 1:
                hint_failures[1:] = [f"{len(hint_failures) - 1} more failed"]
            details = f" ({', '.join(hint_failures)})" if hint_failures else ""
            raise RuntimeError(f"{failure}; no fallback node took a hint{details}")

        quorum = QuorumRound(w, len(preferred), now=time.monotonic(), timeout=self.timeout)
        self._settle(FanOut(preferred, write_to, inline=self.node_id, inline_timeout=self.timeout), quorum)
        return record.version

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


def _outcome_of(call: Callable[[str], Any], node_id: str, timeout: float | None) -> tuple[str, bool, Any]:
    try:
        if timeout is None:
            return node_id, True, call(node_id)
        with gevent.Timeout(max(0.0, timeout), TimeoutError(f"{node_id} did not answer in time")):
            return node_id, True, call(node_id)
    except Exception as exc:  # one replica's failure is its vote, not the request's end
        return node_id, False, clip_message(str(exc) or type(exc).__name__, REASON_BYTES)
