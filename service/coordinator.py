"""The coordinator: runs one client GET, PUT or DELETE against the key's replicas.

Any node coordinates any key. It stamps writes with a version from its hybrid logical clock, sends
the request to all N replicas of the key in parallel, and answers once the quorum is decided: W
durable acks for a write, R replies for a read (answered with the newest version among them). Calls
still running when the quorum is decided are left to finish, so every reachable replica gets the
write even though the client was answered after W.

Replicas are anything with ``read`` and ``write``: the local store, a peer over the network, or a
fake in tests, so the fan-out and its timeouts are tested without sockets.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Protocol, TypeVar

import gevent
from gevent.queue import Empty, Queue

from client.protocol import Record, Status, Version
from client.ring import Ring
from service.quorum import Outcome, QuorumError, QuorumTracker
from service.versioning import HybridLogicalClock, newest

T = TypeVar("T")


class Replica(Protocol):
    node_id: str

    def read(self, key: bytes) -> Record | None:
        """The replica's record for ``key``, or ``None``."""
        ...

    def write(self, key: bytes, record: Record) -> None:
        """Store ``record`` durably (unless the replica holds a newer one); raise if it cannot."""
        ...


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
        on_replica_write: Callable[[str, bool], None] = lambda node_id, ok: None,
    ) -> None:
        self.node_id = node_id
        self.ring = ring
        self.replicas = replicas
        self.n = n
        self.clock = clock
        self.timeout = timeout
        self._on_replica_write = on_replica_write

    def get(self, key: bytes, r: int) -> Record | None:
        """The newest record among the first ``r`` replies (a tombstone means deleted)."""
        replies = self._fan_out(key, r, lambda replica: replica.read(key))
        winner = newest(replies)
        if winner is not None:
            self.clock.observe(winner.version.timestamp)
        return winner

    def put(self, key: bytes, value: bytes, w: int) -> Version:
        return self._write(key, value, w)

    def delete(self, key: bytes, w: int) -> Version:
        return self._write(key, None, w)

    def _write(self, key: bytes, value: bytes | None, w: int) -> Version:
        record = Record(Version(self.clock.now(), self.node_id), value)

        def write(replica: Replica) -> None:
            try:
                replica.write(key, record)
            except Exception:
                self._on_replica_write(replica.node_id, False)
                raise
            self._on_replica_write(replica.node_id, True)

        self._fan_out(key, w, write)
        return record.version

    def _fan_out(self, key: bytes, required: int, call: Callable[[Replica], T]) -> list[T]:
        """Run ``call`` on every replica of ``key`` at once; return the results that made the quorum."""
        owners = self.ring.preference_list(key, self.n)
        tracker = QuorumTracker(required, len(owners))
        outcomes: Queue = Queue()
        for node_id in owners:
            gevent.spawn(_report, outcomes, node_id, call, self.replicas[node_id])

        results: list[T] = []
        errors: dict[str, str] = {}
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                node_id, ok, result = outcomes.get(timeout=max(0.0, deadline - time.monotonic()))
            except Empty:
                raise QuorumError(
                    Status.TIMEOUT,
                    tracker.acked,
                    required,
                    f"{tracker.acked} of {required} required replicas answered within {self.timeout:g} s",
                ) from None
            if ok:
                results.append(result)
                outcome = tracker.succeed()
            else:
                errors[node_id] = result
                outcome = tracker.fail()
            if outcome is Outcome.REACHED:
                return results
            if outcome is Outcome.LOST:
                reasons = "; ".join(f"{node}: {reason}" for node, reason in sorted(errors.items()))
                raise QuorumError(
                    Status.UNAVAILABLE,
                    tracker.acked,
                    required,
                    f"{tracker.acked} of {required} required replicas acked; "
                    f"{tracker.failed} of {len(owners)} failed ({reasons})",
                )


def _report(outcomes: Queue, node_id: str, call: Callable[[Replica], T], replica: Replica) -> None:
    try:
        outcomes.put((node_id, True, call(replica)))
    except Exception as exc:  # any failure of one replica is that replica's vote, not the request's end
        outcomes.put((node_id, False, str(exc) or type(exc).__name__))
