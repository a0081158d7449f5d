"""Every Prometheus metric the node exports, defined in one place, and the recent request window.

Names and labels are part of the product: dashboards and the integration tests read them. Counters
end in ``_total`` and durations are in seconds. Latency buckets start at 50 microseconds because a
local read takes tens of microseconds and the default buckets (from 5 ms) would hide it.

``RequestStats`` also keeps the last ``WINDOW_SECONDS`` of its latency histogram, as one snapshot of
the bucket counts per ``tick`` (a background task ticks it every second), so that STATS can say how
many requests a node answered lately and their p99 without a Prometheus server: the request path
does no more work for it.
"""

from __future__ import annotations

import bisect
import math
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, disable_created_metrics
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from client.protocol import RequestWindow

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


WINDOW_SECONDS = 10
"""How far back STATS' request rate and p99 look: long enough for a steady p99 at a few hundred
requests a second, short enough that the dashboard shows a change within a few refreshes."""
WINDOW_TICK_SECONDS = 1.0
"""Seconds between the snapshots the window is made of: the window ends now and starts between
``WINDOW_SECONDS`` and that plus one tick ago."""
CLIENT_OPS = frozenset({"GET", "PUT", "DELETE"})
"""The ops a client's request is: the rest are replica traffic, heartbeats and administration."""


def histogram_quantile(quantile: float, counts: Sequence[int], bounds: Sequence[float] = LATENCY_BUCKETS) -> float:
    """The ``quantile`` (0..1) of observations counted per bucket (``counts[i]`` in ``(bounds[i-1],
    bounds[i]]``, one more for above the last bound), in the bounds' unit, interpolated linearly within
    its bucket as Prometheus's ``histogram_quantile`` does; above the last bound it is that bound.
    ``nan`` when nothing was counted."""
    total = sum(counts)
    if not total:
        return math.nan
    rank = quantile * total
    below = 0
    for index, count in enumerate(counts):
        if count and below + count >= rank:
            if index == len(bounds):
                return bounds[-1]
            lower = bounds[index - 1] if index else 0.0
            return lower + (bounds[index] - lower) * (rank - below) / count
        below += count
    return bounds[-1]


class RequestStats(Collector):
    """``kv_requests_total`` and ``kv_request_duration_seconds``: every request updates both, so
    like ``HotCounter`` they are plain dicts and lists (an update is a lookup, a bisect and two
    additions). ``tick`` and ``window`` keep and read the recent window; ``now`` is the clock, in
    seconds (``time.monotonic``; tests fake it)."""

    def __init__(self, now: Callable[[], float] = time.monotonic) -> None:
        self._requests = HotCounter("kv_requests", "Requests handled, by op and status", ["op", "status"])
        self._buckets: dict[str, list[int]] = {}
        self._sums: dict[str, float] = {}
        self._now = now
        # (time, bucket counts of every op, of client ops) once a tick, the oldest about WINDOW_SECONDS old.
        self._snapshots: deque[tuple[float, list[int], list[int]]] = deque(
            maxlen=round(WINDOW_SECONDS / WINDOW_TICK_SECONDS) + 1
        )
        self.tick()

    def observe(self, op: str, status: str, seconds: float) -> None:
        self._requests.inc(op, status)
        buckets = self._buckets.get(op)
        if buckets is None:
            buckets = self._buckets[op] = [0] * (len(LATENCY_BUCKETS) + 1)
            self._sums[op] = 0.0
        buckets[bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1
        self._sums[op] += seconds

    def tick(self) -> None:
        """Snapshot the histogram for the window (every ``WINDOW_TICK_SECONDS``)."""
        self._snapshots.append((self._now(), *self._totals()))

    def window(self) -> RequestWindow:
        """Requests answered since the oldest snapshot (about ``WINDOW_SECONDS`` ago, less after a
        start) up to now, and their 99th-percentile latency."""
        return window_of(*self.recent())

    def recent(self) -> tuple[int, list[int], list[int]]:
        """What ``window`` is made of: the window's length in ms, and the latency bucket counts in
        it of every op and of client ops (what a node of several workers sums over them)."""
        started, *base = self._snapshots[0]
        window_ms = round((self._now() - started) * 1000)
        every, client = (
            [now - then for now, then in zip(counts, before, strict=True)]
            for counts, before in zip(self._totals(), base, strict=True)
        )
        return window_ms, every, client

    def _totals(self) -> tuple[list[int], list[int]]:
        """The bucket counts summed over every op, and over client ops."""
        every = _sum_buckets(self._buckets.values())
        client = _sum_buckets(counts for op, counts in self._buckets.items() if op in CLIENT_OPS)
        return every, client

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


def window_of(window_ms: int, every: Sequence[int], client: Sequence[int]) -> RequestWindow:
    """The request window of ``window_ms`` whose latency bucket counts are ``every`` (every op) and
    ``client`` (client ops): their totals and 99th percentiles, in microseconds (0 when empty)."""
    figures: list[int] = []
    for recent in (every, client):
        p99 = histogram_quantile(0.99, recent)
        figures += [sum(recent), 0 if math.isnan(p99) else round(p99 * 1_000_000)]
    return RequestWindow(window_ms, *figures)


def _sum_buckets(histograms: Iterable[list[int]]) -> list[int]:
    total = [0] * (len(LATENCY_BUCKETS) + 1)
    for counts in histograms:
        for index, count in enumerate(counts):
            total[index] += count
    return total


def _bound(seconds: float) -> str:
    return repr(float(seconds))


class StoreState(Collector):
    """The store's state and space, read once per scrape from ``read()``: ``(full, catching up,
    used bytes, limit bytes, disk free bytes or None)``."""

    def __init__(self, read: Callable[[], tuple[bool, bool, int, int, int | None]]) -> None:
        self._read = read

    def collect(self) -> Iterator[Metric]:
        full, catching_up, used, limit, free = self._read()
        yield GaugeMetricFamily(
            "kv_storage_full", "1 while the store refuses writes: its disk or KV_STORAGE_LIMIT_MB is full", int(full)
        )
        yield GaugeMetricFamily(
            "kv_storage_catching_up",
            "1 while the store takes writes again after being full, until the hints held for it arrive",
            int(catching_up),
        )
        yield GaugeMetricFamily(
            "kv_storage_used_bytes", "Bytes of the store file in use or free for reuse (LMDB pages)", used
        )
        yield GaugeMetricFamily("kv_storage_limit_bytes", "The most the store may grow to (KV_STORAGE_LIMIT_MB)", limit)
        if free is not None:
            yield GaugeMetricFamily("kv_disk_free_bytes", "Bytes free on the disk holding the store", free)


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
        self.peer_clock_offset = Gauge(
            "kv_peer_clock_offset_seconds",
            "The peer's wall clock minus this node's, measured by the last heartbeat (Cristian's algorithm)",
            ["peer"],
            registry=self.registry,
        )
        self.clock_fenced = Gauge(
            "kv_clock_fenced",
            "1 while this node's clock disagrees with most peers by more than KV_MAX_CLOCK_OFFSET_MS "
            "(it then refuses to stamp writes)",
            registry=self.registry,
        )
        self.clock_skew_refusals = Counter(
            "kv_clock_skew_refusals",
            "Requests refused because a timestamp was too far ahead of this node's clock, by what carried it",
            ["source"],
            registry=self.registry,
        )
        self.writes_restamped = Counter(
            "kv_writes_restamped",
            "Writes stamped again above a newer version a replica held (a clock behind another node's)",
            registry=self.registry,
        )
        self.membership_epoch = Gauge(
            "kv_membership_epoch",
            "Epoch of the membership record this node holds (a membership change makes a new one, epoch + 1)",
            registry=self.registry,
        )
        self.partitions_owned = Gauge(
            "kv_partitions_owned",
            "Partitions this node holds a replica of on the ring it serves (of KV_PARTITIONS, N replicas each)",
            registry=self.registry,
        )
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
        self.auth_failures = Counter(
            "kv_auth_failures",
            "Failed authentications, by user (a known user, a member node:<id>, or (unknown) for any other name)",
            ["user"],
            registry=self.registry,
        )
        self.tls_failures = Counter(
            "kv_tls_handshake_failures",
            "Connections closed because their TLS handshake failed, or that sent plaintext to a TLS-only port",
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
        self.hint_delivery_failures = Counter(
            "kv_hint_delivery_failures",
            "Hints whose delivery to their owner failed (they stay for the next pass)",
            ["owner"],
            registry=self.registry,
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
        self.cleanup_keys_dropped = Counter(
            "kv_cleanup_keys_dropped",
            "Records of partitions this node no longer owns deleted here once every owner held them",
            registry=self.registry,
        )
        self.stream_partitions_pending = Gauge(
            "kv_stream_partitions_pending",
            "Partitions still to stream into this node for a membership change (0 when none remains)",
            registry=self.registry,
        )
        self.stream_bytes = Counter(
            "kv_stream_bytes",
            "Bytes of partitions streamed for membership changes: in, received here; out, served from here",
            ["direction"],
            registry=self.registry,
        )

    def count_replica_write(self, peer: str, status: str) -> None:
        """One write sent to a replica (every write lands here, hence ``HotCounter``)."""
        self.replica_writes.inc(peer, status)

    def track_connections(self, buffered: Callable[[], int]) -> None:
        self.connection_buffered.set_function(buffered)

    def track_store(
        self,
        live_keys: Callable[[], int],
        pending_hints: Callable[[], int],
        state: Callable[[], tuple[bool, bool, int, int, int | None]],
    ) -> None:
        """Read the store's counts and its ``StoreState`` at each scrape."""
        self.keys.set_function(live_keys)
        self.hints_pending.set_function(pending_hints)
        self.registry.register(StoreState(state))
