"""A node assembled from its parts, with a start and a draining stop.

This is the only module that knows every component. It opens the store, resumes the clock above
the highest stored timestamp, builds the ring and the replicas (this store, and a ``Peer`` per other
member), and runs the protocol server, the HTTP server, the heartbeat monitor, hinted handoff and
anti-entropy. What those components report goes to ``events.NodeEvents``, which owns the metrics and
log lines about it.
"""

from __future__ import annotations

import socket
import time

import gevent

from client.protocol import MemberView, PeerState
from client.ring import Ring
from service.anti_entropy import AntiEntropy, AntiEntropySettings
from service.config import Config
from service.coordinator import Coordinator, CoordinatorSettings
from service.events import NodeEvents
from service.failure_detector import FailureDetector
from service.group_commit import start_in_threadpool, start_inline
from service.handler import RequestHandler
from service.handoff import PASS_INTERVAL as HANDOFF_INTERVAL
from service.handoff import HandoffSettings, HintedHandoff
from service.http import HttpServer, LogWriter, make_app
from service.local_store import LocalStore
from service.logging import get_logger
from service.metrics import Metrics
from service.peers import HEARTBEAT_INTERVAL, Peer, PeerMonitor, PeerSettings
from service.periodic import Periodic
from service.placement import Placement
from service.resp_handler import RespHandler
from service.resp_server import RespServer
from service.server import ProtocolServer, ServerSettings
from service.storage import Storage
from service.versioning import HybridLogicalClock

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
    protocol, which otherwise listens on ``KV_HOST:KV_RESP_PORT`` unless that is 0. What the parts
    report goes to ``events``.
    """

    def __init__(
        self, config: Config, *, listener: socket.socket | None = None, resp_listener: socket.socket | None = None
    ) -> None:
        self.config = config
        self.log = get_logger()
        self.metrics = Metrics()
        self.events = NodeEvents(self.metrics, self.log, hint_window_s=config.hint_window)
        self.storage = Storage(config.data_dir, config.storage_limit_bytes, config.partitions, sync=config.fsync_always)
        if self.storage.digests_rebuilt and self.storage.digests_rebuilt[0]:  # not closed last time: a crash or kill
            records, seconds = self.storage.digests_rebuilt
            self.log.info("partition_digests_rebuilt", records=records, seconds=round(seconds, 3))
        self.clock = HybridLogicalClock(last=self.storage.max_timestamp)
        self.store = LocalStore(
            config.node_id,
            self.storage,
            self.clock,
            start=start_in_threadpool if config.fsync_always else start_inline,
            events=self.events,
        )
        self.ring = Ring([node.node_id for node in config.cluster], config.partitions)

        peer_settings = PeerSettings(
            config.node_id, config.connect_timeout, config.request_timeout, config.max_frame_bytes
        )
        self.peers = {node.node_id: Peer(node, peer_settings, self._peer_request_failed) for node in config.peers}
        self._started_wall = time.time()
        self.detector = FailureDetector(self.peers, time.monotonic)
        self.monitor = PeerMonitor(self.peers.values(), self.detector, self._peer_state_changed)
        self.events.track(self.store, self.peers)

        placement = Placement(self.ring, config.n, self.detector.is_down)
        self.coordinator = Coordinator(
            CoordinatorSettings(config.node_id, config.request_timeout, config.read_repair_chance),
            placement,
            {config.node_id: self.store, **self.peers},
            self.clock,
            events=self.events,
        )
        self.handoff = HintedHandoff(
            self.store,
            self.peers,
            lambda node_id: self.detector.state(node_id) is PeerState.UP,
            HandoffSettings(config.hint_window),
            events=self.events,
        )
        self.anti_entropy = AntiEntropy(
            self.store,
            placement,
            self.peers,
            AntiEntropySettings(config.tombstone_grace, config.anti_entropy_interval, config.max_frame_bytes),
            events=self.events,
        )
        self.handler = RequestHandler(config, self.coordinator, self.store, self.anti_entropy, self.members)
        server_settings = ServerSettings(config.max_connections, config.max_frame_bytes, config.log_commands)
        self.server = ProtocolServer(
            listener if listener is not None else (config.host, config.port),
            self.handler,
            self.metrics,
            self.log,
            server_settings,
        )
        self.resp_server: RespServer | None = None
        if resp_listener is not None or config.resp_port:
            self.resp_server = RespServer(
                resp_listener if resp_listener is not None else (config.host, config.resp_port),
                RespHandler(config, self.handler, self._started_wall),
                self.metrics,
                self.log,
                server_settings,
            )
        self.http = HttpServer(
            config.host, config.http_port, make_app(self.metrics.registry, self.is_healthy), LogWriter(self.log)
        )
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

    def is_healthy(self) -> bool:
        return self._serving

    def start(self) -> None:
        self.server.start()
        if self.resp_server is not None:
            self.resp_server.start()
        self.http.start()
        for task in self.tasks.values():
            task.start()
        self._serving = True
        self.log.info(
            "node_started",
            port=self.port,
            resp_port=self.resp_port,
            http_port=self.http_port,
            data_dir=self.config.data_dir,
            live_keys=self.store.live_keys,
            hints_pending=self.store.pending_hints(),
            members=[node.node_id for node in self.config.cluster],
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
        for task in self.tasks.values():
            task.stop()
        if not self.store.drain(self.config.drain_timeout):
            self.log.error("commits_unfinished_at_stop", pending=self.store.committer.pending)
        for peer in self.peers.values():
            peer.close()
        self.http.stop()
        self.store.close()
        self.log.info("node_stopped")

    def _background_tasks(self) -> dict[str, Periodic]:
        """The node's repeating work; ``start`` and ``stop`` run and end them all."""
        config = self.config
        tasks = [
            Periodic("heartbeat", self.monitor.beat, HEARTBEAT_INTERVAL, on_error=self.events.task_failed),
            Periodic("hinted_handoff", self.handoff.run_pass, HANDOFF_INTERVAL, on_error=self.events.task_failed),
        ]
        if config.anti_entropy_interval > 0:
            tasks.append(
                Periodic(
                    "anti_entropy",
                    self.anti_entropy.run_round,
                    config.anti_entropy_interval,
                    first_delay=FIRST_ANTI_ENTROPY_DELAY,
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

    def members(self) -> list[MemberView]:
        """This node's view of the cluster: itself (up), and each peer as the failure detector sees it."""
        hints = self.store.hint_counts()
        now_mono, now_wall = time.monotonic(), time.time()
        view = [MemberView(self.config.node_id, PeerState.UP, int(self._started_wall * 1000), 0)]
        for node_id, (state, since) in self.detector.view().items():
            since_ms = int((now_wall - (now_mono - since)) * 1000)
            view.append(MemberView(node_id, state, since_ms, hints.get(node_id, 0)))
        return view

    def _peer_request_failed(self, node_id: str) -> None:
        self.monitor.request_failed(node_id)  # the monitor is built after the peers it watches

    def _peer_state_changed(self, peer: Peer, old: PeerState, new: PeerState) -> None:
        self.events.peer_state_changed(peer, old, new)
        if new is PeerState.UP:  # hints held for it can go now, not at the next pass
            self.tasks["hinted_handoff"].wake()
