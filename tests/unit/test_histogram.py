"""The latency histogram: bucket layout, percentile accuracy, merging and the dict form."""

from __future__ import annotations

import json
import math
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bench.histogram import (
    BUCKETS,
    HIGHEST_NS,
    LINEAR_LIMIT,
    SUB_BUCKETS,
    Histogram,
    bucket_bounds,
    bucket_index,
    nearest_rank,
)

RELATIVE_PRECISION = 1 / (2 * SUB_BUCKETS)
"""A reported percentile is the middle of a bucket at most 1/128 of its values wide."""

latencies_ns = st.integers(min_value=0, max_value=HIGHEST_NS)


def exact_percentile(values: list[int], p: float) -> int:
    """Nearest-rank percentile of ``values``: the reference the histogram approximates."""
    return sorted(values)[nearest_rank(p, len(values)) - 1]


def histogram_of(values: list[int]) -> Histogram:
    histogram = Histogram()
    for value in values:
        histogram.record_ns(value)
    return histogram


# --- bucket layout ---------------------------------------------------------------------------------


def test_the_layout_covers_a_minute_in_fixed_memory() -> None:
    assert HIGHEST_NS > 60e9
    assert bucket_index(HIGHEST_NS) == BUCKETS - 1
    assert bucket_index(10 * HIGHEST_NS) == BUCKETS - 1  # beyond the range: the last bucket
    assert BUCKETS < 4000


def test_small_values_have_exact_buckets() -> None:
    for ns in range(LINEAR_LIMIT):
        assert bucket_bounds(bucket_index(ns)) == (ns, ns)


def test_buckets_tile_the_range_without_gaps() -> None:
    previous_high = -1
    for index in range(BUCKETS):
        low, high = bucket_bounds(index)
        assert low == previous_high + 1
        previous_high = high
    assert previous_high == HIGHEST_NS


@given(latencies_ns)
def test_a_value_falls_in_a_bucket_at_most_one_128th_of_it_wide(ns: int) -> None:
    low, high = bucket_bounds(bucket_index(ns))
    assert low <= ns <= high
    assert high - low + 1 <= max(1, low / SUB_BUCKETS)


def test_bucket_bounds_rejects_an_index_outside_the_layout() -> None:
    with pytest.raises(ValueError):
        bucket_bounds(BUCKETS)
    with pytest.raises(ValueError):
        bucket_bounds(-1)


@pytest.mark.parametrize(
    ("p", "count", "rank"),
    [(50, 100, 50), (99.9, 100_000, 99_900), (99.9, 1_000, 999), (99, 1, 1), (0.001, 10, 1), (100, 7, 7), (50, 3, 2)],
)
def test_nearest_rank_is_immune_to_float_noise(p: float, count: int, rank: int) -> None:
    assert nearest_rank(p, count) == rank


# --- recording and percentiles ---------------------------------------------------------------------


def test_an_empty_histogram_reports_zeros() -> None:
    histogram = Histogram()
    assert histogram.count == 0
    assert histogram.percentile(50) == 0.0
    assert (histogram.min, histogram.max, histogram.mean) == (0.0, 0.0, 0.0)


def test_a_single_value_is_every_percentile_exactly() -> None:
    histogram = Histogram()
    histogram.record(0.012345)
    for p in (0.1, 50, 90, 99, 99.9, 100):
        assert histogram.percentile(p) == pytest.approx(0.012345, abs=1e-12)
    assert histogram.min == histogram.max == histogram.mean == pytest.approx(0.012345, abs=1e-12)


def test_seconds_are_recorded_as_nanoseconds() -> None:
    histogram = Histogram()
    histogram.record(1.5e-6)
    histogram.record(2.0)
    assert (histogram.min_ns, histogram.max_ns, histogram.total_ns) == (1500, 2_000_000_000, 2_000_001_500)


@pytest.mark.parametrize("bad", [-1e-9, math.nan, math.inf])
def test_negative_or_non_finite_latencies_are_refused(bad: float) -> None:
    with pytest.raises(ValueError):
        Histogram().record(bad)
    with pytest.raises(ValueError):
        Histogram().record_ns(-1)


@pytest.mark.parametrize("p", [0, -5, 100.01])
def test_a_percentile_outside_0_100_is_refused(p: float) -> None:
    with pytest.raises(ValueError):
        Histogram().percentile(p)


def test_uniform_latencies_give_their_percentiles_within_the_precision() -> None:
    # 1 us .. 100 ms in 1 us steps: the p-th percentile is p% of 100 ms.
    values = [i * 1000 for i in range(1, 100_001)]
    histogram = histogram_of(values)
    for p in (50, 90, 99, 99.9):
        expected = exact_percentile(values, p)
        assert expected == pytest.approx(p / 100 * 100e6)
        assert histogram.percentile_ns(p) == pytest.approx(expected, rel=RELATIVE_PRECISION)
    assert histogram.max == pytest.approx(0.1)
    assert histogram.mean == pytest.approx(0.0500005)


def test_exponential_latencies_match_the_distribution() -> None:
    rng = random.Random(7)
    mean = 2e-3
    histogram = Histogram()
    for _ in range(100_000):
        histogram.record(rng.expovariate(1 / mean))
    # Quantile q of an exponential is -mean * ln(1 - q); sampling noise dominates the bucket error.
    for p, tolerance in ((50, 0.02), (90, 0.02), (99, 0.05)):
        assert histogram.percentile(p) == pytest.approx(-mean * math.log(1 - p / 100), rel=tolerance)
    assert histogram.mean == pytest.approx(mean, rel=0.02)


@given(st.lists(latencies_ns, min_size=1, max_size=300))
def test_percentiles_are_within_the_precision_of_the_exact_ones(values: list[int]) -> None:
    histogram = histogram_of(values)
    for p in (1, 50, 90, 99, 99.9, 100):
        exact = exact_percentile(values, p)
        assert abs(histogram.percentile_ns(p) - exact) <= exact * RELATIVE_PRECISION
    assert histogram.percentile_ns(100) == max(values)
    assert (histogram.min_ns, histogram.max_ns, histogram.count) == (min(values), max(values), len(values))


@given(st.lists(latencies_ns, min_size=1, max_size=200))
def test_percentiles_never_decrease_with_p(values: list[int]) -> None:
    histogram = histogram_of(values)
    reported = [histogram.percentile(p) for p in (1, 10, 50, 90, 99, 99.9, 100)]
    assert reported == sorted(reported)
    assert histogram.min <= reported[0] and reported[-1] == histogram.max


def test_a_value_beyond_the_range_keeps_its_exact_maximum() -> None:
    histogram = Histogram()
    histogram.record(120.0)  # two minutes: past HIGHEST_NS
    histogram.record(0.001)
    assert histogram.max == 120.0
    assert histogram.percentile(100) == 120.0
    assert histogram.count == 2


def test_memory_does_not_grow_with_the_number_of_samples() -> None:
    histogram = Histogram()
    rng = random.Random(1)
    for _ in range(20_000):
        histogram.record_ns(rng.randrange(HIGHEST_NS))
    assert len(histogram.to_dict()["buckets"]) <= BUCKETS
    assert len(histogram._counts) == BUCKETS


# --- merge and the dict form -----------------------------------------------------------------------


@given(st.lists(latencies_ns, max_size=100), st.lists(latencies_ns, max_size=100))
def test_merging_equals_recording_everything_in_one(first: list[int], second: list[int]) -> None:
    merged = histogram_of(first)
    merged.merge(histogram_of(second))
    assert merged == histogram_of(first + second)


def test_merging_into_an_empty_histogram_takes_the_other_minimum() -> None:
    merged = Histogram()
    merged.merge(histogram_of([5_000, 9_000]))
    assert (merged.min_ns, merged.max_ns, merged.count) == (5_000, 9_000, 2)
    merged.merge(Histogram())
    assert (merged.min_ns, merged.count) == (5_000, 2)


@given(st.lists(latencies_ns, max_size=100))
def test_the_dict_form_round_trips_through_json(values: list[int]) -> None:
    histogram = histogram_of(values)
    restored = Histogram.from_dict(json.loads(json.dumps(histogram.to_dict())))
    assert restored == histogram
    assert restored.percentile(99) == histogram.percentile(99)


@pytest.mark.parametrize(
    "change",
    [
        {"format": 99},
        {"sub_buckets": 64},
        {"buckets": [[BUCKETS, 1]]},
        {"buckets": [[3, -1]]},
        {"count": 5},
    ],
)
def test_from_dict_refuses_a_dict_it_did_not_make(change: dict) -> None:
    data = {**histogram_of([1_000]).to_dict(), **change}
    with pytest.raises(ValueError):
        Histogram.from_dict(data)
