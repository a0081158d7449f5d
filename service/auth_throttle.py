"""Slowing down password guessing: failed authentications from one address space its next attempts
out; pure (the caller passes the time).

The first ``FREE_FAILURES`` failures from an address cost nothing (typos). After that, each attempt
from that address gets a turn: the first one right after the wait that follows the last failure,
the next one a wait later, and so on, the wait doubling with each further failure up to
``MAX_DELAY``. Turns are handed out as attempts arrive, so many connections from one address guess
no faster than one: their attempts are queued one wait apart. An attempt whose turn would come more
than ``MAX_WAIT`` from now is refused at once, without its proof being checked, so a connection
never waits long and a flood of attempts costs the node nothing. A success forgets the address;
so does ``FORGET_AFTER`` without a failure. At most ``MAX_ADDRESSES`` addresses are remembered (the
oldest forgotten first), so memory stays bounded whatever an attacker does.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

FREE_FAILURES = 3
FIRST_DELAY = 0.25
"""Seconds between attempts after the first failure past the free ones; doubled for each next one."""
MAX_DELAY = 5.0
MAX_WAIT = 10.0
"""The longest an attempt is made to wait for its turn; one that would wait longer is refused."""
FORGET_AFTER = 15 * 60.0
MAX_ADDRESSES = 10_000


@dataclass
class _Record:
    failures: int
    last_failure: float
    next_turn: float


class AuthThrottle:
    """Per-address failure counts and the turns they give (see the module docstring)."""

    def __init__(self) -> None:
        self._records: OrderedDict[str, _Record] = OrderedDict()

    def turn(self, address: str, now: float) -> float | None:
        """Seconds an attempt from ``address`` must wait before its proof is checked (0: at once),
        or ``None``: refuse it now, the wait would exceed ``MAX_WAIT``."""
        record = self._records.get(address)
        if record is None or record.failures < FREE_FAILURES:
            return 0.0
        if now - record.last_failure > FORGET_AFTER:
            del self._records[address]
            return 0.0
        turn = max(now, record.next_turn)
        if turn - now > MAX_WAIT:
            return None
        record.next_turn = turn + delay_after(record.failures)
        return turn - now

    def failed(self, address: str, now: float) -> int:
        """An attempt from ``address`` failed; how many have failed in a row from there."""
        record = self._records.pop(address, None)
        if record is None or now - record.last_failure > FORGET_AFTER:
            record = _Record(0, now, now)
        record.failures += 1
        record.last_failure = now
        if record.failures >= FREE_FAILURES:
            record.next_turn = max(record.next_turn, now + delay_after(record.failures))
        self._records[address] = record  # to the end: the most recently failed
        while len(self._records) > MAX_ADDRESSES:
            self._records.popitem(last=False)
        return record.failures

    def succeeded(self, address: str) -> None:
        self._records.pop(address, None)

    def __len__(self) -> int:
        return len(self._records)


def delay_after(failures: int) -> float:
    """Seconds between attempts after ``failures`` failures in a row (0 while they are free)."""
    if failures < FREE_FAILURES:
        return 0.0
    return min(MAX_DELAY, FIRST_DELAY * 2.0 ** (failures - FREE_FAILURES))
