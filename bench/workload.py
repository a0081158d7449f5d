"""What ``kv bench`` sends, and what the read-back check expects; pure, no I/O.

The operation mix (``Mix``), key choice (uniform or ``Zipfian``), key ownership, key names and
values, and each connection's ``WriteLedger``.

Read-back check. Every key is written (PUT or DELETE) by exactly one connection: a key drawn for a
write is moved, within its block of ``total connections`` consecutive keys, to the one this
connection owns. Reads use the drawn key. Each connection's ``WriteLedger`` then knows each key's
final state exactly: a write that had no other write to its key in flight on its connection, and
was acknowledged, decides the key (our coordinator stamps versions in arrival order, and Redis runs
a connection's commands in order). Keys whose last writes overlapped are skipped until a later
write settles them; keys with any failed or timed-out write are skipped for good, since whether
that write landed is unknown. After measurement each such key is read back (from our store with
R = N, so the newest replica wins) and compared with the expected value, or expected absence.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

OPS = ("get", "put", "delete")
KEY_PREFIX = b"bench:"
KEY_DIGITS = 10
"""Zero-padded width of key numbers: every key has the same length, whatever ``--keys`` is."""
MAX_THETA = 10.0
"""Zipf exponents above this put all but a sliver of the load on key 0: nothing left to measure."""
MAX_REJECTIONS = 64
"""Tries of the Zipf rejection step before taking the last candidate. A try is accepted with
probability above 0.98 (measured for n from 2 to 1e9 and theta from 0.01 to 10), so even 64
failures in a row at 1/2 each (below 1e-19) would never happen."""


# --- operation mix -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Mix:
    """Fractions of operations that are GET, PUT and DELETE; they add up to 1."""

    get: float
    put: float
    delete: float

    def choose(self, u: float) -> str:
        """The operation for a uniform random ``u`` in [0, 1)."""
        if u < self.get:
            return "get"
        if u < self.get + self.put:
            return "put"
        return "delete" if self.delete > 0 else ("put" if self.put > 0 else "get")

    @property
    def writes(self) -> bool:
        return self.put > 0 or self.delete > 0

    def describe(self) -> str:
        """As ``parse_mix`` reads it, in percent: ``get=50,put=50,delete=0``."""
        return ",".join(f"{op}={getattr(self, op) * 100:.4g}" for op in OPS)


def parse_mix(text: str) -> Mix:
    """``"get=50,put=50,delete=0"`` (ratios, any scale; missing ops are 0) as a ``Mix``."""
    weights = dict.fromkeys(OPS, 0.0)
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        name, sep, number = item.partition("=")
        name = name.strip().lower()
        if not sep or name not in weights:
            raise ValueError(f"{item!r} is not op=ratio with op one of {', '.join(OPS)}")
        try:
            weight = float(number)
        except ValueError:
            raise ValueError(f"ratio {number.strip()!r} of {name} is not a number") from None
        if not math.isfinite(weight) or weight < 0:
            raise ValueError(f"ratio of {name} must be a finite number >= 0")
        weights[name] = weight
    total = sum(weights.values())
    if total <= 0:
        raise ValueError("the mix needs at least one op with a ratio above 0")
    return Mix(*(weights[op] / total for op in OPS))


# --- key choice ------------------------------------------------------------------------------------


class Zipfian:
    """Zipf-distributed ranks 0..n-1 (0 the most popular): P(rank k) = (k+1) ** -theta / H(n, theta).

    Exact, in constant time and memory, by rejection-inversion (Hormann and Derflinger, "Rejection-
    inversion to generate variates from monotone discrete distributions", 1996; the method of Apache
    Commons' Zipf sampler). YCSB's faster formula (Gray et al., 1994) over-weights ranks 2-4 by up to
    a fifth, so the hottest keys after the first two would be hotter than the skew asked for.
    Works for any exponent ``theta`` > 0, at 1 too; theta = 0 is the uniform distribution.
    """

    def __init__(self, n: int, theta: float) -> None:
        if n < 1:
            raise ValueError("a zipfian distribution needs at least one item")
        if not 0 <= theta <= MAX_THETA:
            raise ValueError(f"zipfian theta must be in [0, {MAX_THETA:g}], not {theta}")
        self.n = n
        self.theta = theta
        self._h_integral_x1 = self._h_integral(1.5) - 1.0
        self._h_integral_n = self._h_integral(n + 0.5)
        self._s = 2 - self._h_integral_inverse(self._h_integral(2.5) - self._h(2))

    def index(self, random: Callable[[], float]) -> int:
        """A rank, drawing uniform numbers in [0, 1) from ``random`` (1.02 of them on average)."""
        if self.n == 1:
            return 0
        if self.theta == 0:
            return min(int(random() * self.n), self.n - 1)
        k = 1
        for _ in range(MAX_REJECTIONS):
            u = self._h_integral_n + random() * (self._h_integral_x1 - self._h_integral_n)
            x = self._h_integral_inverse(u)
            k = self.n if x >= self.n else max(int(x + 0.5), 1)
            if k - x <= self._s or u >= self._h_integral(k + 0.5) - self._h(k):
                break
        return k - 1

    def _h(self, x: float) -> float:
        return math.exp(-self.theta * math.log(x))

    def _h_integral(self, x: float) -> float:
        """The integral of h from 1 to x, defined at theta = 1 too (then it is log x)."""
        log_x = math.log(x)
        return _expm1_over_x((1 - self.theta) * log_x) * log_x

    def _h_integral_inverse(self, x: float) -> float:
        t = x * (1 - self.theta)
        if t <= -1.0:  # the limit, which rounding can reach or step past: log1p(t) / t * x -> +-inf
            return math.inf if x > 0 else 0.0
        try:
            return math.exp(_log1p_over_x(t) * x)
        except OverflowError:
            return math.inf


def _log1p_over_x(x: float) -> float:
    """log(1 + x) / x, accurate near 0 (series) where the plain formula cancels."""
    if abs(x) > 1e-8:
        return math.log1p(x) / x
    return 1 - x * (0.5 - x * (1 / 3 - 0.25 * x))


def _expm1_over_x(x: float) -> float:
    """(exp(x) - 1) / x, accurate near 0 (series) where the plain formula cancels."""
    if abs(x) > 1e-8:
        return math.expm1(x) / x
    return 1 + x * 0.5 * (1 + x / 3 * (1 + 0.25 * x))


class KeyChooser:
    """Key numbers 0..keys-1, uniform or zipfian, from a source of uniform random numbers."""

    def __init__(self, keys: int, distribution: str, theta: float) -> None:
        if keys < 1:
            raise ValueError("--keys must be at least 1")
        if distribution not in ("uniform", "zipfian"):
            raise ValueError(f"unknown distribution {distribution!r}")
        self._zipfian = Zipfian(keys, theta if distribution == "zipfian" else 0.0)

    def index(self, random: Callable[[], float]) -> int:
        return self._zipfian.index(random)


def owned_index(index: int, connection: int, connections: int, keys: int) -> int:
    """The key of ``connection``'s in ``index``'s block of ``connections`` keys (its writes go there).

    Key k belongs to connection ``k % connections``. Requires ``keys >= connections``.
    """
    owned = index - index % connections + connection
    return owned if owned < keys else owned - connections


def key_name(index: int) -> bytes:
    return KEY_PREFIX + b"%0*d" % (KEY_DIGITS, index)


def make_value(connection: int, sequence: int, size: int) -> bytes:
    """The value of ``connection``'s write number ``sequence``: unique while ``size`` fits the tag."""
    tag = b"%d:%d:" % (connection, sequence)
    return (tag + b"." * max(size - len(tag), 0))[:size]


# --- the read-back ledger --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class WriteToken:
    key: int
    expected: int | None  # the write's sequence number, or None for a DELETE


@dataclass
class WriteLedger:
    """Which write decides each key's final value, for the keys where that is known exactly.

    A write decides its key if it was acknowledged and no other write to the key was in flight at
    any moment of its flight. A write that overlapped another leaves the key unknown until a later,
    non-overlapping write; a failed write makes the key unknown for good.
    """

    expected: dict[int, int | None] = field(default_factory=dict)
    uncertain: set[int] = field(default_factory=set)
    written: set[int] = field(default_factory=set)
    _pending: Counter[int] = field(default_factory=Counter)
    _overlapped: set[int] = field(default_factory=set)

    def begin(self, key: int, expected: int | None) -> WriteToken:
        """Note a write about to be sent: ``expected`` is its sequence number, or None for DELETE."""
        if self._pending[key]:
            self._overlapped.add(key)
        self._pending[key] += 1
        self.written.add(key)
        return WriteToken(key, expected)

    def finish(self, token: WriteToken, ok: bool) -> None:
        key = token.key
        self._pending[key] -= 1
        if not ok:
            self.uncertain.add(key)
        elif key not in self._overlapped:
            self.expected[key] = token.expected
        if not self._pending[key]:
            del self._pending[key]
            if key in self._overlapped:
                self._overlapped.discard(key)
                self.expected.pop(key, None)

    def checkable(self) -> dict[int, int | None]:
        """Each key whose final state is known: its last sequence number, or None if deleted.

        A key with a write still pending (its lane was ended mid-request) is not: that write may land.
        """
        return {
            key: value for key, value in self.expected.items() if key not in self.uncertain and key not in self._pending
        }

    @property
    def skipped(self) -> int:
        """Keys written but not checkable: a failed write, or overlapping last writes."""
        return len(self.written) - len(self.checkable())
