"""Membership on real in-process nodes: the data directory checked at start-up, peers proving who
they are (IDENTIFY), a refused node serving no client, views converging by gossip, clients told
when the epoch moves."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from cluster import LOG_SINK, InProcessCluster, listen_socket, start_cluster
from polling import wait_until

from client import cli, protocol
from client.client import Client
from client.errors import NotAMemberError
from client.protocol import Status
from service import membership, membership_store
from service.config import ConfigError, load_config
from service.membership_store import LocalMembership
from service.membership_view import MembershipEvents, MembershipView
from service.node import Node

pytestmark = pytest.mark.unit


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[InProcessCluster]:
    started = start_cluster(tmp_path)
    try:
        yield started
    finally:
        started.stop_all()


def environ(cluster: InProcessCluster, node_id: str, **overrides: str) -> dict[str, str]:
    peers = ",".join(f"{other}={cluster.address(other)}" for other in cluster.node_ids)
    return {
        "KV_NODE_ID": node_id,
        "KV_PEERS": peers,
        "KV_HOST": "127.0.0.1",
        "KV_PORT": str(cluster.ports[node_id]),
        "KV_HTTP_PORT": "0",
        "KV_DATA_DIR": str(cluster.tmp_path / node_id),
        "KV_PARTITIONS": "256",
        "KV_ANTI_ENTROPY_INTERVAL_S": "0",
        **overrides,
    }


# --- the data directory against the configuration -----------------------------------------------------


def test_the_record_is_kept_in_the_data_directory(cluster: InProcessCluster) -> None:
    saved = json.loads((cluster.tmp_path / "node1" / "membership.json").read_text())
    assert saved["node_id"] == "node1"
    assert saved["record"]["epoch"] == cluster.node("node1").membership.record.epoch
    ids = {node_id: cluster.node(node_id).membership.record.cluster_id for node_id in cluster.node_ids}
    assert len(set(ids.values())) == 1  # formed apart, agreed without talking
    # Each node learnt the others' identities from the handshakes.
    identities = {node_id: cluster.node(node_id).membership.local.identity for node_id in cluster.node_ids}
    for node_id in cluster.node_ids:
        record = cluster.node(node_id).membership.record
        assert {m.node_id: m.identity for m in record.members} == identities


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"KV_PARTITIONS": "128"}, "KV_PARTITIONS=128, but cluster kv-"),
        ({"KV_NODE_ID": "node1"}, "holds node node3's data"),
        ({"KV_CLUSTER_NAME": "other"}, "KV_CLUSTER_NAME is 'other', not 'kv'"),
    ],
)
def test_a_restart_with_a_configuration_the_data_directory_disagrees_with_is_refused(
    cluster: InProcessCluster, overrides: dict[str, str], expected: str
) -> None:
    cluster.stop("node3")
    config = load_config(environ(cluster, "node3", **overrides) | {"KV_PORT": "0"})
    with pytest.raises(ConfigError) as refused:
        Node(config)
    message = "\n".join(refused.value.problems)
    assert expected in message
    assert "set KV_PARTITIONS=256" in message or "KV_PARTITIONS" not in str(overrides)


def test_kv_peers_missing_a_member_is_refused_with_what_it_lacks(cluster: InProcessCluster) -> None:
    cluster.stop("node3")
    peers = f"node1={cluster.address('node1')},node3={cluster.address('node3')}"
    config = load_config(environ(cluster, "node3", KV_PEERS=peers, KV_PORT="0", KV_N="2"))
    with pytest.raises(ConfigError, match="KV_PEERS lacks node2"):
        Node(config)


def test_a_data_directory_with_a_store_but_no_record_adopts_the_configuration(tmp_path: Path) -> None:
    started = start_cluster(tmp_path, 1)
    try:
        started.stop("node1")
        (tmp_path / "node1" / "membership.json").unlink()  # as before this file existed
        node = started.start("node1")
        assert node.membership.record.epoch == 1
        assert any(line.get("upgrade") for line in LOG_SINK.events("membership_formed"))
    finally:
        started.stop_all()


# --- peers prove who they are ----------------------------------------------------------------------


def start_stray(cluster: InProcessCluster, node_id: str, **overrides: str) -> Node:
    """A node outside the cluster's plan, on a port of its own, with a fresh data directory."""
    listener = listen_socket()
    port = listener.getsockname()[1]
    config = load_config(
        environ(
            cluster, node_id, KV_PORT=str(port), KV_DATA_DIR=str(cluster.tmp_path / f"stray-{node_id}"), **overrides
        )
    )
    node = Node(config, listener=listener)
    node.start()
    return node


def test_a_second_process_claiming_a_members_id_is_refused_and_serves_no_client(cluster: InProcessCluster) -> None:
    LOG_SINK.clear()
    impostor = start_stray(cluster, "node1")
    try:
        for _ in range(2):
            impostor.monitor.beat()
        problem = impostor.membership.problem
        assert problem is not None and problem[0] is Status.NOT_A_MEMBER
        assert impostor.readiness_problem() is not None and "not an accepted member" in impostor.readiness_problem()  # type: ignore[operator]
        refusals = LOG_SINK.events("peer_refused")
        assert refusals and all(line["level"] == "error" for line in refusals)
        real = cluster.node("node1").membership.local.identity
        assert any(
            line["claimed_identity"] == impostor.membership.local.identity and real in line["reason"]
            for line in refusals
        )
        # A client seeded with the impostor alone learns nothing from it; with others too, it is not used.
        with (
            Client(f"127.0.0.1:{impostor.port}", timeout=2, connect_timeout=0.5) as alone,
            pytest.raises(NotAMemberError),
        ):
            alone.put("k", "v")
        with Client([f"127.0.0.1:{impostor.port}", *cluster.addresses], timeout=2, connect_timeout=0.5) as mixed:
            for i in range(30):
                mixed.put(f"key-{i}", f"v{i}")
            assert all(mixed.get(f"key-{i}") == f"v{i}".encode() for i in range(30))
            assert mixed.where("key-1")[0] != f"127.0.0.1:{impostor.port}"
        # The members go on serving.
        for node_id in cluster.node_ids:
            assert cluster.node(node_id).membership.problem is None
    finally:
        impostor.stop()


def test_a_node_formed_from_other_peers_is_refused(cluster: InProcessCluster) -> None:
    LOG_SINK.clear()
    peers = f"node1={cluster.address('node1')},node3={cluster.address('node3')}"
    stray = start_stray(cluster, "node3", KV_PEERS=peers)
    try:
        stray.monitor.beat()
        problem = stray.membership.problem
        assert problem is not None and problem[0] is Status.NOT_A_MEMBER
        assert "answers for cluster" in problem[1]
        with Client(f"127.0.0.1:{stray.port}", timeout=2, connect_timeout=0.5) as alone, pytest.raises(NotAMemberError):
            alone.get("k")
        assert cluster.node("node1").membership.problem is None
    finally:
        stray.stop()


def test_a_wiped_member_at_its_own_address_is_taken_back_with_a_new_identity(cluster: InProcessCluster) -> None:
    old = cluster.node("node2").membership.local.identity
    cluster.stop("node2")
    (cluster.tmp_path / "node2" / "membership.json").unlink()
    node2 = cluster.start("node2")
    cluster.settle()
    new = node2.membership.local.identity
    assert new != old

    def agreed() -> bool:
        for node_id in cluster.node_ids:
            cluster.node(node_id).monitor.beat()
        records = [cluster.node(node_id).membership.record for node_id in cluster.node_ids]
        return all(r.member("node2").identity == new for r in records) and len({r.epoch for r in records}) == 1  # type: ignore[union-attr]

    wait_until(agreed, 5, message="every node to take node2's new identity at one epoch")
    assert all(cluster.node(node_id).membership.problem is None for node_id in cluster.node_ids)
    with cluster.running_client() as client:
        client.put("after", "wipe")
        assert client.get("after") == b"wipe"


# --- views converge, and clients follow -------------------------------------------------------------


def test_a_newer_epoch_spreads_and_clients_are_told_to_refresh(cluster: InProcessCluster) -> None:
    with cluster.running_client() as client:
        client.put("k", "v")
        assert client.epoch == 1
        view = cluster.node("node1").membership
        view._adopt(membership.next_epoch(view.record, view.record.members), "test")  # a membership change

        def converged() -> bool:
            for node_id in cluster.node_ids:
                cluster.node(node_id).monitor.beat()
            return all(cluster.node(node_id).membership.serving.epoch == 2 for node_id in cluster.node_ids)

        wait_until(converged, 5, message="every node to hold epoch 2")
        assert client.get("k") == b"v"  # MEMBERSHIP_CHANGED, a refresh, and the retry
        assert client.epoch == 2
        assert any(line["epoch"] == 2 for line in LOG_SINK.events("membership_epoch_changed"))
        status, _, body = cluster.http("node2", "/metrics")
        assert status == 200 and b"kv_membership_epoch 2.0" in body
        assert b"kv_partitions_owned" in body


def in_memory(local: LocalMembership, advance: bool = False) -> LocalMembership:
    """A view's ``save`` that keeps nothing: the record saved is the one given."""
    return local


def test_a_node_behind_its_peers_answers_membership_changed_until_it_has_pulled(tmp_path: Path) -> None:
    record = membership.form("kv", [("a", "h", 1), ("b", "h", 2)], 16, "a", "0" * 32)
    saved: list[LocalMembership] = []

    def save(local: LocalMembership, advance: bool = False) -> LocalMembership:
        saved.append(local)
        return local

    view = MembershipView(LocalMembership("a", "0" * 32, record), save, MembershipEvents())
    assert view.problem is None
    newer = membership.next_epoch(record, record.members)
    assert view.observe("b", protocol.MembershipVersion(2, membership.digest(newer)))
    assert view.problem is not None and view.problem[0] is Status.MEMBERSHIP_CHANGED
    view.offer("b", newer)
    assert view.problem is None
    assert view.record == newer and saved[-1].record == newer
    assert not view.observe("b", protocol.MembershipVersion(2, membership.digest(newer)))


def test_a_record_with_another_ring_is_not_served_until_the_node_switches(tmp_path: Path) -> None:
    record = membership.form("kv", [("a", "h", 1), ("b", "h", 2)], 16, "a", "0" * 32)
    view = MembershipView(LocalMembership("a", "0" * 32, record), in_memory, MembershipEvents())
    grown = membership.next_epoch(record, [*record.members, membership.Member("c", "h", 3)])
    view.offer("b", grown)
    assert view.record == grown and view.serving == record
    assert view.problem is not None and "cannot serve yet" in view.problem[1]
    view.apply_ring = lambda new: True
    view.offer("b", replace(grown))
    view._adopt(membership.next_epoch(grown, grown.members), "test")
    assert view.serving.epoch == 3 and view.problem is None


def test_the_membership_file_survives_a_round_trip(tmp_path: Path) -> None:
    record = membership.form("kv", [("a", "h", 1)], 16, "a", "1" * 32)
    local = LocalMembership("a", "1" * 32, record)
    membership_store.save(str(tmp_path), local)
    assert membership_store.decode_local((tmp_path / "membership.json").read_bytes()) == local


# --- kv cluster status ---------------------------------------------------------------------------------


def test_kv_cluster_status_shows_every_member_as_nodetool_does(
    cluster: InProcessCluster, capsys: pytest.CaptureFixture[str]
) -> None:
    with cluster.running_client() as client:
        for i in range(20):
            client.put(f"key-{i}", "v")
    nodes = ["--nodes", ",".join(cluster.addresses)]
    assert cli.main([*nodes, "cluster", "status"]) == 0
    lines = capsys.readouterr().out.splitlines()
    cluster_id = cluster.node("node1").membership.record.cluster_id
    assert lines[0] == f"Cluster {cluster_id}, epoch 1, 256 partitions, N=2 (up/down as node1 sees it)"
    assert lines[2].split() == ["--", "Node", "Address", "Owns", "Keys", "Bytes", "Streaming"]
    rows = [line.split() for line in lines[3:]]
    assert [row[:3] for row in rows] == [["UN", node_id, cluster.address(node_id)] for node_id in cluster.node_ids]
    owns = [float(row[3].rstrip("%")) for row in rows]
    assert sum(owns) == pytest.approx(200.0, abs=0.2)  # N=2: every partition twice
    assert all(50 < share < 85 for share in owns)
    assert sum(int(row[4]) for row in rows) == 2 * 20
    assert all(row[-1] == "-" for row in rows)

    cluster.stop("node3")
    cluster.settle()
    assert cli.main([*nodes, "cluster", "status"]) == 2
    down = capsys.readouterr().out.splitlines()[-1].split()
    assert down[:2] == ["DN", "node3"] and down[4] == "?"


def test_kv_cluster_with_another_subcommand_is_a_usage_error(
    cluster: InProcessCluster, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["--nodes", cluster.addresses[0], "cluster", "join"]) == 2
    assert (
        capsys.readouterr().out.strip()
        == "usage: kv cluster status | join HOST:PORT | join NODE=HOST:PORT | leave NODE | remove NODE"
    )


# --- nodes from before membership records -----------------------------------------------------------


def test_a_node_that_refuses_the_new_flags_is_still_pinged_and_asked_for_its_topology(
    cluster: InProcessCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A node of the previous release answers BAD_REQUEST to PING and TOPOLOGY with a flags byte
    (its decoder takes only an empty body): peers and clients ask it again without the flag."""
    handler = cluster.node("node2").handler
    original = handler.reply

    def old_release(request_id: int, request: protocol.Request, *, inline: bool = False) -> bytes:
        if (isinstance(request, protocol.Ping) and request.membership) or (
            isinstance(request, protocol.Topology) and request.epoch
        ):
            return protocol.encode_error(request_id, Status.BAD_REQUEST, "1 unexpected bytes after the last field")
        return original(request_id, request, inline=inline)

    monkeypatch.setattr(handler, "reply", old_release)
    peer = cluster.node("node1").peers["node2"]
    first = peer.ping()
    assert first is not None and first.membership is None  # asked again, without the flag
    assert peer.ping() is not None
    with Client([cluster.address("node2")], timeout=2) as client:
        client.put("k", "v")
        assert client.get("k") == b"v"
        assert client.epoch == 0  # no epoch from such a node


class RecordingEvents(MembershipEvents):
    def __init__(self) -> None:
        self.refusals: list[tuple[str, dict[str, object]]] = []

    def peer_refused(self, event: str, details: dict[str, object]) -> None:
        self.refusals.append((event, details))


def test_two_identities_for_one_member_are_an_error_only_at_one_epoch() -> None:
    record = membership.form("kv", [("a", "h", 1), ("b", "h", 2)], 16, "a", "0" * 32)
    known = membership.with_identity(record, "b", "1" * 32)
    events = RecordingEvents()
    view = MembershipView(LocalMembership("a", "0" * 32, known), in_memory, events)
    replaced = membership.next_epoch(
        record, [m if m.node_id == "a" else replace(m, identity="2" * 32) for m in record.members]
    )
    view.offer("b", replaced)  # b was reinstalled: a newer epoch, not a conflict
    assert events.refusals == []
    assert view.record.member("b").identity == "2" * 32  # type: ignore[union-attr]
    rival = replace(
        replaced, members=tuple(replace(m, identity="3" * 32) if m.node_id == "b" else m for m in replaced.members)
    )
    view.offer("c", rival)
    assert [event for event, _ in events.refusals] == ["identity_conflict"]


def test_kv_cluster_name_and_kv_seeds_are_checked_at_start() -> None:
    base = {"KV_NODE_ID": "a", "KV_PEERS": "a=127.0.0.1:5000", "KV_HOST": "127.0.0.1", "KV_N": "1", "KV_W": "1"}
    config = load_config({**base, "KV_SEEDS": "10.0.0.1:5000, [::1]:5001"})
    assert config.cluster_name == "kv" and config.seeds == ("10.0.0.1:5000", "[::1]:5001")
    with pytest.raises(ConfigError, match="KV_SEEDS='host:port'"):
        load_config({**base, "KV_SEEDS": "host:port"})
    with pytest.raises(ConfigError, match="KV_CLUSTER_NAME='a b'"):
        load_config({**base, "KV_CLUSTER_NAME": "a b"})


def test_a_record_that_cannot_be_saved_is_not_adopted() -> None:
    record = membership.form("kv", [("a", "h", 1), ("b", "h", 2)], 16, "a", "0" * 32)

    def full_disk(local: LocalMembership, advance: bool = False) -> LocalMembership:
        raise OSError(28, "No space left on device")

    view = MembershipView(LocalMembership("a", "0" * 32, record), full_disk, MembershipEvents())
    view.offer("b", membership.next_epoch(record, record.members))
    assert view.record == record
