"""Entry point: ``python -m service`` runs one node configured by KV_* environment variables."""

from gevent import monkey

monkey.patch_all()  # first, before anything imports socket or threading

import gc  # noqa: E402
import os  # noqa: E402
import signal  # noqa: E402
import sys  # noqa: E402

import gevent  # noqa: E402
from gevent.event import Event  # noqa: E402

from service import logging as node_logging  # noqa: E402
from service.authentication import AuthEvents  # noqa: E402
from service.config import SETTINGS, ConfigError, load_config  # noqa: E402
from service.memory import tune_malloc  # noqa: E402
from service.security import load_security  # noqa: E402
from service.storage import StorageError  # noqa: E402
from service.workers import STARTUP_FAILED_EXIT, Supervisor, WorkerSlot, die_with_supervisor  # noqa: E402

USAGE = """usage: python -m service

Runs one key-value store node. All configuration comes from environment variables:
"""


def usage() -> str:
    width = max(len(setting.name) for setting in SETTINGS)
    rows = [
        f"  {setting.name:<{width}}  {setting.help}"
        + (f" (default: {setting.default})" if setting.default else " (required)" if setting.default is None else "")
        for setting in SETTINGS
    ]
    return (
        USAGE
        + "\n".join(rows)
        + "\n\nSIGTERM drains in-flight requests, then exits. SIGHUP reloads the users file and certificates.\n"
    )


def report_config_error(exc: ConfigError) -> None:
    print("kv-node: configuration error, nothing started:", file=sys.stderr)
    for problem in exc.problems:
        print(f"  - {problem}", file=sys.stderr)


def main(argv: list[str]) -> int:
    if any(arg in ("-h", "--help") for arg in argv):
        print(usage(), end="")
        return 0
    if argv:
        print(f"kv-node: unexpected arguments {' '.join(argv)!r}; configuration is by environment\n", file=sys.stderr)
        print(usage(), end="", file=sys.stderr)
        return 2
    try:
        config = load_config(os.environ)
    except ConfigError as exc:
        report_config_error(exc)
        print("Run `python -m service --help` for every setting.", file=sys.stderr)
        return 2

    try:
        worker = WorkerSlot.from_environment(os.environ, config.workers)
    except (KeyError, ValueError) as exc:
        print(f"kv-node: malformed worker environment from the supervisor: {exc}", file=sys.stderr)
        return 2
    node_logging.configure(config.node_id, config.log_level, worker.index if worker is not None else None)
    log = node_logging.get_logger()
    if worker is None and config.workers > 1:  # this process supervises; the workers are the node
        from service.node import open_membership

        try:
            # Once, before any worker: workers starting together on an empty directory would each
            # mint an identity for the node (or each ask a seed to admit it), and its peers would
            # take the second for an impostor.
            open_membership(config, load_security(config, AuthEvents()), log)
        except ConfigError as exc:
            report_config_error(exc)
            return 2
        return Supervisor(config, log).run()
    if worker is not None:
        die_with_supervisor(worker.supervisor_pid)
    tune_malloc(config.max_frame_bytes)  # before the node allocates anything frame-sized
    from service.node import Node  # after logging is configured, so module loggers pick it up

    try:
        node = Node(config, worker=worker)
        node.start()
    except ConfigError as exc:  # a file the configuration names does not load, or the data directory disagrees
        report_config_error(exc)
        return 2
    except StorageError as exc:
        log.error("startup_failed", error=str(exc), hint=f"check that {config.data_dir} exists and is writable")
        return 1 if worker is None else STARTUP_FAILED_EXIT
    except OSError as exc:
        log.error("startup_failed", error=str(exc), hint="is another process using KV_PORT or KV_HTTP_PORT?")
        return 1 if worker is None else STARTUP_FAILED_EXIT
    freeze_startup_heap()

    stopping = Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        gevent.signal_handler(signum, stopping.set)
    gevent.signal_handler(signal.SIGHUP, node.reload)  # new certificates and users, without a restart
    stopping.wait()
    node.stop()
    return 0


def freeze_startup_heap() -> None:
    """Keep what start-up built (modules, classes, the ring, the node's parts: about 42,000 objects,
    all alive until the process ends) out of the garbage collector's full collections.

    A full (generation 2) collection walks every tracked object, on the event loop's thread: with
    start-up's objects in it, it took 17-45 ms of CPU every 10-20 s under load, a stall of every
    request on the node (and of every write it replicates); frozen, 2-5 ms. Collected first, so that
    no start-up garbage is frozen with the rest (frozen objects are never freed)."""
    gc.collect()
    gc.freeze()


def run() -> int:
    """The ``kv-node`` console script."""
    return main(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(run())
