"""One partition's handoff to a new owner, as a state machine driven by events: no sockets, no sleeps.

In the style of toydb's Raft node: the receiving node's streaming shell (``service.streaming``)
feeds a ``Transfer`` what happened (``step``: a page was copied, a source failed, the digests
matched or not) and the time (``tick``), and carries out the ``Action``\\ s it returns (ask a source
for a page from a cursor, save the checkpoint, compare digests, mark the partition done). Tests
drive it the same way, with a clock they choose.

The phases::

    PENDING --start--> STREAMING(cursor) --last page--> VERIFYING --digests match--> DONE
                          ^   |  source fails: the next source, from the same cursor     |
                          |   v  every source failed since the last progress             | digests differ
                          +-- FAILED --tick after the back-off: retry------------------- + (a delta pass
                                                                                          from the start)

* **Pages and cursors.** A partition is listed in key order, the same on every replica, so a cursor
  from one source is valid on another: switching source resumes where the last one stopped.
* **Checkpoints.** After each page is written (durably) the machine asks for the cursor to be saved;
  a receiver restarted after a crash builds its ``Transfer`` from the saved ``Checkpoint`` and
  resumes there. A page copied twice does no harm: the store keeps the newer version of each key.
* **Pacing.** A token bucket (``Pace``) of ``rate_bytes_per_s`` and ``burst_bytes``: each page's
  bytes are debited when it arrives, and the next page is asked for once the bucket is no longer in
  debt. Many transfers may share one bucket (a node's streams together keep the node's rate); a
  transfer without one is given a bucket of its own.
* **Verification.** The last page copied, the receiver's partition digest is compared with the
  source's (``anti_entropy``'s digests). Writes during the move reach both, so they match once the
  copy is whole; a mismatch (a write in flight, a write that reached one side only) starts a delta
  pass from the first key, which copies only what the receiver lacks or holds older. A whole pass
  from one source that finds nothing to copy verifies the partition too, by listing: the receiver
  holds every key the source listed at the same version or a newer one. That is the case the digests
  can never settle: the receiver took a write during the move that this source missed (it was down
  for it, and the write went to it as a hint), and streaming never writes to a source. After
  ``verify_rounds`` mismatches in a row the transfer fails and retries after the back-off.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass


class Phase(enum.Enum):
    PENDING = "pending"
    STREAMING = "streaming"
    VERIFYING = "verifying"
    DONE = "done"
    FAILED = "failed"


@dataclass(frozen=True)
class Checkpoint:
    """What a receiver saves to resume after a crash: the cursor after the last page written (empty:
    the start), and whether every page was copied (only verification remains)."""

    cursor: bytes = b""
    complete: bool = False


@dataclass(frozen=True)
class TransferSettings:
    rate_bytes_per_s: float = 0.0
    """Pace: bytes per second copied on average (``KV_STREAM_RATE_MBPS``); 0: unpaced."""
    burst_bytes: int = 1 << 20
    """Bytes the pace lets through at once after an idle spell: about one page."""
    retry_after_s: float = 1.0
    """Back-off after every source failed: doubled after each failed retry, up to ``retry_max_s``."""
    retry_max_s: float = 30.0
    verify_rounds: int = 3
    """Digest mismatches in a row (each followed by a delta pass) before the transfer fails."""


class Pace:
    """A token bucket: ``rate_bytes_per_s`` on average (0: unpaced), up to ``burst_bytes`` at once
    after an idle spell. Times are seconds on the monotonic clock of the transfers sharing it."""

    def __init__(self, rate_bytes_per_s: float, burst_bytes: int) -> None:
        self.rate_bytes_per_s = rate_bytes_per_s
        self.burst_bytes = burst_bytes
        self._budget = float(burst_bytes)
        self._budget_at: float | None = None  # when the budget was last refilled; None: never used

    def spend(self, size: int, now: float) -> None:
        """``size`` bytes arrived at ``now``: debit them (the budget may go into debt)."""
        if self.rate_bytes_per_s > 0:
            self._refill(now)
            self._budget -= size

    def ready_at(self, now: float) -> float | None:
        """``None`` if the next page may be asked for now; else when the debt is paid."""
        if self.rate_bytes_per_s <= 0:
            return None
        self._refill(now)
        if self._budget > -1.0:  # less than a byte of debt is float rounding of a debt just paid
            return None
        return now + -self._budget / self.rate_bytes_per_s

    def _refill(self, now: float) -> None:
        if self._budget_at is not None:
            elapsed = max(0.0, now - self._budget_at)
            self._budget = min(float(self.burst_bytes), self._budget + elapsed * self.rate_bytes_per_s)
        self._budget_at = now if self._budget_at is None else max(self._budget_at, now)


# --- events: what the shell tells the machine ---------------------------------------------------


@dataclass(frozen=True)
class PageCopied:
    """A page from ``source`` is written here. ``cursor``: the next page's (empty: that was the
    last); ``size``: bytes fetched for it (listing and records); ``keys``: records written."""

    source: str
    cursor: bytes
    size: int
    keys: int


@dataclass(frozen=True)
class SourceFailed:
    """``source`` did not answer, refused, or went away; ``reason`` says how."""

    source: str
    reason: str


@dataclass(frozen=True)
class DigestsCompared:
    """The partition's digest here was compared with ``source``'s."""

    source: str
    matched: bool


Event = PageCopied | SourceFailed | DigestsCompared


# --- actions: what the machine asks the shell to do -----------------------------------------------


@dataclass(frozen=True)
class RequestPage:
    """Fetch the page after ``cursor`` from ``source``, write it here, then report ``PageCopied``.
    ``delta``: a pass after the digests differed, which should move only what differs (list the
    keys, fetch the newer ones) rather than every record again."""

    source: str
    cursor: bytes
    delta: bool = False


@dataclass(frozen=True)
class SaveCheckpoint:
    """Persist ``checkpoint`` durably (the pages it covers are written already)."""

    checkpoint: Checkpoint


@dataclass(frozen=True)
class CompareDigests:
    """Compare this partition's digest here with ``source``'s, then report ``DigestsCompared``."""

    source: str


@dataclass(frozen=True)
class MarkDone:
    """The partition is here whole: the transfer is over (the membership change may switch owners)."""


@dataclass(frozen=True)
class ReportFailure:
    """Every source failed (or the digests kept differing): the transfer waits until ``retry_at``."""

    reason: str
    retry_at: float


Action = RequestPage | SaveCheckpoint | CompareDigests | MarkDone | ReportFailure


class Transfer:
    """One partition's handoff to this node. ``sources``: the old owners to copy from, preferred
    first (``ownership.Move.sources``); ``checkpoint``: where a previous run stopped; ``pace``: the
    token bucket it shares with other transfers (default: its own, of the settings' rate and
    burst). Times are seconds on any monotonic clock, the same one for every call. Raises
    ``ValueError`` without a source."""

    def __init__(
        self,
        partition: int,
        sources: Sequence[str],
        settings: TransferSettings,
        checkpoint: Checkpoint | None = None,
        pace: Pace | None = None,
    ) -> None:
        if not sources:
            raise ValueError(f"partition {partition}: a transfer needs at least one source")
        self.partition = partition
        self.sources = tuple(sources)
        self.settings = settings
        self.checkpoint = checkpoint or Checkpoint()
        self.phase = Phase.PENDING
        self.source = self.sources[0]
        self.last_error = ""
        self.bytes_copied = 0
        self.keys_copied = 0
        self.pages_copied = 0
        self.retries = 0  # failed retries in a row, for the back-off
        self.retry_at: float | None = None
        self.verified_by = ""  # once done: "digests", or "listing" (a pass found nothing to copy)
        self._pass_source = ""  # the source of the pass under way, while one source served all of it
        self._pass_keys = 0  # records the pass under way copied so far
        self._delta = False  # the digests differed once: passes from now on move only what differs
        self._failures = 0  # sources that failed since the last progress
        self._mismatches = 0
        self.pace = pace or Pace(settings.rate_bytes_per_s, settings.burst_bytes)
        self._waiting = False  # a request (page or digests) is out; no other is made meanwhile
        self._resume_at: float | None = None  # paced: the next page is asked for then

    @property
    def finished(self) -> bool:
        return self.phase is Phase.DONE

    @property
    def cursor(self) -> bytes:
        return self.checkpoint.cursor

    def next_wake(self) -> float | None:
        """When ``tick`` has something to do: the paced next page or the retry; ``None``: only an
        event moves the machine now."""
        if self.phase is Phase.FAILED:
            return self.retry_at
        return self._resume_at

    # --- inputs -----------------------------------------------------------------------------------

    def start(self, now: float) -> list[Action]:
        """Begin (or resume from the checkpoint): the first page, or verification if every page is in."""
        if self.phase is not Phase.PENDING:
            return []
        return self._proceed(now)

    def tick(self, now: float) -> list[Action]:
        """Time passed: a paced page may go out, a failed transfer may retry."""
        if self.phase is Phase.FAILED and self.retry_at is not None and now >= self.retry_at:
            self.retry_at = None
            self._failures = 0
            self._mismatches = 0
            self.source = self._next_source()
            return self._proceed(now)
        if self.phase is Phase.STREAMING and self._resume_at is not None and now >= self._resume_at:
            self._resume_at = None
            return self._request_page(now)  # waits again if transfers sharing the pace spent meanwhile
        return []

    def step(self, event: Event, now: float) -> list[Action]:
        """Take one event from the shell. Events that answer no request the machine made (late, or
        from a source it already left) are ignored."""
        if not self._waiting or event.source != self.source:
            return []
        self._waiting = False
        match event:
            case PageCopied() if self.phase is Phase.STREAMING:
                return self._page_copied(event, now)
            case DigestsCompared() if self.phase is Phase.VERIFYING:
                return self._compared(event.matched, now)
            case SourceFailed():
                return self._source_failed(event.reason, now)
        self._waiting = True  # an event of the wrong kind for the phase: still waiting for ours
        return []

    # --- transitions ------------------------------------------------------------------------------

    def _proceed(self, now: float) -> list[Action]:
        if self.checkpoint.complete:
            self.phase = Phase.VERIFYING
            self._waiting = True
            return [CompareDigests(self.source)]
        self.phase = Phase.STREAMING
        return self._request_page(now)

    def _request_page(self, now: float) -> list[Action]:
        ready_at = self.pace.ready_at(now)
        if ready_at is not None:  # in debt: wait until the pace has paid for the last pages
            self._resume_at = ready_at
            return []
        self._waiting = True
        if not self.checkpoint.cursor:  # a pass from the first key begins
            self._pass_source = self.source
            self._pass_keys = 0
        return [RequestPage(self.source, self.checkpoint.cursor, self._delta)]

    def _page_copied(self, event: PageCopied, now: float) -> list[Action]:
        self._failures = 0
        self.retries = 0
        self.bytes_copied += event.size
        self.keys_copied += event.keys
        self.pages_copied += 1
        self._pass_keys += event.keys
        if event.source != self._pass_source:
            self._pass_source = ""  # pages from two sources: the pass proves nothing about either
        self.pace.spend(event.size, now)
        self.checkpoint = Checkpoint(event.cursor, complete=not event.cursor)
        actions: list[Action] = [SaveCheckpoint(self.checkpoint)]
        if self.checkpoint.complete and self._pass_source == self.source and not self._pass_keys:
            self.phase = Phase.DONE
            self.verified_by = "listing"
            actions.append(MarkDone())
        elif self.checkpoint.complete:
            self.phase = Phase.VERIFYING
            self._waiting = True
            actions.append(CompareDigests(self.source))
        else:
            actions += self._request_page(now)
        return actions

    def _compared(self, matched: bool, now: float) -> list[Action]:
        if matched:
            self.phase = Phase.DONE
            self.verified_by = "digests"
            return [MarkDone()]
        self._mismatches += 1
        self._delta = True
        self.checkpoint = Checkpoint()
        if self._mismatches >= self.settings.verify_rounds:
            return [SaveCheckpoint(self.checkpoint), *self._fail(f"digests differed {self._mismatches} times", now)]
        self.phase = Phase.STREAMING
        return [SaveCheckpoint(self.checkpoint), *self._request_page(now)]

    def _source_failed(self, reason: str, now: float) -> list[Action]:
        self.last_error = f"{self.source}: {reason}"
        self._failures += 1
        if self._failures >= len(self.sources):
            return self._fail(f"every source failed; last {self.last_error}", now)
        self.source = self._next_source()
        return self._proceed(now)

    def _fail(self, reason: str, now: float) -> list[Action]:
        self.phase = Phase.FAILED
        self.last_error = reason
        # The exponent is capped: past it the delay is retry_max_s anyway, and 2**retries must not overflow.
        delay = min(self.settings.retry_after_s * 2 ** min(self.retries, 32), self.settings.retry_max_s)
        self.retries += 1
        self.retry_at = now + delay
        self._resume_at = None
        return [ReportFailure(reason, self.retry_at)]

    def _next_source(self) -> str:
        return self.sources[(self.sources.index(self.source) + 1) % len(self.sources)]
