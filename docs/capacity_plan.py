"""The numbers behind docs/capacity.md: a cluster grown from 3 to 100 nodes one join at a time,
planned by the pure ownership planner (``service.ownership``), and what each size costs in peer
links and heartbeats.

    .venv/bin/python docs/capacity_plan.py                  # the whole plan, as Markdown (about a minute)
    .venv/bin/python docs/capacity_plan.py --max-nodes 10   # a quick look

Nothing is measured on a cluster: placement is deterministic (BLAKE2b rendezvous hashing), so the
same member names give the same placement figures on every machine; only the ring's build time is
timed, on the machine that runs this. Members are named ``node1``, ``node2``, ... as compose names
them.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
import tracemalloc
from collections import Counter
from dataclasses import dataclass

from client import protocol
from client.ring import DEFAULT_PARTITIONS, Ring
from service.config import MB
from service.ownership import plan, replica_shares
from service.peers import HEARTBEAT_INTERVAL

REPLICAS = (2, 3)
"""N values planned: 2 is the default (KV_N), 3 what production clusters usually run."""
TABLE_SIZES = (3, 4, 5, 6, 8, 10, 16, 20, 25, 32, 40, 50, 64, 75, 90, 99)
"""Sizes whose join gets a row of its own; every size is in the summary."""
PARTITION_OPTIONS = (4096, 8192, 16384, 32768)
"""Partition counts compared at the largest size (KV_PARTITIONS is a u16 on the wire: at most 65535)."""
BALANCE_TARGET = 0.10
"""The balance the project asks for: every node's share within 10% of the mean."""
TLS_RECORD_OVERHEAD = 22
"""Bytes TLS 1.3 adds to a record with AES-GCM: a 5-byte header, the inner content type, a 16-byte tag."""
TCP_IP_OVERHEAD = 52
"""Bytes of IPv4 (20) and TCP (20, plus 12 of timestamps) headers per segment."""
ANTI_ENTROPY_INTERVAL_S = 30
"""KV_ANTI_ENTROPY_INTERVAL_S's default."""
STREAM_RATE = 25 * MB
"""KV_STREAM_RATE_MBPS's default, in bytes per second."""


def names(count: int) -> list[str]:
    return [f"node{i}" for i in range(1, count + 1)]


@dataclass(frozen=True)
class Join:
    """One join: ``size`` nodes before, ``size + 1`` after, for one N."""

    size: int
    n: int
    moved_fraction: float  # replicas copied / all replicas after the join
    only_to_new_node: bool  # every receiver is the joining node
    busiest_source: int  # partitions the busiest old owner sends
    mean_source: float  # partitions each old owner sends, on average
    over: float  # after the join: the largest share's distance above the mean share, as a fraction
    under: float  # and the smallest share's below it

    @property
    def balanced(self) -> bool:
        return max(self.over, self.under) <= BALANCE_TARGET

    @property
    def ideal(self) -> float:
        return 1 / (self.size + 1)


def imbalance(shares: Counter[str]) -> tuple[float, float]:
    """The largest share's and the smallest share's distance from the mean, as fractions of it."""
    mean = sum(shares.values()) / len(shares)
    return max(shares.values()) / mean - 1, 1 - min(shares.values()) / mean


def growth(max_nodes: int, partitions: int = DEFAULT_PARTITIONS) -> list[Join]:
    """Every join from 3 nodes to ``max_nodes``, for each N in ``REPLICAS``, in size order."""
    joins = []
    before = Ring(names(3), partitions)
    for size in range(3, max_nodes):
        after = Ring(names(size + 1), partitions)
        joiner = f"node{size + 1}"
        for n in REPLICAS:
            change = plan(before, after, n)
            sources = Counter(move.source(joiner) for move in change.moves)
            over, under = imbalance(replica_shares(after, n))
            joins.append(
                Join(
                    size=size,
                    n=n,
                    moved_fraction=change.moved_fraction,
                    only_to_new_node=all(move.receivers == (joiner,) for move in change.moves),
                    busiest_source=max(sources.values()),
                    mean_source=len(change.moves) / size,
                    over=over,
                    under=under,
                )
            )
        before = after
    return joins


def leave_fraction(size: int, n: int, partitions: int = DEFAULT_PARTITIONS) -> float:
    """The share of replicas a decommission from ``size`` nodes moves (the last node leaves)."""
    return plan(Ring(names(size), partitions), Ring(names(size - 1), partitions), n).moved_fraction


def heartbeat_bytes_per_s(size: int) -> tuple[float, float]:
    """Bytes per second one node sends and receives for heartbeats in a cluster of ``size``: it pings
    each peer and answers each peer's ping, every ``HEARTBEAT_INTERVAL``. ``(payload, on the wire)``,
    the second with TLS records and TCP/IP headers (one segment each way, ACKs piggybacked)."""
    ping = len(protocol.encode_frame(1, protocol.Op.PING))
    reply = len(protocol.encode_frame(1, protocol.Status.OK, protocol.encode_ping_reply(protocol.PingReply(0, 0))))
    per_peer = 2 * (ping + reply)  # its ping and the answer, the peer's ping and its answer
    wire = 2 * (ping + reply + 2 * (TLS_RECORD_OVERHEAD + TCP_IP_OVERHEAD))
    peers = size - 1
    return peers * per_peer / HEARTBEAT_INTERVAL, peers * wire / HEARTBEAT_INTERVAL


def digest_bytes_per_round(size: int, n: int, partitions: int = DEFAULT_PARTITIONS) -> float:
    """DIGESTS bytes one node sends and receives in an anti-entropy round: for each partition it
    holds, a 2-byte partition number out and a 16-byte digest back, per other replica."""
    held = partitions * min(n, size) / size
    return held * (min(n, size) - 1) * (2 + protocol.DIGEST_SIZE)


def ring_cost(size: int, partitions: int = DEFAULT_PARTITIONS) -> tuple[float, float]:
    """Seconds to build a ``Ring`` of ``size`` nodes and the MiB it holds: every node and client
    builds one at start-up and on each TOPOLOGY change."""
    started = time.perf_counter()
    Ring(names(size), partitions)
    seconds = time.perf_counter() - started
    tracemalloc.start()
    ring = Ring(names(size), partitions)
    memory = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    del ring
    return seconds, memory / MB


def partitions_needed(size: int, n: int, target: float = BALANCE_TARGET) -> int:
    """Partitions for the largest share of ``size`` nodes to stay within ``target`` of the mean: a
    share is binomial (Q partitions, each held with probability p = N/size), and the largest of
    ``size`` such shares sits about sqrt(2 ln size) standard deviations above the mean."""
    p = min(n, size) / size
    z = math.sqrt(2 * math.log(size))
    return math.ceil(z * z * (1 - p) / (target * target * p))


def report(max_nodes: int) -> str:
    lines: list[str] = []
    out = lines.append
    joins = growth(max_nodes)
    out(f"## Growing from 3 to {max_nodes} nodes, one join at a time ({DEFAULT_PARTITIONS} partitions)")
    out("")
    out("moved: replicas copied to the new node, as a share of all replicas; ideal: 1/(n+1).")
    out("busiest source: partitions the most loaded old owner sends (mean in brackets).")
    out("over/under: the largest and the smallest share's distance from the mean share, after the join.")
    out("")
    out("| join | N | moved | ideal | moved/ideal | only to the new node | busiest source | over | under |")
    out("|---|---|---|---|---|---|---|---|---|")
    for join in joins:
        if join.size in TABLE_SIZES:
            out(
                f"| {join.size} -> {join.size + 1} | {join.n} | {join.moved_fraction:.4f} | {join.ideal:.4f} | "
                f"{join.moved_fraction / join.ideal:.3f} | {'yes' if join.only_to_new_node else 'NO'} | "
                f"{join.busiest_source} ({join.mean_source:.1f}) | {join.over:.1%} | {join.under:.1%} |"
            )
    out("")
    for n in REPLICAS:
        ratios = [join.moved_fraction / join.ideal for join in joins if join.n == n]
        everywhere = all(join.only_to_new_node for join in joins if join.n == n)
        out(
            f"* N={n}, all {len(ratios)} joins: moved/ideal from {min(ratios):.3f} to {max(ratios):.3f} "
            f"(mean {sum(ratios) / len(ratios):.3f}); every replica moved went to the new node: "
            f"{'yes' if everywhere else 'NO'}."
        )
    out("")
    out("## Decommissions (the last node leaves)")
    out("")
    out("| leave | N | moved | ideal 1/n |")
    out("|---|---|---|---|")
    for size in (4, 10, 50, 100):
        if size <= max_nodes:
            for n in REPLICAS:
                out(f"| {size} -> {size - 1} | {n} | {leave_fraction(size, n):.4f} | {1 / size:.4f} |")
    out("")
    out(f"## Balance at {max_nodes} nodes for each partition count")
    out("")
    out("over/under: the largest and the smallest share's distance from the mean share.")
    out("")
    out("| partitions | N | mean replicas per node | over | under | within 10% |")
    out("|---|---|---|---|---|---|")
    for partitions in PARTITION_OPTIONS:
        ring = Ring(names(max_nodes), partitions)
        for n in REPLICAS:
            shares = replica_shares(ring, n)
            over, under = imbalance(shares)
            mean = sum(shares.values()) / len(shares)
            within = "yes" if max(over, under) <= BALANCE_TARGET else "no"
            out(f"| {partitions} | {n} | {mean:.0f} | {over:.1%} | {under:.1%} | {within} |")
    out("")
    out("Largest size at which every share is within 10% of the mean, growing one node at a time:")
    out("")
    for n in REPLICAS:
        sizes = [join for join in joins if join.n == n]
        first_miss = next((join.size + 1 for join in sizes if not join.balanced), None)
        misses = sum(not join.balanced for join in sizes)
        out(
            f"* N={n}: within 10% at every size up to {first_miss - 1 if first_miss else max_nodes}; "
            f"{misses} of the {len(sizes)} sizes from 4 to {max_nodes} miss it; the binomial estimate asks for "
            f"{partitions_needed(max_nodes, n)} partitions at {max_nodes} nodes."
        )
    out("")
    out("## Per node, by cluster size")
    out("")
    out(
        "links: TCP connections to and from peers (one multiplexed link each way per peer). heartbeats: "
        f"a PING to every peer each {HEARTBEAT_INTERVAL:g} s, and the answers to theirs, payload and on "
        "the wire (TLS, TCP/IP). digests: an anti-entropy round's DIGESTS traffic, every "
        f"{ANTI_ENTROPY_INTERVAL_S} s. ring: building the Ring (every node and client does, at start and "
        "on each membership change) and what it holds."
    )
    out("")
    columns = ["nodes", "links", "heartbeats, payload", "heartbeats, wire", "digests per round (N=3)"]
    out("| " + " | ".join([*columns, "ring build", "ring memory"]) + " |")
    out("|---|---|---|---|---|---|---|")
    for size in (3, 10, 25, 50, 100):
        if size <= max_nodes:
            payload, wire = heartbeat_bytes_per_s(size)
            seconds, mib = ring_cost(size)
            out(
                f"| {size} | {2 * (size - 1)} | {payload / 1024:.1f} KiB/s | {wire / 1024:.1f} KiB/s | "
                f"{digest_bytes_per_round(size, 3) / 1024:.0f} KiB | {seconds * 1000:.0f} ms | {mib:.1f} MiB |"
            )
    large = PARTITION_OPTIONS[-1]
    seconds, mib = ring_cost(max_nodes, large)
    out("")
    out(
        f"With {large} partitions, a ring of {max_nodes} nodes takes {seconds * 1000:.0f} ms to build "
        f"and holds {mib:.1f} MiB."
    )
    out("")
    out("## Time to stream a join")
    out("")
    out(
        f"A joining node receives about one node's share, from every old owner at once, paced at "
        f"KV_STREAM_RATE_MBPS ({STREAM_RATE // MB} MiB/s by default): the time depends on the data per node, "
        "not on the cluster's size."
    )
    out("")
    out("| data per node | at 25 MiB/s | at 100 MiB/s |")
    out("|---|---|---|")
    for gib in (10, 100, 500, 1000):
        size = gib * 1024 * MB
        out(f"| {gib} GiB | {_duration(size / STREAM_RATE)} | {_duration(size / (100 * MB))} |")
    return "\n".join(lines) + "\n"


def _duration(seconds: float) -> str:
    if seconds < 3600:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--max-nodes", type=int, default=100, help="grow to this many nodes (default %(default)s)")
    options = parser.parse_args(argv)
    if options.max_nodes < 4:
        parser.error("--max-nodes must be at least 4: the plan starts from 3 nodes")
    started = time.perf_counter()
    sys.stdout.write(report(options.max_nodes))
    sys.stdout.write(f"\n(computed in {time.perf_counter() - started:.0f} s with Python {sys.version.split()[0]})\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
