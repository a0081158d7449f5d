"""A read's decisions, without I/O: which replicas to ask, when to ask another, what to answer, and
which replicas need read repair.

Pure, in the step/tick style: the coordinator feeds a ``ReadPlan`` each replica's outcome
(``on_success``/``on_failure``) and the clock (``tick``) and does what it says (see ``quorum`` for the
decisions), so these rules are tested without greenlets, sockets or sleeps:

* a read asks R of the key's replicas that are not down, this node first when it is one (its answer
  costs no round trip), and replicas that are behind (a full or catching-up store may lack
  acknowledged writes) only after every other, as a last resort; fewer than R up fails UNAVAILABLE
  before anything is sent (``read_targets``);
* with probability ``read_repair_chance``, and always when R is every replica up, it asks them all
  instead (``asks_all``), so stale replicas outside the R get found;
* a replica that fails is replaced by the next one up (a spare);
* a speculative retry: while a read is still short of R replies ``SPECULATIVE_RETRY_FRACTION`` of
  the timeout after it started (or after the last speculative retry), it also asks the next spare,
  and the silent replica's answer still counts if it comes;
* at R replies it answers with the newest record; TIMEOUT at the deadline; UNAVAILABLE as soon as
  R is out of reach;
* after the answer, once every reply asked for is in (or the deadline passed), each replica that
  answered an older version, or nothing, is sent the newest one (``repairs``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from client.protocol import Record, Status
from service.quorum import Answer, Ask, Decision, QuorumFailure, QuorumRound
from service.versioning import newest, supersedes

SPECULATIVE_RETRY_FRACTION = 0.1
"""A read still short of R replies after this fraction of the request timeout (200 ms by default)
also asks the next replica up: a hung replica is not marked down for seconds, and its silence
must not cost every read of its keys the whole timeout."""


def _never(node_id: str) -> bool:
    return False


def read_targets(
    preferred: Sequence[str],
    is_down: Callable[[str], bool],
    node_id: str,
    r: int,
    is_behind: Callable[[str], bool] = _never,
) -> list[str]:
    """The replicas a read may ask, in the order it asks them: the ``preferred`` ones not down, those
    not behind first (a full or catching-up store may lack acknowledged writes, so it answers only
    when too few others can), and within each group ``node_id`` (this node) first if it is one.
    Raises ``QuorumFailure`` UNAVAILABLE if fewer than ``r`` are up."""
    up = [replica for replica in preferred if not is_down(replica)]
    if len(up) < r:
        raise QuorumFailure(
            Status.UNAVAILABLE,
            0,
            r,
            f"only {len(up)} of the key's {len(preferred)} replicas are up; the read needs {r}",
        )
    behind = [replica for replica in up if is_behind(replica)]
    if not behind:
        return _this_node_first(up, node_id)
    current = [replica for replica in up if replica not in behind]
    return _this_node_first(current, node_id) + _this_node_first(behind, node_id)


def _this_node_first(replicas: list[str], node_id: str) -> list[str]:
    if replicas and replicas[0] != node_id and node_id in replicas:
        replicas.remove(node_id)
        replicas.insert(0, node_id)
    return replicas


def asks_all(r: int, up: int, read_repair_chance: float, chance: Callable[[], float]) -> bool:
    """Whether a read asks all ``up`` replicas rather than ``r``: always when that is the same, else
    when ``chance()`` (uniform in [0, 1)) falls below ``read_repair_chance``."""
    return r == up or chance() < read_repair_chance


class ReadPlan(QuorumRound):
    """One read of R (``r``) of ``targets`` (from ``read_targets``), started at ``now``, with
    ``timeout`` seconds to get its replies.

    ``ask_first`` are the replicas to ask at once: all of ``targets`` with ``ask_all``, else the
    first ``r``, the rest being spares. ``on_success(node_id, record)`` and ``on_failure`` feed replies;
    ``tick(now)`` the clock; each returns an ``Ask``, the ``Answer``, a ``Fail`` or ``WAIT``.
    """

    def __init__(self, targets: list[str], r: int, *, ask_all: bool, now: float, timeout: float) -> None:
        super().__init__(r, len(targets), now=now, timeout=timeout)
        self.ask_first = targets if ask_all else targets[:r]
        self.asked = len(self.ask_first)
        self.records: dict[str, Record | None] = {}  # node id -> its reply
        self._spares = [] if ask_all else targets[r:]
        self._retry_after = timeout * SPECULATIVE_RETRY_FRACTION
        self._retry_at = now + self._retry_after

    @property
    def wake_at(self) -> float:
        if self._spares and not self.decided:
            return min(self.deadline, self._retry_at)
        return self.deadline

    def on_success(self, node_id: str, result: Any) -> Decision:
        """``node_id`` answered with ``result``, its record for the key (or ``None``)."""
        self.records[node_id] = result
        return super().on_success(node_id, result)

    def on_failure(self, node_id: str, reason: str) -> Decision:
        self.errors[node_id] = reason
        state = self.fail()
        if self._spares and not self.decided:
            # Still PENDING: a spare left means the replicas not yet failed can still make R.
            return self._ask_spare()
        return self._decide(state)

    def tick(self, now: float) -> Decision:
        if not self.decided and now < self.deadline and self._spares and now >= self._retry_at:
            self._retry_at = now + self._retry_after
            return self._ask_spare()  # speculative: the silent replica still counts if it answers
        return super().tick(now)

    def _ask_spare(self) -> Ask:
        self.asked += 1
        return Ask(self._spares.pop(0))

    def _reached(self) -> Decision:
        return Answer(newest(self.records.values()))

    @property
    def needs_repair(self) -> bool:
        """Whether read repair may have work: replies still to come, or replies that disagree."""
        return self.outstanding > 0 or len({None if r is None else r.version for r in self.records.values()}) > 1

    def repairs(self) -> tuple[Record, list[str]] | None:
        """Read repair, once the replies are in: the newest record among them and the replicas that
        answered an older one or nothing; ``None`` if no replica holds the key."""
        winner = newest(self.records.values())
        if winner is None:
            return None
        return winner, [node_id for node_id, record in self.records.items() if supersedes(winner, record)]
