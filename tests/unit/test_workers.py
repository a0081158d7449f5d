"""The pure parts of a node served by several worker processes: the default worker count (CPU
affinity and the cgroup v2 quota), HLC stamps that no two workers of a node ever share, a worker's
slot and share of the connection limit, the merge of every worker's metrics into one set, and STATS'
partitions to stream asked of worker 0 over its metrics socket."""

from __future__ import annotations

import os
import socket
import threading
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

from client.protocol import RepairProgress
from service.config import MAX_WORKERS, ConfigError, load_config
from service.cores import quota_cores, usable_cores
from service.logging import get_logger
from service.versioning import LOGICAL_BITS, HybridLogicalClock, worker_bits
from service.worker_metrics import OwnerFigures, WorkerMetrics, merge_families
from service.workers import WorkerSlot, bind_reuseport, connection_share, listen_on

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


def test_kv_workers_defaults_to_one_and_auto_is_the_cores_available() -> None:
    assert load_config(BASE_ENV, cores=lambda: 3).workers == 1
    assert load_config({**BASE_ENV, "KV_WORKERS": "auto"}, cores=lambda: 3).workers == 3
    assert load_config({**BASE_ENV, "KV_WORKERS": "auto"}, cores=lambda: 500).workers == MAX_WORKERS


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


# --- what a worker is told, and its share of the node's limits -----------------------------------


def test_a_worker_slot_round_trips_through_its_environment() -> None:
    slot = WorkerSlot(1, 2, 5, -1, 7, "/run/kv", 42)
    assert WorkerSlot.from_environment(slot.environment(), 2) == slot
    assert WorkerSlot.from_environment({}, 2) is None  # started by hand: no worker
    assert slot.metrics_socket(0) == "/run/kv/metrics-0.sock"
    assert not slot.owner and WorkerSlot(0, 2, 5, -1, 7, "/run/kv", 42).owner


@pytest.mark.parametrize(("limit", "workers", "share"), [(1024, 1, 1024), (1024, 2, 512), (1025, 2, 512), (1, 2, 1)])
def test_each_worker_serves_an_equal_share_of_the_connection_limit(limit: int, workers: int, share: int) -> None:
    assert connection_share(limit, workers) == share


# --- /metrics: one set for the node ----------------------------------------------------------------


def exposition(text: str) -> list[Metric]:
    return list(text_string_to_metric_families(text))


WORKER_0 = """
# TYPE kv_requests_total counter
kv_requests_total{op="GET",status="OK"} 3
# TYPE kv_request_duration_seconds histogram
kv_request_duration_seconds_bucket{le="0.1",op="GET"} 2
kv_request_duration_seconds_bucket{le="+Inf",op="GET"} 3
kv_request_duration_seconds_sum{op="GET"} 0.5
kv_request_duration_seconds_count{op="GET"} 3
# TYPE kv_keys gauge
kv_keys 100
# TYPE kv_connections gauge
kv_connections 4
# TYPE kv_storage_full gauge
kv_storage_full 0
# TYPE kv_peer_up gauge
kv_peer_up{peer="node2"} 1
"""
WORKER_1 = """
# TYPE kv_requests_total counter
kv_requests_total{op="GET",status="OK"} 5
kv_requests_total{op="PUT",status="OK"} 2
# TYPE kv_request_duration_seconds histogram
kv_request_duration_seconds_bucket{le="0.1",op="GET"} 5
kv_request_duration_seconds_bucket{le="+Inf",op="GET"} 5
kv_request_duration_seconds_sum{op="GET"} 0.25
kv_request_duration_seconds_count{op="GET"} 5
# TYPE kv_keys gauge
kv_keys 100
# TYPE kv_connections gauge
kv_connections 6
# TYPE kv_storage_full gauge
kv_storage_full 1
# TYPE kv_peer_up gauge
kv_peer_up{peer="node2"} 0
"""


def test_merged_metrics_sum_counts_and_take_the_stores_gauges_once() -> None:
    merged = {family.name: family for family in merge_families([exposition(WORKER_0), exposition(WORKER_1)])}

    def value(family: str, sample: str, **labels: str) -> float:
        (found,) = [s.value for s in merged[family].samples if s.name == sample and s.labels == labels]
        return found

    assert value("kv_requests", "kv_requests_total", op="GET", status="OK") == 8
    assert value("kv_requests", "kv_requests_total", op="PUT", status="OK") == 2  # only one worker had it
    assert value("kv_request_duration_seconds", "kv_request_duration_seconds_bucket", le="0.1", op="GET") == 7
    assert value("kv_request_duration_seconds", "kv_request_duration_seconds_count", op="GET") == 8
    assert value("kv_request_duration_seconds", "kv_request_duration_seconds_sum", op="GET") == 0.75
    assert value("kv_keys", "kv_keys") == 100  # the shared store's count, not 200
    assert value("kv_connections", "kv_connections") == 10  # each worker's own connections
    assert value("kv_storage_full", "kv_storage_full") == 1  # any worker refusing writes shows
    assert value("kv_peer_up", "kv_peer_up", peer="node2") == 1  # the lowest worker's verdict
    assert merged["kv_requests"].type == "counter"


def test_merging_one_workers_metrics_changes_nothing() -> None:
    alone = exposition(WORKER_0)
    assert merge_families([alone]) == exposition(WORKER_0)


def test_stats_gives_worker_0s_partitions_to_stream_whichever_worker_answers(tmp_path: Path) -> None:
    """Worker 0 alone streams a membership change's partitions, so STATS asks it how many remain."""

    def no_repair() -> RepairProgress:
        raise AssertionError("STATS' partitions to stream asked for anti-entropy's progress")

    def worker(index: int, streams: int) -> WorkerMetrics:
        slot = WorkerSlot(index, 2, -1, -1, -1, str(tmp_path), os.getpid())
        owned = OwnerFigures(no_repair, lambda: streams)
        return WorkerMetrics(slot, CollectorRegistry(), get_logger(), lambda: (0, [], []), owned)

    owner, other = worker(0, 7), worker(1, 0)
    assert owner.streams_pending() == 7
    assert other.streams_pending() == 0  # worker 0 does not answer: this worker's own
    # Worker 0 answers on its socket from a thread of its own (this test's loop would block on it).
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
        listener.bind(owner._slot.metrics_socket())
        listener.listen(1)

        def answer_once() -> None:
            connection, address = listener.accept()
            owner._answer(connection, address)

        answering = threading.Thread(target=answer_once)
        answering.start()
        assert other.streams_pending() == 7
        answering.join(timeout=5)


def accepted(sock: socket.socket) -> int:
    """Connections waiting in ``sock``'s accept queue (taken off it)."""
    sock.settimeout(0.2)
    count = 0
    for _ in range(1000):  # bounded: far more than any test here connects
        try:
            sock.accept()[0].close()
        except OSError:  # the queue is empty (timeout)
            return count
        count += 1
    return count


def test_a_workers_socket_takes_connections_only_once_it_listens() -> None:
    """What the supervisor relies on: the kernel spreads a port's connections over its listening
    SO_REUSEPORT sockets only, so a worker that is starting, or dead, is given none."""
    placeholder = bind_reuseport("127.0.0.1", 0)  # the supervisor's, never listening
    port = placeholder.getsockname()[1]
    serving, starting = bind_reuseport("127.0.0.1", port), bind_reuseport("127.0.0.1", port)
    clients: list[socket.socket] = []
    try:
        with pytest.raises(ConnectionRefusedError):  # nobody listens yet: refused, as by a stopped node
            socket.create_connection(("127.0.0.1", port), timeout=2).close()
        listen_on(serving)
        clients += [socket.create_connection(("127.0.0.1", port), timeout=2) for _ in range(20)]
        assert accepted(serving) == 20  # the starting worker's socket is bound but got none
        listen_on(starting)
        clients += [socket.create_connection(("127.0.0.1", port), timeout=2) for _ in range(40)]
        assert accepted(serving) + accepted(starting) == 40
        starting.close()  # its worker died: the rest go to the one still serving
        clients += [socket.create_connection(("127.0.0.1", port), timeout=2) for _ in range(10)]
        assert accepted(serving) == 10
    finally:
        for sock in [*clients, placeholder, serving, starting]:
            sock.close()


def test_a_port_another_program_holds_cannot_be_bound() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))  # no SO_REUSEPORT: nobody may share it
        taken.listen(1)
        with pytest.raises(OSError):
            bind_reuseport("127.0.0.1", taken.getsockname()[1])
