"""In-process cluster for unit tests: real nodes on 127.0.0.1, no Docker, no monkey-patching.

``start_cluster`` binds a listening gevent socket for every node first, so every port is known before
any node is configured, then builds each node's ``Config`` with ``load_config`` and starts a real
``Node`` on that socket. Node logs go to ``LOG_SINK`` (JSON lines, as in production), never to
stdout, so tests that capture stdout (the CLI) see only what the code under test printed.

Each node runs its heartbeat monitor and hinted handoff as in production. Periodic anti-entropy is
off (``KV_ANTI_ENTROPY_INTERVAL_S=0``) so it never races a test; tests run rounds on demand with
``node.anti_entropy.run_round()`` or the REPAIR op. ``settle()`` makes every node's failure detector
current at once (one heartbeat round each) instead of waiting for the next one-second beat.
"""

from __future__ import annotations

import contextlib
import json
import socket as stdlib_socket
import urllib.error
import urllib.request
from collections import deque
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import gevent
from gevent import socket
from polling import wait_until
from proxy import PausableProxy

from client.client import Client
from client.protocol import PeerState
from client.ring import Ring
from service import logging as node_logging
from service.config import Config, load_config
from service.node import Node
from service.versioning import NodeClock

LOCALHOST = "127.0.0.1"
_HTTP = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # 127.0.0.1 only, never a proxy

DEFAULT_SETTINGS = {
    "KV_N": "2",
    "KV_W": "2",
    "KV_R": "1",
    "KV_PARTITIONS": "256",
    "KV_LOG_COMMANDS": "true",
    "KV_REQUEST_TIMEOUT_MS": "1000",
    "KV_CONNECT_TIMEOUT_MS": "200",
    "KV_DRAIN_TIMEOUT_S": "2",
    "KV_STORAGE_LIMIT_MB": "64",
    "KV_LOG_LEVEL": "info",
    "KV_ANTI_ENTROPY_INTERVAL_S": "0",
}


class LogSink:
    """A file-like object that keeps the last lines written to it (structlog's PrintLogger target)."""

    def __init__(self, maxlen: int = 20_000) -> None:
        self.lines: deque[str] = deque(maxlen=maxlen)
        self._partial = ""

    def write(self, text: str) -> int:
        data = self._partial + text
        *complete, self._partial = data.split("\n")
        self.lines.extend(line for line in complete if line)
        return len(text)

    def flush(self) -> None:
        pass

    def clear(self) -> None:
        self.lines.clear()
        self._partial = ""

    def events(self, event: str | None = None) -> list[dict[str, Any]]:
        """Every logged line parsed as JSON, optionally only those whose ``event`` is ``event``."""
        parsed = [json.loads(line) for line in list(self.lines)]
        return [entry for entry in parsed if event is None or entry.get("event") == event]


LOG_SINK = LogSink()


def configure_logging() -> None:
    """The production logging configuration, writing into ``LOG_SINK`` instead of stdout."""
    with contextlib.redirect_stdout(LOG_SINK):  # type: ignore[type-var]
        node_logging.configure("test", "info")


def listen_socket(port: int = 0) -> socket.socket:
    """A listening gevent TCP socket on 127.0.0.1 (port 0: any free port), reusable after a stop."""
    sock = socket.socket(stdlib_socket.AF_INET, stdlib_socket.SOCK_STREAM)
    sock.setsockopt(stdlib_socket.SOL_SOCKET, stdlib_socket.SO_REUSEADDR, 1)
    sock.bind((LOCALHOST, port))
    sock.listen(128)
    return sock


def http_get(port: int, path: str, timeout: float = 3.0) -> tuple[int, str]:
    """``(status, body)`` of ``GET http://127.0.0.1:<port><path>``, over a gevent socket: in-process
    nodes serve HTTP on this thread's event loop, which a blocking client would stall."""
    with socket.create_connection((LOCALHOST, port), timeout=timeout) as sock:
        sock.sendall(f"GET {path} HTTP/1.0\r\nHost: {LOCALHOST}\r\n\r\n".encode())
        response = b""
        while chunk := sock.recv(65536):
            response += chunk
    head, _, body = response.partition(b"\r\n\r\n")
    return int(head.split()[1]), body.decode()


def free_port() -> int:
    """A port nothing listens on right now (bound, read, released)."""
    sock = socket.socket(stdlib_socket.AF_INET, stdlib_socket.SOCK_STREAM)
    try:
        sock.bind((LOCALHOST, 0))
        return sock.getsockname()[1]
    finally:
        sock.close()


class InProcessCluster:
    """Real nodes in this process. ``proxied``: nodes reached only through a ``PausableProxy`` (by
    peers and clients alike), so a test can make one look paused; with ``resp``, each node also serves
    the Redis protocol on a port of its own (``resp_ports``), bound before the node is configured, as
    the protocol port is."""

    def __init__(
        self,
        tmp_path: Path,
        node_ids: list[str],
        settings: dict[str, str],
        proxied: Iterable[str] = (),
        *,
        resp: bool = False,
    ) -> None:
        self.tmp_path = tmp_path
        self.node_ids = node_ids
        self.settings = settings
        self.listeners = {node_id: listen_socket() for node_id in node_ids}
        self.ports = {node_id: sock.getsockname()[1] for node_id, sock in self.listeners.items()}
        self.proxies = {node_id: PausableProxy(self.ports[node_id]) for node_id in proxied}
        self.resp_listeners = {node_id: listen_socket() for node_id in node_ids} if resp else {}
        self.resp_ports = {node_id: sock.getsockname()[1] for node_id, sock in self.resp_listeners.items()}
        self.configs = {node_id: self._config(node_id) for node_id in node_ids}
        self.nodes: dict[str, Node] = {}
        self.running: set[str] = set()
        self._clients: list[Client] = []

    def _config(self, node_id: str) -> Config:
        peers = ",".join(f"{other}={self.address(other)}" for other in self.node_ids)
        environ = {
            **DEFAULT_SETTINGS,
            **self.settings,
            "KV_NODE_ID": node_id,
            "KV_PEERS": peers,
            "KV_HOST": LOCALHOST,
            "KV_PORT": str(self.ports[node_id]),
            "KV_HTTP_PORT": "0",
            "KV_DATA_DIR": str(self.tmp_path / node_id),
        }
        if node_id in self.resp_ports:
            environ["KV_RESP_PORT"] = str(self.resp_ports[node_id])
        return load_config(environ)

    def add_joining(self, node_id: str, seeds: Iterable[str], **settings: str) -> None:
        """Configure ``node_id`` as a new node that joins through ``seeds`` (node ids) with
        ``KV_AUTO_JOIN=true`` (``settings`` may say ``wait``): its ``KV_PEERS`` names only itself.
        Start it with ``start``."""
        self.node_ids.append(node_id)
        self.listeners[node_id] = listen_socket()
        self.ports[node_id] = self.listeners[node_id].getsockname()[1]
        environ = {
            **DEFAULT_SETTINGS,
            **self.settings,
            "KV_AUTO_JOIN": "true",
            **settings,
            "KV_NODE_ID": node_id,
            "KV_PEERS": f"{node_id}={self.address(node_id)}",
            "KV_SEEDS": ",".join(self.address(seed) for seed in seeds),
            "KV_HOST": LOCALHOST,
            "KV_PORT": str(self.ports[node_id]),
            "KV_HTTP_PORT": "0",
            "KV_DATA_DIR": str(self.tmp_path / node_id),
        }
        self.configs[node_id] = load_config(environ)

    # --- membership -------------------------------------------------------------------------------

    @property
    def addresses(self) -> list[str]:
        """Every node's protocol address, in node id order."""
        return [self.address(node_id) for node_id in self.node_ids]

    def address(self, node_id: str) -> str:
        """Where peers and clients reach ``node_id``: its own port, or its proxy's."""
        proxy = self.proxies.get(node_id)
        return f"{LOCALHOST}:{self.ports[node_id] if proxy is None else proxy.port}"

    @property
    def config(self) -> Config:
        return self.configs[self.node_ids[0]]

    def node(self, node_id: str) -> Node:
        return self.nodes[node_id]

    def http(self, node_id: str, path: str, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
        """A request to the node's HTTP port: status, headers and body. Made in gevent's thread pool,
        so the nodes, which share this thread's event loop, go on serving meanwhile."""

        def fetch() -> tuple[int, dict[str, str], bytes]:
            request = urllib.request.Request(f"http://{LOCALHOST}:{self.nodes[node_id].http_port}{path}", method=method)
            try:
                with _HTTP.open(request, timeout=5) as response:
                    return response.status, dict(response.headers), response.read()
            except urllib.error.HTTPError as exc:
                return exc.code, dict(exc.headers), exc.read()

        result: tuple[int, dict[str, str], bytes] = gevent.get_hub().threadpool.apply(fetch)
        return result

    def ring(self) -> Ring:
        return Ring(self.node_ids, self.config.partitions)

    def replicas_of(self, key: bytes | str) -> list[str]:
        """The node ids holding ``key``, primary first."""
        raw = key.encode() if isinstance(key, str) else key
        return self.ring().preference_list(raw, self.config.n)

    # --- lifecycle --------------------------------------------------------------------------------

    def start(self, node_id: str, *, clock: NodeClock | None = None) -> Node:
        """Start ``node_id`` on its port and data directory; ``clock``: its sense of time (skew it)."""
        listener = self.listeners.pop(node_id, None) or listen_socket(self.ports[node_id])
        resp_listener = self.resp_listeners.pop(node_id, None)
        if resp_listener is None and node_id in self.resp_ports:
            resp_listener = listen_socket(self.resp_ports[node_id])
        try:
            node = Node(self.configs[node_id], listener=listener, resp_listener=resp_listener, clock=clock)
            node.start()
        except BaseException:
            listener.close()
            if resp_listener is not None:
                resp_listener.close()
            raise
        self.nodes[node_id] = node
        self.running.add(node_id)
        return node

    def stop(self, node_id: str) -> None:
        if node_id in self.running:
            self.running.discard(node_id)
            node = self.nodes[node_id]
            node.stop()

    def restart(self, node_id: str, *, clock: NodeClock | None = None) -> Node:
        """Stop the node if it runs, then start a new ``Node`` on the same data directory and port."""
        self.stop(node_id)
        return self.start(node_id, clock=clock)

    # --- failure detection ------------------------------------------------------------------------

    def views(self) -> dict[str, dict[str, PeerState]]:
        """Every running node's failure-detector view of its peers."""
        return {
            node_id: {peer: state for peer, (state, _) in self.nodes[node_id].detector.view().items()}
            for node_id in sorted(self.running)
        }

    def settle(self, timeout: float = 3.0) -> None:
        """Run a heartbeat round on every running node until each sees the running nodes up and the
        stopped ones as not up."""

        def settled() -> bool:
            for node_id in sorted(self.running):
                self.nodes[node_id].monitor.beat()
            views = self.views()
            return all(
                (views[node_id][peer] is PeerState.UP) == (peer in self.running)
                for node_id in views
                for peer in self.node_ids
                if peer != node_id
            )

        wait_until(settled, timeout, message="every failure detector to see the running nodes up and the others not")

    def stop_all(self) -> None:
        for client in self._clients:
            client.close()
        self._clients.clear()
        errors: list[BaseException] = []
        for node_id in list(self.running):
            try:
                self.stop(node_id)
            except Exception as exc:  # keep stopping the others; report afterwards
                errors.append(exc)
        for sock in [*self.listeners.values(), *self.resp_listeners.values()]:
            sock.close()
        self.listeners.clear()
        for proxy in self.proxies.values():
            proxy.close()
        self.resp_listeners.clear()
        if errors:
            raise errors[0]

    # --- clients ----------------------------------------------------------------------------------

    def client(self, **kwargs: Any) -> Client:
        """A ``Client`` seeded with every node's address; closed by ``stop_all``."""
        kwargs.setdefault("timeout", 3.0)
        kwargs.setdefault("connect_timeout", 0.5)
        client = Client(self.addresses, **kwargs)
        self._clients.append(client)
        return client

    @contextlib.contextmanager
    def running_client(self, **kwargs: Any) -> Iterator[Client]:
        client = self.client(**kwargs)
        try:
            yield client
        finally:
            client.close()


def start_cluster(
    tmp_path: Path, n_nodes: int = 3, *, proxied: Iterable[str] = (), resp: bool = False, **settings: Any
) -> InProcessCluster:
    """Start ``n_nodes`` real nodes (``node1``..) on 127.0.0.1. ``settings``: KV_* overrides, e.g.
    ``KV_N="1"``; a key without the ``KV_`` prefix is upper-cased and prefixed (``n=1`` is ``KV_N``).
    ``proxied``: nodes put behind a ``PausableProxy`` (``cluster.proxies``); ``resp``: every node
    serves the Redis protocol too (``cluster.resp_ports``)."""
    configure_logging()
    overrides = {_setting_name(name): str(value) for name, value in settings.items()}
    if n_nodes < 2:  # N, W and R default to 2, 2, 1: a lone node can only hold one replica
        overrides.setdefault("KV_N", "1")
        overrides.setdefault("KV_W", "1")
    overrides = {name: _lower_bool(value) for name, value in overrides.items()}
    cluster = InProcessCluster(tmp_path, [f"node{i}" for i in range(1, n_nodes + 1)], overrides, proxied, resp=resp)
    try:
        for node_id in cluster.node_ids:
            cluster.start(node_id)
        cluster.settle()
    except BaseException:
        cluster.stop_all()
        raise
    return cluster


def _setting_name(name: str) -> str:
    upper = name.upper()
    return upper if upper.startswith("KV_") else f"KV_{upper}"


def _lower_bool(value: str) -> str:
    return value.lower() if value in ("True", "False") else value
