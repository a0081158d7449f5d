"""The per-partition handoff state machine, driven by events and a clock the test chooses."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from service.transfer import (
    Action,
    Checkpoint,
    CompareDigests,
    DigestsCompared,
    MarkDone,
    Pace,
    PageCopied,
    Phase,
    ReportFailure,
    RequestPage,
    SaveCheckpoint,
    SourceFailed,
    Transfer,
    TransferSettings,
)

pytestmark = pytest.mark.unit

UNPACED = TransferSettings()


def transfer(
    sources: tuple[str, ...] = ("a", "b"), settings: TransferSettings = UNPACED, **kwargs: Checkpoint
) -> Transfer:
    return Transfer(7, sources, settings, **kwargs)


# --- the happy path --------------------------------------------------------------------------------


def test_pages_then_verification_then_done() -> None:
    t = transfer()
    assert t.phase is Phase.PENDING
    assert t.start(0.0) == [RequestPage("a", b"")]
    assert t.phase is Phase.STREAMING
    assert t.step(PageCopied("a", b"k5", 100, 5), 0.1) == [SaveCheckpoint(Checkpoint(b"k5")), RequestPage("a", b"k5")]
    assert t.step(PageCopied("a", b"", 40, 2), 0.2) == [SaveCheckpoint(Checkpoint(b"", True)), CompareDigests("a")]
    assert t.phase is Phase.VERIFYING
    assert t.step(DigestsCompared("a", matched=True), 0.3) == [MarkDone()]
    assert t.finished
    assert t.verified_by == "digests"
    assert (t.bytes_copied, t.keys_copied, t.pages_copied) == (140, 7, 2)


def test_start_twice_does_nothing_the_second_time() -> None:
    t = transfer()
    t.start(0.0)
    assert t.start(1.0) == []


def test_no_source_is_refused() -> None:
    with pytest.raises(ValueError, match="at least one source"):
        Transfer(3, (), UNPACED)


# --- resumption from a checkpoint ---------------------------------------------------------------------


def test_a_restarted_receiver_resumes_at_its_saved_cursor() -> None:
    t = transfer(checkpoint=Checkpoint(b"k42"))
    assert t.start(0.0) == [RequestPage("a", b"k42")]


def test_a_receiver_restarted_after_the_last_page_only_verifies() -> None:
    t = transfer(checkpoint=Checkpoint(b"", complete=True))
    assert t.start(0.0) == [CompareDigests("a")]
    assert t.phase is Phase.VERIFYING


# --- source failures ----------------------------------------------------------------------------------


def test_a_failed_source_is_replaced_by_the_next_from_the_same_cursor() -> None:
    t = transfer()
    t.start(0.0)
    t.step(PageCopied("a", b"k5", 10, 1), 0.0)
    assert t.step(SourceFailed("a", "connection reset"), 0.1) == [RequestPage("b", b"k5")]
    assert t.source == "b"
    assert t.last_error == "a: connection reset"


def test_a_source_failing_during_verification_is_replaced_there() -> None:
    t = transfer(checkpoint=Checkpoint(b"", complete=True))
    t.start(0.0)
    assert t.step(SourceFailed("a", "down"), 0.1) == [CompareDigests("b")]


def test_every_source_failing_waits_then_retries_with_growing_back_off() -> None:
    t = transfer(settings=TransferSettings(retry_after_s=1.0, retry_max_s=3.0))
    t.start(0.0)
    t.step(SourceFailed("a", "down"), 0.0)
    actions = t.step(SourceFailed("b", "down"), 0.0)
    assert actions == [ReportFailure("every source failed; last b: down", 1.0)]
    assert t.phase is Phase.FAILED
    assert t.next_wake() == 1.0
    assert t.tick(0.99) == []
    assert t.tick(1.0) == [RequestPage("a", b"")]  # round robin: after b comes a
    t.step(SourceFailed("a", "down"), 1.0)
    assert t.step(SourceFailed("b", "down"), 1.0) == [ReportFailure("every source failed; last b: down", 3.0)]
    t.tick(3.0)
    t.step(SourceFailed("a", "down"), 3.0)
    assert t.step(SourceFailed("b", "down"), 3.0)[0] == ReportFailure("every source failed; last b: down", 6.0)


def test_progress_resets_the_failure_count_and_the_back_off() -> None:
    t = transfer()
    t.start(0.0)
    t.step(SourceFailed("a", "down"), 0.0)
    t.step(PageCopied("b", b"k1", 1, 1), 0.0)
    assert t.step(SourceFailed("b", "down"), 0.0) == [RequestPage("a", b"k1")]  # not FAILED: a had its turn before
    assert t.phase is Phase.STREAMING


def test_a_lone_source_that_fails_fails_the_transfer() -> None:
    t = transfer(("a",))
    t.start(0.0)
    assert isinstance(t.step(SourceFailed("a", "gone"), 0.0)[0], ReportFailure)
    assert t.tick(1.0) == [RequestPage("a", b"")]


# --- events that answer nothing ------------------------------------------------------------------------


def test_events_from_a_source_already_left_are_ignored() -> None:
    t = transfer()
    t.start(0.0)
    t.step(SourceFailed("a", "slow"), 0.0)
    assert t.step(PageCopied("a", b"zz", 5, 1), 0.1) == []  # a late answer from a
    assert t.cursor == b""
    assert t.step(SourceFailed("a", "slow"), 0.1) == []


def test_events_while_nothing_is_asked_are_ignored() -> None:
    t = transfer()
    assert t.step(PageCopied("a", b"k", 1, 1), 0.0) == []  # not started
    t.start(0.0)
    t.step(PageCopied("a", b"", 1, 1), 0.0)
    assert t.step(PageCopied("a", b"k", 1, 1), 0.0) == []  # verifying: a page is not what it waits for
    assert t.step(DigestsCompared("a", matched=True), 0.0) == [MarkDone()]
    assert t.step(DigestsCompared("a", matched=True), 0.0) == []  # done


def test_a_digest_result_while_streaming_is_ignored() -> None:
    t = transfer()
    t.start(0.0)
    assert t.step(DigestsCompared("a", matched=True), 0.0) == []
    assert t.step(PageCopied("a", b"", 1, 1), 0.0)[-1] == CompareDigests("a")


# --- verification ---------------------------------------------------------------------------------------


def test_a_mismatch_starts_a_delta_pass_from_the_start() -> None:
    t = transfer()
    t.start(0.0)
    t.step(PageCopied("a", b"", 10, 1), 0.0)
    assert t.step(DigestsCompared("a", matched=False), 0.0) == [
        SaveCheckpoint(Checkpoint()),
        RequestPage("a", b"", delta=True),
    ]
    assert t.phase is Phase.STREAMING
    assert t.step(PageCopied("a", b"k1", 10, 1), 0.0)[-1] == RequestPage("a", b"k1", delta=True)


def test_repeated_mismatches_fail_then_retry_with_a_new_pass() -> None:
    t = transfer(settings=TransferSettings(verify_rounds=2, retry_after_s=5.0))
    t.start(0.0)
    t.step(PageCopied("a", b"", 10, 1), 0.0)
    t.step(DigestsCompared("a", matched=False), 0.0)
    t.step(PageCopied("a", b"", 10, 1), 0.0)
    actions = t.step(DigestsCompared("a", matched=False), 0.0)
    assert actions == [SaveCheckpoint(Checkpoint()), ReportFailure("digests differed 2 times", 5.0)]
    assert t.tick(5.0) == [RequestPage("b", b"", delta=True)]  # and another source's view this time


# --- pacing -------------------------------------------------------------------------------------------


def test_pages_are_paced_to_the_rate() -> None:
    t = transfer(settings=TransferSettings(rate_bytes_per_s=1000.0, burst_bytes=1000))
    t.start(0.0)
    # The burst pays for the first 1000 bytes; this page costs 3000, so 2 s of debt.
    assert t.step(PageCopied("a", b"k1", 3000, 3), 0.0) == [SaveCheckpoint(Checkpoint(b"k1"))]
    assert t.next_wake() == pytest.approx(2.0)
    assert t.tick(1.5) == []
    assert t.tick(2.0) == [RequestPage("a", b"k1")]
    assert t.next_wake() is None


def test_an_idle_spell_refills_only_up_to_the_burst() -> None:
    t = transfer(settings=TransferSettings(rate_bytes_per_s=100.0, burst_bytes=500))
    t.start(0.0)
    t.step(PageCopied("a", b"k1", 500, 1), 100.0)  # 100 s idle: the bucket is still only 500
    assert t.step(PageCopied("a", b"k2", 100, 1), 100.0) == [SaveCheckpoint(Checkpoint(b"k2"))]
    assert t.next_wake() == pytest.approx(101.0)


def test_unpaced_never_waits() -> None:
    t = transfer()
    t.start(0.0)
    for i in range(100):
        assert t.step(PageCopied("a", b"k%d" % i, 10**9, 1), 0.0)[-1] == RequestPage("a", b"k%d" % i)
    assert t.next_wake() is None


def test_transfers_sharing_a_pace_keep_its_rate_together() -> None:
    pace = Pace(rate_bytes_per_s=1000.0, burst_bytes=1000)
    one, two = (Transfer(partition, ("a",), UNPACED, pace=pace) for partition in (1, 2))  # the pace, not the settings
    assert one.start(0.0) == two.start(0.0) == [RequestPage("a", b"")]
    one.step(PageCopied("a", b"k1", 3000, 3), 0.0)  # the burst and 2000 bytes of debt
    two.step(PageCopied("a", b"k1", 500, 1), 0.0)  # 500 more
    assert (one.next_wake(), two.next_wake()) == (pytest.approx(2.0), pytest.approx(2.5))
    assert one.tick(2.0) == []  # two's page is not paid for yet
    assert one.next_wake() == pytest.approx(2.5)
    assert one.tick(2.5) == two.tick(2.5) == [RequestPage("a", b"k1")]


def test_a_transfer_started_on_a_pace_in_debt_gets_no_burst_of_its_own() -> None:
    pace = Pace(rate_bytes_per_s=1000.0, burst_bytes=1000)
    first = Transfer(1, ("a",), UNPACED, pace=pace)
    first.start(0.0)
    first.step(PageCopied("a", b"", 3000, 3), 0.0)  # the whole partition: 2 s of debt
    second = Transfer(2, ("a",), UNPACED, pace=pace)
    assert second.start(1.0) == []
    assert second.next_wake() == pytest.approx(2.0)
    assert second.tick(2.0) == [RequestPage("a", b"")]


# --- a simulated run --------------------------------------------------------------------------------------


class FakeSources:
    """Sources holding one sorted key list; pages of ``page`` keys; each request fails when the
    script says so."""

    def __init__(self, keys: list[bytes], page: int, failures: list[bool]) -> None:
        self.keys = keys
        self.page = page
        self.failures = failures
        self.received: set[bytes] = set()
        self.saved: Checkpoint | None = None
        self.fetched = 0  # bytes of every page served, repeats included

    def answer(self, action: Action) -> PageCopied | SourceFailed | DigestsCompared | None:
        if isinstance(action, SaveCheckpoint):
            self.saved = action.checkpoint
            return None
        if isinstance(action, MarkDone | ReportFailure):
            return None
        assert isinstance(action, RequestPage | CompareDigests)
        if self.failures and self.failures.pop(0):
            return SourceFailed(action.source, "scripted failure")
        if isinstance(action, CompareDigests):
            return DigestsCompared(action.source, self.received == set(self.keys))
        after = [key for key in self.keys if key > action.cursor] if action.cursor else self.keys
        page = after[: self.page]
        self.received.update(page)
        self.fetched += 10 * len(page)
        cursor = page[-1] if len(after) > self.page else b""
        return PageCopied(action.source, cursor, 10 * len(page), len(page))


@settings(max_examples=200, deadline=None)
@given(
    st.sets(st.binary(min_size=1, max_size=4), max_size=40),
    st.integers(min_value=1, max_value=7),
    st.lists(st.booleans(), max_size=30),
    st.integers(min_value=0, max_value=5),
)
def test_any_run_with_failures_and_crashes_ends_with_every_key(
    keys: set[bytes], page: int, failures: list[bool], crash_after: int
) -> None:
    sources = FakeSources(sorted(keys), page, failures)
    machine = transfer(("a", "b", "c"), TransferSettings(rate_bytes_per_s=50.0, burst_bytes=20))
    now = 0.0
    pending = machine.start(now)
    steps = 0
    starts = 1
    while not machine.finished:
        steps += 1
        assert steps < 10_000
        if steps == crash_after and sources.saved is not None:  # the receiver restarts from its checkpoint
            machine = transfer(("a", "b", "c"), machine.settings, checkpoint=sources.saved)
            pending = machine.start(now)
            starts += 1
            continue
        if not pending:
            wake = machine.next_wake()
            assert wake is not None and wake > now, "stuck: nothing asked and nothing to wait for"
            now = wake
            pending = machine.tick(now)
            continue
        action = pending.pop(0)
        if isinstance(action, RequestPage | CompareDigests):
            assert action.source in ("a", "b", "c")
        event = sources.answer(action)
        if event is not None:
            pending += machine.step(event, now)
    assert sources.received == keys
    # 50 bytes/s with a 20-byte burst: each start may take a burst and a page before it waits.
    assert now >= (sources.fetched - starts * (20 + 10 * page)) / 50 - 1e-9


def test_the_back_off_stops_growing_at_its_maximum_however_many_retries() -> None:
    t = transfer(("a",), TransferSettings(retry_after_s=1.0, retry_max_s=30.0))
    t.start(0.0)
    now = 0.0
    for _ in range(2000):  # 2**2000 seconds would not even fit a float
        (failure,) = t.step(SourceFailed("a", "down"), now)
        assert isinstance(failure, ReportFailure)
        assert failure.retry_at - now <= 30.0
        now = failure.retry_at
        t.tick(now)
    assert failure.retry_at - (now - 30.0) == 30.0


def test_a_whole_pass_from_one_source_that_copies_nothing_verifies_by_listing() -> None:
    """The receiver holds everything the source lists (some of it newer): the digests would differ
    for good, since streaming never writes to the source."""
    t = transfer()
    t.start(0.0)
    t.step(PageCopied("a", b"", 10, 3), 0.0)
    t.step(DigestsCompared("a", matched=False), 0.0)  # the receiver holds a newer version than a
    t.step(PageCopied("a", b"k1", 10, 0), 0.0)
    assert t.step(PageCopied("a", b"", 10, 0), 0.0) == [SaveCheckpoint(Checkpoint(b"", True)), MarkDone()]
    assert t.finished
    assert t.verified_by == "listing"


def test_an_empty_partition_needs_no_digests() -> None:
    t = transfer()
    t.start(0.0)
    assert t.step(PageCopied("a", b"", 5, 0), 0.0) == [SaveCheckpoint(Checkpoint(b"", True)), MarkDone()]


def test_a_pass_that_copied_something_or_changed_source_still_compares_digests() -> None:
    t = transfer()
    t.start(0.0)
    t.step(PageCopied("a", b"", 10, 1), 0.0)
    t.step(DigestsCompared("a", matched=False), 0.0)
    t.step(PageCopied("a", b"k1", 10, 0), 0.0)
    t.step(SourceFailed("a", "gone"), 0.0)  # b takes the pass over at k1
    assert t.step(PageCopied("b", b"", 10, 0), 0.0)[-1] == CompareDigests("b")


def test_a_pass_resumed_from_a_checkpoint_does_not_verify_by_listing() -> None:
    t = transfer(checkpoint=Checkpoint(b"k9"))
    t.start(0.0)
    assert t.step(PageCopied("a", b"", 10, 0), 0.0)[-1] == CompareDigests("a")  # the keys before k9 were not listed
