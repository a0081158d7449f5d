"""The dashboard's JSON, built from what nodes answered: the ring's shares, the nodes and a key's
replicas. Pure: no node runs here."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from client.protocol import (
    MemberView,
    NodeAddress,
    PeerState,
    Record,
    RepairProgress,
    RequestWindow,
    StatsReply,
    Version,
)
from client.ring import Ring
from service.cluster_report import (
    Answer,
    ClusterShape,
    KeyPlacement,
    NodeReport,
    ReplicaAnswer,
    cluster_json,
    lookup_json,
    stats_json,
    summarize_ring,
)
from service.versioning import LOGICAL_BITS

node_sets = st.lists(st.sampled_from([f"n{i}" for i in range(8)]), min_size=1, max_size=8, unique=True)


@given(node_sets, st.integers(1, 300), st.integers(1, 4))
def test_shares_add_up_to_every_partition_once_as_primary_and_n_minus_1_times_as_replica(
    nodes: list[str], partitions: int, n: int
) -> None:
    ring = Ring(nodes, partitions)
    summary = summarize_ring(ring, n)
    replicas = min(n, len(nodes))
    assert sum(summary.primary_partitions.values()) == partitions
    assert sum(summary.replica_partitions.values()) == partitions * (replicas - 1)
    assert len(summary.primary) == partitions
    for partition, index in enumerate(summary.primary):
        assert summary.nodes[index] == ring.partition_owners(partition)[0]
    for node_id in nodes:
        held = sum(node_id in ring.partition_owners(p)[:replicas] for p in range(partitions))
        assert summary.primary_partitions[node_id] + summary.replica_partitions[node_id] == held


def window(requests: int = 0, p99_us: int = 0) -> RequestWindow:
    return RequestWindow(10_000, requests, p99_us, requests, p99_us)


def stats(node_id: str, members: tuple[MemberView, ...] = (), requests: int = 0) -> StatsReply:
    return StatsReply(
        node_id=node_id,
        wall_ms=5_000,
        uptime_ms=60_000,
        flags=0,
        live_keys=7,
        disk_bytes=4096,
        disk_used_bytes=4096,
        storage_limit_bytes=1 << 20,
        hints=3,
        requests=window(requests, 1500),
        members=members,
        clock_offsets=(),
        repair=RepairProgress(False, 0, 0, 0, 0, 0, 0),
    )


def test_a_node_reports_its_hints_by_owner_and_its_view_of_the_others() -> None:
    members = (
        MemberView("a", PeerState.UP, 1000, 0),
        MemberView("b", PeerState.DOWN, 2000, 3),
        MemberView("c", PeerState.SUSPECT, 0, 0),
    )
    shown = stats_json(stats("a", members, requests=0))
    assert shown["hints"] == {"total": 3, "by_owner": {"b": 3}}
    assert shown["peers"] == {"b": {"state": "down", "since_ms": 2000}, "c": {"state": "suspect", "since_ms": None}}
    assert shown["requests"]["client"] == {"count": 0, "per_second": 0.0, "p99_ms": None}  # no requests: no p99
    assert stats_json(stats("a", requests=20))["requests"]["client"] == {"count": 20, "per_second": 2.0, "p99_ms": 1.5}


def test_a_node_that_did_not_answer_stays_listed_with_the_reason() -> None:
    ring = summarize_ring(Ring(["a", "b"], 16), 2)
    nodes = [
        NodeReport(NodeAddress("a", "h", 1), PeerState.UP, 1000, stats("a"), clock_offset_s=0.0),
        NodeReport(NodeAddress("b", "h", 2), PeerState.DOWN, 2000, None, "not asked while down"),
    ]
    shown = cluster_json("a", 5_000, ClusterShape(2, 1, 2, 16), nodes, ring)
    assert [node["id"] for node in shown["nodes"]] == ["a", "b"]
    down = shown["nodes"][1]
    assert (down["state"], down["reachable"], down["stats"], down["error"]) == (
        "down",
        False,
        None,
        "not asked while down",
    )
    assert down["clock_offset_s"] is None
    assert down["partitions"] == {"primary": ring.primary_partitions["b"], "replica": ring.replica_partitions["b"]}
    assert (shown["served_by"], shown["generated_at_ms"]) == ("a", 5_000)


def version(ms: int, counter: int, node_id: str) -> Version:
    return Version((ms << LOGICAL_BITS) | counter, node_id)


def test_a_lookup_marks_which_replicas_hold_the_newest_version() -> None:
    newest = Record(version(2_000, 5, "b"), b"new")
    older = Record(version(1_000, 0, "a"), b"older value")
    placement = KeyPlacement(b"k\xff", 3, ("a", "b", "c", "d"), ("e",))
    answers = [
        ReplicaAnswer("a", PeerState.UP, Answer.FOUND, older),
        ReplicaAnswer("b", PeerState.UP, Answer.FOUND, newest),
        ReplicaAnswer("c", PeerState.UP, Answer.NOT_FOUND),
        ReplicaAnswer("d", PeerState.DOWN, Answer.DOWN),
    ]
    shown = lookup_json("a", 9, placement, answers)
    assert (shown["key"], shown["key_hex"], shown["key_bytes"]) == ("k\\xff", "6bff", 2)
    assert (shown["partition"], shown["preference_list"], shown["fallbacks"]) == (3, ["a", "b", "c", "d"], ["e"])
    replicas = {replica["node"]: replica for replica in shown["replicas"]}
    assert [replicas[node]["current"] for node in "abcd"] == [False, True, False, None]
    assert replicas["a"]["role"] == "primary" and replicas["b"]["role"] == "replica"
    assert replicas["b"]["record"] == {
        "tombstone": False,
        "value_bytes": 3,
        "version": {"timestamp": str(newest.version.timestamp), "wall_ms": 2_000, "counter": 5, "node": "b"},
    }
    assert replicas["d"]["outcome"] == "down"
    assert "new" not in str(shown) and "older value" not in str(shown)  # sizes, never values


def test_a_tombstone_is_a_record_without_a_size_and_nothing_anywhere_is_current() -> None:
    placement = KeyPlacement(b"k", 0, ("a", "b"), ())
    deleted = lookup_json(
        "a", 9, placement, [ReplicaAnswer("a", PeerState.UP, Answer.FOUND, Record(version(1, 0, "a"), None))]
    )
    assert deleted["replicas"][0]["record"]["tombstone"] is True
    assert deleted["replicas"][0]["record"]["value_bytes"] is None
    missing = lookup_json("a", 9, placement, [ReplicaAnswer("a", PeerState.UP, Answer.NOT_FOUND)])
    assert missing["replicas"][0]["current"] is True  # nothing anywhere: not holding it is up to date
