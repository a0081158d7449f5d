"""Every Prometheus metric the node exports, defined in one place.

Names and labels are part of the product: dashboards and the integration tests read them. Counters
end in ``_total`` and durations are in seconds. Latency buckets start at 50 microseconds because a
local read takes tens of microseconds and the default buckets (from 5 ms) would hide it.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics

# The *_created series double the exposition for no dashboard's benefit.
disable_created_metrics()

LATENCY_BUCKETS = (
    0.00005, 0.0001, 0.00025, 0.0005,
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip


class Metrics:
    """The node's metrics, on their own registry so in-process test nodes do not collide."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.requests = Counter(
            "kv_requests", "Client requests handled, by op and status", ["op", "status"], registry=self.registry
        )
        self.request_duration = Histogram(
            "kv_request_duration_seconds",
            "Time from a request's arrival to its reply, by op",
            ["op"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.keys = Gauge("kv_keys", "Live keys (not tombstones) in this node's store", registry=self.registry)
        self.peer_up = Gauge(
            "kv_peer_up",
            "1 if the failure detector sees the peer up, 0 if suspect or down",
            ["peer"],
            registry=self.registry,
        )
        self.replica_writes = Counter(
            "kv_replica_writes",
            "Writes this node sent to replicas as coordinator, by replica and outcome",
            ["peer", "status"],
            registry=self.registry,
        )
        self.connections = Gauge("kv_connections", "Open client and peer connections", registry=self.registry)
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
        self._request_children: dict[tuple[str, str], Counter] = {}
        self._duration_children: dict[str, Histogram] = {}

    def observe_request(self, op: str, status: str, seconds: float) -> None:
        """Count one request and its latency; label children are cached because this is the hot path."""
        counter = self._request_children.get((op, status))
        if counter is None:
            counter = self._request_children[(op, status)] = self.requests.labels(op, status)
        counter.inc()
        histogram = self._duration_children.get(op)
        if histogram is None:
            histogram = self._duration_children[op] = self.request_duration.labels(op)
        histogram.observe(seconds)

    def track_store(self, live_keys: Callable[[], int], pending_hints: Callable[[], int]) -> None:
        self.keys.set_function(live_keys)
        self.hints_pending.set_function(pending_hints)
