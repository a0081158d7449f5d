"""A node of two worker processes joins a cluster and is decommissioned, each under a bounded load.

Three nodes run in this process (``cluster.py``); ``node4`` is ``python -m service`` with
``KV_WORKERS=2`` (the supervisor and its workers are processes, as in ``test_workers_node.py``). It
joins through ``KV_AUTO_JOIN``, receives its partitions, and is then decommissioned with
``CLUSTER_LEAVE``: the receivers' STREAM_DONE reach whichever of its workers the kernel hands their
links to, and the leave must still end, with every worker serving the record that ends it and
nothing acknowledged lost. Both phases are held to 99.9% of requests succeeding. From the moment a
seed admits node4 until its workers listen (a second or two of Python start-up), connections to it
are refused, and a write it must also take as a pending owner goes to a fallback as a hint, which
the fallback holds even before it has heard of node4 (HINTED_PUT says the coordinator's epoch).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from cluster import DEFAULT_SETTINGS, LOCALHOST, InProcessCluster, free_port, http_get, start_cluster
from polling import wait_until
from test_membership_change import KEYS, Model, check_data, records, run_load
from test_workers_node import WorkerNode

from client import protocol
from service.membership import MemberState

pytestmark = pytest.mark.unit

CHANGE_TIMEOUT = 40.0


def two_worker_node(cluster: InProcessCluster, node_id: str, seed: str, log_path: Path) -> WorkerNode:
    """``node_id`` as a supervised node of two workers joining ``cluster`` through ``seed``; its log
    (JSON lines of the supervisor and both workers) goes to ``log_path``."""
    port = free_port()
    settings = {
        **DEFAULT_SETTINGS,
        **cluster.settings,
        "KV_NODE_ID": node_id,
        "KV_PEERS": f"{node_id}={LOCALHOST}:{port}",
        "KV_SEEDS": cluster.address(seed),
        "KV_AUTO_JOIN": "true",
        "KV_HOST": LOCALHOST,
        "KV_PORT": str(port),
    }
    return WorkerNode(cluster.tmp_path / node_id, log_path, settings)


def readiness(node: WorkerNode) -> list[tuple[int, str]]:
    """``/readyz`` asked on eight new connections, which the kernel spreads over both workers (over
    gevent sockets: the cluster's nodes share this process's event loop)."""
    return [http_get(node.http_port, "/readyz") for _ in range(8)]


def test_a_node_of_two_workers_joins_and_is_decommissioned_under_load(tmp_path: Path) -> None:
    cluster = start_cluster(tmp_path, 3, n=2, w=2, r=1, partitions=256)
    node4: WorkerNode | None = None
    try:
        model = Model()
        with cluster.running_client() as client:
            for i in range(KEYS):
                client.put(f"k{i:04d}", b"first")
                model.acked[f"k{i:04d}"] = b"first"

            def state_everywhere(state: MemberState | None) -> bool:
                return all(getattr(r.member("node4"), "state", None) is state for r in records(cluster).values())

            node4 = two_worker_node(cluster, "node4", "node1", tmp_path / "node4.log")
            run_load(client, model, until=lambda: state_everywhere(MemberState.NORMAL), max_ops=3000)
            wait_until(lambda: state_everywhere(MemberState.NORMAL), CHANGE_TIMEOUT, message="node4 joined")
            # Worker 0 streamed node4's partitions and ended the join; both workers serve that record.
            assert node4.events("membership_join_complete")
            wait_until(lambda: all(status == 200 for status, _ in readiness(node4)), 10, message="node4 ready")

            joined_ok, joined_failed = model.ok, model.failed
            answer = cluster.nodes["node1"].changes.request(protocol.ClusterLeave("node4"))
            assert getattr(answer.member("node4"), "state", None) is MemberState.LEAVING
            run_load(client, model, until=lambda: state_everywhere(None), max_ops=3000)
            wait_until(lambda: state_everywhere(None), CHANGE_TIMEOUT, message="every node to drop node4")

        assert [line["worker"] for line in node4.events("membership_leave_complete")] == [0]

        def both_workers_know_it_left() -> bool:
            return all(status == 503 and "left cluster" in body for status, body in readiness(node4))

        wait_until(both_workers_know_it_left, 5, message="node4's workers to serve the record without it")
        node4.stop()
        assert joined_ok / (joined_ok + joined_failed) >= 0.999, (joined_ok, joined_failed, model.errors[:5])
        ok, failed = model.ok - joined_ok, model.failed - joined_failed
        assert ok / (ok + failed) >= 0.999, (ok, failed, model.errors[joined_failed:][:5])
        check_data(cluster, model)
        print(f"node4 of two workers: join {joined_ok} ok, {joined_failed} failed; leave {ok} ok, {failed} failed")
    finally:
        if node4 is not None:
            node4.stop()
        cluster.stop_all()
