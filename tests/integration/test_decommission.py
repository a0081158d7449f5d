"""Decommission on real containers (issue 10): node4, started waiting to be added, is added to a
three-node cluster by ``kv cluster join node4:5000`` (the CLI in a container on the network), then
leaves it by ``kv cluster leave node4`` under a bounded writer/reader load. Nothing acknowledged is
lost, no delete comes back, at least 99.9% of requests succeed during the change, ``kv cluster
status`` no longer lists node4, and every key has its N copies on the three that remain. Run twice:
with nodes of one process, and with nodes of two workers (``KV_WORKERS=2``), whose STREAM_DONE and
membership record any worker may receive."""

from __future__ import annotations

import random
from typing import TYPE_CHECKING, Any

import pytest
from containers import ChangeLoad

from client import protocol
from client.cli_cluster import cluster_command
from client.ring import Ring

if TYPE_CHECKING:
    from containers import Cluster

NODE_IDS = ("node1", "node2", "node3")
KEYS = 600
N = 2  # the containers' default KV_N
VALUE = b"v" * 2000
CHANGE_TIMEOUT = 180.0


@pytest.fixture(scope="module", params=["1", "2"], ids=["one-process", "two-workers"])
def cluster_env(request: pytest.FixtureRequest) -> dict[str, str]:
    return {"KV_PARTITIONS": "256", "KV_ANTI_ENTROPY_INTERVAL_S": "0", "KV_WORKERS": request.param}


def members_seen_by(cluster: Cluster, node: str) -> set[str]:
    """The member ids in ``node``'s own TOPOLOGY (its membership record)."""
    admin = cluster.admin()
    frame = admin.call_node(cluster.address(node), protocol.Topology(epoch=True))
    return {address.node_id for address in protocol.decode_topology_reply(frame.body).nodes}


def test_node4_leaves_under_load_and_nothing_acknowledged_is_lost(cluster: Cluster, wait_until: Any) -> None:
    load = ChangeLoad("d", KEYS, random.Random(11))
    acked, maybe = load.acked, load.maybe
    with cluster.client() as kv:
        load.seed(kv, VALUE)
    start_epoch = cluster.epochs(NODE_IDS)["node1"]
    assert start_epoch is not None

    # node4 starts waiting to be added (KV_SEEDS, KV_AUTO_JOIN=wait); an operator adds it with
    # `kv cluster join node4:5000`, which asks node4 its id; node4 learns of it and becomes normal.
    said = cluster.add_by_admin("node4", seeds=["node1", "node2"])
    assert said.startswith(f"OK epoch {start_epoch + 1:.0f}:") and "node4 joining" in said, said
    wait_until(
        lambda: all(epoch == start_epoch + 2 for epoch in cluster.epochs((*NODE_IDS, "node4")).values()),
        CHANGE_TIMEOUT,
        interval=0.5,
        message="every node to hold node4 as normal (epoch + 2)",
    )
    assert (cluster.sample("node4", "kv_keys") or 0) > 0, "node4 received no keys"

    # kv cluster leave node4, through the CLI's code, then load until every node dropped it.
    with cluster.client() as kv:
        line, code = cluster_command(kv, ["leave", "node4"])
        assert code == 0 and "node4 leaving" in line, line

        def left() -> bool:
            return all("node4" not in members_seen_by(cluster, node) for node in NODE_IDS)

        load.run_until(kv, left, CHANGE_TIMEOUT)
        wait_until(left, 30, message="every node to drop node4 from its membership")
        assert load.ok + load.failed > 0
        assert load.ok / (load.ok + load.failed) >= 0.999, (load.ok, load.failed, load.errors[:5])
        print(f"leave: {load.ok} requests ok, {load.failed} failed during the change")

    # kv cluster status: three members, all up and normal, node4 not listed.
    with cluster.client() as kv:
        wait_until(lambda: cluster_command(kv, ["status"])[1] == 0, 30, message="every member UN")
        status, _ = cluster_command(kv, ["status"])
        assert "node4" not in status, status
        assert all(f"UN  {node}" in status for node in NODE_IDS), status

        # Nothing acknowledged is lost, no delete resurrected, read from the three that remain.
        wrong = [key for key in acked if kv.get(key, r=N) not in {acked[key], *maybe.get(key, set())}]
    assert not wrong, f"{len(wrong)} keys read otherwise than acknowledged: {wrong[:5]}"

    # Every live key has its N copies on its preference list among the three.
    ring = Ring(list(NODE_IDS), 256)
    unsure = {key for key, values in maybe.items() if values}
    checked = [key for key, value in acked.items() if value is not None and key not in unsure]

    def every_key_has_n_copies() -> bool:
        return all(
            (record := cluster.local_record(node, key)) is not None and record.value == acked[key]
            for key in checked
            for node in ring.preference_list(key.encode(), N)
        )

    wait_until(every_key_has_n_copies, 60, interval=1.0, message="every key to have N copies on the three")
