"""A node assembled from its parts, with a start and a draining stop.

This is the only module that knows every component. It opens the store, resumes the clock above
the highest stored timestamp, builds the ring and the replicas (this store, and a ``Peer`` per other
member), and starts the protocol server, the HTTP server and the peer monitor.
"""

from __future__ import annotations

import socket

from client import protocol
from client.ring import Ring
from service.config import Config
from service.coordinator import Coordinator
from service.group_commit import GroupCommitter
from service.http import HttpServer, LogWriter, make_app
from service.local_replica import LocalReplica
from service.logging import get_logger
from service.metrics import Metrics
from service.peers import Peer, PeerMonitor
from service.server import ProtocolServer, RequestHandler
from service.storage import Storage
from service.versioning import HybridLogicalClock


class Node:
    def __init__(self, config: Config, *, listener: socket.socket | None = None) -> None:
        self.config = config
        self.log = get_logger()
        self.metrics = Metrics()
        self.storage = Storage(config.data_dir, config.storage_limit_bytes)
        self.metrics.track_keys(lambda: self.storage.live_keys)
        self.clock = HybridLogicalClock(last=self.storage.max_timestamp)
        self.committer = GroupCommitter(self.storage)
        self.local = LocalReplica(config.node_id, self.storage, self.committer, self.clock)
        self.peers = {
            node.node_id: Peer(
                node,
                local_node_id=config.node_id,
                connect_timeout=config.connect_timeout,
                request_timeout=config.request_timeout,
                max_frame_bytes=config.max_frame_bytes,
                on_state_change=self._peer_state_changed,
            )
            for node in config.peers
        }
        for peer_id in self.peers:
            self.metrics.peer_up.labels(peer_id).set(0)
        self.ring = Ring([node.node_id for node in config.cluster], config.partitions)
        self.coordinator = Coordinator(
            config.node_id,
            self.ring,
            {config.node_id: self.local, **self.peers},
            n=config.replicas,
            clock=self.clock,
            timeout=config.request_timeout,
            on_replica_write=self._count_replica_write,
        )
        handler = RequestHandler(
            coordinator=self.coordinator,
            local=self.local,
            storage=self.storage,
            hello=protocol.HelloReply(
                protocol.PROTOCOL_VERSION,
                config.node_id,
                config.max_key_bytes,
                config.max_value_bytes,
                config.max_frame_bytes,
            ),
            topology=protocol.TopologyReply(
                config.replicas, config.read_quorum, config.write_quorum, config.partitions, config.cluster
            ),
            read_quorum=config.read_quorum,
            write_quorum=config.write_quorum,
        )
        self.server = ProtocolServer(
            listener if listener is not None else (config.host, config.port),
            handler,
            self.metrics,
            self.log,
            max_connections=config.max_connections,
            max_frame_bytes=config.max_frame_bytes,
            log_commands=config.log_commands,
        )
        self.http = HttpServer(
            config.host, config.http_port, make_app(self.metrics.registry, self.is_healthy), LogWriter(self.log)
        )
        self.monitor = PeerMonitor(self.peers.values())
        self._serving = False

    @property
    def port(self) -> int:
        return self.server.port

    @property
    def http_port(self) -> int:
        return self.http.port

    def is_healthy(self) -> bool:
        return self._serving

    def start(self) -> None:
        self.server.start()
        self.http.start()
        self.monitor.start()
        self._serving = True
        self.log.info(
            "node_started",
            port=self.port,
            http_port=self.http_port,
            data_dir=self.config.data_dir,
            live_keys=self.storage.live_keys,
            members=[node.node_id for node in self.config.cluster],
            n=self.config.replicas,
            r=self.config.read_quorum,
            w=self.config.write_quorum,
        )

    def stop(self) -> None:
        """Drain: refuse new connections, finish in-flight requests, commit, close the store."""
        self._serving = False
        self.log.info("node_stopping", drain_timeout_s=self.config.drain_timeout)
        self.server.stop(self.config.drain_timeout)
        self.monitor.stop()
        self.committer.flush()
        for peer in self.peers.values():
            peer.close()
        self.http.stop()
        self.storage.close()
        self.log.info("node_stopped")

    def _peer_state_changed(self, peer: Peer, up: bool, reason: str) -> None:
        self.metrics.peer_up.labels(peer.node_id).set(1 if up else 0)
        if up:
            self.log.info("peer_up", peer=peer.node_id, address=peer.node.address)
        else:
            self.log.warning("peer_down", peer=peer.node_id, address=peer.node.address, reason=reason)

    def _count_replica_write(self, node_id: str, ok: bool) -> None:
        self.metrics.replica_writes.labels(node_id, "ok" if ok else "error").inc()
