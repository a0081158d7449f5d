"""A node served by several processes (``KV_WORKERS``): the supervisor, and what a worker is told.

A node in one Python process uses one core. With ``KV_WORKERS`` above 1, ``python -m service`` runs
this supervisor instead of a node: it binds the node's ports, starts that many workers (each a
``python -m service`` of its own, told its index by ``WorkerSlot``'s environment variables),
forwards SIGTERM, SIGINT and SIGHUP to them, starts again a worker that dies (logged), and exits
once they have all drained. With ``KV_WORKERS=1`` none of this runs: the node is the one process,
exactly as before.

Ports: one ``SO_REUSEPORT`` socket per worker and port. The kernel spreads new connections over the
*listening* sockets of one port by a hash of the connection, so each worker accepts from its own
queue: no thundering herd on one shared socket, and no worker starves another (with one socket
shared by every worker, the least busy worker wins each wake-up, which under load is the same one
again and again). The supervisor binds a fresh socket for each worker it starts and hands it over
(``pass_fds``), keeping no copy; the worker starts listening on it only once it serves
(``listen_on``). So a worker still starting receives no connections (they go to the workers that
serve, or are refused while none does, as by a node not yet started), and a worker that dies takes
its socket with it: new connections go to the others at once instead of waiting, unanswered, for
its replacement. The supervisor also holds one socket per port bound but never listening, which
keeps the port (a free one, for port 0) reserved for the node while no worker listens.

Workers share one LMDB environment (``storage.Storage(shared=True)``); what else they share and what
each keeps to itself is in ARCHITECTURE.md, "Workers". In short: worker 0 alone runs hinted handoff
delivery, anti-entropy and a membership change's streams and end, while the membership record and
the receivers' STREAM_DONE reports are shared through the data directory (``membership_file``,
``stream_done``); every worker runs its own heartbeats and failure detector (the verdicts
and clock offsets are needed on every request path); peer connections are one per peer per worker;
``KV_MAX_CONNECTIONS`` is divided between the workers; ``/metrics`` is gathered from every worker
(``worker_metrics``).

The supervisor runs no event loop work of its own beyond waiting: it never opens the store.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import gevent
from gevent.event import Event

from service.config import Config

ENV_INDEX = "KV_WORKER_INDEX"
ENV_FDS = "KV_WORKER_FDS"
ENV_RUN_DIR = "KV_WORKER_RUN_DIR"
ENV_SUPERVISOR = "KV_WORKER_SUPERVISOR"
"""Set by the supervisor for its workers; not settings (an operator never sets them)."""

BACKLOG = 1024
"""Each worker's accept queue per port: room for a burst of new connections (gevent's servers ask for
something similar; the kernel caps it at net.core.somaxconn)."""
RESTART_DELAY = 0.5
"""Seconds before a worker that died is started again; doubled for each death within
``STABLE_AFTER`` of its start, up to ``MAX_RESTART_DELAY``, so a worker that cannot start does not
spin the machine."""
MAX_RESTART_DELAY = 10.0
STABLE_AFTER = 30.0
"""A worker that ran this long before dying is restarted after ``RESTART_DELAY`` again."""
CONFIG_ERROR_EXIT = 2
"""A worker's exit status for a configuration error: every worker would fail alike, so the
supervisor stops the node with it rather than restart."""
STARTUP_FAILED_EXIT = 3
"""A worker's exit status when it could not open the store or bind: the supervisor stops the node
with status 1, as a single-process node exits, rather than start it again and again."""
STOP_MARGIN = 3.0
"""Seconds past the drain timeout a worker gets to exit after SIGTERM before it is killed (the
default 10 s drain plus this stays inside compose's 15 s stop grace period)."""


@dataclass(frozen=True)
class WorkerSlot:
    """One worker of ``count``: its ``index`` (0 owns hinted handoff and anti-entropy), the
    listening sockets it inherited (file descriptors, -1 for a port it does not serve) and the
    supervisor's directory for the workers' metrics sockets."""

    index: int
    count: int
    port_fd: int
    resp_fd: int
    http_fd: int
    run_dir: str
    supervisor_pid: int

    @property
    def owner(self) -> bool:
        """Whether this worker runs the node's single-owner tasks (hinted handoff, anti-entropy)."""
        return self.index == 0

    def environment(self) -> dict[str, str]:
        """The environment variables that tell a worker process this slot."""
        return {
            ENV_INDEX: str(self.index),
            "KV_WORKERS": str(self.count),
            ENV_FDS: f"{self.port_fd},{self.resp_fd},{self.http_fd}",
            ENV_RUN_DIR: self.run_dir,
            ENV_SUPERVISOR: str(self.supervisor_pid),
        }

    @classmethod
    def from_environment(cls, environ: Mapping[str, str], count: int) -> WorkerSlot | None:
        """The slot the supervisor gave this process, or ``None`` when it is no worker (started by
        hand). ``ValueError`` if the variables are malformed."""
        if ENV_INDEX not in environ:
            return None
        port_fd, resp_fd, http_fd = (int(fd) for fd in environ[ENV_FDS].split(","))
        return cls(
            int(environ[ENV_INDEX]),
            count,
            port_fd,
            resp_fd,
            http_fd,
            environ[ENV_RUN_DIR],
            int(environ[ENV_SUPERVISOR]),
        )

    def listener(self, fd: int) -> socket.socket | None:
        """The inherited listening socket ``fd``, or ``None`` for -1."""
        return None if fd < 0 else socket.socket(fileno=fd)

    def metrics_socket(self, index: int | None = None) -> str:
        """The unix socket worker ``index`` (default: this one) serves its own metrics on."""
        return os.path.join(self.run_dir, f"metrics-{self.index if index is None else index}.sock")


class WorkerEpochs:
    """The membership epoch each worker of a node holds, as files in the supervisor's run directory
    (``epoch-<index>``), so that the node's PING reports the lowest (``MembershipView.version``).

    A receiver in a membership change waits until every member answers PING with the change's
    epoch before it copies a page (``change_runner``): from then on every coordinator sends the
    writes to it too. A member of several workers answers from whichever worker took the link, and
    another of its workers may not have read the record back yet (``membership_file``) and still
    coordinate writes without the receiver; so a worker answers with the lowest epoch any worker of
    the node holds. A worker that has not published yet (starting) does not count: it serves nothing
    until it has loaded the newest record and published it. One that died counts with the epoch it
    last published, until its replacement publishes: lower, if anything, which only makes a
    receiver wait.
    """

    def __init__(self, slot: WorkerSlot) -> None:
        self._slot = slot

    def _path(self, index: int) -> str:
        return os.path.join(self._slot.run_dir, f"epoch-{index}")

    def publish(self, epoch: int) -> None:
        """This worker holds ``epoch`` now. ``OSError`` if the run directory cannot be written."""
        path = self._path(self._slot.index)
        temporary = f"{path}.tmp"
        with open(temporary, "w", encoding="ascii") as file:
            file.write(str(epoch))
        os.replace(temporary, path)  # read whole or not at all: no torn number

    def _published(self) -> dict[int, int]:
        """The other workers' published epochs, by worker index (one not started yet has none)."""
        epochs = {}
        for index in range(self._slot.count):
            if index == self._slot.index:
                continue
            try:
                with open(self._path(index), encoding="ascii") as file:
                    epochs[index] = int(file.read())
            except (OSError, ValueError):  # not started yet (no file)
                continue
        return epochs

    def lowest(self) -> int | None:
        """The lowest epoch the node's other workers published; ``None`` if none has."""
        return min(self._published().values(), default=None)

    def not_started(self) -> list[int]:
        """The other workers that have never served yet (none published an epoch), by index. A
        worker publishes just before it listens, so until this is empty some of the node's share of
        connections is not being accepted, and a client that connects now lands on the workers that
        are: its connections stay there for good."""
        published = self._published()
        return [index for index in range(self._slot.count) if index != self._slot.index and index not in published]


def connection_share(max_connections: int, workers: int) -> int:
    """Client connections each of ``workers`` may serve so that the node serves at most
    ``max_connections`` (``KV_MAX_CONNECTIONS``): an equal share, at least 1 each."""
    return max(1, max_connections // workers)


def bind_reuseport(host: str, port: int) -> socket.socket:
    """A TCP socket bound to ``host:port`` with ``SO_REUSEPORT``, not listening, inheritable by a
    worker (port 0: a free port). It receives connections only once something listens on it."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


def listen_on(sock: socket.socket) -> None:
    """Start taking connections on a worker's inherited socket (once the worker serves)."""
    sock.listen(BACKLOG)


def die_with_supervisor(supervisor_pid: int) -> None:
    """Have the kernel send this worker SIGTERM when the supervisor dies (Linux ``prctl``), so a
    SIGKILLed supervisor leaves no orphan serving the ports; if it is gone already, stop now."""
    libc_name = ctypes.util.find_library("c")
    if libc_name is not None:
        with contextlib.suppress(OSError, AttributeError):
            pr_set_pdeathsig = 1
            ctypes.CDLL(libc_name).prctl(pr_set_pdeathsig, signal.SIGTERM)
    if os.getppid() != supervisor_pid:
        os.kill(os.getpid(), signal.SIGTERM)


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


class _Worker:
    """One slot's process, started again whenever it dies until the supervisor stops."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.process: subprocess.Popen[bytes] | None = None
        self.started = 0.0
        self.delay = RESTART_DELAY / 2  # doubled at the first early death: RESTART_DELAY


class Supervisor:
    """Runs ``config.workers`` workers on shared ports until SIGTERM or SIGINT, then drains them.

    ``log`` is the supervisor's structured logger. ``run`` returns the exit status: 0 after a
    clean stop, ``CONFIG_ERROR_EXIT`` if a worker reported a configuration error, 1 if the ports
    could not be bound or a worker could not open the store.
    """

    def __init__(self, config: Config, log: Any) -> None:
        self.config = config
        self.log = log
        self._stopping = Event()
        self._status = 0
        self._placeholders: list[socket.socket] = []  # bound, never listening: the ports stay the node's
        self._ports: list[int] = []  # protocol, Redis (0: none), HTTP
        self._workers = [_Worker(index) for index in range(config.workers)]
        self._run_dir = ""

    def run(self) -> int:
        config = self.config
        try:
            for port, served in (
                (config.port, True),
                (config.resp_port, config.resp_port != 0),
                (config.http_port, True),
            ):
                if not served:  # the Redis port is off
                    self._ports.append(0)
                    continue
                placeholder = bind_reuseport(config.host, port)  # port 0: a free port, then the node's
                self._placeholders.append(placeholder)
                self._ports.append(placeholder.getsockname()[1])
            # A worker's sockets must bind too; finding out now says what is wrong before any starts.
            for sock in self._bind_worker_sockets():
                sock.close()
        except OSError as exc:
            self.log.error("startup_failed", error=str(exc), hint="is another process using the node's ports?")
            self._close_sockets()
            return 1
        ports = self._ports
        self._run_dir = tempfile.mkdtemp(prefix="kv-workers-")
        for signum in (signal.SIGTERM, signal.SIGINT):
            gevent.signal_handler(signum, self._stopping.set)
        gevent.signal_handler(signal.SIGHUP, self._forward, signal.SIGHUP)
        self.log.info(
            "supervisor_started",
            workers=config.workers,
            port=ports[0],
            resp_port=ports[1],
            http_port=ports[2],
            run_dir=self._run_dir,
        )
        watchers = [gevent.spawn(self._keep_running, worker) for worker in self._workers]
        self._stopping.wait()
        self._stop_all()
        gevent.killall(watchers)
        for worker in self._workers:  # one started again just as the stop began
            if worker.process is not None and worker.process.poll() is None:
                worker.process.kill()
                worker.process.wait()
        self._close_sockets()
        shutil.rmtree(self._run_dir, ignore_errors=True)
        self.log.info("supervisor_stopped", status=self._status)
        return self._status

    def _bind_worker_sockets(self) -> list[socket.socket]:
        """A worker's own sockets: protocol, Redis (if on) and HTTP, bound to the node's ports."""
        return [bind_reuseport(self.config.host, port) for port in self._ports if port]

    def _spawn(self, worker: _Worker) -> None:
        """Start ``worker``'s process on sockets of its own, which it alone holds from then on."""
        sockets = self._bind_worker_sockets()
        try:
            fds = [sock.fileno() for sock in sockets]
            resp_fd = fds[1] if self._ports[1] else -1
            slot = WorkerSlot(worker.index, self.config.workers, fds[0], resp_fd, fds[-1], self._run_dir, os.getpid())
            environ = {**os.environ, **slot.environment()}
            worker.process = subprocess.Popen([sys.executable, "-m", "service"], env=environ, pass_fds=fds)
        finally:
            for sock in sockets:  # the worker's now: when it dies, they close, and its share goes to the others
                sock.close()
        worker.started = time.monotonic()
        self.log.info("worker_started", worker=worker.index, pid=worker.process.pid)

    def _keep_running(self, worker: _Worker) -> None:
        """Start ``worker`` and start it again each time it dies, until the node stops."""
        while not self._stopping.is_set():
            try:
                self._spawn(worker)
            except OSError as exc:  # its sockets would not bind, or the process would not start
                self.log.error("worker_start_failed", worker=worker.index, error=str(exc), retry_in_s=MAX_RESTART_DELAY)
                if self._stopping.wait(MAX_RESTART_DELAY):
                    return
                continue
            assert worker.process is not None
            status = worker.process.wait()
            if self._stopping.is_set():
                return
            ran = time.monotonic() - worker.started
            if status in (CONFIG_ERROR_EXIT, STARTUP_FAILED_EXIT):
                self.log.error("worker_could_not_start", worker=worker.index, hint="see the worker's message above")
                self._status = CONFIG_ERROR_EXIT if status == CONFIG_ERROR_EXIT else 1
                self._stopping.set()
                return
            worker.delay = RESTART_DELAY if ran >= STABLE_AFTER else min(2 * worker.delay, MAX_RESTART_DELAY)
            self.log.error(
                "worker_died",
                worker=worker.index,
                pid=worker.process.pid,
                status=status,
                signal=_signal_name(-status) if status < 0 else None,
                ran_s=round(ran, 3),
                restart_in_s=worker.delay,
            )
            if self._stopping.wait(worker.delay):
                return

    def _forward(self, signum: int) -> None:
        for worker in self._workers:
            if worker.process is not None and worker.process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    worker.process.send_signal(signum)

    def _stop_all(self) -> None:
        """SIGTERM every worker (each drains, as a single node does), then wait; kill stragglers."""
        self.log.info("supervisor_stopping", drain_timeout_s=self.config.drain_timeout)
        self._forward(signal.SIGTERM)
        deadline = time.monotonic() + self.config.drain_timeout + STOP_MARGIN
        for worker in self._workers:
            process = worker.process
            if process is None:
                continue
            try:
                process.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self.log.error("worker_killed_at_stop", worker=worker.index, pid=process.pid)
                process.kill()
                process.wait()

    def _close_sockets(self) -> None:
        for sock in self._placeholders:
            sock.close()
