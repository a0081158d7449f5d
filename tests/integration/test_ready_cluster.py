"""Readiness: the moment every node of a freshly started cluster answers /readyz 200, writes succeed.

Before /readyz, tests and compose waited on /healthz, which is 200 as soon as a node serves; a node
that had tried its peers before they listened still had them backing off, and some writes sent right
then were answered UNAVAILABLE. /readyz is 200 only once the node has heard from every peer (or given
up on it), which is what the container healthcheck and these tests now wait for.
"""

from __future__ import annotations

import uuid

import docker
from containers import NODE_IDS, RUN_ID, Cluster

WRITES = 300


def test_writes_sent_as_soon_as_every_node_is_ready_all_succeed(
    docker_client: docker.DockerClient, kv_image: str
) -> None:
    cluster = Cluster(
        docker_client, kv_image, f"kvtest-{RUN_ID}-ready-{uuid.uuid4().hex[:6]}", {"KV_LOG_COMMANDS": "false"}
    )
    try:
        cluster.start_all(wait_peers=False)  # returns once each node's /readyz answered 200
        with cluster.client() as kv:
            for i in range(WRITES):
                kv.put(f"ready-{i}", b"v")  # raises on UNAVAILABLE
            assert all(kv.get(f"ready-{i}") == b"v" for i in range(WRITES))
        assert all(cluster.readyz(node) == 200 for node in NODE_IDS)
    finally:
        cluster.close()
