"""Replication: a write lands on exactly the key's N=2 replicas, and a delete leaves no live value anywhere.

The cluster runs secured, as compose's does: users, the cluster secret between members, TLS on every
link (``cluster_secured``)."""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from containers import Cluster

    from client.client import Client

NODE_IDS = ("node1", "node2", "node3")


@pytest.fixture(scope="module")
def cluster_secured() -> bool:
    return True


N = 2  # compose.yaml's and the node's default KV_N


def live_keys(cluster: Cluster) -> dict[str, float]:
    """``kv_keys`` of every node."""
    values = {}
    for node in NODE_IDS:
        value = cluster.sample(node, "kv_keys")
        assert value is not None, f"{node} exports no kv_keys"
        values[node] = value
    return values


def holders(cluster: Cluster, key: str) -> dict[str, bytes | None]:
    """``{node: value}`` for every node whose own store has a record for ``key`` (None: a tombstone)."""
    found = {}
    for node in NODE_IDS:
        record = cluster.local_record(node, key)
        if record is not None:
            found[node] = record.value
    return found


def test_cluster_reports_n2_w2_r1(kv: Client) -> None:
    topology = kv.topology()
    assert (topology.n, topology.write_quorum, topology.read_quorum) == (2, 2, 1)
    assert sorted(node.node_id for node in topology.nodes) == list(NODE_IDS)


def test_put_is_stored_on_exactly_the_n_replicas_where_names(cluster: Cluster, kv: Client) -> None:
    keys = [f"repl-{uuid.uuid4().hex[:8]}-{i}" for i in range(200)]
    before = live_keys(cluster)

    with kv.pipeline() as pipe:
        for key in keys:
            pipe.put(key, f"value-of-{key}")
        pipe.execute()

    after = live_keys(cluster)
    assert sum(after.values()) - sum(before.values()) == N * len(keys), (before, after)

    node_of = cluster.node_of_address(kv)
    placement = {node: 0 for node in NODE_IDS}
    for key in keys:
        stored = holders(cluster, key)
        assert len(stored) == N, f"{key} is stored on {sorted(stored)}, expected exactly {N} nodes"
        assert all(value == f"value-of-{key}".encode() for value in stored.values()), (key, stored)
        replicas = [node_of[address] for address in kv.where(key)]
        assert len(replicas) == N
        assert set(stored) == set(replicas), f"{key}: stored on {sorted(stored)}, where() says {replicas}"
        for node in stored:
            placement[node] += 1
        assert kv.get(key) == f"value-of-{key}".encode()

    # Each node's kv_keys grew by exactly the keys it holds, and every node holds some of them.
    for node in NODE_IDS:
        assert after[node] - before[node] == placement[node], (node, before, after, placement)
        assert placement[node] > 0, f"{node} holds none of {len(keys)} keys: {placement}"


def test_delete_leaves_no_live_value_on_any_replica(cluster: Cluster, kv: Client) -> None:
    keys = [f"del-{uuid.uuid4().hex[:8]}-{i}" for i in range(50)]
    with kv.pipeline() as pipe:
        for key in keys:
            pipe.put(key, b"doomed")
        put_versions = pipe.execute()
    node_of = cluster.node_of_address(kv)
    for key in keys:
        assert set(holders(cluster, key)) == {node_of[address] for address in kv.where(key)}
    before = live_keys(cluster)

    with kv.pipeline() as pipe:
        for key in keys:
            pipe.delete(key)
        delete_versions = pipe.execute()

    after = live_keys(cluster)
    assert sum(before.values()) - sum(after.values()) == N * len(keys), (before, after)
    for key, put_version, delete_version in zip(keys, put_versions, delete_versions, strict=True):
        assert delete_version > put_version, (key, put_version, delete_version)
        assert kv.get(key) is None, f"{key} still reads back after DELETE"
        for node in NODE_IDS:
            record = cluster.local_record(node, key)
            assert record is None or record.is_tombstone, f"{node} still holds a live value for {key}: {record}"


def test_delete_of_a_key_never_written_is_not_found(kv: Client) -> None:
    key = f"never-{uuid.uuid4().hex}"
    kv.delete(key)
    assert kv.get(key) is None
