"""Figures for a membership change: a join and a decommission under load, between in-process nodes.
A benchmark, not a test: nothing asserts.

    .venv/bin/python tests/change_figures.py --keys 20000 --value-bytes 256 --partitions 1024

Three real nodes share this one process and core (``tests/unit/cluster.py``), with the load generator
(``--clients`` greenlets, each one request at a time, half PUTs and half GETs). It measures, side by
side in one run: throughput and p99 with three nodes, then while node4 joins, then while node4
leaves; for each change the keys and bytes streamed against the ideal (a join or decommission moves
1/(n+1) of the replicas, n the nodes before a join), how long streaming took and at what rate. The
generator shares the core with the nodes, so the throughput figures are the whole system's on one
core; compare them with each other, not with a cluster of machines.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path[:0] = [str(Path(__file__).parent / "unit"), str(Path(__file__).parent)]

import gevent  # noqa: E402
from cluster import LOG_SINK, InProcessCluster, start_cluster  # noqa: E402

from client import protocol  # noqa: E402
from client.client import Client  # noqa: E402
from client.errors import KVError  # noqa: E402
from service.membership import MemberState  # noqa: E402


class Load:
    """``clients`` greenlets sending PUT and GET one at a time; latencies kept per phase."""

    def __init__(self, client: Client, keys: int, value: bytes, clients: int) -> None:
        self.client, self.keys, self.value = client, keys, value
        self.latencies: list[float] = []
        self.failed = 0
        self.running = True
        self.workers = [gevent.spawn(self._work, seed) for seed in range(clients)]

    def _work(self, seed: int) -> None:
        rng = random.Random(seed)
        while self.running:
            key = f"key{rng.randrange(self.keys):07d}"
            started = time.perf_counter()
            try:
                if rng.random() < 0.5:
                    self.client.put(key, self.value)
                else:
                    self.client.get(key)
            except KVError:
                self.failed += 1
                continue
            self.latencies.append(time.perf_counter() - started)

    def phase(self) -> tuple[list[float], int]:
        """The latencies and failures since the last call."""
        latencies, failed = self.latencies, self.failed
        self.latencies, self.failed = [], 0
        return latencies, failed

    def stop(self) -> None:
        self.running = False
        gevent.joinall(self.workers)


def report(name: str, seconds: float, latencies: list[float], failed: int) -> None:
    ordered = sorted(latencies)
    p99 = ordered[int(len(ordered) * 0.99)] * 1000 if ordered else float("nan")
    print(
        f"{name:<22} {seconds:6.1f} s  {len(latencies) / seconds:8.0f} req/s  p99 {p99:6.1f} ms  "
        f"{failed} failed of {len(latencies) + failed}"
    )


def streamed() -> tuple[int, int, int]:
    """Partitions, keys and bytes the stream_finished log lines since the last clear report."""
    events = LOG_SINK.events("stream_finished")
    return len(events), sum(e["keys"] for e in events), sum(e["bytes"] for e in events)


def wait_for(cluster: InProcessCluster, done: object, timeout: float = 600.0) -> float:
    started = time.monotonic()
    while not done():  # type: ignore[operator]
        if time.monotonic() - started > timeout:
            raise SystemExit(f"the change did not end within {timeout:.0f} s")
        gevent.sleep(0.05)
    return time.monotonic() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keys", type=int, default=20000)
    parser.add_argument("--value-bytes", type=int, default=256)
    parser.add_argument("--partitions", type=int, default=1024)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--window", type=float, default=5.0, help="seconds measured before the changes")
    parser.add_argument("--rate-mbps", type=int, default=25, help="KV_STREAM_RATE_MBPS (0: unpaced)")
    options = parser.parse_args()
    settings = {
        "n": "2",
        "w": "2",
        "r": "1",
        "partitions": str(options.partitions),
        "stream_rate_mbps": str(options.rate_mbps),
        "log_commands": "false",
        "fsync": "periodic",
    }
    print(f"configuration: {vars(options)}, nodes {settings}")
    with tempfile.TemporaryDirectory(prefix="kv-change-figures-") as folder:
        cluster = start_cluster(Path(folder), 3, **settings)
        try:
            value = b"v" * options.value_bytes
            with cluster.running_client() as client:
                for start in range(0, options.keys, 1000):
                    for _attempt in range(5):  # a busy machine may stall a replica for a moment
                        try:
                            with client.pipeline() as pipe:
                                for i in range(start, min(start + 1000, options.keys)):
                                    pipe.put(f"key{i:07d}", value)
                                pipe.execute()
                            break
                        except KVError:
                            continue
                replicas = 2 * options.keys
                load = Load(client, options.keys, value, options.clients)
                gevent.sleep(options.window)
                report("3 nodes", options.window, *load.phase())

                LOG_SINK.clear()
                cluster.add_joining("node4", seeds=["node1"], **{"KV_STREAM_RATE_MBPS": str(options.rate_mbps)})
                cluster.start("node4")

                def joined() -> bool:
                    return all(
                        getattr(cluster.nodes[n].membership.record.member("node4"), "state", None) is MemberState.NORMAL
                        for n in cluster.running
                    )

                seconds = wait_for(cluster, joined)
                report("node4 joining", seconds, *load.phase())
                partitions, keys, size = streamed()
                held = cluster.nodes["node4"].store.live_keys
                print(
                    f"  join streamed {partitions} of {2 * options.partitions} partition replicas "
                    f"({partitions / (2 * options.partitions):.1%}; ideal 1/4 = 25.0%), {size / 1e6:.2f} MB in "
                    f"{seconds:.1f} s ({size / 1e6 / seconds:.2f} MB/s, paced at {options.rate_mbps or 'unpaced'} "
                    f"MB/s); {keys} keys copied, the rest reached node4 as writes while it joined; node4 now "
                    f"holds {held} keys, {held / replicas:.1%} of the {replicas} replicas"
                )
                gevent.sleep(options.window)
                report("4 nodes", options.window, *load.phase())

                LOG_SINK.clear()
                client.change_membership(protocol.ClusterLeave("node4"))

                def left() -> bool:
                    return all(cluster.nodes[n].membership.record.member("node4") is None for n in cluster.running)

                seconds = wait_for(cluster, left)
                report("node4 leaving", seconds, *load.phase())
                partitions, keys, size = streamed()
                print(
                    f"  leave streamed {partitions} of {2 * options.partitions} partition replicas "
                    f"({partitions / (2 * options.partitions):.1%}; ideal: node4's share), {size / 1e6:.2f} MB "
                    f"in {seconds:.1f} s ({size / 1e6 / seconds:.2f} MB/s); {keys} keys copied (the receivers "
                    "still held older copies of the rest from before the join: no clean-up yet)"
                )
                load.stop()
        finally:
            cluster.stop_all()


if __name__ == "__main__":
    main()
