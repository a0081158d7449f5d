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
that fails is replaced by the next one up. Any replica that answered with an older version (or
nothing) is then sent the newest one, in the background: read repair. Asking only R replicas
means a stale replica outside them goes unseen, so a read also asks all of them, and repairs
what it finds, with probability ``read_repair_chance`` (always when R is every replica up); hints
and anti-entropy repair the rest. Asking every replica on every read would double the
cross-node work of an R=1 read for the sake of replicas that are almost always current.

Replicas are anything with ``read``, ``write`` and ``write_hint``: the local store, a peer over the
network, or a fake in tests, so fan-out, fallback and timeouts are tested without sockets.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

import gevent
from gevent.queue import Empty, Queue

from client.protocol import Record, Status, Version
from client.ring import Ring
from service.quorum import QuorumFailure, QuorumState, QuorumTracker
from service.versioning import HybridLogicalClock, newest, supersedes

HEDGE_FRACTION = 0.1
"""A read still short of R replies after this fraction of the request timeout (200 ms by default)
also asks the next replica up: a hung replica is not marked down for seconds, and its silence
must not cost every read of its keys the whole timeout."""


class MustWait(Exception):
    """A read asked not to wait (``get(wait=False)``) cannot be answered without waiting."""


class Replica(Protocol):
    node_id: str

    def read(self, key: bytes) -> Record | None:
        """The replica's record for ``key``, or ``None``."""
        ...

    def write(self, key: bytes, record: Record) -> Any:
        """Store ``record`` durably (unless the replica holds a newer one); raise if it cannot."""
        ...

    def write_hint(self, key: bytes, record: Record, owner: str) -> Any:
        """Hold ``record`` durably for ``owner``, to hand over later; raise if it cannot."""
        ...


class CoordinatorEvents:
    """What the coordinator reports as it works; ``events.NodeEvents`` turns these into metrics and logs."""

    def replica_write(self, node_id: str, ok: bool) -> None:
        """A write to a preferred replica succeeded or failed."""

    def hinted_write(self, owner: str, holder: str) -> None:
        """``holder`` took a write meant for ``owner``, as a hint."""

    def read_repair(self, key: bytes, node_id: str, ok: bool) -> None:
        """A stale replica was (or could not be) sent the newest version after a read."""


class FanOut:
    """Calls running on several replicas at once, and the outcomes as they arrive.

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
        self.targets = list(targets)
        self._call = call
        self.results: dict[str, Any] = {}
        self.errors: dict[str, str] = {}
        self._outcomes: Queue | None = None
        self._ready: list[tuple[str, bool, Any]] = []
        for node_id in self.targets:
            if node_id != inline:
                if self._outcomes is None:
                    self._outcomes = Queue()
                gevent.spawn_raw(self._run, node_id, call)
        if inline is not None and inline in self.targets:
            self._ready.append(_outcome_of(call, inline, inline_timeout))

    def known(self, node_id: str, result: Any) -> None:
        """Count an outcome obtained elsewhere (this node's own read) as a successful call."""
        self.targets.append(node_id)
        self.results[node_id] = result

    def add(self, node_id: str) -> None:
        """Call one more target (a spare replacing one that failed), in a greenlet of its own."""
        self.targets.append(node_id)
        if self._outcomes is None:
            self._outcomes = Queue()
        gevent.spawn_raw(self._run, node_id, self._call)

    def _run(self, node_id: str, call: Callable[[str], Any]) -> None:
        assert self._outcomes is not None
        self._outcomes.put(_outcome_of(call, node_id, None))

    @property
    def outstanding(self) -> int:
        return len(self.targets) - len(self.results) - len(self.errors)

    def next_outcome(self, deadline: float) -> bool | None:
        """Wait for one more outcome: ``True`` success, ``False`` failure, ``None`` if the deadline
        passed first."""
        if self._ready:
            node_id, ok, result = self._ready.pop()
        else:
            if self._outcomes is None:
                return None
            try:
                node_id, ok, result = self._outcomes.get(timeout=max(0.0, deadline - time.monotonic()))
            except Empty:
                return None
        if ok:
            self.results[node_id] = result
        else:
            self.errors[node_id] = result
        return ok

    def wait_all(self, deadline: float) -> None:
        """Collect every outstanding outcome, or as many as arrive before ``deadline``."""
        while self.outstanding:
            if self.next_outcome(deadline) is None:
                return


class Coordinator:
    def __init__(
        self,
        node_id: str,
        ring: Ring,
        replicas: Mapping[str, Replica],
        *,
        n: int,
        clock: HybridLogicalClock,
        timeout: float,
        is_down: Callable[[str], bool] = lambda node_id: False,
        events: CoordinatorEvents | None = None,
        read_repair_chance: float = 1.0,
        chance: Callable[[], float] = random.random,
    ) -> None:
        self.node_id = node_id
        self.ring = ring
        self.replicas = replicas
        self.n = n
        self.clock = clock
        self.timeout = timeout
        self.is_down = is_down
        self.events = events or CoordinatorEvents()
        self.read_repair_chance = read_repair_chance
        self._chance = chance

    # --- reads ------------------------------------------------------------------------------------

    def get(self, key: bytes, r: int, *, wait: bool = True) -> Record | None:
        """The newest record among the first ``r`` replies (a tombstone means deleted).

        ``wait=False`` (a session answering a request without a greenlet of its own) raises
        ``MustWait`` instead of waiting on another node, before anything is sent.
        """
        preferred = self.ring.preference_list(key, self.n)
        targets = [node_id for node_id in preferred if not self.is_down(node_id)]
        if len(targets) < r:
            raise QuorumFailure(
                Status.UNAVAILABLE,
                0,
                r,
                f"only {len(targets)} of the key's {len(preferred)} replicas are up; the read needs {r}",
            )
        if self.node_id in targets:
            targets.remove(self.node_id)
            targets.insert(0, self.node_id)
        ask_all = r == len(targets) or self._chance() < self.read_repair_chance
        local = self.replicas.get(self.node_id)
        reads_block = getattr(local, "reads_block", True)
        if r == 1 and targets[0] == self.node_id and not reads_block:
            # This node's store answers alone, and at once: the common read, without the fan-out
            # machinery. The other replicas, if read repair asks them, are asked in the background.
            try:
                record = local.read(key)
            except Exception:  # the general path below tries it again, then the other replicas
                if not wait:
                    raise MustWait from None
            else:
                if record is not None:
                    self.clock.observe(record.version.timestamp)
                if ask_all and len(targets) > 1:
                    fan = FanOut(targets[1:], lambda node_id: self.replicas[node_id].read(key))
                    fan.known(self.node_id, record)
                    gevent.spawn(self._repair_after_read, key, fan, time.monotonic() + self.timeout)
                return record
        if not wait:
            raise MustWait
        asked, spares = (targets, []) if ask_all else (targets[:r], targets[r:])
        deadline = time.monotonic() + self.timeout
        fan = FanOut(
            asked,
            lambda node_id: self.replicas[node_id].read(key),
            inline=self.node_id,
            inline_timeout=self.timeout if reads_block else None,
        )
        self._await_quorum(fan, r, deadline, spares, total=len(targets), hedge_after=self.timeout * HEDGE_FRACTION)
        winner = newest(fan.results.values())
        if winner is not None:
            self.clock.observe(winner.version.timestamp)
        if fan.outstanding or _disagree(fan.results.values()):
            gevent.spawn(self._repair_after_read, key, fan, deadline)
        return winner

    def _repair_after_read(self, key: bytes, fan: FanOut, deadline: float) -> None:
        fan.wait_all(deadline)
        winner = newest(fan.results.values())
        if winner is None:
            return
        for node_id, record in fan.results.items():
            if supersedes(winner, record):
                try:
                    self.replicas[node_id].write(key, winner)
                except Exception:  # the replica is unreachable now; anti-entropy will get there
                    self.events.read_repair(key, node_id, False)
                else:
                    self.events.read_repair(key, node_id, True)

    # --- writes -----------------------------------------------------------------------------------

    def put(self, key: bytes, value: bytes, w: int, after: int = 0) -> Version:
        return self._write(key, value, w, after)

    def delete(self, key: bytes, w: int, after: int = 0) -> Version:
        return self._write(key, None, w, after)

    def _write(self, key: bytes, value: bytes | None, w: int, after: int) -> Version:
        self.clock.observe(after)
        record = Record(Version(self.clock.now(), self.node_id), value)
        owners = self.ring.owners(key)
        preferred, fallbacks = owners[: self.n], list(owners[self.n :])

        def next_fallback() -> str | None:
            # Shared by every owner's greenlet: each fallback node is claimed by one owner only, so
            # two hints for one write never land on the same node.
            while fallbacks:
                candidate = fallbacks.pop(0)
                if not self.is_down(candidate):
                    return candidate
            return None

        def write_to(owner: str) -> str:
            failure = f"{owner} is down"
            if not self.is_down(owner):
                try:
                    self.replicas[owner].write(key, record)
                except Exception as exc:
                    self.events.replica_write(owner, False)
                    failure = str(exc) or type(exc).__name__
                else:
                    self.events.replica_write(owner, True)
                    return owner
            while (holder := next_fallback()) is not None:
                try:
                    self.replicas[holder].write_hint(key, record, owner)
                except Exception as exc:
                    failure += f"; hint to {holder} failed: {exc}"
                    continue
                self.events.hinted_write(owner, holder)
                return holder
            raise RuntimeError(f"{failure}; no fallback node took a hint")

        deadline = time.monotonic() + self.timeout
        self._await_quorum(FanOut(preferred, write_to, inline=self.node_id, inline_timeout=self.timeout), w, deadline)
        return record.version

    # --- quorum -----------------------------------------------------------------------------------

    def _await_quorum(
        self,
        fan: FanOut,
        required: int,
        deadline: float,
        spares: list[str] | None = None,
        *,
        total: int = 0,
        hedge_after: float | None = None,
    ) -> None:
        """Return once ``required`` calls succeeded; raise UNAVAILABLE as soon as that is out of
        reach, or TIMEOUT at the deadline. ``spares`` are called in turn in place of a call that
        failed, or, with ``hedge_after``, alongside calls still silent after that many seconds (a
        hung replica the failure detector has not caught yet); ``total`` counts targets and spares."""
        tracker = QuorumTracker(required, total or len(fan.targets))
        hedge_at = time.monotonic() + hedge_after if hedge_after is not None else deadline
        while True:
            ok = fan.next_outcome(min(deadline, hedge_at) if spares else deadline)
            if ok is None and spares and time.monotonic() < deadline:
                fan.add(spares.pop(0))  # speculative: the silent call still counts if it answers
                hedge_at = time.monotonic() + (hedge_after or 0.0)
                continue
            if ok is None:
                raise QuorumFailure(
                    Status.TIMEOUT,
                    tracker.acked,
                    required,
                    f"{tracker.acked} of {required} required replicas answered within {self.timeout:g} s",
                )
            if ok is False and spares:
                fan.add(spares.pop(0))
            outcome = tracker.succeed() if ok else tracker.fail()
            if outcome is QuorumState.REACHED:
                return
            if outcome is QuorumState.LOST:
                reasons = "; ".join(f"{node}: {reason}" for node, reason in sorted(fan.errors.items()))
                raise QuorumFailure(
                    Status.UNAVAILABLE,
                    tracker.acked,
                    required,
                    f"{tracker.acked} of {required} required replicas acked; "
                    f"{tracker.failed} of {len(fan.targets)} failed ({reasons})",
                )


def _outcome_of(call: Callable[[str], Any], node_id: str, timeout: float | None) -> tuple[str, bool, Any]:
    try:
        if timeout is None:
            return node_id, True, call(node_id)
        with gevent.Timeout(max(0.0, timeout), TimeoutError(f"{node_id} did not answer in time")):
            return node_id, True, call(node_id)
    except Exception as exc:  # one replica's failure is its vote, not the request's end
        return node_id, False, str(exc) or type(exc).__name__


def _disagree(records: Any) -> bool:
    versions = {None if record is None else record.version for record in records}
    return len(versions) > 1
