"""``bench.ab``'s pure parts: the generator's workload arguments (closed and open loop) and the
per-pair ratios it reports."""

from __future__ import annotations

import pytest

from bench import ab
from bench.benchmarks import COMMON

pytestmark = pytest.mark.unit


def test_closed_loop_arguments_have_no_rate() -> None:
    assert ab.loadgen_args(50, "get=50,put=50", None) == ["--connections", "50", "--mix", "get=50,put=50", *COMMON]


def test_open_loop_arguments_end_with_the_rate() -> None:
    args = ab.loadgen_args(50, "get=50,put=50", 2000)
    assert args[:4] == ["--connections", "50", "--mix", "get=50,put=50"]
    assert args[-2:] == ["--rate", "2000"]
    assert args.count("--rate") == 1


def test_pair_ratios_are_candidate_over_base_in_run_order() -> None:
    base = [{"p99_ms": 10.0}, {"p99_ms": 40.0}, {"p99_ms": 5.0}]
    candidate = [{"p99_ms": 5.0}, {"p99_ms": 10.0}, {"p99_ms": 5.0}]
    assert ab.pair_ratios(base, candidate, "p99_ms") == [0.5, 0.25, 1.0]


def test_pair_ratios_refuse_unpaired_runs() -> None:
    with pytest.raises(ValueError):
        ab.pair_ratios([{"x": 1.0}], [{"x": 1.0}, {"x": 2.0}], "x")
