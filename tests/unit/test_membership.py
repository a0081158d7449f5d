"""The membership record: forming it, encoding it, and which record wins (``service.membership``)."""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from service import membership
from service.membership import ClusterRecord, Member, MembershipError, MemberState

pytestmark = pytest.mark.unit

NODES = [("node1", "h1", 5000), ("node2", "h2", 5000), ("node3", "h3", 5000)]
IDENTITY = "0123456789abcdef0123456789abcdef"
OTHER = "fedcba9876543210fedcba9876543210"


def formed(
    node_id: str = "node1", identity: str = IDENTITY, nodes: list[tuple[str, str, int]] = NODES
) -> ClusterRecord:
    return membership.form("kv", nodes, 4096, node_id, identity)


def test_founding_nodes_agree_on_the_cluster_id_without_talking() -> None:
    one = formed("node1", IDENTITY)
    three = formed("node3", OTHER, list(reversed(NODES)))
    assert one.cluster_id == three.cluster_id
    assert one.cluster_id.startswith("kv-")
    assert one.epoch == 1 and one.founders == ("node1", "node2", "node3")
    assert one.member("node1") == Member("node1", "h1", 5000, MemberState.NORMAL, IDENTITY)
    assert one.member("node2") == Member("node2", "h2", 5000, MemberState.NORMAL, "")


@pytest.mark.parametrize(
    ("name", "ids", "partitions"),
    [
        ("kv", ["node1", "node3"], 4096),  # KV_PEERS missing node2
        ("kv", ["node1", "node2", "node3"], 1024),  # another KV_PARTITIONS
        ("other", ["node1", "node2", "node3"], 4096),  # another KV_CLUSTER_NAME
    ],
)
def test_a_differing_configuration_derives_another_cluster_id(name: str, ids: list[str], partitions: int) -> None:
    assert membership.derive_cluster_id(name, ids, partitions) != formed().cluster_id


def test_the_record_round_trips_and_its_encoding_is_canonical() -> None:
    record = formed()
    assert membership.decode(membership.encode(record)) == record
    assert membership.encode(record) == membership.encode(membership.decode(membership.encode(record)))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda obj: obj.update(format=2), "format"),
        (lambda obj: obj.update(epoch=0), "epoch"),
        (lambda obj: obj.update(epoch="1"), "epoch"),
        (lambda obj: obj.update(partitions=70000), "partitions"),
        (lambda obj: obj.update(cluster_id="kv-0000000000000000"), "does not match"),
        (lambda obj: obj["members"].reverse(), "sorted"),
        (lambda obj: obj["members"][0].update(state="gone"), "gone"),
        (lambda obj: obj["members"][0].update(identity="xyz"), "32 hex"),
        (lambda obj: obj["members"][0].update(port=0), "host:port"),
        (lambda obj: obj.pop("founders"), "founders"),
        (lambda obj: obj.update(members=[]), "at least one member"),
    ],
)
def test_a_malformed_record_is_refused_with_its_reason(change: object, message: str) -> None:
    obj = membership.to_json(formed())
    change(obj)  # type: ignore[operator]
    with pytest.raises(MembershipError, match=message):
        membership.from_json(obj)


def test_bytes_that_are_not_a_record_are_a_membership_error() -> None:
    for data in (b"", b"{", b"[]", b"\xff", b'{"format": 1}'):
        with pytest.raises(MembershipError):
            membership.decode(data)


def test_the_ring_is_over_the_owning_members() -> None:
    record = formed()
    assert membership.ring(record).node_ids == ("node1", "node2", "node3")
    joining = membership.next_epoch(record, [*record.members, Member("node4", "h4", 5000, MemberState.JOINING)])
    assert joining.epoch == 2
    assert membership.ring(joining).node_ids == ("node1", "node2", "node3")  # node4 owns nothing yet
    assert not membership.same_ring(record, joining)
    assert membership.same_ring(record, replace(record, epoch=5))


def test_the_higher_epoch_wins() -> None:
    record = formed()
    newer = membership.next_epoch(record, [*record.members, Member("node4", "h4", 5000)])
    assert membership.merge(record, newer) == newer
    assert membership.merge(newer, record) == newer


def test_identities_learnt_on_either_side_are_joined() -> None:
    one = formed("node1", IDENTITY)
    two = formed("node2", OTHER)
    merged = membership.merge(one, two)
    assert merged.member("node1").identity == IDENTITY  # type: ignore[union-attr]
    assert merged.member("node2").identity == OTHER  # type: ignore[union-attr]
    assert membership.same_ring(merged, one)
    assert membership.identity_conflicts(one, two) == []
    assert membership.identity_conflicts(one, formed("node1", OTHER)) == ["node1"]


def test_a_conflict_at_one_epoch_is_resolved_the_same_way_on_both_sides() -> None:
    one = formed()
    moved = formed(nodes=[("node1", "h1", 5000), ("node2", "elsewhere", 5000), ("node3", "h3", 5000)])
    assert membership.conflicting(one, moved)
    assert membership.merge(one, moved) == membership.merge(moved, one)
    assert membership.merge(one, moved) in (one, moved)


def test_records_of_two_clusters_do_not_merge() -> None:
    with pytest.raises(MembershipError, match="two clusters"):
        membership.merge(formed(), formed(nodes=NODES[:2]))


def test_with_identity_learns_once_and_refuses_a_second() -> None:
    record = membership.with_identity(formed(), "node2", OTHER)
    assert record.member("node2").identity == OTHER  # type: ignore[union-attr]
    assert membership.with_identity(record, "node2", OTHER) is record
    with pytest.raises(MembershipError, match="already has identity"):
        membership.with_identity(record, "node2", IDENTITY)
    with pytest.raises(MembershipError, match="not a member"):
        membership.with_identity(record, "node9", OTHER)


# --- properties: merge is a join, so gossip in any order converges ------------------------------------

identities = st.sampled_from(["", IDENTITY, OTHER, "00000000000000000000000000000000"])
hosts = st.sampled_from(["h1", "h2", "other"])
states = st.sampled_from(list(MemberState))


@st.composite
def records(draw: st.DrawFn) -> ClusterRecord:
    """Records of one cluster (node1..node3 founding it), at a few epochs, with members' addresses,
    states and identities drawn from small sets so that equal epochs and equal shapes are common."""
    base = formed()
    members = [
        Member(node_id, draw(hosts), 5000, draw(states), draw(identities))
        for node_id in draw(st.sets(st.sampled_from(["node1", "node2", "node3", "node4"]), min_size=1))
    ]
    members.sort(key=lambda m: m.node_id)
    if not any(m.state is not MemberState.JOINING for m in members):
        members[0] = replace(members[0], state=MemberState.NORMAL)
    return replace(base, epoch=draw(st.integers(1, 3)), members=tuple(members))


@given(records())
def test_a_record_round_trips_through_its_encoding(record: ClusterRecord) -> None:
    assert membership.decode(membership.encode(record)) == record


@given(records(), records())
def test_merge_is_commutative(a: ClusterRecord, b: ClusterRecord) -> None:
    assert membership.merge(a, b) == membership.merge(b, a)


@given(records(), records(), records())
def test_merge_is_associative(a: ClusterRecord, b: ClusterRecord, c: ClusterRecord) -> None:
    assert membership.merge(membership.merge(a, b), c) == membership.merge(a, membership.merge(b, c))


@given(records())
def test_merge_is_idempotent(a: ClusterRecord) -> None:
    assert membership.merge(a, a) == a


@given(records(), records())
def test_merge_never_goes_back_an_epoch(a: ClusterRecord, b: ClusterRecord) -> None:
    assert membership.merge(a, b).epoch == max(a.epoch, b.epoch)
