"""Running one target of ``kv bench``: its workers in this process, or in worker processes.

Processes. One Python process drives roughly 10-30 thousand operations a second, which is less
than Redis serves on one core. ``--processes P`` runs P worker processes (start method "spawn":
gevent's hub must not be forked), each with about ``connections / P`` connections; they connect,
start together, and send back their histograms and counts, which are merged.

Progress. On a terminal (or with ``--progress``) a status line on stderr (``client.progress``),
updated about once a second: rewritten in place with ``\\r`` on a terminal, one line a second otherwise (so a log stays
readable). Quiet by default when stderr is not a terminal.
"""

from __future__ import annotations

import argparse
import multiprocessing
import queue
import signal
import time
from collections.abc import Callable
from typing import Any

import gevent

from bench.report import (
    PHASE_CONNECTING,
    PHASE_DONE,
    PHASE_MEASURE,
    PHASE_WARMUP,
    PhaseProgress,
    Stats,
    combine_progress,
    empty_check,
    progress_line,
    summarize_target,
)
from bench.targets import BenchError
from bench.worker import CHECK_TIME_LIMIT, STARTUP_TIMEOUT, TargetSpec, Worker, WorkerSpec
from client.progress import PROGRESS_INTERVAL, Progress

RESULT_SLACK = 30.0
"""Beyond warm-up + measurement + check, how long to wait for a worker's result before giving up."""
MIN_PHASE_AGE = 0.5
"""A phase's first status line waits this long, so its rate is not computed from a handful of ops."""
PUBLISH_INTERVAL = 0.2
"""How often a worker process copies its counters to the parent's progress array."""
COUNTER_SLOTS = 4
"""Per worker process in that array: phase, ops, errors, seconds in the phase."""


def _planned(spec: WorkerSpec, phase: int) -> float:
    if phase == PHASE_WARMUP:
        return spec.warmup
    if phase == PHASE_MEASURE:
        return spec.duration
    return 0.0  # the read-back check takes as long as its keys take


def run_here(spec: WorkerSpec, progress: Progress) -> Stats:
    """One worker in this process, with the status line drawn by a greenlet beside it."""
    worker = Worker(spec)
    worker.connect()

    def draw() -> None:
        while True:
            live = worker.live
            elapsed = time.monotonic() - live.phase_started
            if live.phase not in (PHASE_CONNECTING, PHASE_DONE) and elapsed >= MIN_PHASE_AGE:
                line = progress_line(
                    spec.target.name,
                    PhaseProgress(live.phase, elapsed, live.ops, live.errors),
                    planned=_planned(spec, live.phase),
                )
                progress.show(line)
            gevent.sleep(PROGRESS_INTERVAL / 4)

    drawer = gevent.spawn(draw) if progress.enabled else None
    try:
        return worker.run()
    finally:
        if drawer is not None:
            drawer.kill()
        progress.done()
        worker.close()


def _worker_process(spec: WorkerSpec, go: Any, counters: Any, results: Any) -> None:
    """Entry point of a worker process: connect, report ready, wait for go, run, send the stats."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C and ends us
    worker = Worker(spec)
    slot = spec.process * COUNTER_SLOTS
    try:
        worker.connect()
    except Exception as exc:
        results.put(("fatal", spec.process, str(exc)))
        return

    def publish() -> None:
        while True:
            live = worker.live
            elapsed = time.monotonic() - live.phase_started
            counters[slot : slot + COUNTER_SLOTS] = [live.phase, live.ops, live.errors, elapsed]
            gevent.sleep(PUBLISH_INTERVAL)

    results.put(("ready", spec.process, None))
    if not go.wait(STARTUP_TIMEOUT):
        worker.close()
        return
    publisher = gevent.spawn(publish)
    try:
        stats = worker.run()
        results.put(("result", spec.process, stats.to_dict()))
    except Exception as exc:
        results.put(("fatal", spec.process, f"worker {spec.process} failed: {exc!r}"))
    finally:
        publisher.kill()
        worker.close()


def run_in_processes(specs: list[WorkerSpec], progress: Progress) -> Stats:
    """Workers in spawned processes; waits cooperatively, so in-process nodes keep serving."""
    context = multiprocessing.get_context("spawn")
    go = context.Event()
    results = context.Queue()
    counters = context.Array("d", COUNTER_SLOTS * len(specs), lock=False)
    processes = [
        context.Process(target=_worker_process, args=(spec, go, counters, results), daemon=True) for spec in specs
    ]
    for process in processes:
        process.start()
    try:
        _await(results, processes, "ready", STARTUP_TIMEOUT, lambda: None)
        go.set()
        spec = specs[0]
        limit = spec.warmup + spec.duration + spec.timeout + CHECK_TIME_LIMIT + RESULT_SLACK

        def draw() -> None:
            values = list(counters)
            rows = [values[i : i + COUNTER_SLOTS] for i in range(0, len(values), COUNTER_SLOTS)]
            combined = combine_progress(rows)
            if combined.phase in (PHASE_CONNECTING, PHASE_DONE) or combined.elapsed < MIN_PHASE_AGE:
                return
            line = progress_line(spec.target.name, combined, planned=_planned(spec, combined.phase))
            progress.show(line)

        payloads = _await(results, processes, "result", limit, draw)
    finally:
        progress.done()
        for process in processes:
            if process.is_alive():
                process.terminate()
            process.join(timeout=5)
        results.close()
    merged = Stats(check=empty_check())
    for payload in payloads:
        merged.merge(Stats.from_dict(payload))
    return merged


def _await(results: Any, processes: list[Any], kind: str, timeout: float, tick: Callable[[], None]) -> list[Any]:
    """Every worker's message of ``kind``, polling so the gevent hub keeps running meanwhile."""
    payloads: dict[int, Any] = {}
    deadline = time.monotonic() + timeout
    while len(payloads) < len(processes):  # bounded by the deadline below
        try:
            message, index, payload = results.get_nowait()
        except queue.Empty:
            if time.monotonic() > deadline:
                raise BenchError(f"worker processes did not send their {kind} message within {timeout:g} s") from None
            if not all(process.is_alive() for process in processes) and results.empty():
                gevent.sleep(0.5)  # a result may still be in the pipe of a process that just exited
                if results.empty():
                    raise BenchError("a worker process exited without a result") from None
            tick()
            gevent.sleep(0.05)
            continue
        if message == "fatal":
            raise BenchError(payload)
        if message == kind:
            payloads[index] = payload
    return [payloads[index] for index in sorted(payloads)]


def worker_specs(target: TargetSpec, options: argparse.Namespace) -> list[WorkerSpec]:
    """Split connections and the op budget over the processes (the first ones take any remainder)."""
    processes = options.processes
    share, extra = divmod(options.connections, processes)
    specs = []
    first = 0
    for process in range(processes):
        connections = share + (1 if process < extra else 0)
        ops = None
        if options.ops is not None:
            ops_share, ops_extra = divmod(options.ops, processes)
            ops = ops_share + (1 if process < ops_extra else 0)
        specs.append(
            WorkerSpec(
                target=target,
                process=process,
                first_connection=first,
                connections=connections,
                total_connections=options.connections,
                pipeline=options.pipeline,
                duration=options.duration,
                ops=ops,
                warmup=options.warmup,
                keys=options.keys,
                distribution=options.distribution,
                zipf_theta=options.zipf_theta,
                mix=options.mix,
                value_size=options.value_size,
                r=options.r,
                w=options.w,
                timeout=options.timeout,
                seed=options.seed,
            )
        )
        first += connections
    return specs


def measure(target: TargetSpec, options: argparse.Namespace, progress: Progress) -> dict[str, Any]:
    """Run the whole load against one target and summarise it."""
    specs = worker_specs(target, options)
    stats = run_here(specs[0], progress) if len(specs) == 1 else run_in_processes(specs, progress)
    return summarize_target(target.name, target.kind, target.address, stats)
