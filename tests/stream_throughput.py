"""Partition streaming's throughput between in-process nodes, the two ways side by side:
PARTITION_RECORDS pages (a stream's full passes) and PARTITION_KEYS listings with a REPLICA_GET per
key (delta passes, and sources from before that op). A benchmark, not a test: nothing asserts.

    .venv/bin/python tests/stream_throughput.py --keys 5000 --value-bytes 1024 --fsync always

Three real nodes share this one process and core (``tests/unit/cluster.py``), so the figures are
the whole system's cost per key, source and receiver together, with no network in between; on
separate machines each side has a core of its own and the network adds a round trip per page
(per key when listing). Each way streams its own partition of the same size into node3, unpaced.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path[:0] = [str(Path(__file__).parent / "unit"), str(Path(__file__).parent)]

import gevent.pool  # noqa: E402
from cluster import InProcessCluster, start_cluster  # noqa: E402

from client.errors import BadRequestError  # noqa: E402
from client.protocol import Frame, PartitionRecords, Record, Request, Version  # noqa: E402
from service.streaming import PartitionStream, StreamSettings  # noqa: E402


class ListingOnly:
    """A source as one from before PARTITION_RECORDS looks: that op refused, so the stream lists."""

    def __init__(self, peer: Any) -> None:
        self.peer = peer

    def call(self, request: Request, **kwargs: Any) -> Frame:
        if isinstance(request, PartitionRecords):
            raise BadRequestError("listing only")
        return self.peer.call(request, **kwargs)  # type: ignore[no-any-return]


def fill(cluster: InProcessCluster, partition: int, keys: int, value_bytes: int) -> list[str]:
    """``keys`` records of ``value_bytes`` in ``partition`` on both its replicas; returns them."""
    ring = cluster.ring()
    owners = [cluster.node(node_id) for node_id in ring.partition_owners(partition)[: cluster.config.n]]
    rng = random.Random(partition)
    chosen: list[bytes] = []
    while len(chosen) < keys:
        key = b"k%d" % rng.getrandbits(40)
        if ring.partition(key) == partition:
            chosen.append(key)
    value = rng.randbytes(value_bytes)
    stamped = [(key, Record(Version(owners[0].clock.now(), owners[0].config.node_id), value)) for key in chosen]
    for owner in owners:
        gevent.pool.Pool(256).map(lambda item, owner=owner: owner.store.write(*item), stamped)
    return [owner.config.node_id for owner in owners]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keys", type=int, default=5000, help="records per partition (default %(default)s)")
    parser.add_argument("--value-bytes", type=int, default=1024, help="bytes per value (default %(default)s)")
    parser.add_argument("--fsync", choices=("always", "periodic"), default="always", help="KV_FSYNC on every node")
    options = parser.parse_args()
    print(
        f"3 in-process nodes, N=2, KV_PARTITIONS=16, KV_FSYNC={options.fsync}, {options.keys} records of "
        f"{options.value_bytes} B per partition, unpaced; Python {sys.version.split()[0]}"
    )
    with tempfile.TemporaryDirectory() as directory:
        cluster = start_cluster(Path(directory), 3, KV_PARTITIONS="16", KV_FSYNC=options.fsync)
        try:
            ring = cluster.ring()
            partitions = [p for p in range(16) if "node3" not in ring.partition_owners(p)[:2]][:2]
            receiver = cluster.node("node3")
            for way, partition in zip(("PARTITION_RECORDS", "PARTITION_KEYS + REPLICA_GET"), partitions, strict=True):
                sources = fill(cluster, partition, options.keys, options.value_bytes)
                peers: dict[str, Any] = dict(receiver.peers)
                if way != "PARTITION_RECORDS":
                    peers = {node_id: ListingOnly(peer) for node_id, peer in peers.items()}
                stream = PartitionStream(receiver.store, peers, StreamSettings(receiver.config.data_dir))
                started = time.perf_counter()
                machine = stream.run(partition, sources)
                seconds = time.perf_counter() - started
                mib = options.keys * options.value_bytes / seconds / 2**20
                print(
                    f"{way:30} {seconds:6.2f} s {options.keys / seconds:8.0f} records/s {mib:7.2f} MiB/s of values, "
                    f"{machine.pages_copied} pages, verified by {machine.verified_by}"
                )
        finally:
            cluster.stop_all()
    return 0


if __name__ == "__main__":
    sys.exit(main())
