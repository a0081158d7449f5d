"""Membership changes on real in-process nodes: a node joins and a node leaves under a bounded load.

Each test runs writers that put, overwrite and delete keys and readers that read them, through a
client that learns the ring as it changes, while the change runs. It then checks what the issue
asks: no acknowledged write lost, no delete resurrected, at least 99.9% of requests answered, the
new node holding its share of the replicas, and only the partitions the planner moves streamed.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import gevent
import pytest
from cluster import LOG_SINK, InProcessCluster, free_port, start_cluster
from hypothesis import given
from hypothesis import strategies as st
from polling import wait_until
from security_kit import as_user, auth_settings

from client import protocol
from client.cli_cluster import cluster_command
from client.client import Client
from client.errors import KVError, PartitionNotHereError
from client.protocol import Status
from client.ring import Ring
from service import membership, membership_changes, ownership
from service.change_runner import ChangeError
from service.config import ConfigError, load_config
from service.joining import join_through_seeds
from service.membership import MemberState
from service.peers import PeerSettings

pytestmark = pytest.mark.unit

KEYS = 400
"""Keys the load works on: enough that each of the 256 partitions moved has a few."""


@dataclass
class Model:
    """What the load was told: per key, the last acknowledged value (``None``: deleted) and the
    values sent after it whose outcome is unknown (a failed write may still have landed)."""

    acked: dict[str, bytes | None] = field(default_factory=dict)
    maybe: dict[str, set[bytes | None]] = field(default_factory=dict)
    ok: int = 0
    failed: int = 0
    errors: list[str] = field(default_factory=list)

    def allowed(self, key: str) -> set[bytes | None]:
        return {self.acked.get(key), *self.maybe.get(key, set())}


def run_load(client: Client, model: Model, until: Callable[[], bool], max_ops: int = 6000) -> None:
    """Writers and a reader, one operation at a time each, until ``until()`` or ``max_ops``."""
    rng = random.Random(7)
    done = 0

    def writer(offset: int) -> None:
        nonlocal done
        serial = 0
        while not until() and done < max_ops:
            done += 1
            serial += 1
            key = f"k{rng.randrange(KEYS):04d}"
            value: bytes | None = None if rng.random() < 0.15 else f"{offset}-{serial}".encode()
            model.maybe.setdefault(key, set()).add(value)
            try:
                if value is None:
                    client.delete(key)
                else:
                    client.put(key, value)
            except KVError as exc:
                model.failed += 1
                model.errors.append(f"{type(exc).__name__}: {exc}")
                continue
            model.ok += 1
            model.acked[key] = value
            model.maybe[key] = set()

    def reader() -> None:
        nonlocal done
        while not until() and done < max_ops:
            done += 1
            key = f"k{rng.randrange(KEYS):04d}"
            try:
                client.get(key)
            except KVError as exc:
                model.failed += 1
                model.errors.append(f"{type(exc).__name__}: {exc}")
                continue
            model.ok += 1

    gevent.joinall([gevent.spawn(writer, i) for i in range(3)] + [gevent.spawn(reader)], raise_error=True)


def check_data(cluster: InProcessCluster, model: Model) -> None:
    """Every key reads (from all N replicas) as the model allows: nothing acknowledged lost,
    nothing deleted back."""
    n = cluster.config.n
    with cluster.running_client() as client:
        lost = []
        for key in sorted(model.acked):
            value = client.get(key, r=n)
            if value not in model.allowed(key):
                lost.append((key, value, model.acked[key]))
        assert not lost, f"{len(lost)} keys read otherwise than acknowledged, e.g. {lost[:5]}"


def records(cluster: InProcessCluster) -> dict[str, membership.ClusterRecord]:
    return {node_id: cluster.nodes[node_id].membership.record for node_id in sorted(cluster.running)}


def all_hold(cluster: InProcessCluster, check: Callable[[membership.ClusterRecord], bool]) -> bool:
    return all(check(record) for record in records(cluster).values())


def replica_share(cluster: InProcessCluster, node_id: str, live: int) -> float:
    """``node_id``'s share of all replicas of the ``live`` keys."""
    return cluster.nodes[node_id].store.live_keys / (cluster.config.n * live)


def test_a_node_joins_under_load_and_nothing_acknowledged_is_lost(tmp_path: Path) -> None:
    cluster = start_cluster(tmp_path, 3, n=2, w=2, r=1, partitions=256)
    try:
        model = Model()
        with cluster.running_client() as client:
            for i in range(KEYS):
                client.put(f"k{i:04d}", b"first")
                model.acked[f"k{i:04d}"] = b"first"
            before = cluster.nodes["node1"].membership.record
            LOG_SINK.clear()
            cluster.add_joining("node4", seeds=["node1"])

            def joined() -> bool:
                return "node4" in cluster.running and all_hold(
                    cluster, lambda r: getattr(r.member("node4"), "state", None) is MemberState.NORMAL
                )

            joiner = gevent.spawn(cluster.start, "node4")
            run_load(client, model, until=lambda: joined() or (joiner.dead and not joiner.successful()))
            joiner.get()
            wait_until(joined, 60, message="every node to hold node4 as normal")

        total = model.ok + model.failed
        assert model.ok / total >= 0.999, (model.ok, model.failed, model.errors[:5])
        cluster.settle()
        check_data(cluster, model)

        after = cluster.nodes["node4"].membership.record
        assert after.epoch == before.epoch + 2  # joining, then normal
        # Only what the planner moves was streamed, each partition once.
        plan = ownership.plan(membership.ring(before), membership.ring(after), cluster.config.n)
        streamed = {event["partition"] for event in LOG_SINK.events("stream_finished")}
        assert streamed == {move.partition for move in plan.receiving("node4")}
        assert len(LOG_SINK.events("stream_finished")) == len(streamed)
        # node4 holds a quarter of the replicas, as the ideal 1/(n+1) says.
        live = sum(1 for value in model.acked.values() if value is not None)
        share = replica_share(cluster, "node4", live)
        assert 0.20 <= share <= 0.30, share
        print(f"join: {model.ok} ok, {model.failed} failed, {len(streamed)} partitions streamed, share {share:.3f}")
        assert cluster.nodes["node4"].metrics.stream_partitions_pending._value.get() == 0

        # Clean-up: the old owners give back node4's share, so each live key is held exactly N times.
        def cleaned() -> bool:
            for node_id in sorted(cluster.running):
                cluster.nodes[node_id].cleanup.run_pass()
            return all(not unowned_held(cluster, node_id) for node_id in cluster.running)

        wait_until(cleaned, 30, message="every node to hold only the partitions it owns")
        with cluster.running_client() as client:
            live_now = sum(client.get(key, r=cluster.config.n) is not None for key in model.acked)
        kv_keys = sum(cluster.nodes[node_id].store.live_keys for node_id in cluster.running)
        assert kv_keys == cluster.config.n * live_now, (kv_keys, live_now)
        check_data(cluster, model)
    finally:
        cluster.stop_all()


def unowned_held(cluster: InProcessCluster, node_id: str) -> list[int]:
    """The partitions ``node_id`` holds records in and does not own on its current ring."""
    node = cluster.nodes[node_id]
    ring = membership.ring(node.membership.record)
    everything = range(ring.partitions)
    held = [p for p, digest in zip(everything, node.store.digests(everything), strict=True) if any(digest)]
    return ownership.unowned_partitions(ring, cluster.config.n, node_id, held)


def test_a_second_change_while_one_runs_is_refused(tmp_path: Path) -> None:
    record = membership.form("kv", [("a", "h", 1), ("b", "h", 2)], 16, "a", "0" * 32)
    joining = membership_changes.admit(record, "c", "h", 3)
    assert joining.epoch == record.epoch + 1
    assert membership_changes.admit(joining, "c", "h", 3) is joining  # asked again: the same record
    with pytest.raises(membership_changes.ChangeRefused) as refused:
        membership_changes.admit(joining, "d", "h", 4)
    assert refused.value.in_progress
    assert "in progress" in str(refused.value)
    with pytest.raises(membership_changes.ChangeRefused):
        membership_changes.decommission(joining, "a")
    done = membership_changes.settle(joining)
    assert done.epoch == record.epoch + 2
    assert membership_changes.changing(done) == []
    assert membership_changes.pending_owners(done, 2) == {}
    assert membership_changes.pending_owners(joining, 2)  # c receives something


def test_a_node_leaves_under_load_and_its_data_stays(tmp_path: Path) -> None:
    cluster = start_cluster(tmp_path, 4, n=2, w=2, r=1, partitions=256)
    try:
        model = Model()
        with cluster.running_client() as client:
            for i in range(KEYS):
                client.put(f"k{i:04d}", b"first")
                model.acked[f"k{i:04d}"] = b"first"
            before = cluster.nodes["node1"].membership.record
            LOG_SINK.clear()
            answer = cluster.nodes["node2"].changes.request(protocol.ClusterLeave("node4"))
            assert answer.member("node4").state is MemberState.LEAVING  # type: ignore[union-attr]
            # A second change while this one runs is refused, with the reason.
            with pytest.raises(ChangeError) as refused:
                cluster.nodes["node1"].changes.request(protocol.ClusterLeave("node3"))
            assert refused.value.status is Status.CHANGE_IN_PROGRESS

            def left() -> bool:
                return all(
                    record.member("node4") is None for node_id, record in records(cluster).items() if node_id != "node4"
                )

            run_load(client, model, until=left)
            wait_until(left, 60, message="every node to drop node4")
        wait_until(lambda: cluster.nodes["node4"].membership.left, 10, message="node4 to know it left")
        assert cluster.nodes["node4"].readiness_problem() is not None
        cluster.stop("node4")
        total = model.ok + model.failed
        assert model.ok / total >= 0.999, (model.ok, model.failed, model.errors[:5])
        check_data(cluster, model)

        after = cluster.nodes["node1"].membership.record
        assert after.epoch == before.epoch + 2 and after.node_ids == ("node1", "node2", "node3")
        plan = ownership.plan(membership.ring(before), membership.ring(after), cluster.config.n)
        streamed = [event["partition"] for event in LOG_SINK.events("stream_finished")]
        assert sorted(streamed) == sorted(move.partition for move in plan.moves for _ in move.receivers)
        print(f"leave: {model.ok} ok, {model.failed} failed, {len(streamed)} partitions streamed")
    finally:
        cluster.stop_all()


def test_a_joining_node_stopped_mid_stream_finishes_the_join_after_a_restart(tmp_path: Path) -> None:
    cluster = start_cluster(tmp_path, 3, n=2, w=2, r=1, partitions=256)
    try:
        value = b"v" * 4000  # about 1 MB for node4 to receive: a second at 1 MB/s
        with cluster.running_client() as client:
            for i in range(1000):
                client.put(f"k{i:04d}", value)
        before = cluster.nodes["node1"].membership.record
        LOG_SINK.clear()
        cluster.add_joining("node4", seeds=["node2", "node1"], KV_STREAM_RATE_MBPS="1")
        cluster.start("node4")
        wait_until(lambda: LOG_SINK.events("stream_finished"), 30, message="node4 to finish a first partition")
        cluster.stop("node4")
        stored = cluster.nodes["node1"].membership.record.member("node4")
        assert stored is not None and stored.state is MemberState.JOINING  # the change outlives the node
        finished_before = len(LOG_SINK.events("stream_finished"))
        cluster.start("node4")

        def joined() -> bool:
            return all_hold(cluster, lambda r: getattr(r.member("node4"), "state", None) is MemberState.NORMAL)

        wait_until(joined, 120, message="node4's join to complete after its restart")
        # The restart went on from the streams' checkpoints rather than from the start.
        after = cluster.nodes["node4"].membership.record
        plan = ownership.plan(membership.ring(before), membership.ring(after), cluster.config.n)
        streamed = {event["partition"] for event in LOG_SINK.events("stream_finished")}
        assert streamed == {move.partition for move in plan.receiving("node4")}
        assert finished_before < len(streamed)
        with cluster.running_client() as client:
            assert all(client.get(f"k{i:04d}", r=2) == value for i in range(1000))
    finally:
        cluster.stop_all()


def test_kv_cluster_join_leave_and_remove_from_the_cli(tmp_path: Path) -> None:
    cluster = start_cluster(tmp_path, 3, n=2, w=2, r=1, partitions=64)
    try:
        with cluster.running_client() as client:
            line, code = cluster_command(client, ["join", "node9=127.0.0.1:1"])
            assert code == 0 and line.startswith("OK epoch 2:") and "node9 joining" in line, line
            line, code = cluster_command(client, ["leave", "node1"])
            assert code == 2 and line.startswith("ERROR CHANGE_IN_PROGRESS") and "node9 is joining" in line, line
            line, code = cluster_command(client, ["remove", "node2"])
            assert (code == 2 and "is up: remove is for a dead node" in line) or "in progress" in line, line
            wait_until(lambda: all_hold(cluster, lambda r: r.epoch == 2), 10, message="epoch 2 everywhere")
            status, code = cluster_command(client, ["status"])
            assert code == 2 and "DJ  node9" in status, status
            # node9 never comes: removing it abandons the join.
            wait_until(lambda: cluster.nodes["node1"].detector.is_down("node9"), 15, message="node9 down")
            line, code = cluster_command(client, ["remove", "node9"])
            assert code == 0 and "node9" not in line, line
            line, code = cluster_command(client, ["join", "node1:port"])
            assert code == 2 and "usage: kv cluster" in line, line
            line, code = cluster_command(client, ["join", "node1"])  # a bare address: node1:5000
            assert code == 2 and "node1:5000 does not answer" in line, line
    finally:
        cluster.stop_all()


def test_removing_a_dead_node_recreates_its_replicas_from_the_survivors(tmp_path: Path) -> None:
    # Paced at 1 MB/s, the survivors' copies take about a second to arrive: R=1 reads meanwhile
    # must be answered by the survivors, not by a new owner still streaming (it says it catches up).
    cluster = start_cluster(tmp_path, 4, n=2, w=2, r=1, partitions=64, stream_rate_mbps=1)
    kept = b"k" * 8000
    try:
        keys = [f"k{i:04d}".encode() for i in range(300)]
        with cluster.running_client() as client:
            for key in keys:
                client.put(key, kept)
        cluster.stop("node4")
        cluster.settle()
        ring = Ring(["node1", "node2", "node3"], 64)

        def copies(key: bytes) -> int:
            held = 0
            for node_id in ring.preference_list(key, 2):
                record = cluster.nodes[node_id].store.read(key)
                held += record is not None and record.value == kept
            return held

        with cluster.running_client() as client:
            line, code = cluster_command(client, ["remove", "node4"])
            assert code == 0 and "node4" not in line, line
            client.refresh_topology()
            rounds, missed = 0, []
            while rounds < 50 and not all(copies(key) == 2 for key in keys):  # bounded: 50 rounds
                missed += [key for key in keys if client.get(key, r=1) != kept]
                rounds += 1
        assert rounds > 0 and not missed, f"{len(missed)} R=1 reads during the removal missed: {missed[:5]}"
        wait_until(lambda: all(copies(key) == 2 for key in keys), 60, message="every key to have 2 copies again")
    finally:
        cluster.stop_all()


def test_a_new_node_no_seed_admits_stops_with_what_each_seed_said(tmp_path: Path) -> None:
    closed = free_port()
    config = load_config(
        {
            "KV_NODE_ID": "node4",
            "KV_PEERS": "node4=127.0.0.1:5999",
            "KV_SEEDS": f"127.0.0.1:{closed}",
            "KV_AUTO_JOIN": "true",
            "KV_N": "2",
            "KV_DATA_DIR": str(tmp_path),
            "KV_HOST": "127.0.0.1",
        }
    )
    settings = PeerSettings("node4", 0.2, 0.5, config.max_frame_bytes)
    with pytest.raises(ConfigError) as refused:
        join_through_seeds(config, settings, "0" * 32, deadline_s=0.0)
    message = str(refused.value)
    assert "no seed in KV_SEEDS admitted node4" in message and f"127.0.0.1:{closed}" in message, message


@pytest.mark.parametrize("mode", ["true", "wait"])
def test_kv_auto_join_needs_seeds(mode: str) -> None:
    with pytest.raises(ConfigError) as refused:
        load_config({"KV_NODE_ID": "node4", "KV_PEERS": "node4=h:5000", "KV_AUTO_JOIN": mode, "KV_HOST": "127.0.0.1"})
    assert f"KV_AUTO_JOIN={mode} needs KV_SEEDS" in str(refused.value)


@pytest.mark.parametrize(
    ("text", "asks", "waits"),
    [("true", True, False), ("WAIT", False, True), ("false", False, False), ("0", False, False)],
)
def test_kv_auto_join_asks_waits_or_forms(text: str, asks: bool, waits: bool) -> None:
    config = load_config(
        {"KV_NODE_ID": "node4", "KV_PEERS": "node4=h:5000", "KV_SEEDS": "h:5001", "KV_AUTO_JOIN": text}
        | {"KV_HOST": "127.0.0.1", "KV_N": "1", "KV_W": "1", "KV_R": "1"}
    )
    assert (config.auto_join, config.wait_to_join) == (asks, waits)


def test_kv_auto_join_names_its_values_when_it_is_none_of_them() -> None:
    with pytest.raises(ConfigError) as refused:
        load_config({"KV_NODE_ID": "n", "KV_PEERS": "n=h:5000", "KV_SEEDS": "h:1", "KV_AUTO_JOIN": "later"})
    assert "KV_AUTO_JOIN='later': must be true, wait or false" in str(refused.value)


@given(st.sampled_from(["a", "b", "c", "d"]), st.integers(1, 3), st.integers(8, 64))
def test_a_change_in_progress_writes_to_exactly_the_planners_receivers(node: str, n: int, partitions: int) -> None:
    founders = [("a", "h", 1), ("b", "h", 2), ("c", "h", 3)]
    record = membership.form("kv", founders, partitions, "a", "0" * 32)
    if node == "d":
        changing = membership_changes.admit(record, "d", "h", 4)
    else:
        changing = membership_changes.decommission(record, node)
    settled = membership_changes.settle(changing)
    plan = ownership.plan(membership.ring(record), membership.ring(settled), n)
    pending = membership_changes.pending_owners(changing, n)
    assert pending == {move.partition: move.receivers for move in plan.moves if move.receivers}
    assert settled.epoch == record.epoch + 2 and not membership_changes.changing(settled)
    # Reads keep the old owners until the switch: the changing record's ring is the old one.
    assert membership.ring(changing).node_ids == membership.ring(record).node_ids


def test_a_node_joins_a_secured_cluster_with_the_cluster_secret(tmp_path: Path) -> None:
    secured = auth_settings(tmp_path / "secrets")
    cluster = start_cluster(tmp_path, 3, n=2, w=2, r=1, partitions=64, **secured)
    try:
        with cluster.running_client() as client:
            client.security = as_user("writer")
            for i in range(100):
                client.put(f"s{i:03d}", b"secured")
        cluster.add_joining("node4", seeds=["node1"])
        cluster.start("node4")

        def joined() -> bool:
            return all_hold(cluster, lambda r: getattr(r.member("node4"), "state", None) is MemberState.NORMAL)

        wait_until(joined, 60, message="node4 to join the secured cluster")
        with cluster.running_client() as client:
            client.security = as_user("reader")
            assert all(client.get(f"s{i:03d}", r=2) == b"secured" for i in range(100))
        # A change takes the admin role.
        with cluster.running_client() as client, pytest.raises(KVError) as refused:
            client.security = as_user("reader")
            client.change_membership(protocol.ClusterLeave("node4"))
        assert refused.value.code == "FORBIDDEN"
    finally:
        cluster.stop_all()


def test_a_join_completes_from_the_other_replicas_when_a_source_stops_mid_stream(tmp_path: Path) -> None:
    cluster = start_cluster(tmp_path, 3, n=2, w=2, r=1, partitions=256)
    try:
        value = b"v" * 4000
        with cluster.running_client() as client:
            for i in range(1000):
                client.put(f"k{i:04d}", value)
        LOG_SINK.clear()
        cluster.add_joining("node4", seeds=["node2"], KV_STREAM_RATE_MBPS="1")
        cluster.start("node4")
        wait_until(lambda: LOG_SINK.events("stream_finished"), 30, message="node4 to finish a first partition")
        cluster.stop("node1")  # a source, in mid-stream

        def joined() -> bool:
            return all_hold(cluster, lambda r: getattr(r.member("node4"), "state", None) is MemberState.NORMAL)

        wait_until(joined, 120, message="node4's join to complete without node1")
        assert any(event["source"] == "node1" for event in LOG_SINK.events("stream_source_failed"))
        cluster.start("node1")
        cluster.settle()
        with cluster.running_client() as client:
            assert all(client.get(f"k{i:04d}", r=2) == value for i in range(1000))
    finally:
        cluster.stop_all()


def test_a_replica_read_of_a_key_a_node_does_not_own_is_refused_for_that_key_alone(tmp_path: Path) -> None:
    # A coordinator routing by another epoch must not take a non-owner's empty answer for "absent".
    cluster = start_cluster(tmp_path, 3, n=2, w=2, r=1, partitions=64)
    try:
        ring = Ring(["node1", "node2", "node3"], 64)
        key = next(k for k in (b"k%d" % i for i in range(100)) if "node3" not in ring.preference_list(k, 2))
        owner = ring.preference_list(key, 2)[0]
        with cluster.running_client() as client:
            with pytest.raises(PartitionNotHereError) as refused:
                client.call_node(cluster.address("node3"), protocol.ReplicaGet(key))
            assert "node3 does not own this key at epoch 1" in refused.value.message
            # Asked to answer anyway, it says what it holds; an owner says NOT_FOUND; and the refusal
            # did not make node3 look behind to its peers: GETs still read from it.
            assert client.call_node(cluster.address("node3"), protocol.ReplicaGet(key, True)).code == Status.NOT_FOUND
            assert client.call_node(cluster.address(owner), protocol.ReplicaGet(key)).code == Status.NOT_FOUND
            client.put(key, b"v")
            assert client.call_node(cluster.address(owner), protocol.ReplicaGet(key)).code == Status.OK
            assert not cluster.nodes["node1"].store_flags.is_behind("node3")
    finally:
        cluster.stop_all()


def test_a_removed_node_restarted_on_its_old_disk_is_refused_and_stalls_nothing(tmp_path: Path) -> None:
    # An old machine rebooting after its node was removed: its record still lists it, at an old epoch.
    cluster = start_cluster(
        tmp_path, 4, n=2, w=2, r=1, partitions=64, tombstone_grace_s=2, hint_window_s=1, anti_entropy_interval_s=1
    )
    try:
        keys = [b"z%d" % i for i in range(60)]
        founders = ("node1", "node2", "node3")
        with cluster.running_client() as client:
            for key in keys:
                client.put(key, b"old")
            cluster.stop("node4")
            cluster.settle()
            line, code = cluster_command(client, ["remove", "node4"])
            assert code == 0, line
            wait_until(lambda: all(cluster.nodes[n].membership.record.epoch == 2 for n in founders), 10)
            for key in keys[:30]:
                client.delete(key)
        node4 = cluster.start("node4")
        wait_until(lambda: node4.membership.problem is not None, 10, message="node4 to be refused by its peers")
        assert node4.membership.problem[0] is Status.NOT_A_MEMBER
        assert "node4 is not a member of" in node4.membership.problem[1]
        wait_until(
            lambda: all(cluster.nodes[n].detector.is_down("node4") is False for n in founders),
            10,
            message="the members to hear node4 again",
        )
        for node_id in (*founders, "node4"):  # a round of anti-entropy everywhere, node4's own too
            cluster.nodes[node_id].anti_entropy.run_round()
        # The members serve on: no "membership views differ" for a node that is no member (without
        # the fix it lasted as long as node4 ran) ...
        wait_until(
            lambda: all(cluster.nodes[n].membership.problem is None for n in founders),
            10,
            message="every member to coordinate with node4 back",
        )
        with Client([cluster.address(n) for n in founders], timeout=3.0) as client:
            for key in keys:
                assert client.get(key, r=2) == (None if key in keys[:30] else b"old"), key
            # ... and node4 coordinates nothing.
            with pytest.raises(KVError) as refused:
                client.call_node(cluster.address("node4"), protocol.Get(keys[40]))
            assert refused.value.code == "NOT_A_MEMBER"
    finally:
        cluster.stop_all()


def test_a_hint_for_a_member_of_a_newer_epoch_is_held_by_a_node_that_has_not_heard_of_it(tmp_path: Path) -> None:
    # A coordinator already routing by the epoch that admitted node9 hints a write for it to a
    # fallback still at the epoch before: the fallback holds it (and delivers it once node9 is its
    # peer), where it used to refuse it and fail the write. A hint for an unknown node from a sender
    # at no newer epoch (a removed node, a mistake) is still refused.
    cluster = start_cluster(tmp_path, 3, n=2, w=2, r=1, partitions=64)
    try:
        record = protocol.Record(protocol.Version(1, "node1"), b"v")
        node3 = cluster.nodes["node3"]
        epoch = node3.membership.record.epoch
        with cluster.running_client() as client:
            address = cluster.address("node3")
            for said in (0, epoch):
                with pytest.raises(KVError) as refused:
                    client.call_node(address, protocol.HintedPut(b"k", record, "node9", said))
                assert refused.value.code == "BAD_REQUEST" and "'node9', which is not another member" in str(
                    refused.value
                )
            assert client.call_node(address, protocol.HintedPut(b"k", record, "node9", epoch + 1)).code == Status.OK
        assert node3.store.hint_counts() == {"node9": 1}
    finally:
        cluster.stop_all()


@given(st.integers(2, 5), st.integers(1, 5))
def test_no_member_is_taken_out_below_n_owners(members: int, n: int) -> None:
    founders = [(f"m{i}", "h", i + 1) for i in range(members)]
    record = membership.form("kv", founders, 16, "m0", "0" * 32)
    joining = membership_changes.admit(record, "new", "h", 99)
    if members - 1 < n:
        with pytest.raises(membership_changes.ChangeRefused) as refused:
            membership_changes.check_copies_left(record, "m1", n)
        assert f"would be left to hold KV_N={n} copies" in str(refused.value)
    else:
        membership_changes.check_copies_left(record, "m1", n)
    membership_changes.check_copies_left(joining, "new", n)  # a joining node owns nothing yet


def test_kv_cluster_leave_below_n_members_is_refused_with_what_to_do(tmp_path: Path) -> None:
    cluster = start_cluster(tmp_path, 2, n=2, w=2, r=1, partitions=64)
    try:
        with cluster.running_client() as client:
            line, code = cluster_command(client, ["leave", "node2"])
            assert code == 2 and "without node2, 1 member would be left to hold KV_N=2 copies" in line, line
            assert "add a member first (kv cluster join)" in line
            assert cluster.nodes["node1"].membership.record.epoch == 1  # nothing changed
    finally:
        cluster.stop_all()
