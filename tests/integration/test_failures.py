"""Failure handling with real containers and real SIGKILLs: hinted handoff, a lost disk restored by
anti-entropy, the failure detector's view of a dead node, and read repair of a stale replica.

Each mechanism is tested on a cluster where it is the only one that can do the job, so a pass proves
that mechanism and not another: the handoff and read-repair clusters run no anti-entropy
(``KV_ANTI_ENTROPY_INTERVAL_S=0``: rounds only on demand, and nothing here demands one), and the
read-repair cluster's hints expire after a second, before the stale replica comes back.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import pytest

from client import protocol
from client.protocol import PeerState, Status, Version

if TYPE_CHECKING:
    from containers import Cluster

    from client.client import Client

NODE_IDS = ("node1", "node2", "node3")
N = 2

HANDOFF_KEYS = 1000
DISK_LOSS_KEYS = 600

DOWN_TIMEOUT = 15.0
"""Seconds for a survivor to declare a killed peer down: 5 s of silence, pinged once a second."""
HINTS_DRAINED_TIMEOUT = 60.0
"""Seconds for every hint to be delivered once its owner is back (passes run every second)."""
RESTORE_TIMEOUT = 60.0
"""Seconds for anti-entropy, every 3 s, to refill a node that lost its disk."""

NO_ANTI_ENTROPY = {"KV_ANTI_ENTROPY_INTERVAL_S": "0"}
READ_REPAIR_ENV = {
    **NO_ANTI_ENTROPY,
    # Hints for the stale replica expire after a second, long before it is restarted, so only read
    # repair can bring it up to date. The tombstone grace must exceed the hint window.
    "KV_HINT_WINDOW_S": "1",
    "KV_TOMBSTONE_GRACE_S": "2",
}
DISK_LOSS_ENV = {"KV_ANTI_ENTROPY_INTERVAL_S": "3"}


@pytest.fixture(scope="module")
def cluster_env() -> dict[str, str]:
    """The module's ``cluster`` (handoff and failure detection) runs no anti-entropy."""
    return NO_ANTI_ENTROPY


@pytest.fixture
def read_repair_cluster(cluster_factory: Callable[..., Any]) -> Iterator[Cluster]:
    with cluster_factory("readrepair", READ_REPAIR_ENV) as started:
        yield started


@pytest.fixture
def disk_loss_cluster(cluster_factory: Callable[..., Any]) -> Iterator[Cluster]:
    with cluster_factory("diskloss", DISK_LOSS_ENV) as started:
        yield started


# --- helpers ---------------------------------------------------------------------------------------


def replicas_of(cluster: Cluster, kv: Client, key: str) -> list[str]:
    """The node ids of ``key``'s N replicas, primary first."""
    node_of = cluster.node_of_address(kv)
    return [node_of[address] for address in kv.where(key)]


def wait_reported_down(cluster: Cluster, victim: str, wait_until: Callable[..., Any]) -> None:
    """Wait until every running node's failure detector has ``victim`` DOWN (and kv_peer_up 0)."""
    for node in NODE_IDS:
        if node == victim or not cluster.is_running(node):
            continue
        wait_until(
            lambda node=node: (
                cluster.sample(node, "kv_peer_up", peer=victim) == 0
                and cluster.members(node)[victim].state == PeerState.DOWN
            ),
            DOWN_TIMEOUT,
            interval=0.2,
            message=f"{node} to report {victim} DOWN (kv_peer_up 0, MEMBERS DOWN)",
        )


def hints_pending(cluster: Cluster) -> dict[str, float]:
    return {node: cluster.sample(node, "kv_hints_pending") for node in NODE_IDS if cluster.is_running(node)}


def restart_stopped(cluster: Cluster) -> None:
    """Start every node that is not running, so the next test finds the whole cluster up."""
    for node in NODE_IDS:
        if not cluster.is_running(node):
            cluster.start(node)


# --- hinted handoff ------------------------------------------------------------------------------------


def test_hinted_handoff_delivers_every_write_a_dead_node_missed(
    cluster: Cluster, wait_until: Callable[..., Any]
) -> None:
    """Cassandra's hintedhandoff dtest: writes while a replica is dead are stored as hints on another
    node and handed over when it returns, so the returned node alone serves every one of them."""
    victim = "node2"
    others = [node for node in NODE_IDS if node != victim]
    kv = cluster.client()
    try:
        keys = [f"hh-{uuid.uuid4().hex[:8]}-{i}" for i in range(HANDOFF_KEYS)]
        values = {key: f"value-of-{key}".encode() for key in keys}
        owned = [key for key in keys if victim in replicas_of(cluster, kv, key)]
        assert 0 < len(owned) < len(keys), f"{victim} is a replica of {len(owned)} of {len(keys)} keys"
        stored_before = cluster.total("kv_hints_stored_total", owner=victim)
        delivered_before = cluster.total("kv_hints_delivered_total", owner=victim)

        cluster.kill(victim)
        wait_reported_down(cluster, victim, wait_until)

        with kv.pipeline() as pipe:
            for key in keys:
                pipe.put(key, values[key])  # default W=2: the dead replica's ack comes from a hint
            results = pipe.execute(raise_on_error=False)
        failed = {key: result for key, result in zip(keys, results, strict=True) if not isinstance(result, Version)}
        assert not failed, f"{len(failed)} of {len(keys)} writes failed with {victim} down: {list(failed.items())[:5]}"

        # Exactly one hint per write the dead node missed, held by the other two nodes.
        stored = cluster.total("kv_hints_stored_total", owner=victim) - stored_before
        assert stored == len(owned), f"{stored} hints stored for {victim}, expected {len(owned)}"
        assert sum(hints_pending(cluster).values()) == len(owned), hints_pending(cluster)

        cluster.start(victim)  # same volume; waits until every node sees every peer up
        wait_until(
            lambda: not any(hints_pending(cluster).values()) and hints_pending(cluster),
            HINTS_DRAINED_TIMEOUT,
            interval=0.25,
            message="kv_hints_pending to reach 0 on every node",
        )
        # Read before the hint holders are killed: their counters live in their processes.
        delivered = cluster.total("kv_hints_delivered_total", owner=victim) - delivered_before
        assert delivered >= len(owned), f"{delivered} hints delivered to {victim}, it owns {len(owned)} keys"

        for node in others:
            cluster.kill(node)
        assert [node for node in NODE_IDS if cluster.is_running(node)] == [victim]

        # REPLICA_GET to the survivor alone: its own store, no coordination, no other node asked.
        wrong = {}
        for key in owned:
            record = cluster.local_record(victim, key)
            if record is None or record.value != values[key]:
                wrong[key] = record
        assert not wrong, f"{victim} lacks {len(wrong)} of {len(owned)} hinted writes: {list(wrong.items())[:5]}"
        # Hints go to their owner only: the keys the victim does not replicate never reached it.
        strays = [key for key in keys if key not in set(owned) and cluster.local_record(victim, key) is not None]
        assert not strays, f"{victim} stores {len(strays)} keys it is no replica of: {strays[:5]}"
    finally:
        kv.close()
        restart_stopped(cluster)


# --- failure detection ------------------------------------------------------------------------------------


def test_killed_node_is_reported_down_then_up_again_after_restart(
    cluster: Cluster, wait_until: Callable[..., Any]
) -> None:
    victim = "node3"
    survivors = [node for node in NODE_IDS if node != victim]
    for node in survivors:
        assert cluster.members(node)[victim].state == PeerState.UP
    killed_ms = time.time() * 1000
    cluster.kill(victim)
    try:
        wait_reported_down(cluster, victim, wait_until)
        for node in survivors:
            view = cluster.members(node)
            assert view[node].state == PeerState.UP, view  # itself
            other = next(peer for peer in survivors if peer != node)
            assert view[other].state == PeerState.UP, f"{node} lost sight of {other} too: {view}"
            # Down since after the kill (1 s of slack for clock granularity), and not in the future.
            assert killed_ms - 1000 <= view[victim].since_ms <= time.time() * 1000 + 1000, (killed_ms, view)
    finally:
        if not cluster.is_running(victim):
            cluster.start(victim, wait_peers=False)  # waits only until it serves
    serving = time.monotonic()
    # Heartbeats run every second and a ping reconnects at once: up again within a few seconds.
    for node in survivors:
        wait_until(
            lambda node=node: (
                cluster.members(node)[victim].state == PeerState.UP
                and cluster.sample(node, "kv_peer_up", peer=victim) == 1
            ),
            5,
            interval=0.1,
            message=f"{node} to report {victim} UP within 5 s of it serving again",
        )
    seen_up_after = time.monotonic() - serving
    # And the restarted node sees its peers up too.
    wait_until(
        lambda: all(cluster.members(victim)[node].state == PeerState.UP for node in survivors),
        5,
        interval=0.1,
        message=f"{victim} to report {survivors} UP after its restart",
    )
    cluster.wait_peers_up()
    assert seen_up_after < 5


# --- read repair -------------------------------------------------------------------------------------


def test_read_repair_updates_a_stale_replica(read_repair_cluster: Cluster, wait_until: Callable[..., Any]) -> None:
    """B misses a write and a delete while it is dead; the hints for it expire (1 s window) and there
    is no anti-entropy, so B comes back stale. A read through a coordinator that sees B's stale reply
    sends B the newest version."""
    cluster = read_repair_cluster
    a, b, coordinator = "node1", "node2", "node3"  # A and B replicate the keys; the coordinator does not
    with cluster.client() as kv:
        candidates = (f"rr-{uuid.uuid4().hex[:8]}-{i}" for i in range(1000))
        overwritten, deleted = (
            next(key for key in candidates if sorted(replicas_of(cluster, kv, key)) == [a, b]) for _ in range(2)
        )
        for key in (overwritten, deleted):
            kv.put(key, b"v1")  # W=2: both replicas hold v1
            assert cluster.local_record(a, key).value == cluster.local_record(b, key).value == b"v1"

    expired_before = cluster.sample(coordinator, "kv_hints_expired_total", default=0.0, owner=b)
    cluster.kill(b)
    wait_reported_down(cluster, b, wait_until)

    # Coordinated by the non-replica: A acks, and the write meant for B becomes a hint held there.
    admin = cluster.admin()
    frame = admin.call_node(cluster.address(coordinator), protocol.Put(overwritten.encode(), b"v2"))
    assert frame.code == Status.OK
    new_version = protocol.decode_version(frame.body)
    frame = admin.call_node(cluster.address(coordinator), protocol.Delete(deleted.encode()))
    assert frame.code == Status.OK
    delete_version = protocol.decode_version(frame.body)
    assert cluster.sample(coordinator, "kv_hints_stored_total", owner=b) >= 2

    # B is still down, so the hints cannot be delivered: they expire after the 1 s window.
    wait_until(
        lambda: (
            cluster.sample(coordinator, "kv_hints_expired_total", default=0.0, owner=b) - expired_before >= 2
            and not any(hints_pending(cluster).values())
        ),
        15,
        interval=0.2,
        message=f"the hints for {b} to expire on {coordinator}",
    )
    cluster.start(b)

    # B came back stale: nothing (no hint, no anti-entropy round) has touched it.
    assert cluster.local_record(b, overwritten).value == b"v1"
    assert cluster.local_record(b, deleted).value == b"v1"
    assert cluster.local_record(a, overwritten).version == new_version
    assert cluster.local_record(a, deleted).is_tombstone
    for node in NODE_IDS:
        assert cluster.sample(node, "kv_antientropy_rounds_total") == 0, f"{node} ran an anti-entropy round"
        assert cluster.total("kv_hints_delivered_total", nodes=[node]) == 0, f"{node} delivered a hint"
    repairs_before = cluster.sample(coordinator, "kv_read_repairs_total")

    # R=2 so the answer is the newest of both replies whichever arrives first; it also sees B's v1.
    frame = admin.call_node(cluster.address(coordinator), protocol.Get(overwritten.encode(), 2))
    assert frame.code == Status.OK and protocol.decode_value(frame.body) == (new_version, b"v2")
    frame = admin.call_node(cluster.address(coordinator), protocol.Get(deleted.encode(), 2))
    assert frame.code == Status.NOT_FOUND

    def repaired() -> bool:
        value, tombstone = cluster.local_record(b, overwritten), cluster.local_record(b, deleted)
        return (
            value.version == new_version
            and value.value == b"v2"
            and tombstone.is_tombstone
            and tombstone.version == delete_version
            and cluster.sample(coordinator, "kv_read_repairs_total") - repairs_before == 2
        )

    wait_until(repaired, 10, interval=0.1, message=f"read repair to bring {b} up to date")
    for node in NODE_IDS:  # and it was read repair alone
        assert cluster.sample(node, "kv_antientropy_rounds_total") == 0
        assert cluster.total("kv_hints_delivered_total", nodes=[node]) == 0


# --- disk loss ------------------------------------------------------------------------------------------


def test_anti_entropy_refills_a_node_that_lost_its_disk(
    disk_loss_cluster: Cluster, wait_until: Callable[..., Any]
) -> None:
    cluster = disk_loss_cluster
    victim = "node1"
    with cluster.client() as kv:
        keys = [f"disk-{uuid.uuid4().hex[:8]}-{i}" for i in range(DISK_LOSS_KEYS)]
        values = {key: f"value-of-{key}".encode() for key in keys}
        with kv.pipeline() as pipe:
            for key in keys:
                pipe.put(key, values[key])
            pipe.execute()
        held = [key for key in keys if victim in replicas_of(cluster, kv, key)]
    assert 0 < len(held) < len(keys)
    assert cluster.total("kv_keys") == N * len(keys)
    assert cluster.sample(victim, "kv_keys") == len(held)
    repaired_before = cluster.total("kv_antientropy_keys_repaired_total", nodes=[n for n in NODE_IDS if n != victim])

    cluster.replace_disk(victim)  # SIGKILL, new empty volume, same node id; waits until peers are up
    started = [line for line in cluster.log_lines(victim) if line.get("event") == "node_started"]
    assert len(started) == 1 and started[0]["live_keys"] == 0, f"{victim} did not start empty: {started}"

    wait_until(
        lambda: cluster.total("kv_keys") == N * len(keys),
        RESTORE_TIMEOUT,
        interval=0.5,
        message=f"anti-entropy to restore {len(held)} keys to {victim}: sum of kv_keys == {N * len(keys)}",
    )
    assert cluster.sample(victim, "kv_keys") == len(held)
    wrong = {}
    for key in held:
        record = cluster.local_record(victim, key)
        if record is None or record.value != values[key]:
            wrong[key] = record
    assert not wrong, f"{victim} holds {len(wrong)} of {len(held)} keys wrong: {list(wrong.items())[:5]}"
    # Anti-entropy copied them (no client write or read touched these keys after the loss).
    repaired = cluster.total("kv_antientropy_keys_repaired_total") - repaired_before
    assert repaired >= len(held), f"anti-entropy repaired {repaired} keys, {victim} lost {len(held)}"
