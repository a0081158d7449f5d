"""``/metrics`` and STATS' figures for a node served by several workers: one set, gathered from every
worker when asked.

Each worker counts what it serves in its own registry (the request path's counters are plain
dicts, ``metrics.HotCounter``, which prometheus-client's multiprocess mode cannot see: it only
aggregates its own Counter and Gauge classes through mmapped files). So this is the aggregating
exporter instead: every worker serves its own exposition on a unix socket in the supervisor's run
directory, and whichever worker the kernel hands an HTTP scrape to gathers every worker's and
merges them (``merge_families``):

* counters and histograms are summed over the workers (each counted its own requests);
* gauges of what each worker holds (``SUMMED_GAUGES``: connections, buffered bytes) are summed;
* gauges of a state any worker may be in (``MAX_GAUGES``: store full, catching up, clock fenced)
  take the largest, so the node shows it while any of its workers is in it;
* every other gauge describes the node's shared store or its peers (``kv_keys`` and the storage
  sizes read the one LMDB environment; peer verdicts and clock offsets), and is taken from the
  lowest-numbered worker that answered, worker 0 normally: summing would count them once per worker.

A worker that does not answer within ``GATHER_TIMEOUT`` (it is restarting) is left out of that
scrape; ``kv_workers_reporting`` says how many were gathered. Its counters then seem to drop for a
scrape, which Prometheus's ``rate`` reads as a counter reset, as it would for a restarted node.

STATS is gathered the same way: its request window sums every worker's latency buckets over the
window before taking the p99 (``window``), and anti-entropy's progress and the partitions still to
stream for a membership change are worker 0's, the one that runs the rounds and the streams
(``progress``, ``streams_pending``).

The unix socket's protocol: one request line (``metrics``, ``window``, ``repair`` or ``streams``),
one answer (the Prometheus text exposition, or JSON), then the worker closes the connection.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import socket
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from gevent.server import StreamServer
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from client.protocol import RepairProgress, RequestWindow
from service.metrics import window_of
from service.workers import WorkerSlot

SUMMED_GAUGES = frozenset({"kv_connections", "kv_connection_buffered_bytes"})
MAX_GAUGES = frozenset({"kv_storage_full", "kv_storage_catching_up", "kv_clock_fenced"})
GATHER_TIMEOUT = 1.0
"""Seconds one worker's exposition may take to arrive before the scrape goes on without it."""
MAX_EXPOSITION_BYTES = 16 * 1024 * 1024
"""A worker's exposition larger than this is cut off (it is a few kilobytes; this bounds a bug)."""
MAX_REQUEST_LINE = 64
Recent = Callable[[], tuple[int, list[int], list[int]]]
"""A worker's request window: its length in ms, and the latency bucket counts in it of every op
and of client ops (``metrics.RequestStats.recent``)."""


def merge_families(per_worker: Sequence[Iterable[Metric]]) -> list[Metric]:
    """One set of metric families from each worker's (``per_worker``, lowest index first), merged
    as the module docstring says. Pure: families and samples keep their first-seen order."""
    merged: dict[str, Metric] = {}
    values: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]] = {}
    for families in per_worker:
        for family in families:
            if family.name not in merged:
                merged[family.name] = Metric(family.name, family.documentation, family.type, family.unit)
                values[family.name] = {}
            rule = _rule(family)
            seen = values[family.name]
            for sample in family.samples:
                key = (sample.name, tuple(sorted(sample.labels.items())))
                if key not in seen:
                    seen[key] = sample.value
                elif rule == "sum":
                    seen[key] += sample.value
                elif rule == "max":
                    seen[key] = max(seen[key], sample.value)
    for name, family in merged.items():
        for (sample_name, labels), value in values[name].items():
            family.add_sample(sample_name, dict(labels), value)
    return list(merged.values())


def _rule(family: Metric) -> str:
    """How a family's samples from several workers combine: ``sum``, ``max`` or ``first``."""
    if family.type != "gauge" or family.name in SUMMED_GAUGES:
        return "sum"
    return "max" if family.name in MAX_GAUGES else "first"


@dataclass(frozen=True)
class OwnerFigures:
    """What worker 0 alone knows, for STATS: anti-entropy's progress (``repair``) and the partitions
    still to stream into the node for a membership change (``streams``)."""

    repair: Callable[[], RepairProgress]
    streams: Callable[[], int]


class WorkerMetrics(Collector):
    """This worker's side of the exporter: ``serve`` publishes its own ``registry``, request
    window (``recent``) and ``owned`` figures on its unix socket; collecting this (``registry``,
    what ``/metrics`` serves), ``window``, ``progress`` and ``streams_pending`` gather every worker's."""

    def __init__(
        self,
        slot: WorkerSlot,
        own: CollectorRegistry,
        log: Any,
        recent: Recent,
        owned: OwnerFigures,
    ) -> None:
        self._slot = slot
        self._own = own
        self._log = log
        self._recent = recent
        self._repair = owned.repair
        self._streams = owned.streams
        self._server: StreamServer | None = None
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self)

    def serve(self) -> None:
        path = self._slot.metrics_socket()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)  # left by this slot's previous process
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(path)
        listener.listen(16)
        self._server = StreamServer(listener, self._answer)
        self._server.start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop(timeout=1)
        with contextlib.suppress(OSError):
            os.unlink(self._slot.metrics_socket())

    def _answer(self, sock: socket.socket, _address: Any) -> None:
        try:
            sock.settimeout(GATHER_TIMEOUT)
            request = sock.recv(MAX_REQUEST_LINE).strip()
            if request == b"metrics":
                sock.sendall(generate_latest(self._own))
            elif request == b"window":
                sock.sendall(json.dumps(self._recent()).encode())
            elif request == b"repair":
                sock.sendall(json.dumps(dataclasses.asdict(self._repair())).encode())
            elif request == b"streams":
                sock.sendall(json.dumps(self._streams()).encode())
        except OSError:
            pass  # the asking worker gave up; it goes on without this one
        finally:
            sock.close()

    def window(self) -> RequestWindow:
        """The node's request window for STATS: every worker's bucket counts summed."""
        window_ms, every, client = self._recent()
        for index in range(self._slot.count):
            if index == self._slot.index:
                continue
            text = self._fetch(index, b"window")
            if text is None:
                continue
            try:
                _, other_every, other_client = json.loads(text)
                every = [a + b for a, b in zip(every, other_every, strict=True)]
                client = [a + b for a, b in zip(client, other_client, strict=True)]
            except (ValueError, TypeError) as exc:
                self._log.warning("worker_window_unreadable", worker=index, error=str(exc))
        return window_of(window_ms, every, client)

    def progress(self) -> RepairProgress:
        """Anti-entropy's progress for STATS: worker 0's, which runs the rounds (this worker's own
        if worker 0 does not answer, which says no round yet)."""
        if self._slot.owner:
            return self._repair()
        text = self._fetch(0, b"repair")
        if text is not None:
            try:
                return RepairProgress(**json.loads(text))
            except (ValueError, TypeError) as exc:
                self._log.warning("worker_repair_unreadable", worker=0, error=str(exc))
        return self._repair()

    def streams_pending(self) -> int:
        """Partitions still to stream into the node for STATS: worker 0's, which streams them (this
        worker's own, 0, if worker 0 does not answer)."""
        if self._slot.owner:
            return self._streams()
        text = self._fetch(0, b"streams")
        if text is not None:
            try:
                return int(json.loads(text))
            except (ValueError, TypeError) as exc:
                self._log.warning("worker_streams_unreadable", worker=0, error=str(exc))
        return self._streams()

    def describe(self) -> list[Metric]:
        return []  # registering must not gather (other workers may not be up yet)

    def collect(self) -> Iterator[Metric]:
        per_worker: list[Iterable[Metric]] = []
        for index in range(self._slot.count):
            if index == self._slot.index:
                per_worker.append(list(self._own.collect()))
                continue
            text = self._fetch(index, b"metrics")
            if text is not None:
                per_worker.append(list(text_string_to_metric_families(text)))
        yield from merge_families(per_worker)
        yield GaugeMetricFamily(
            "kv_workers_reporting",
            "Worker processes whose metrics this scrape gathered (KV_WORKERS when all are up)",
            len(per_worker),
        )

    def _fetch(self, index: int, request: bytes) -> str | None:
        """Worker ``index``'s answer to ``request``, or ``None`` if it did not answer in time."""
        chunks: list[bytes] = []
        size = 0
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(GATHER_TIMEOUT)
                sock.connect(self._slot.metrics_socket(index))
                sock.sendall(request + b"\n")
                while size < MAX_EXPOSITION_BYTES:
                    chunk = sock.recv(65536)
                    if not chunk:
                        break
                    chunks.append(chunk)
                    size += len(chunk)
        except OSError as exc:
            self._log.debug("worker_metrics_unavailable", worker=index, error=str(exc))
            return None
        return b"".join(chunks).decode()
