"""Failures operators report, on real containers: a node paused with ``kill -STOP`` under load, and
a node whose clock is ten seconds behind its peers' (libfaketime preloaded into its process)."""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import gevent

from client.errors import KVError

if TYPE_CHECKING:
    from containers import Cluster

LIBFAKETIME = Path("/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1")
"""Debian's faketime package (``.ci/run`` installs it); mounted into the skewed node's container."""


@dataclass
class Load:
    """Bounded lanes of reads and writes through one ``Client``; each lane owns its keys, so each
    key's last acknowledged value is known (a write that failed is indeterminate: it may still land)."""

    kv: Any
    lanes: int = 32
    keys_per_lane: int = 50
    started: float = field(default_factory=time.monotonic)
    successes: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    acked: dict[str, bytes] = field(default_factory=dict)
    indeterminate: dict[str, set[bytes]] = field(default_factory=dict)  # failed since the last ack: may land

    def run(self, seconds: float, during: Callable[[], None]) -> None:
        lanes = [gevent.spawn(self._lane, lane, seconds) for lane in range(self.lanes)]
        side = gevent.spawn(during)
        gevent.joinall([*lanes, side], timeout=seconds + 30)
        gevent.killall([*lanes, side])

    def _lane(self, lane: int, seconds: float) -> None:
        rng = random.Random(lane)
        for sequence in range(1_000_000):  # bounded by count as well as by time
            if time.monotonic() - self.started >= seconds:
                return
            key = f"ff{lane}-{rng.randrange(self.keys_per_lane)}"
            value = None
            try:
                if rng.random() < 0.5:
                    value = f"{lane}/{sequence}".encode()
                    self.kv.put(key, value)
                    self.acked[key] = value
                    self.indeterminate.pop(key, None)
                else:
                    self.kv.get(key)
            except KVError as exc:
                self.errors.append(f"{exc.code} {exc.message}")
                if value is not None:  # a write that failed may still land, now or later
                    self.indeterminate.setdefault(key, set()).add(value)
                continue
            self.successes.append(time.monotonic() - self.started)

    def rate(self, start: float, end: float) -> float:
        return sum(1 for moment in self.successes if start <= moment < end) / (end - start)


def hints_drained(cluster: Cluster) -> bool:
    return cluster.total("kv_hints_pending") == 0


def test_a_node_stopped_for_ten_seconds_under_load_costs_under_one_percent_and_under_half_the_throughput(
    cluster: Cluster, wait_until: Callable[..., Any]
) -> None:
    """``kill -STOP`` on one node for 10 s: it accepts TCP but answers nothing. Before the fix, every
    request whose first replica was that node failed with TIMEOUT for the whole pause, and the
    cluster's successful reads fell from about 2,300/s to about 25/s."""
    before, pause, after = 6.0, 10.0, 4.0
    with cluster.client() as kv:
        load = Load(kv)

        def stop_then_continue() -> None:
            gevent.sleep(before)
            cluster.signal("node2", "SIGSTOP")
            gevent.sleep(pause)
            cluster.signal("node2", "SIGCONT")

        load.run(before + pause + after, stop_then_continue)
        rate_before = load.rate(1.0, before)
        rate_during = load.rate(before, before + pause)
        done, failed = len(load.successes), len(load.errors)
        print(
            f"\npause of node2 for {pause:g} s under {load.lanes} lanes: {rate_before:.0f} ops/s before, "
            f"{rate_during:.0f} ops/s during ({rate_during / rate_before:.2f}); "
            f"{done} succeeded, {failed} failed ({100 * failed / (done + failed):.2f}%): {sorted(set(load.errors))[:3]}"
        )
        assert failed <= 0.01 * (done + failed)
        assert rate_during >= 0.5 * rate_before

    wait_until(lambda: hints_drained(cluster), 30, message="the hints held for node2 to be delivered")
    with cluster.client() as reader:
        for key, value in load.acked.items():
            # The last acknowledged write, or one that failed after it (still in flight when the test
            # ended). Not one that failed before it: the node stopped while holding that write
            # refuses it when it wakes (its client gave up and wrote again), never applies it late.
            assert reader.get(key) in {value, *load.indeterminate.get(key, ())}, key


def test_a_node_ten_seconds_behind_is_fenced_and_no_acknowledged_write_is_lost(
    cluster: Cluster, wait_until: Callable[..., Any]
) -> None:
    """node3 runs with its clock 10 s behind the others'. Its writes would be ordered before writes
    made earlier in real time; it must see the offset, say so (metric, log), refuse to stamp writes
    (the client goes to another coordinator) and be routed around, so every write acknowledged
    through the cluster reads back at the default R."""
    assert LIBFAKETIME.exists(), f"{LIBFAKETIME} is missing: apt-get install faketime"
    skew = {
        "LD_PRELOAD": f"/faketime/{LIBFAKETIME.name}",
        "FAKETIME": "-10s",
        "FAKETIME_DONT_FAKE_MONOTONIC": "1",
    }
    cluster.recreate("node3", env=skew, binds={str(LIBFAKETIME.parent): "/faketime"})
    try:

        def node1_sees_the_offset() -> bool:
            offset = cluster.sample("node1", "kv_peer_clock_offset_seconds", peer="node3")
            return offset is not None and -10.5 < offset < -9.5

        wait_until(node1_sees_the_offset, 20, message="node1 to measure node3's clock 10 s behind")
        wait_until(lambda: cluster.sample("node3", "kv_clock_fenced") == 1, 20, message="node3 to fence its clock")
        assert any(line.get("event") == "clock_fenced" for line in cluster.log_lines("node3"))
        assert any(line.get("event") == "peer_clock_offset" for line in cluster.log_lines("node1"))

        written: dict[str, bytes] = {}
        with cluster.client() as kv:
            for i in range(60):
                key = f"skew{i}"
                written[key] = f"v{i}".encode()
                kv.put(key, written[key])
            for i in range(0, 60, 3):
                kv.delete(f"skew{i}")
                written[f"skew{i}"] = b""
        with cluster.client() as reader:
            for key, value in written.items():
                assert (reader.get(key) or b"") == value, key
    finally:
        cluster.recreate("node3")
    wait_until(lambda: cluster.sample("node3", "kv_clock_fenced") == 0, 20, message="node3's fence to lift")
