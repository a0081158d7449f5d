"""Membership changes are made by one member, the claimant, one at a time (issue 10).

The claimant is a pure function of the record and the failure detector's verdicts (hypothesis
properties below); then, on real in-process nodes: two changes asked at once at two nodes give
exactly one OK and the cluster keeps that one, a change asked elsewhere is made by the claimant,
a forwarded request is never forwarded again (nor made by a node that takes another member for
the claimant), and a claimant that is gone gives a clear error until the failure detector sees it
down and the next member takes over.
"""

from __future__ import annotations

from dataclasses import replace
from functools import partial
from pathlib import Path

import gevent
import pytest
from cluster import LOG_SINK, InProcessCluster, free_port, start_cluster
from hypothesis import given
from hypothesis import strategies as st
from polling import wait_until

from client import protocol
from client.cli_cluster import cluster_command
from client.client import Client
from client.protocol import Status
from service import membership
from service.change_runner import ChangeError
from service.membership import ClusterRecord, Member, MemberState
from service.membership_changes import claimant

pytestmark = pytest.mark.unit

NODE_IDS = ["a", "b", "c", "d", "e", "node1", "node10", "node2"]


@st.composite
def records_and_verdicts(draw: st.DrawFn) -> tuple[ClusterRecord, frozenset[str]]:
    """A record of 1-8 members in any states, and the members some node sees down."""
    ids = draw(st.lists(st.sampled_from(NODE_IDS), min_size=1, max_size=len(NODE_IDS), unique=True))
    states = draw(st.lists(st.sampled_from(list(MemberState)), min_size=len(ids), max_size=len(ids)))
    record = membership.form("kv", [(node_id, "h", 5000) for node_id in ids], 16, ids[0], "0" * 32)
    members = tuple(replace(m, state=state) for m, state in zip(record.members, states, strict=True))
    return replace(record, members=members), frozenset(draw(st.sets(st.sampled_from(ids))))


def normal_up(record: ClusterRecord, down: frozenset[str]) -> list[str]:
    return [m.node_id for m in record.members if m.state is MemberState.NORMAL and m.node_id not in down]


@given(records_and_verdicts())
def test_the_claimant_is_the_lowest_normal_member_not_seen_down(case: tuple[ClusterRecord, frozenset[str]]) -> None:
    record, down = case
    chosen = claimant(record, down.__contains__)
    candidates = normal_up(record, down)
    if not candidates:
        assert chosen is None
        return
    assert chosen in candidates and all(chosen <= other for other in candidates)
    # Whatever order the members come in, and whichever members after it are down too, every node
    # with the same record names the same member.
    shuffled = replace(record, members=tuple(reversed(record.members)))
    assert claimant(shuffled, down.__contains__) == chosen
    later_down = down | {m.node_id for m in record.members if m.node_id > chosen}
    assert claimant(record, later_down.__contains__) == chosen


@given(records_and_verdicts())
def test_when_the_claimant_is_seen_down_the_next_normal_member_takes_over(
    case: tuple[ClusterRecord, frozenset[str]],
) -> None:
    record, down = case
    chosen = claimant(record, down.__contains__)
    if chosen is None:
        return
    successor = claimant(record, (down | {chosen}).__contains__)
    rest = [node_id for node_id in normal_up(record, down) if node_id != chosen]
    assert successor == (min(rest) if rest else None)
    assert successor is None or successor > chosen


def test_joining_and_leaving_members_are_never_the_claimant() -> None:
    record = membership.form("kv", [("a", "h", 1), ("b", "h", 2), ("c", "h", 3)], 16, "a", "0" * 32)
    members = (
        Member("a", "h", 1, MemberState.LEAVING),
        Member("b", "h", 2, MemberState.NORMAL),
        Member("c", "h", 3, MemberState.JOINING),
    )
    assert claimant(replace(record, members=members), lambda node_id: False) == "b"
    assert claimant(replace(record, members=members), lambda node_id: node_id == "b") is None


# --- on real nodes ----------------------------------------------------------------------------------


def phantom_join(node_id: str) -> protocol.ClusterJoin:
    """A join of a node that never comes (nothing listens at its address): cheap to make and undo."""
    return protocol.ClusterJoin(node_id, "127.0.0.1", free_port())


def ask(cluster: InProcessCluster, node_id: str, request: protocol.ClusterJoin) -> ClusterRecord | ChangeError:
    try:
        return cluster.nodes[node_id].changes.request(request)
    except ChangeError as exc:
        return exc


def member_everywhere(cluster: InProcessCluster, node_id: str, *, present: bool = True) -> bool:
    """Whether every running node's record has ``node_id`` as a member (``present=False``: none does)."""
    return all((cluster.nodes[n].membership.record.member(node_id) is not None) is present for n in cluster.running)


def test_two_changes_asked_at_once_at_two_nodes_one_is_made_and_kept_the_other_refused(tmp_path: Path) -> None:
    cluster = start_cluster(tmp_path, 3, n=2, w=2, r=1, partitions=64)
    try:
        for round_, (first, second) in enumerate([("node2", "node3"), ("node1", "node2"), ("node3", "node1")]):
            requests = {first: phantom_join(f"x{round_}a"), second: phantom_join(f"x{round_}b")}
            asked = {node_id: gevent.spawn(ask, cluster, node_id, request) for node_id, request in requests.items()}
            gevent.joinall(list(asked.values()), raise_error=True)
            answers = {node_id: task.value for node_id, task in asked.items()}
            made = [node_id for node_id, answer in answers.items() if isinstance(answer, ClusterRecord)]
            assert len(made) == 1, (round_, answers)
            [refused] = [answer for answer in answers.values() if isinstance(answer, ChangeError)]
            assert refused.status is Status.CHANGE_IN_PROGRESS, (round_, refused.message)
            kept = requests[made[0]].node_id
            lost = next(request.node_id for node_id, request in requests.items() if node_id != made[0])
            assert f"{kept} is joining" in refused.message, refused.message
            # The requester told OK sees its change: every node converges on the record holding it.
            wait_until(partial(member_everywhere, cluster, kept), 10, message=f"every node to hold {kept}")
            assert member_everywhere(cluster, lost, present=False)
            # Abandon the phantom's join, so the next round starts with no change in progress.
            cluster.nodes[second].changes.request(protocol.ClusterRemove(kept))
            wait_until(partial(member_everywhere, cluster, kept, present=False), 10, message=f"{kept} dropped")
    finally:
        cluster.stop_all()


def test_a_change_asked_at_a_node_that_is_not_the_claimant_is_made_by_the_claimant(tmp_path: Path) -> None:
    cluster = start_cluster(tmp_path, 3, n=2, w=2, r=1, partitions=64)
    try:
        before = cluster.nodes["node3"].membership.record
        assert claimant(before, cluster.nodes["node3"].detector.is_down) == "node1"
        LOG_SINK.clear()
        with Client([cluster.address("node3")], timeout=3.0, connect_timeout=0.5) as client:  # only node3 is asked
            answer = membership.decode(client.change_membership(phantom_join("node9")))
        assert answer.epoch == before.epoch + 1 and answer.member("node9") is not None
        assert [e["claimant"] for e in LOG_SINK.events("membership_change_forwarded")] == ["node1"]
        assert len(LOG_SINK.events("membership_change_made")) == 1
        # The answer is the claimant's record, and node3 holds it at once.
        assert cluster.nodes["node1"].membership.record == answer
        assert cluster.nodes["node3"].membership.record == answer
    finally:
        cluster.stop_all()


def test_a_forwarded_request_is_never_forwarded_again_and_made_only_by_a_node_that_is_the_claimant(
    tmp_path: Path,
) -> None:
    cluster = start_cluster(tmp_path, 3, n=2, w=2, r=1, partitions=64)
    try:
        node1, node2 = cluster.nodes["node1"], cluster.nodes["node2"]
        before = node2.membership.record
        assert claimant(before, node2.detector.is_down) == "node1"  # node2 would send a plain request on
        LOG_SINK.clear()
        forwarded = replace(phantom_join("node9"), forwarded=True)
        # At node2, which takes node1 for the claimant: refused, neither sent on nor made beside node1's.
        with pytest.raises(ChangeError) as refused:
            node2.changes.request(forwarded)
        assert refused.value.status is Status.UNAVAILABLE
        message = refused.value.message
        assert "node2 takes node1 for it" in message and "nothing was changed" in message, message
        assert LOG_SINK.events("membership_change_forwarded") == []
        assert LOG_SINK.events("membership_change_made") == []
        assert node1.membership.record == before and node2.membership.record == before
        # At node1, the claimant: made there, and not sent on either.
        answer = node1.changes.request(forwarded)
        assert answer.epoch == before.epoch + 1 and answer.member("node9") is not None
        assert node1.membership.record == answer
        assert LOG_SINK.events("membership_change_forwarded") == []
        assert len(LOG_SINK.events("membership_change_made")) == 1
    finally:
        cluster.stop_all()


def test_a_claimant_that_is_gone_gives_a_clear_error_until_it_is_seen_down(tmp_path: Path) -> None:
    cluster = start_cluster(tmp_path, 3, n=2, w=2, r=1, partitions=64)
    try:
        before = cluster.nodes["node2"].membership.record
        cluster.stop("node1")  # the claimant; node2 and node3 will see it down only after seconds of silence
        with pytest.raises(ChangeError) as refused:
            cluster.nodes["node2"].changes.request(protocol.ClusterRemove("node1"))
        assert refused.value.status is Status.UNAVAILABLE
        message = refused.value.message
        assert "node1 is the claimant" in message and "cannot be reached" in message, message
        assert "nothing was changed" in message and "kv cluster remove node1" in message, message
        # What an admin running `kv cluster remove node1` against node2 reads.
        with Client([cluster.address("node2")], timeout=3.0, connect_timeout=0.5) as client:
            line, code = cluster_command(client, ["remove", "node1"])
        assert code == 2 and line.startswith("ERROR UNAVAILABLE node1 is the claimant"), line
        assert cluster.nodes["node2"].membership.record == before

        def seen_down() -> bool:
            for node_id in ("node2", "node3"):
                cluster.nodes[node_id].monitor.beat()
            return all(cluster.nodes[node_id].detector.is_down("node1") for node_id in ("node2", "node3"))

        wait_until(seen_down, 15, message="node2 and node3 to see node1 down")
        LOG_SINK.clear()
        answer = cluster.nodes["node3"].changes.request(protocol.ClusterRemove("node1"))
        assert answer.member("node1") is None and answer.epoch == before.epoch + 1
        assert [e["claimant"] for e in LOG_SINK.events("membership_change_forwarded")] == ["node2"]
        wait_until(lambda: cluster.nodes["node2"].membership.record == answer, 10, message="node2 to hold it")
    finally:
        cluster.stop_all()
