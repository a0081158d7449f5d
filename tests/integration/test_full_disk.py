"""A full disk, for real: node1's /data is a 3 MB tmpfs, and 400 writes of 20 KB go through the cluster
(N=2, W=2, R=1).

Before the fix every write answered OK, node1's copies went to hints on the other nodes, and 59 keys
read back NOT_FOUND while the disk stayed full, with no warning and /healthz at 200. Now every write
still succeeds (node1's share goes elsewhere as hints), every acknowledged key reads back at the
default R through every coordinator while the disk is full, node1 says it is full (metric, one log
line, /healthz 503, its PING flag as MEMBERS shows it), and once keys are deleted it finds room by
itself, catches up on its hints and serves reads again.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from containers import NODE_IDS, Cluster

from client import protocol
from client.protocol import Status

WRITES = 400
FULL_NODE = "node1"


def value_of(index: int) -> bytes:
    """20 KB, different for every key, so a read that returns another key's value is caught."""
    return f"{index:05d}".encode() * 4000


def get_through(cluster: Cluster, coordinator: str, key: str) -> bytes | None:
    """GET at the default R with ``coordinator`` coordinating (sent to it alone)."""
    frame = cluster.admin().call_node(cluster.address(coordinator), protocol.Get(key.encode()))
    return None if frame.code == Status.NOT_FOUND else protocol.decode_value(frame.body)[1]


def events(cluster: Cluster, node: str, name: str) -> list[dict[str, Any]]:
    return [line for line in cluster.log_lines(node) if line.get("event") == name]


def test_a_full_disk_loses_no_acknowledged_write_says_so_and_recovers_by_itself(
    cluster_factory: Callable[..., Any], wait_until: Callable[..., Any]
) -> None:
    with cluster_factory("fulldisk", {"KV_LOG_COMMANDS": "false"}, data_tmpfs={FULL_NODE: "3m"}) as cluster:
        keys = [f"full-disk-{i:04d}" for i in range(WRITES)]
        with cluster.client() as kv:
            for i, key in enumerate(keys):
                kv.put(key, value_of(i))  # every write succeeds: raises otherwise

            # node1 is full, and says so.
            assert cluster.sample(FULL_NODE, "kv_storage_full") == 1
            status, body = cluster.http(FULL_NODE, "/healthz")
            assert status == 503
            assert body.startswith(f"{FULL_NODE}: storage full: the disk holding /data is full"), body
            assert cluster.readyz(FULL_NODE) == 200  # it still coordinates
            (warning,) = events(cluster, FULL_NODE, "storage_full")  # one line, not one per refused write
            assert warning["level"] == "warning"
            assert "/data" in warning["cause"]
            for observer in ("node2", "node3"):
                assert cluster.members(observer)[FULL_NODE].storage_full
            assert cluster.total("kv_hints_pending", ["node2", "node3"]) > 0

            # Every acknowledged key reads back at the default R, whoever coordinates, disk still full.
            for coordinator in NODE_IDS:
                wrong = [key for i, key in enumerate(keys) if get_through(cluster, coordinator, key) != value_of(i)]
                assert wrong == [], f"{len(wrong)} acknowledged keys did not read back through {coordinator}"
            assert all(kv.get(key) == value_of(i) for i, key in enumerate(keys))
            assert cluster.sample(FULL_NODE, "kv_storage_full") == 1

            # Space comes back as keys are deleted; node1 finds it by itself, then catches up.
            for key in keys:
                kv.delete(key)
            wait_until(
                lambda: cluster.sample(FULL_NODE, "kv_storage_full") == 0, 30, message="node1 to find room again"
            )
            wait_until(
                lambda: (
                    cluster.sample(FULL_NODE, "kv_storage_catching_up") == 0
                    and cluster.total("kv_hints_pending", ["node2", "node3"]) == 0
                ),
                60,
                message="node1 to receive its hints and catch up",
            )
            assert cluster.http(FULL_NODE, "/healthz") == (200, "ok\n")
            story = [
                {k: v for k, v in line.items() if k not in ("timestamp", "node")}
                for line in cluster.log_lines(FULL_NODE)
                if "storage" in line.get("event", "")
            ]
            # Once per change of state, never per write: room found while the deletes still run can
            # fill up again with hints for keys not deleted yet, so full and recovered may repeat.
            names = [line["event"] for line in story]
            assert names[0] == "storage_full", story
            assert names[-2:] == ["storage_recovered", "storage_caught_up"], story
            assert names.count("storage_full") == names.count("storage_recovered") <= 5, story
            wait_until(
                lambda: not any(cluster.members(observer)[FULL_NODE].flags for observer in ("node2", "node3")),
                10,
                message="the other nodes to see node1 writable",
            )
            for coordinator in NODE_IDS:
                assert all(get_through(cluster, coordinator, key) is None for key in keys)

            # It takes its own writes again.
            node_of = cluster.node_of_address(kv)
            fresh = [f"fresh-{i}" for i in range(40) if FULL_NODE in {node_of[a] for a in kv.where(f"fresh-{i}")}]
            for key in fresh:
                kv.put(key, b"after the disk was freed")
            assert fresh
            assert all(cluster.local_record(FULL_NODE, key) is not None for key in fresh)
