"""Graceful shutdown in a real container: SIGTERM (``docker stop``) drains the node, which then exits 0."""

from __future__ import annotations

import time
import uuid
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from containers import Cluster

VICTIM = "node1"
STOP_TIMEOUT_S = 15  # compose's stop_grace_period; the node drains in at most KV_DRAIN_TIMEOUT_S (10)


def test_sigterm_drains_then_exits_zero_and_keeps_every_write(cluster: Cluster) -> None:
    with cluster.client() as kv:
        keys = [f"term-{uuid.uuid4().hex[:8]}-{i}" for i in range(40)]
        with kv.pipeline() as pipe:
            for key in keys:
                pipe.put(key, key.encode())
            pipe.execute()
        held = [key for key in keys if kv.node_address(VICTIM) in kv.where(key)]
    assert held, f"{VICTIM} holds none of the keys; the restart would prove nothing"

    container = cluster.containers[VICTIM].get_wrapped_container()
    started = time.monotonic()
    container.stop(timeout=STOP_TIMEOUT_S)  # SIGTERM, then SIGKILL only if the grace period runs out
    elapsed = time.monotonic() - started
    container.reload()
    assert container.attrs["State"]["ExitCode"] == 0, container.attrs["State"]
    assert elapsed < STOP_TIMEOUT_S, f"the stop took {elapsed:.1f} s: the node ignored SIGTERM"

    events = [line.get("event") for line in cluster.log_lines(VICTIM)]
    assert "node_stopping" in events and "node_stopped" in events
    assert events.index("node_stopping") < events.index("node_stopped")

    cluster.start(VICTIM)
    for key in held:
        record = cluster.local_record(VICTIM, key)
        assert record is not None and record.value == key.encode(), key
