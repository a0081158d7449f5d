"""A node assembled from its parts, with a start and a draining stop.

This is the only module that knows every component. It opens the store, resumes the clock above
the highest stored timestamp, builds the ring and the replicas (this store, and a ``Peer`` per other
member), and runs the protocol server, the HTTP server (metrics, health and the dashboard), the
heartbeat monitor, hinted handoff and anti-entropy. What those components report goes to
``events.NodeEvents``, which owns the metrics and log lines about it.

As one worker of several (``worker``, ``service.workers``), it serves the sockets the supervisor
bound, shares the store with the other workers, stamps versions in its own residue of the clock's
counter, serves its share of ``KV_MAX_CONNECTIONS``, runs hinted handoff, anti-entropy, streaming and
clean-up only as worker 0, reads back the membership record another worker saved
(``membership_file``), and answers ``/metrics`` for the whole node (``worker_metrics``).
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Mapping

import gevent
from prometheus_client import make_wsgi_app
from structlog.typing import FilteringBoundLogger

from client.protocol import PING_FLAG_STORAGE_FULL, NodeAddress, PeerState
from service import membership as membership_record
from service import membership_changes, membership_store
from service.anti_entropy import AntiEntropy, AntiEntropySettings
from service.change_runner import ChangeError, ChangeParts, ChangeRequest, ChangeRunner
from service.cleanup import CLEANUP_INTERVAL_S, Cleanup, CleanupParts
from service.clock_offsets import ClockOffsets
from service.cluster_view import ClusterView
from service.config import Config, ConfigError
from service.connection_limits import ConnectionLimits
from service.coordinator import Coordinator, CoordinatorSettings, Replica
from service.dashboard_app import dashboard_routes
from service.events import NodeEvents
from service.failure_detector import FailureDetector
from service.handler import RequestError, RequestHandler
from service.handoff import PASS_INTERVAL as HANDOFF_INTERVAL
from service.handoff import HandoffSettings, HintedHandoff
from service.http import HttpServer, LogWriter, WsgiApp, make_app
from service.http_auth import BasicAuth
from service.joining import join_through_seeds, wait_until_admitted
from service.local_store import LocalStore
from service.logging import get_logger
from service.member_parts import MemberParts
from service.membership_file import RELOAD_INTERVAL as MEMBERSHIP_RELOAD_INTERVAL
from service.membership_file import MembershipFile
from service.membership_view import MembershipView
from service.memory import RELEASE_INTERVAL, MemoryReleaser
from service.metrics import WINDOW_TICK_SECONDS, Metrics
from service.node_stats import NodeReports
from service.peers import HEARTBEAT_INTERVAL, HeartbeatRecords, Peer, PeerMonitor, PeerSettings
from service.periodic import Periodic
from service.placement import Placement
from service.recovery import PASS_INTERVAL as RECOVERY_INTERVAL
from service.recovery import StorageRecovery
from service.resp_handler import RespHandler
from service.resp_server import RespServer
from service.security import NodeSecurity, load_security
from service.server import ProtocolServer, ServerSettings
from service.storage import Storage
from service.store_flags import StoreFlags
from service.streaming import StreamSettings
from service.tls import TlsAcceptor, TlsMode
from service.unadmitted import WaitingServer
from service.versioning import HybridLogicalClock, NodeClock, physical_ms
from service.worker_metrics import OwnerFigures, WorkerMetrics
from service.workers import WorkerEpochs, WorkerSlot, connection_share, listen_on

FLUSH_INTERVAL = 1.0
"""Seconds between fsyncs with KV_FSYNC=periodic: the most a machine crash can lose, as in Redis's
appendfsync everysec."""
FIRST_ANTI_ENTROPY_DELAY = 3 * HEARTBEAT_INTERVAL
"""Seconds after start before the first anti-entropy round: time for heartbeats to find the peers
up, so a node that lost its disk starts pulling its data back within seconds."""


class Node:
    """One node: its parts built from ``config``, started by ``start`` and drained by ``stop``.

    ``listener``: an already bound socket to serve the protocol on (tests bind port 0 first);
    without it the node binds ``KV_HOST:KV_PORT``. ``resp_listener``, likewise, for the Redis
    protocol, which otherwise listens on ``KV_HOST:KV_RESP_PORT`` unless that is 0. ``clock``: the
    node's sense of time (tests skew it); by default the system's. What the parts report goes to
    ``events``. ``worker``: this process is that worker of a node served by several
    (``service.workers``); its slot's inherited sockets are the listeners. ``None``: the whole node.
    """

    def __init__(
        self,
        config: Config,
        *,
        listener: socket.socket | None = None,
        resp_listener: socket.socket | None = None,
        clock: NodeClock | None = None,
        worker: WorkerSlot | None = None,
    ) -> None:
        self.config = config
        self.worker = worker
        self.owns_shared_tasks = worker is None or worker.owner
        """Whether this process runs hinted handoff and anti-entropy: one process of the node must."""
        http_listener = None
        self._inherited: list[socket.socket] = []  # a worker's sockets: it listens once it serves
        if worker is not None:
            listener, resp_listener = worker.listener(worker.port_fd), worker.listener(worker.resp_fd)
            http_listener = worker.listener(worker.http_fd)
            self._inherited = [sock for sock in (listener, resp_listener, http_listener) if sock is not None]
        shared = worker is not None and worker.count > 1
        self.log = get_logger()
        self.metrics = Metrics()
        self.events = NodeEvents(self.metrics, self.log, hint_window_s=config.hint_window)
        self.security = load_security(config, self.events)  # ConfigError: a file it names does not load
        # Before the store opens: a data directory of another node, cluster or partition count is
        # refused (ConfigError) before anything reads it with the wrong partition map.
        opened = open_membership(config, self.security, self.log, listener)
        self.membership_file = MembershipFile(config.data_dir)
        self.membership = MembershipView(opened.local, self.membership_file.save, self.events)
        if shared and worker is not None:
            self.membership.workers = WorkerEpochs(worker)
        record = self.membership.record
        members = [
            NodeAddress(member.node_id, member.host, member.port)
            for member in record.members
            if member.node_id != config.node_id
        ]
        self.storage = Storage(
            config.data_dir, config.storage_limit_bytes, config.partitions, sync=config.fsync_always, shared=shared
        )
        if self.storage.digests_rebuilt and self.storage.digests_rebuilt[0]:  # not closed last time: a crash or kill
            records, seconds = self.storage.digests_rebuilt
            self.log.info("partition_digests_rebuilt", records=records, seconds=round(seconds, 3))
        self.node_clock = clock or NodeClock()
        # The clock resumes above every version this node stored (each passed the offset check when
        # it was written), so its own next writes are ordered after them even if the wall clock was
        # stepped back while it was down; the heartbeats then show the offset to its peers.
        self.clock = HybridLogicalClock(
            self.node_clock.wall_ms,
            last=self.storage.max_timestamp,
            max_offset_ms=config.max_clock_offset_ms,
            worker=worker.index if worker is not None else 0,
            workers=worker.count if worker is not None else 1,
        )
        ahead_ms = physical_ms(self.storage.max_timestamp) - self.node_clock.wall_ms()
        if ahead_ms > config.max_clock_offset_ms:
            self.log.warning(
                "stored_versions_ahead_of_clock",
                ahead_ms=ahead_ms,
                hint="was this machine's clock stepped back? the node keeps stamping above its data",
            )
        self.store = LocalStore(
            config.node_id, self.storage, self.clock, now_ms=self.node_clock.steady_ms, events=self.events
        )
        self.ring = membership_record.ring(record)
        self.events.membership_serving(record, self._partitions_owned())

        peer_settings = self.peer_settings = PeerSettings(
            config.node_id,
            config.connect_timeout,
            config.request_timeout,
            config.max_frame_bytes,
            security=self.security.peer_security,
            plaintext_fallback=self.security.mode is TlsMode.MIGRATE,
            membership=self.membership,
        )
        self.store_flags = StoreFlags(
            config.node_id, lambda: self.store.flags, [node.node_id for node in members], self._peer_store_changed
        )
        self.peers = {
            node.node_id: Peer(node, peer_settings, self._peer_request_failed, self.store_flags.refused)
            for node in members
        }
        self.detector = FailureDetector(self.peers, time.monotonic)
        self.offsets = ClockOffsets(self.peers, config.max_clock_offset_ms, self.node_clock.steady_ms)
        self.monitor = PeerMonitor(
            self.peers.values(),
            self.detector,
            self.events,
            HeartbeatRecords(self.offsets, self.store_flags, self.node_clock.wall_ms, self.membership),
        )
        self.events.track(self.store, self.peers)
        # Hints held for a peer that came back can go now, not at the next pass.
        self.events.on_peer_up = lambda peer: self._wake_handoff()

        placement = self._placement(record)
        self.replicas: dict[str, Replica] = {config.node_id: self.store, **self.peers}
        self.coordinator = Coordinator(
            CoordinatorSettings(
                config.node_id, config.request_timeout, config.read_repair_chance, clock_fenced=self.offsets.fenced
            ),
            placement,
            self.replicas,
            self.clock,
            events=self.events,
        )
        self.handoff = HintedHandoff(
            self.store,
            self.peers,
            lambda node_id: self.detector.state(node_id) is PeerState.UP and not self.store_flags.is_full(node_id),
            HandoffSettings(config.hint_window, self.node_clock.steady_ms, may_expire=self.offsets.trusted),
            events=self.events,
        )
        # Writes under way when the peers learn this store has room again still reach their hints
        # within a request timeout each; twice that covers a write that tries a second fallback.
        self.recovery = StorageRecovery(self.store, self.peers, self.detector.is_down, 2 * config.request_timeout)
        self.anti_entropy = AntiEntropy(
            self.store,
            placement,
            self.peers,
            AntiEntropySettings(
                config.tombstone_grace,
                config.anti_entropy_interval,
                config.max_frame_bytes,
                now_ms=self.node_clock.steady_ms,
                may_purge=self.offsets.trusted,
            ),
            events=self.events,
        )
        self.worker_metrics = (
            WorkerMetrics(
                worker,
                self.metrics.registry,
                self.log,
                self.metrics.request_stats.recent,
                OwnerFigures(self.anti_entropy.progress, lambda: self.changes.pending),  # changes: built below
            )
            if shared and worker is not None
            else None
        )
        self.reports = NodeReports(
            config.node_id,
            self.store,
            self.detector,
            self.worker_metrics or self.metrics.request_stats,
            self.worker_metrics or self.anti_entropy,
            clock_offsets=self.clock_offsets,
            store_flags=self.store_flags.flags,
        )
        self.handler = RequestHandler(config, self.coordinator, self.store, self.anti_entropy, self.reports)
        self.handler.accounts = self.security.authenticator
        self.handler.membership = self.membership
        member_parts = MemberParts(self.membership, self.store, self.peers, self.detector.is_down, config.n)
        self.changes = ChangeRunner(
            ChangeParts(
                member_parts,
                StreamSettings(config.data_dir, config.stream_rate_bytes_per_s),
                self.events,
                self.log,
            )
        )
        self.cleanup = Cleanup(
            CleanupParts(
                member_parts,
                config.max_frame_bytes,
                self.events,
            )
        )
        self.reports.streams_pending = (
            self.worker_metrics.streams_pending if self.worker_metrics is not None else lambda: self.changes.pending
        )
        self.handler.changes = self._change
        self.handler.stream_done = self.changes.stream_done
        self.membership.apply_ring = self._apply_ring
        tls_acceptor = None
        if self.security.tls is not None:
            tls_acceptor = TlsAcceptor(
                self.security.tls, self.security.mode, config.handshake_timeout, self.events.tls_failed
            )
        server_settings = ServerSettings(
            connection_share(config.max_connections, worker.count) if worker is not None else config.max_connections,
            config.max_frame_bytes,
            config.log_commands,
            ConnectionLimits(
                config.client_output_limit_bytes,
                config.client_output_timeout,
                config.handshake_timeout,
                config.idle_timeout,
            ),
            members=tuple(self.peers),
            authenticator=self.security.authenticator,
            tls=tls_acceptor,
        )
        self.server = ProtocolServer(
            listener if listener is not None else (config.host, config.port),
            self.handler,
            self.metrics,
            self.events,
            server_settings,
        )
        self.metrics.track_connections(lambda: self.server.buffered_bytes)
        self.resp_server: RespServer | None = None
        if resp_listener is not None or config.resp_port:
            self.resp_server = RespServer(
                resp_listener if resp_listener is not None else (config.host, config.resp_port),
                RespHandler(config, self.handler, self.reports.started_wall),
                self.metrics,
                self.log,
                server_settings,
            )
        self.cluster_view = ClusterView(config, self.reports, self.peers, placement)
        self.exported = self.worker_metrics.registry if self.worker_metrics else self.metrics.registry
        """What ``/metrics`` serves: this process's registry, or every worker's gathered."""
        self.http = HttpServer(
            http_listener if http_listener is not None else (config.host, config.http_port),
            make_app(self.exported, self.health_problem, self.readiness_problem, self._http_routes()),
            LogWriter(self.log),
            tls_acceptor,
        )
        self.memory = MemoryReleaser()
        self.tasks = self._background_tasks()
        self._serving = False

    @property
    def port(self) -> int:
        return self.server.port

    @property
    def resp_port(self) -> int:
        """The Redis-protocol port served, 0 if none."""
        return self.resp_server.port if self.resp_server is not None else 0

    @property
    def http_port(self) -> int:
        return self.http.port

    def health_problem(self) -> str | None:
        """Why the node is not whole (``/healthz`` 503), or ``None``: it drains, or its store is full."""
        if not self._serving:
            return "draining: the node is stopping"
        if self.store.storage_full:
            return f"{self.config.node_id}: {self.store.state_description()}; it refuses writes and still serves reads"
        return None

    def readiness_problem(self) -> str | None:
        """Why the node cannot coordinate requests yet (``/readyz`` 503), or ``None``: it is not
        serving, another of its workers has not started serving yet (clients that connected now
        would all land on the workers already serving, for as long as they stay connected), its
        store must be reopened, its peers refused it or their membership views differ
        (``MembershipView.problem``), or it has no verdict yet on some peer (a write sent now could
        find that live peer unreachable and fail)."""
        if not self._serving:
            return "not serving: the node is starting or stopping"
        workers = self.membership.workers
        starting = workers.not_started() if workers is not None else []
        if starting:
            return f"waiting for worker(s) {', '.join(map(str, starting))} of this node to start serving"
        if self.storage.panicked:
            return "the store is being reopened after a fatal LMDB error"
        if self.membership.problem is not None:
            return self.membership.problem[1]
        undecided = self.detector.undecided()
        if undecided:
            return f"waiting to hear from {', '.join(undecided)} (or to give up on them)"
        return None

    def start(self) -> None:
        if self.worker_metrics is not None:
            self.worker_metrics.serve()
        self.membership.publish()  # before it serves: the other workers' PING counts its epoch from now on
        for sock in self._inherited:  # from now on the kernel hands this worker its share of connections
            listen_on(sock)
        self.server.start()
        if self.resp_server is not None:
            self.resp_server.start()
        self.http.start()
        for task in self.tasks.values():
            task.start()
        self._serving = True
        if self.owns_shared_tasks:  # one worker streams for the node, as one runs anti-entropy
            self.changes.resume()
        self.log.info(
            "node_started",
            port=self.port,
            resp_port=self.resp_port,
            http_port=self.http_port,
            worker=self.worker.index if self.worker is not None else None,
            data_dir=self.config.data_dir,
            live_keys=self.store.live_keys,
            hints_pending=self.store.pending_hints(),
            storage=self.store.state_description(),
            members=list(self.membership.record.node_ids),
            cluster_id=self.membership.record.cluster_id,
            epoch=self.membership.record.epoch,
            identity=self.membership.local.identity,
            n=self.config.n,
            r=self.config.read_quorum,
            w=self.config.write_quorum,
        )

    def stop(self) -> None:
        """Drain: refuse new connections, finish in-flight requests, commit, close the store."""
        self._serving = False
        self.log.info("node_stopping", drain_timeout_s=self.config.drain_timeout)
        # Both ports drain at once, so stopping takes one drain timeout at most, not two.
        resp_stopping = gevent.spawn(self.resp_server.stop, self.config.drain_timeout) if self.resp_server else None
        self.server.stop(self.config.drain_timeout)
        if resp_stopping is not None:
            resp_stopping.get()
        self.changes.stop()
        for task in self.tasks.values():
            task.stop()
        if not self.store.drain(self.config.drain_timeout):
            self.log.error("commits_unfinished_at_stop", pending=self.store.committer.pending)
        for peer in self.peers.values():
            peer.close()
        self.http.stop()
        if self.worker_metrics is not None:
            self.worker_metrics.stop()
        self.store.close()
        self.log.info("node_stopped")

    def _http_routes(self) -> dict[str, WsgiApp]:
        """The dashboard's routes, behind a user's name and password on a node with users; and
        ``/metrics`` too with ``KV_METRICS_AUTH``."""
        routes = dashboard_routes(self.cluster_view)
        authenticator = self.security.authenticator
        if not authenticator.required:
            return routes
        basic = BasicAuth(authenticator)
        protected = {path: basic.protect(app) for path, app in routes.items()}
        if self.config.metrics_auth:
            protected["/metrics"] = basic.protect(make_wsgi_app(self.exported))
        return protected

    def reload(self) -> None:
        """SIGHUP: read the users file and the TLS certificates again; new connections use them."""
        problems = self.security.reload()
        for problem in problems:
            self.log.error("reload_failed", problem=problem, hint="the node keeps what it had; fix the file and reload")
        self.log.info("reloaded", users=len(self.security.authenticator.users or ()), failed=len(problems))

    def _background_tasks(self) -> dict[str, Periodic]:
        """The node's repeating work; ``start`` and ``stop`` run and end them all."""
        config = self.config
        # Every worker beats its own heartbeats: the verdicts and clock offsets are needed on each
        # one's request path (ARCHITECTURE.md, "Workers"). Hint delivery has one owner.
        tasks = [
            Periodic("heartbeat", self.monitor.beat, HEARTBEAT_INTERVAL, on_error=self.events.task_failed),
            Periodic("hinted_handoff", self.handoff.run_pass, HANDOFF_INTERVAL, on_error=self.events.task_failed),
            Periodic(
                "request_window",
                self.metrics.request_stats.tick,
                WINDOW_TICK_SECONDS,
                first_delay=WINDOW_TICK_SECONDS,
                on_error=self.events.task_failed,
            ),
            Periodic("storage_recovery", self.recovery.run_pass, RECOVERY_INTERVAL, on_error=self.events.task_failed),
        ]
        if self.memory.available:
            tasks.append(
                Periodic("release_memory", self._release_memory, RELEASE_INTERVAL, on_error=self.events.task_failed)
            )
        if not self.owns_shared_tasks:
            tasks = [task for task in tasks if task.name != "hinted_handoff"]
        if self.worker is not None and self.worker.count > 1:
            # A record another worker saved (a change it made, gossip it heard) is served here too.
            tasks.append(
                Periodic(
                    "membership_reload",
                    self._reload_membership,
                    MEMBERSHIP_RELOAD_INTERVAL,
                    on_error=self.events.task_failed,
                )
            )
        if config.anti_entropy_interval > 0 and self.owns_shared_tasks:
            tasks.append(
                Periodic(
                    "anti_entropy",
                    self.anti_entropy.run_round,
                    config.anti_entropy_interval,
                    first_delay=FIRST_ANTI_ENTROPY_DELAY,
                    on_error=self.events.task_failed,
                )
            )
        if self.owns_shared_tasks:
            # Data of partitions a membership change moved away goes once their owners hold it.
            tasks.append(
                Periodic(
                    "cleanup",
                    self.cleanup.run_pass,
                    CLEANUP_INTERVAL_S,
                    first_delay=CLEANUP_INTERVAL_S,
                    on_error=self.events.task_failed,
                )
            )
        if not config.fsync_always:
            # What was acknowledged from the page cache reaches the disk within FLUSH_INTERVAL.
            tasks.append(
                Periodic(
                    "fsync",
                    self.store.sync,
                    FLUSH_INTERVAL,
                    first_delay=FLUSH_INTERVAL,
                    on_error=self.events.task_failed,
                )
            )
        return {task.name: task for task in tasks}

    def clock_offsets(self) -> Mapping[str, float]:
        """Each peer's wall clock minus this node's, in seconds, for the peers measured so far by the
        heartbeats (STATS and the dashboard show them)."""
        return {peer: offset_ms / 1000 for peer, offset_ms in self.offsets.offsets().items()}

    def _unavailable(self, node_id: str) -> bool:
        """Whether requests should go around ``node_id`` as if it were down. A peer: the failure
        detector sees it down, it leaves requests unanswered (``Peer.stalled``) before the detector
        has noticed, or its clock is further off than the maximum offset (its copies may lack writes
        it refused). This node: its own clock is fenced, so its store may lack writes too."""
        fenced = self.offsets.fenced() is not None
        if node_id == self.config.node_id:
            return fenced
        # A fenced node's own clock is the wrong one: the peers it disagrees with are fine.
        if self.detector.is_down(node_id) or (not fenced and self.offsets.beyond_bound(node_id)):
            return True
        peer = self.peers.get(node_id)
        return peer is not None and peer.stalled()

    # --- membership changes -----------------------------------------------------------------------

    def _placement(self, record: membership_record.ClusterRecord) -> Placement:
        """Where keys live by ``record``: its ring, and the pending owners of the partitions its
        change in progress moves."""
        return Placement(
            self.ring,
            self.config.n,
            self._unavailable,
            self.store_flags.is_full,
            self.store_flags.is_behind,
            self.store.arriving_key,
            membership_changes.pending_owners(record, self.config.n),
        )

    def _change(self, request: ChangeRequest) -> membership_record.ClusterRecord:
        """CLUSTER_JOIN, CLUSTER_LEAVE, CLUSTER_REMOVE: the change made (by the claimant, here or
        there), or ``RequestError``."""
        try:
            return self.changes.request(request)
        except ChangeError as exc:
            raise RequestError(exc.status, exc.message) from None

    def _apply_ring(self, record: membership_record.ClusterRecord) -> bool:
        """Serve ``record``'s ring from now on (``MembershipView.apply_ring``): reach its new members,
        route by its owners and pending owners, and start streaming what it asks of this node."""
        old = self.membership.serving
        for member in record.members:
            if member.node_id != self.config.node_id and member.node_id not in self.peers:
                self._add_peer(NodeAddress(member.node_id, member.host, member.port))
        self.ring = membership_record.ring(record)
        placement = self._placement(record)
        self.coordinator.set_placement(placement)
        self.anti_entropy.placement = placement
        self.cluster_view.use_placement(placement)
        self.events.membership_serving(record, self._partitions_owned())
        self.log.info(
            "membership_ring_switched",
            old_epoch=old.epoch,
            epoch=record.epoch,
            owners=list(record.owners),
            moving=len(placement.pending),
        )
        if self.owns_shared_tasks:
            self.changes.on_record(old, record)
        return True

    def _reload_membership(self) -> None:
        record = self.membership_file.changed()
        if record is not None:
            self.membership.reload(record)

    def _add_peer(self, node: NodeAddress) -> None:
        """A member that joined: a peer like the others, watched by the heartbeats."""
        peer = Peer(node, self.peer_settings, self._peer_request_failed, self.store_flags.refused)
        self.peers[node.node_id] = peer
        self.replicas[node.node_id] = peer
        self.detector.add(node.node_id)
        self.offsets.add(node.node_id)
        self.store_flags.add(node.node_id)
        self.monitor.add(peer)
        self.server.add_member(node.node_id)
        self.events.peer_added(node.node_id)

    def _partitions_owned(self) -> int:
        """Partitions this node holds a replica of on the ring it serves (``kv_partitions_owned``)."""
        ring, node_id, n = self.ring, self.config.node_id, self.config.n
        return sum(node_id in ring.partition_owners(p)[:n] for p in range(ring.partitions))

    def _release_memory(self) -> None:
        freed = self.memory.run_pass()
        if freed:
            self.log.info("memory_released", free_mb=round(freed / 1024 / 1024, 1))

    def _peer_request_failed(self, node_id: str) -> None:
        self.monitor.request_failed(node_id)  # the monitor is built after the peers it watches

    def _peer_store_changed(self, node_id: str, old: int, new: int) -> None:
        self.events.peer_store_changed(node_id, old, new)
        if old & PING_FLAG_STORAGE_FULL and not new & PING_FLAG_STORAGE_FULL:
            self._wake_handoff()  # it has room again: deliver its hints now

    def _wake_handoff(self) -> None:
        """Deliver hints now rather than at the next pass, in the process that delivers them."""
        task = self.tasks.get("hinted_handoff")
        if task is not None:
            task.wake()


def open_membership(
    config: Config, security: NodeSecurity, log: FilteringBoundLogger, listener: socket.socket | None = None
) -> membership_store.Opened:
    """This node's membership record from its data directory: formed from ``KV_PEERS`` on a first
    start, or, with ``KV_AUTO_JOIN``, asked of a seed (``true``) or waited for (``wait``: the node
    answers HELLO meanwhile, ``unadmitted``, on ``listener`` if given). Logs what it formed or joined. Raises
    ``ConfigError`` when the directory disagrees with ``config`` or no seed admits the node. A node of
    several workers calls it once in its supervisor, before any worker starts."""
    settings = PeerSettings(
        config.node_id,
        config.connect_timeout,
        config.request_timeout,
        config.max_frame_bytes,
        security=security.peer_security,
        plaintext_fallback=security.mode is TlsMode.MIGRATE,
    )
    join: Callable[[str], membership_record.ClusterRecord] | None = None
    if config.auto_join:

        def join(identity: str) -> membership_record.ClusterRecord:
            return join_through_seeds(config, settings, identity)

    elif config.wait_to_join:

        def join(identity: str) -> membership_record.ClusterRecord:
            waiting = WaitingServer(config, log, listener)
            try:
                waiting.start()
            except OSError as exc:
                raise ConfigError(
                    [f"cannot listen on {config.host}:{config.port}: {exc}; free the port or change KV_PORT"]
                ) from None
            try:
                return wait_until_admitted(config, settings, log)
            finally:
                waiting.stop()

    opened = membership_store.open_membership(config, join)
    record = opened.local.record
    if opened.joined:
        log.info(
            "membership_joined",
            cluster_id=record.cluster_id,
            identity=opened.local.identity,
            epoch=record.epoch,
            members=list(record.node_ids),
        )
    if opened.formed:
        log.info(
            "membership_formed",
            cluster_id=record.cluster_id,
            identity=opened.local.identity,
            members=list(record.node_ids),
            upgrade=opened.upgraded,
        )
    return opened
