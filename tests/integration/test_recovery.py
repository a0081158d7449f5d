"""Failure and recovery with real SIGKILLs: reads survive any one dead node, and a node restarted on its
own volume comes back with every write it acknowledged. The cluster runs secured, as compose's does:
users, the cluster secret between members, TLS on every link (``cluster_secured``)."""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING

import pytest

from client import protocol

if TYPE_CHECKING:
    from containers import Cluster

NODE_IDS = ("node1", "node2", "node3")


@pytest.fixture(scope="module")
def cluster_secured() -> bool:
    return True


KEYS_PER_ROUND = 60


@pytest.mark.parametrize("victim", NODE_IDS)
def test_reads_survive_sigkill_and_restart_keeps_acknowledged_writes(cluster: Cluster, victim: str) -> None:
    # Every node is up here: the previous round (if any) restarted its victim and waited for it.
    with cluster.client() as kv:
        keys = [f"rec-{victim}-{uuid.uuid4().hex[:8]}-{i}" for i in range(KEYS_PER_ROUND)]
        values = {key: f"{key}-value".encode() for key in keys}
        with kv.pipeline() as pipe:
            for key in keys:
                pipe.put(key, values[key])
            pipe.execute()  # raises unless every PUT was acknowledged by W=2 replicas

        victim_address = kv.node_address(victim)
        held = [key for key in keys if victim_address in kv.where(key)]
        assert held, f"{victim} is a replica of none of {len(keys)} keys; the kill would prove nothing"
        for key in held:
            record = cluster.local_record(victim, key)
            assert record is not None and record.value == values[key], (victim, key, record)

        keys_before_kill = cluster.sample(victim, "kv_keys")
        cluster.kill(victim)
        assert not cluster.is_running(victim)

        # Default R=1: every key, including those whose primary is dead, reads back from a live replica.
        with kv.pipeline() as pipe:
            for key in keys:
                pipe.get(key)
            results = pipe.execute(raise_on_error=False)
        wrong = {key: result for key, result in zip(keys, results, strict=True) if result != values[key]}
        assert not wrong, f"with {victim} killed, {len(wrong)} of {len(keys)} keys did not read back: {wrong}"

    cluster.start(victim)  # same container, same volume; waits for /healthz, PING and peers up

    # The restarted node's own store still holds every acknowledged write it was a replica for.
    lost = {}
    for key in held:
        record = cluster.local_record(victim, key)
        if record is None or record.value != values[key]:
            lost[key] = record
    assert not lost, f"{victim} lost {len(lost)} of {len(held)} acknowledged writes across SIGKILL: {lost}"
    assert cluster.sample(victim, "kv_keys") == keys_before_kill

    # And the cluster serves every key again through a fresh client (ports changed on restart).
    with cluster.client() as kv:
        assert all(kv.get(key) == values[key] for key in keys)


def test_killed_node_keeps_its_data_and_restarted_node_accepts_writes(cluster: Cluster) -> None:
    victim = "node2"
    with cluster.client() as kv:
        victim_address = kv.node_address(victim)
        candidates = (f"after-restart-{uuid.uuid4().hex[:8]}-{i}" for i in range(100))
        key = next(key for key in candidates if victim_address in kv.where(key))  # 2 of 3 keys qualify
        kv.put(key, b"v1")
        before = {node: cluster.local_record(node, key) for node in NODE_IDS}
        assert before[victim] is not None and before[victim].value == b"v1"
    cluster.kill(victim)
    cluster.start(victim)
    with cluster.client() as kv:
        assert {node: cluster.local_record(node, key) for node in NODE_IDS} == before
        # Coordinated by the restarted node: its clock must resume above the versions it stored.
        frame = kv.call_node(kv.node_address(victim), protocol.Put(key.encode(), b"v2"))
        assert frame.code == protocol.Status.OK
        version = protocol.decode_version(frame.body)
        assert all(record is None or record.version < version for record in before.values()), (before, version)
        assert kv.get(key) == b"v2"
        for address in kv.where(key):
            node = cluster.node_of_address(kv)[address]
            record = cluster.local_record(node, key)
            assert record is not None and record.value == b"v2" and record.version == version, (node, record)
