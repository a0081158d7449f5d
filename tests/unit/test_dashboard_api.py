"""The dashboard's HTTP side on real in-process nodes: ``/api/cluster`` and ``/api/key`` checked
against the JSON Schemas in ``docs/dashboard.md``, and what they say against the nodes themselves;
the page and its files."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any
from urllib.parse import quote_from_bytes

import jsonschema
import pytest
from cluster import InProcessCluster
from polling import wait_until

from client.protocol import PeerState, Record, Version
from service.cluster_report import summarize_ring

DOC = Path(__file__).resolve().parents[2] / "docs" / "dashboard.md"


def schema(name: str) -> dict[str, Any]:
    """The JSON Schema in the document's ```json <name> block."""
    match = re.search(rf"```json {name}\n(.*?)```", DOC.read_text(encoding="utf-8"), flags=re.S)
    assert match, f"docs/dashboard.md has no ```json {name} block"
    loaded: dict[str, Any] = json.loads(match.group(1))
    jsonschema.Draft202012Validator.check_schema(loaded)
    return loaded


CLUSTER_SCHEMA = schema("cluster-schema")
KEY_SCHEMA = schema("key-schema")


def get_json(cluster: InProcessCluster, node_id: str, path: str, expect: int = 200) -> dict[str, Any]:
    status, headers, body = cluster.http(node_id, path)
    assert status == expect, body
    assert headers["Content-Type"] == "application/json"
    parsed: dict[str, Any] = json.loads(body)
    return parsed


def cluster_view(cluster: InProcessCluster, node_id: str = "node1") -> dict[str, Any]:
    """``/api/cluster`` from ``node_id``, checked against the schema."""
    view = get_json(cluster, node_id, "/api/cluster")
    jsonschema.validate(view, CLUSTER_SCHEMA)
    return view


def fresh_view(cluster: InProcessCluster, node_id: str = "node1") -> dict[str, Any]:
    """What ``/api/cluster`` answers, gathered now rather than shared from a gathering a moment ago."""
    view = cluster.node(node_id).cluster_view.cluster(max_age=0)
    jsonschema.validate(view, CLUSTER_SCHEMA)
    return view


def test_any_node_shows_every_node_up_with_its_own_key_count(cluster: InProcessCluster) -> None:
    with cluster.running_client() as kv:
        for i in range(60):
            kv.put(f"key-{i}", b"v" * i)
    for viewer in cluster.node_ids:
        view = cluster_view(cluster, viewer)
        assert view["served_by"] == viewer
        assert [node["id"] for node in view["nodes"]] == cluster.node_ids
        for node in view["nodes"]:
            assert (node["state"], node["reachable"], node["error"]) == ("up", True, None)
            assert node["address"] == cluster.address(node["id"])
            registry = cluster.node(node["id"]).metrics.registry
            assert node["stats"]["live_keys"] == registry.get_sample_value("kv_keys")
        assert sum(node["stats"]["live_keys"] for node in view["nodes"]) == 60 * cluster.config.n


def test_the_ring_and_each_nodes_share_match_the_placement(cluster: InProcessCluster) -> None:
    view = cluster_view(cluster)
    ring = cluster.ring()
    summary = summarize_ring(ring, cluster.config.n)
    assert view["ring"]["nodes"] == list(ring.node_ids)
    assert view["ring"]["primary"] == list(summary.primary)
    assert len(view["ring"]["primary"]) == view["config"]["partitions"] == cluster.config.partitions
    for node in view["nodes"]:
        assert node["partitions"] == {
            "primary": summary.primary_partitions[node["id"]],
            "replica": summary.replica_partitions[node["id"]],
        }


def test_a_node_that_stopped_stays_listed_without_figures(cluster: InProcessCluster) -> None:
    cluster.stop("node3")
    cluster.settle()  # node1 no longer sees node3 up
    node1 = cluster.node("node1")
    view = fresh_view(cluster)
    node3 = next(node for node in view["nodes"] if node["id"] == "node3")
    assert node3["state"] == node1.detector.state("node3").name.lower() != "up"
    assert (node3["reachable"], node3["stats"]) == (False, None)
    assert node3["error"]
    assert node3["address"] == cluster.address("node3")

    # Once the detector says down, the node is not even asked.
    node1.detector.suspect_after = node1.detector.down_after = 0.001
    wait_until(lambda: node1.detector.evaluate() or node1.detector.state("node3") is PeerState.DOWN)
    node3 = next(node for node in fresh_view(cluster)["nodes"] if node["id"] == "node3")
    assert (node3["state"], node3["error"]) == ("down", "not asked while down")


def test_viewers_share_one_gathering_for_a_second(cluster: InProcessCluster) -> None:
    first = cluster_view(cluster)
    again = cluster_view(cluster)
    assert again["generated_at_ms"] == first["generated_at_ms"]


def test_clock_offsets_measured_by_the_serving_node_are_shown(cluster: InProcessCluster) -> None:
    node1 = cluster.node("node1")
    node1.reports.clock_offsets = lambda: {"node2": -0.0015}
    view = cluster_view(cluster)
    offsets = {node["id"]: node["clock_offset_s"] for node in view["nodes"]}
    assert offsets == {"node1": 0.0, "node2": -0.0015, "node3": None}
    assert view["nodes"][0]["stats"]["clock_offsets_s"] == {"node2": -0.0015}


def test_a_key_lookup_shows_its_replicas_and_what_each_holds(cluster: InProcessCluster) -> None:
    key = b"looked-up"
    with cluster.running_client() as kv:
        written = kv.put(key, b"secret-value")
    primary, replica = cluster.replicas_of(key)
    viewer = next(node_id for node_id in cluster.node_ids if node_id not in (primary, replica))
    found = get_json(cluster, viewer, "/api/key?key=looked-up")
    jsonschema.validate(found, KEY_SCHEMA)
    assert found["preference_list"] == [primary, replica]
    assert found["fallbacks"] == [viewer]
    assert found["partition"] == cluster.ring().partition(key)
    for answer in found["replicas"]:
        assert (answer["outcome"], answer["current"]) == ("found", True)
        assert answer["record"]["version"]["timestamp"] == str(written.timestamp)
        assert answer["record"]["version"]["node"] == written.node_id
        assert answer["record"]["value_bytes"] == len(b"secret-value")
    assert b"secret-value" not in cluster.http(viewer, "/api/key?key=looked-up")[2]


def test_a_lookup_shows_which_replica_is_stale(cluster: InProcessCluster) -> None:
    key = b"\xffstale\x00"  # not UTF-8: percent-encoded bytes reach the node intact
    primary, replica = cluster.replicas_of(key)
    node = cluster.node(primary)
    node.store.write(key, Record(Version(node.clock.now(), primary), b"only here"))
    found = get_json(cluster, replica, f"/api/key?key={quote_from_bytes(key)}")
    jsonschema.validate(found, KEY_SCHEMA)
    assert found["key_hex"] == key.hex()
    by_node = {answer["node"]: answer for answer in found["replicas"]}
    assert (by_node[primary]["outcome"], by_node[primary]["current"]) == ("found", True)
    assert (by_node[replica]["outcome"], by_node[replica]["current"]) == ("not_found", False)

    cluster.stop(replica)
    cluster.settle()
    found = get_json(cluster, primary, f"/api/key?key={quote_from_bytes(key)}")
    by_node = {answer["node"]: answer for answer in found["replicas"]}
    assert by_node[replica]["outcome"] == "unreachable" and by_node[replica]["error"]
    assert by_node[replica]["current"] is None


@pytest.mark.parametrize(
    ("query", "message"),
    [("", "give a key"), ("key=", "give a key"), ("key=" + "x" * 1025, "exceeds the limit of 1024")],
)
def test_a_bad_lookup_is_a_400_that_says_why(cluster: InProcessCluster, query: str, message: str) -> None:
    answer = get_json(cluster, "node1", f"/api/key?{query}", expect=400)
    assert message in answer["error"]


def test_the_api_answers_only_get(cluster: InProcessCluster) -> None:
    status, _, body = cluster.http("node1", "/api/cluster", method="POST")
    assert status == 405 and b"only GET" in body


def test_the_page_and_its_files_are_served_from_the_node(cluster: InProcessCluster) -> None:
    status, headers, page = cluster.http("node1", "/dashboard")
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    assert "script-src 'self'" in headers["Content-Security-Policy"]
    for asset in re.findall(rb'(?:src|href)="(dashboard/[^"]+)"', page):
        status, headers, body = cluster.http("node1", "/" + asset.decode())
        assert status == 200 and body, asset
    assert b"http" not in re.sub(
        rb'"http://www.w3.org/2000/svg"', b"", cluster.http("node1", "/dashboard/dashboard.js")[2]
    )
    status, _, home = cluster.http("node1", "/")  # followed to the page
    assert status == 200 and home == page
    assert cluster.http("node1", "/metrics")[0] == 200  # the routes before stay
