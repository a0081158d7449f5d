"""The node's HTTP side: ``/metrics`` for Prometheus, ``/livez``, ``/healthz`` and ``/readyz`` for
orchestrators, and whatever further routes the node adds (the dashboard's, from ``dashboard_app``).

``/livez`` is 200 whenever the node answers at all: the liveness probe, since restarting a node
that answers fixes nothing. ``/healthz`` is 200 while the node is whole, 503 while it drains or its
store is full; ``/readyz`` is 200 once it can coordinate requests (its store is open and it has a
verdict on every peer), which is what a load balancer, a container healthcheck or a test should
wait for. A 503's body says why.

Served by ``gevent.pywsgi`` on its own port, so a scrape never queues behind protocol traffic; over
HTTPS when the node's TLS is on (``KV_TLS_MODE``). The node protects the routes that reveal keys
(``service.http_auth``).
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from gevent.pywsgi import WSGIServer
from prometheus_client import CollectorRegistry, make_wsgi_app

from service.tls import TlsAcceptor

WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]
Check = Callable[[], str | None]
"""A health or readiness check: ``None`` when it passes, else why not, in a line."""


def make_app(
    registry: CollectorRegistry, health: Check, readiness: Check, routes: Mapping[str, WsgiApp] | None = None
) -> Callable[..., Iterable[bytes]]:
    """The node's WSGI app; ``routes`` maps further paths to their apps."""
    metrics_app = make_wsgi_app(registry)
    checks: dict[str, Check] = {"/livez": lambda: None, "/healthz": health, "/readyz": readiness}
    extra = dict(routes or {})

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        route = extra.get(path)
        if route is not None:
            return route(environ, start_response)
        if path == "/metrics":
            response: Iterable[bytes] = metrics_app(environ, start_response)
            return response
        check = checks.get(path)
        if check is not None:
            problem = check()
            status = "200 OK" if problem is None else "503 Service Unavailable"
            start_response(status, [("Content-Type", "text/plain; charset=utf-8")])
            return [b"ok\n" if problem is None else f"{problem}\n".encode()]
        start_response("404 Not Found", [("Content-Type", "text/plain; charset=utf-8")])
        return [b"not found: try /metrics, /livez, /healthz, /readyz or /dashboard\n"]

    return app


HTTPS_REFUSAL = (
    b"HTTP/1.0 400 Bad Request\r\nContent-Type: text/plain; charset=utf-8\r\nConnection: close\r\n\r\n"
    b"this port speaks only HTTPS (KV_TLS_MODE=required): use https://\n"
)
"""What a plaintext request to the HTTP port of a TLS-only node is told before it is closed."""


class _WSGIServer(WSGIServer):  # type: ignore[misc]  # gevent has no type information
    """pywsgi's server, with each connection first handed to the TLS acceptor (if any)."""

    tls: TlsAcceptor | None = None

    def handle(self, sock: Any, address: tuple[str, int]) -> None:
        if self.tls is not None:
            sock = self.tls.accept(sock, f"{address[0]}:{address[1]}", HTTPS_REFUSAL)
            if sock is None:
                return
        super().handle(sock, address)


class HttpServer:
    """The HTTP port: ``app`` served by pywsgi, over TLS as ``tls`` says (``None``: plaintext), on
    ``listener``: a ``(host, port)`` to bind, or a bound socket (a worker's inherited one)."""

    def __init__(
        self,
        listener: tuple[str, int] | socket.socket,
        app: Callable[..., Iterable[bytes]],
        error_log: Any,
        tls: TlsAcceptor | None = None,
    ) -> None:
        # log=None: Prometheus scrapes every few seconds and access lines would drown the JSON log.
        self._server = _WSGIServer(listener, app, log=None, error_log=error_log)
        self._server.tls = tls

    @property
    def port(self) -> int:
        port: int = self._server.server_port
        return port

    def start(self) -> None:
        self._server.start()

    def stop(self) -> None:
        self._server.stop(timeout=1)


class LogWriter:
    """A file-like sink for pywsgi's error output that turns each write into a structured log line."""

    def __init__(self, log: Any) -> None:
        self._log = log

    def write(self, text: str) -> None:
        if text.strip():
            self._log.error("http_error", message=text.strip())

    def flush(self) -> None:
        """Nothing to flush: every write is already a log line."""
