"""Every Prometheus metric the node exports, defined in one place.

Names and labels are part of the product: dashboards and the integration tests read them. Counters
end in ``_total`` and durations are in seconds. Latency buckets start at 50 microseconds because a
local read takes tens of microseconds and the default buckets (from 5 ms) would hide it.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, disable_created_metrics
from prometheus_client.metrics_core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

# The *_created series double the exposition for no dashboard's benefit.
disable_created_metrics()  # type: ignore[no-untyped-call]  # prometheus-client leaves it unannotated

LATENCY_BUCKETS = (
    0.00005, 0.0001, 0.00025, 0.0005,
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip


class HotCounter(Collector):
    """A labelled counter for the request path: an update is one dict increment.

    prometheus-client's own Counter takes a lock and walks label objects on each update, several
    microseconds that every request would pay. A node's requests all run on one event loop, so no
    lock is needed; the exposition is built on scrape.
    """

    def __init__(self, name: str, documentation: str, labels: list[str]) -> None:
        self._name = name
        self._documentation = documentation
        self._labels = labels
        self._counts: dict[tuple[str, ...], int] = {}

    def inc(self, *label_values: str) -> None:
        self._counts[label_values] = self._counts.get(label_values, 0) + 1

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(self._name, self._documentation, labels=self._labels)
        for label_values, count in sorted(self._counts.items()):
            family.add_metric(list(label_values), count)
        yield family


class RequestStats(Collector):
    """``kv_requests_total`` and ``kv_request_duration_seconds``: every request updates both, so
    like ``HotCounter`` they are plain dicts and lists (an update is a lookup, a bisect and two
    additions)."""

    def __init__(self) -> None:
        self._requests = HotCounter("kv_requests", "Requests handled, by op and status", ["op", "status"])
        self._buckets: dict[str, list[int]] = {}
        self._sums: dict[str, float] = {}

    def observe(self, op: str, status: str, seconds: float) -> None:
        self._requests.inc(op, status)
        buckets = self._buckets.get(op)
        if buckets is None:
            buckets = self._buckets[op] = [0] * (len(LATENCY_BUCKETS) + 1)
            self._sums[op] = 0.0
        buckets[bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1
        self._sums[op] += seconds

    def collect(self) -> Iterator[Metric]:
        yield from self._requests.collect()
        durations = HistogramMetricFamily(
            "kv_request_duration_seconds", "Time from a request's arrival to its reply, by op", labels=["op"]
        )
        for op, counts in sorted(self._buckets.items()):
            cumulative, running = [], 0
            for bound, count in zip([*map(_bound, LATENCY_BUCKETS), "+Inf"], counts, strict=True):
                running += count
                cumulative.append((bound, running))
            durations.add_metric([op], cumulative, self._sums[op])
        yield durations


def _bound(seconds: float) -> str:
    return repr(float(seconds))


class Metrics:
    """The node's metrics, on their own registry so in-process test nodes do not collide."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.request_stats = RequestStats()
        self.registry.register(self.request_stats)
        self.observe_request = self.request_stats.observe
        self.keys = Gauge("kv_keys", "Live keys (not tombstones) in this node's store", registry=self.registry)
        self.peer_up = Gauge(
            "kv_peer_up",
            "1 if the failure detector sees the peer up, 0 if suspect or down",
            ["peer"],
            registry=self.registry,
        )
        self.replica_writes = HotCounter(
            "kv_replica_writes",
            "Writes this node sent to replicas as coordinator, by replica and outcome",
            ["peer", "status"],
        )
        self.registry.register(self.replica_writes)
        self.connections = Gauge("kv_connections", "Open client and peer connections", registry=self.registry)
        self.connections_refused = Counter(
            "kv_connections_refused",
            "Connections answered TOO_MANY_CONNECTIONS and closed: every client slot was taken",
            registry=self.registry,
        )
        self.connections_closed = Counter(
            "kv_connections_closed",
            "Connections the node closed itself: handshake_timeout, frame_timeout, idle_timeout, output_limit",
            ["reason"],
            registry=self.registry,
        )
        self.connection_buffered = Gauge(
            "kv_connection_buffered_bytes",
            "Bytes held for all connections: requests in flight, with the replies they may produce, and unsent replies",
            registry=self.registry,
        )
        self.hints_pending = Gauge(
            "kv_hints_pending", "Writes held here for other nodes, waiting for delivery", registry=self.registry
        )
        self.hints_stored = Counter(
            "kv_hints_stored", "Hinted writes this node accepted for a down replica", ["owner"], registry=self.registry
        )
        self.hints_delivered = Counter(
            "kv_hints_delivered", "Hints delivered to their owner", ["owner"], registry=self.registry
        )
        self.hints_expired = Counter(
            "kv_hints_expired", "Hints dropped undelivered after the hint window", ["owner"], registry=self.registry
        )
        self.read_repairs = Counter(
            "kv_read_repairs", "Stale replicas sent the newest version after a read", registry=self.registry
        )
        self.antientropy_rounds = Counter("kv_antientropy_rounds", "Anti-entropy rounds run", registry=self.registry)
        self.antientropy_keys_repaired = Counter(
            "kv_antientropy_keys_repaired",
            "Keys copied between replicas by anti-entropy, either direction",
            registry=self.registry,
        )
        self.tombstones_purged = Counter(
            "kv_tombstones_purged", "Tombstones deleted after the grace period", registry=self.registry
        )

    def count_replica_write(self, peer: str, status: str) -> None:
        """One write sent to a replica (every write lands here, hence ``HotCounter``)."""
        self.replica_writes.inc(peer, status)

    def track_connections(self, buffered: Callable[[], int]) -> None:
        self.connection_buffered.set_function(buffered)

    def track_store(self, live_keys: Callable[[], int], pending_hints: Callable[[], int]) -> None:
        self.keys.set_function(live_keys)
        self.hints_pending.set_function(pending_hints)
