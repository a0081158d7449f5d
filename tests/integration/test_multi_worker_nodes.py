"""Nodes of two worker processes in containers (``KV_WORKERS=2``, the supervisor as the container's
first process): each node exports one set of metrics, a worker killed with SIGKILL is started again
and no acknowledged write is lost, and hints whichever worker stored are delivered by worker 0, the
one owner of hinted handoff.

Several clients write at once, each on its own connections, so the kernel spreads them over both
workers of every node."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import gevent
import pytest
from gevent.event import Event

from client.errors import KVError
from client.protocol import PeerState

if TYPE_CHECKING:
    from containers import Cluster

    from client.client import Client

NODE_IDS = ("node1", "node2", "node3")
N = 2
WRITERS = 8
DOWN_TIMEOUT = 15.0
RESTART_TIMEOUT = 30.0
HINTS_DRAINED_TIMEOUT = 60.0


@pytest.fixture(scope="module")
def cluster_env() -> dict[str, str]:
    """Two workers per node, and no anti-entropy: only hinted handoff can bring a node up to date."""
    return {"KV_WORKERS": "2", "KV_ANTI_ENTROPY_INTERVAL_S": "0"}


def worker_pids(cluster: Cluster, node: str) -> dict[int, int]:
    """``{worker index: pid}`` of the newest process of each worker of ``node``, from its log."""
    pids: dict[int, int] = {}
    for line in cluster.log_lines(node):
        if line.get("event") == "worker_started":
            pids[line["worker"]] = line["pid"]
    return pids


def clients(cluster: Cluster, count: int) -> list[Client]:
    return [cluster.client() for _ in range(count)]


def test_every_node_runs_two_workers_and_exports_one_set_of_metrics(
    cluster: Cluster, wait_until: Callable[..., Any]
) -> None:
    for node in NODE_IDS:
        wait_until(lambda node=node: cluster.sample(node, "kv_workers_reporting") == 2, 20, message=f"{node}'s workers")
        assert set(worker_pids(cluster, node)) == {0, 1}
    writers = clients(cluster, WRITERS)
    try:
        keys = [f"metrics-{uuid.uuid4().hex[:8]}-{i}" for i in range(300)]
        for number, key in enumerate(keys):
            writers[number % WRITERS].put(key, b"v")
    finally:
        for kv in writers:
            kv.close()
    # kv_keys is each node's store counted once, not once per worker: N copies of every key in all.
    wait_until(lambda: cluster.total("kv_keys") >= N * len(keys), 10, message="kv_keys to count every copy")
    assert cluster.total("kv_keys") == N * len(keys)
    # Writes counted by whichever worker served them, summed: every client PUT is there.
    puts = cluster.total("kv_requests_total", op="PUT", status="OK")
    assert puts >= len(keys)


def test_a_killed_worker_is_restarted_and_no_acknowledged_write_is_lost(
    cluster: Cluster, wait_until: Callable[..., Any]
) -> None:
    acked: dict[str, bytes] = {}
    stop = Event()
    prefix = uuid.uuid4().hex[:8]

    def writer(number: int, kv: Client) -> None:
        for sequence in range(100_000):  # bounded; stopped far sooner
            if stop.is_set():
                return
            key, value = f"kill-{prefix}-{number}-{sequence}", f"{number}.{sequence}".encode()
            try:
                kv.put(key, value)
            except KVError:  # its connection was on the killed worker: not acknowledged
                stop.wait(0.05)
                continue
            acked[key] = value

    writers = clients(cluster, WRITERS)
    greenlets = [gevent.spawn(writer, number, kv) for number, kv in enumerate(writers)]
    try:
        for index in (1, 0):
            before = len(acked)
            wait_until(lambda before=before: len(acked) >= before + 100, 30, message="writes acknowledged")
            old_pid = worker_pids(cluster, "node1")[index]
            container = cluster.containers["node1"].get_wrapped_container()
            # The image has no kill binary: SIGKILL from a Python in the container.
            exit_code, output = container.exec_run(["python3", "-c", f"import os; os.kill({old_pid}, 9)"])
            assert exit_code == 0, output
            wait_until(
                lambda index=index, old_pid=old_pid: worker_pids(cluster, "node1").get(index) != old_pid,
                RESTART_TIMEOUT,
                message=f"node1's worker {index} started again",
            )
            died = [line for line in cluster.log_lines("node1") if line.get("event") == "worker_died"]
            assert any(line["pid"] == old_pid and line["signal"] == "SIGKILL" for line in died), died
            wait_until(lambda: cluster.sample("node1", "kv_workers_reporting") == 2, RESTART_TIMEOUT)
            after = len(acked)
            wait_until(lambda after=after: len(acked) >= after + 100, 30, message="writes after the restart")
    finally:
        stop.set()
        gevent.joinall(greenlets, timeout=30)
        for kv in writers:
            kv.close()
    reader = cluster.client()
    try:
        missing = [key for key, value in acked.items() if reader.get(key) != value]
    finally:
        reader.close()
    assert not missing, f"{len(missing)} of {len(acked)} acknowledged writes lost, e.g. {missing[:3]}"


def test_hints_either_worker_stored_are_delivered_by_worker_0(cluster: Cluster, wait_until: Callable[..., Any]) -> None:
    victim = "node3"
    writers = clients(cluster, WRITERS)
    try:
        keys = [f"hint-{uuid.uuid4().hex[:8]}-{i}" for i in range(400)]
        node_of = cluster.node_of_address(writers[0])
        owned = [key for key in keys if victim in [node_of[address] for address in writers[0].where(key)]]
        assert owned
        stored_before = cluster.total("kv_hints_stored_total", owner=victim)
        cluster.kill(victim)
        for node in NODE_IDS[:2]:
            wait_until(
                lambda node=node: cluster.members(node)[victim].state == PeerState.DOWN,
                DOWN_TIMEOUT,
                interval=0.2,
                message=f"{node} to see {victim} down",
            )

        def write_share(number: int) -> None:
            for key in keys[number::WRITERS]:
                writers[number].put(key, f"value-of-{key}".encode())

        jobs = [gevent.spawn(write_share, number) for number in range(WRITERS)]
        gevent.joinall(jobs, timeout=60, raise_error=True)
        stored = cluster.total("kv_hints_stored_total", owner=victim) - stored_before
        assert stored == len(owned), f"{stored} hints stored for {victim}, expected {len(owned)}"
        stored_by = {
            line.get("worker")
            for node in NODE_IDS[:2]
            for line in cluster.log_lines(node)
            if line.get("event") == "command" and line.get("op") == "PUT" and line.get("key", "").startswith("hint-")
        }
        assert stored_by == {0, 1}, f"the writes were served by workers {stored_by}"

        cluster.start(victim)
        wait_until(
            lambda: all(cluster.sample(node, "kv_hints_pending") == 0 for node in NODE_IDS[:2]),
            HINTS_DRAINED_TIMEOUT,
            interval=0.25,
            message="every hint delivered",
        )
        missing = [key for key in owned if cluster.local_record(victim, key) is None]
        assert not missing, f"{victim} lacks {len(missing)} of its {len(owned)} keys after handoff"
    finally:
        for kv in writers:
            kv.close()


def test_workers_serve_tls_and_users_and_all_reload_on_sighup(
    cluster_factory: Callable[..., Any], wait_until: Callable[..., Any]
) -> None:
    """As compose runs them: TLS only, users, the cluster secret; SIGHUP reaches every worker."""
    with cluster_factory("wsecure", {"KV_WORKERS": "2"}, secured=True) as secured:
        writers = clients(secured, WRITERS)
        try:
            for number, kv in enumerate(writers):
                kv.put(f"secure-{number}", f"v{number}".encode())
            assert [kv.get(f"secure-{number}") for number, kv in enumerate(writers)] == [
                f"v{number}".encode() for number in range(WRITERS)
            ]
        finally:
            for kv in writers:
                kv.close()
        assert secured.sample("node1", "kv_workers_reporting") == 2  # over HTTPS
        secured.signal("node1", "SIGHUP")
        wait_until(
            lambda: (
                {line.get("worker") for line in secured.log_lines("node1") if line.get("event") == "reloaded"} == {0, 1}
            ),
            20,
            message="both workers of node1 to reload",
        )
