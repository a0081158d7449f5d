"""The three misconfigurations issue 10 saw lose acknowledged writes, on real containers: each is now
refused with a clear message, and no acknowledged write is lost.

* node3 started with ``KV_PEERS`` missing node2: on its old disk it refuses to start; on a new disk
  its peers refuse it and it coordinates nothing.
* a process with ``KV_NODE_ID=node1`` at node3's address: refused by every member and logged as an
  ERROR naming both; 30 acknowledged writes are all found by clients with different seed lists.
* a restart with another ``KV_PARTITIONS``: the node refuses to start and says what to set.

Each test puts node3 back as it found it (on a new disk, node3 is taken back with a new identity).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from containers import PROTOCOL_PORT, Cluster

from client.client import Client
from client.errors import KVError, NotAMemberError

pytestmark = pytest.mark.integration

MISSING_NODE2 = f"node1=node1:{PROTOCOL_PORT},node3=node3:{PROTOCOL_PORT}"


@pytest.fixture
def node3_restored(cluster: Cluster) -> Iterator[None]:
    """Whatever the test did to node3, it runs again as itself afterwards (on a new disk if its own
    was replaced), and every node sees every other one up."""
    yield
    cluster.run_as("node3", {}, fresh_disk=True)
    cluster.wait_ready("node3")


def refused_by_its_peers(cluster: Cluster) -> bool:
    """Whether node3's /readyz says it is not ready because its peers refused it."""
    status, body = cluster.http("node3", "/readyz")
    return status == 503 and "not an accepted member" in body


def test_a_restart_with_another_partition_count_is_refused(cluster: Cluster, node3_restored: None) -> None:
    cluster.run_as("node3", {"KV_PARTITIONS": "1024"})
    code, output = cluster.wait_exited("node3")
    assert code == 2, output
    assert "configuration error, nothing started" in output
    assert "KV_PARTITIONS=1024, but cluster kv-" in output and "set KV_PARTITIONS=4096" in output


def test_node3_with_kv_peers_missing_node2_is_refused(
    cluster: Cluster, node3_restored: None, wait_until: Callable[..., Any]
) -> None:
    with cluster.client() as kv:
        written = {f"before-{i}": f"v{i}" for i in range(10)}
        for key, value in written.items():
            kv.put(key, value)

    # On its own disk: the node refuses to start, and says what differs.
    cluster.run_as("node3", {"KV_PEERS": MISSING_NODE2})
    code, output = cluster.wait_exited("node3")
    assert code == 2, output
    assert "KV_PEERS lacks node2" in output

    # On a new disk it forms another cluster id; its peers refuse it and it coordinates nothing.
    cluster.run_as("node3", {"KV_PEERS": MISSING_NODE2}, fresh_disk=True)
    cluster.wait_published("node3")
    wait_until(lambda: refused_by_its_peers(cluster), 20, message="node3 to be not ready: not an accepted member")
    wrong = Client(cluster.address("node3"), client_name="kv-tests-wrong-peers", timeout=3)
    with wrong, pytest.raises(NotAMemberError):
        wrong.put("through-node3", "x")
    wait_until(
        lambda: any(
            line.get("event") in ("peer_refused", "peer_impostor")
            and "kv-" in line["reason"]
            and line["level"] == "error"
            for line in cluster.log_lines("node1")
        ),
        20,
        message="node1 to log the node of another cluster as an error",
    )
    with Client([cluster.address("node1")], timeout=3) as kv:
        assert all(kv.get(key) == value.encode() for key, value in written.items())
        kv.put("during", "ok")  # node1 and node2 go on, node3's share held as hints
        assert kv.get("during") == b"ok"


def test_a_second_process_with_a_members_id_is_refused_and_loses_nothing(
    cluster: Cluster, node3_restored: None, wait_until: Callable[..., Any]
) -> None:
    cluster.run_as("node3", {"KV_NODE_ID": "node1"}, fresh_disk=True)  # meant to be node3
    cluster.wait_published("node3")
    wait_until(lambda: refused_by_its_peers(cluster), 20, message="the impostor to be not ready: not a member")

    def refusals(node: str) -> list[dict[str, Any]]:
        """The node's ERROR lines about a process claiming to be node1, or found at node3's address."""
        return [
            line
            for line in cluster.log_lines(node)
            if line["level"] == "error"
            and (
                (line.get("event") == "peer_refused" and line["claimed_node"] == "node1")
                or (line.get("event") == "peer_impostor" and line["answered_node"] == "node1")
            )
        ]

    wait_until(lambda: refusals("node1") and refusals("node2"), 20, message="both members to log it as an error")
    refusal = next(line for line in refusals("node2") if line["event"] == "peer_refused")
    real_node1 = next(line for line in cluster.log_lines("node1") if line.get("event") == "node_started")["identity"]
    assert refusal["claimed_identity"] in refusal["reason"] and real_node1 in refusal["reason"]  # names both

    impostor = cluster.address("node3")
    seeds = {
        "node1": [cluster.address("node1")],
        "node2": [cluster.address("node2")],
        "impostor first": [impostor, cluster.address("node2")],
        "all": [cluster.address("node1"), cluster.address("node2"), impostor],
    }
    acknowledged: dict[str, str] = {}
    for i in range(30):
        name = list(seeds)[i % len(seeds)]
        with Client(seeds[name], client_name="kv-tests-writer", timeout=3) as writer:
            try:
                writer.put(f"acked-{i}", f"value-{i}")
            except KVError:
                continue
            acknowledged[f"acked-{i}"] = f"value-{i}"
    assert len(acknowledged) == 30  # every seed list reaches a member

    for name, seed_list in seeds.items():
        with Client(seed_list, client_name="kv-tests-reader", timeout=3) as reader:
            found = {key for key, value in acknowledged.items() if reader.get(key) == value.encode()}
        assert found == set(acknowledged), f"a client seeded with {name} found {len(found)} of 30"
    alone = Client([impostor], client_name="kv-tests-impostor-only", timeout=3)
    with alone, pytest.raises(NotAMemberError):
        alone.get("acked-0")
