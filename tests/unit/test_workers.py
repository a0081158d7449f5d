"""The pure parts of a node served by several worker processes: the default worker count (CPU
affinity and the cgroup v2 quota), and HLC stamps that no two workers of a node ever share."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from service.config import MAX_WORKERS, ConfigError, load_config
from service.cores import quota_cores, usable_cores
from service.versioning import LOGICAL_BITS, HybridLogicalClock, worker_bits

BASE_ENV = {"KV_NODE_ID": "node1", "KV_PEERS": "node1=127.0.0.1:5000", "KV_HOST": "127.0.0.1", "KV_N": "1", "KV_W": "1"}


# --- how many workers by default -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cpu_max", "cores"),
    [
        ("max 100000\n", None),  # no quota
        ("200000 100000\n", 2),
        ("150000 100000", 2),  # 1.5 cores round up: the half core is still worth a worker
        ("50000 100000", 1),  # under one core is still one
        ("100000 100000", 1),
        ("", None),
        ("garbage", None),
        ("0 100000", None),
        ("100000 0", None),
        ("-5 100000", None),
    ],
)
def test_quota_cores_reads_cgroup_v2_cpu_max(cpu_max: str, cores: int | None) -> None:
    assert quota_cores(cpu_max) == cores


@pytest.mark.parametrize(
    ("affinity", "cpu_max", "cores"),
    [
        (8, None, 8),  # no cgroup file: the affinity mask
        (8, "max 100000", 8),
        (8, "200000 100000", 2),  # the quota is smaller
        (2, "800000 100000", 2),  # the mask is smaller
        (0, None, 1),  # never fewer than one
    ],
)
def test_usable_cores_is_the_smaller_of_affinity_and_quota(affinity: int, cpu_max: str | None, cores: int) -> None:
    assert usable_cores(affinity, cpu_max) == cores


def test_kv_workers_defaults_to_the_cores_available() -> None:
    assert load_config(BASE_ENV, cores=lambda: 3).workers == 3
    assert load_config(BASE_ENV, cores=lambda: 500).workers == MAX_WORKERS


def test_kv_workers_set_explicitly_wins_over_the_cores() -> None:
    assert load_config({**BASE_ENV, "KV_WORKERS": "1"}, cores=lambda: 8).workers == 1


@pytest.mark.parametrize("text", ["0", "65", "two", "-1"])
def test_a_bad_kv_workers_stops_the_node_naming_the_setting(text: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config({**BASE_ENV, "KV_WORKERS": text})
    assert any(problem.startswith(f"KV_WORKERS={text!r}") for problem in caught.value.problems)


# --- one node's workers never issue the same stamp ----------------------------------------------


def test_one_worker_uses_no_bits_of_the_counter() -> None:
    assert worker_bits(1) == 0
    assert worker_bits(2) == 1
    assert worker_bits(3) == worker_bits(4) == 2
    assert worker_bits(MAX_WORKERS) == 6


def test_a_single_worker_clock_is_the_plain_hlc() -> None:
    clock = HybridLogicalClock(lambda: 7, worker=0, workers=1)
    assert [clock.now() for _ in range(3)] == [7 << LOGICAL_BITS, (7 << LOGICAL_BITS) + 1, (7 << LOGICAL_BITS) + 2]


@pytest.mark.parametrize(("worker", "workers"), [(-1, 2), (2, 2), (0, 0)])
def test_a_worker_index_outside_the_workers_is_refused(worker: int, workers: int) -> None:
    with pytest.raises(ValueError, match="worker"):
        HybridLogicalClock(worker=worker, workers=workers)


# Each step: which worker acts, what its wall clock reads (ms), and an optional timestamp it observes
# first (from a peer or a stored version).
steps = st.lists(
    st.tuples(
        st.integers(0, MAX_WORKERS - 1),
        st.integers(0, 50),
        st.one_of(st.none(), st.integers(0, 60 << LOGICAL_BITS)),
    ),
    min_size=1,
    max_size=200,
)


@given(workers=st.integers(1, MAX_WORKERS), script=steps, start=st.integers(0, 1 << 40))
def test_workers_never_issue_the_same_stamp_and_each_stays_monotonic(
    workers: int, script: list[tuple[int, int, int | None]], start: int
) -> None:
    walls = [0] * workers
    clocks = [
        HybridLogicalClock(lambda index=index: walls[index], last=start, worker=index, workers=workers)
        for index in range(workers)
    ]
    issued: set[int] = set()
    last = [start] * workers
    mask = (1 << worker_bits(workers)) - 1
    for drawn, wall, observed in script:
        worker = drawn % workers
        walls[worker] = wall
        if observed is not None:
            clocks[worker].observe(observed)
            last[worker] = max(last[worker], observed)
        stamp = clocks[worker].now()
        assert stamp not in issued, f"worker {worker} issued {stamp} twice across workers"
        assert stamp > last[worker], "a stamp must exceed everything the worker issued or observed"
        assert stamp & mask == worker, "the low bits name the worker"
        assert stamp >= wall << LOGICAL_BITS, "a stamp is never behind the worker's wall clock"
        issued.add(stamp)
        last[worker] = stamp
