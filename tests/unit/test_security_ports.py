"""The HTTP and Redis ports of a node with users and TLS: the dashboard behind HTTP Basic, /metrics
open unless KV_METRICS_AUTH, Redis's AUTH and roles, and both ports over TLS."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
from cluster import InProcessCluster
from gevent import socket
from security_kit import PASSWORDS, Certificates, auth_settings

from client.resp import ReplyParser, RespError, encode_command
from client.security import client_context

pytestmark = pytest.mark.unit


def http(port: int, path: str, user: str | None = None, password: str | None = None, *, tls=None) -> tuple[int, str]:
    """``(status, body)`` of a GET, over a gevent socket (the nodes share this thread's event loop)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    if tls is not None:
        sock = tls.wrap_socket(sock, server_hostname="127.0.0.1")
    headers = f"GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n"
    if user is not None:
        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        headers += f"Authorization: Basic {token}\r\n"
    sock.sendall((headers + "\r\n").encode())
    response = b""
    while chunk := sock.recv(65536):
        response += chunk
    sock.close()
    head, _, body = response.partition(b"\r\n\r\n")
    return int(head.split()[1]), body.decode()


def resp(port: int, *commands: tuple[str, ...], tls=None) -> list[object]:
    """The replies to ``commands`` sent on one connection to a node's Redis port."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    if tls is not None:
        sock = tls.wrap_socket(sock, server_hostname="127.0.0.1")
    parser, replies = ReplyParser(), []
    for command in commands:
        sock.sendall(encode_command(*(part.encode() for part in command)))
        while not (found := parser.feed(sock.recv(65536))):
            pass
        replies += found
    sock.close()
    return [reply.message if isinstance(reply, RespError) else reply for reply in replies]


@pytest.fixture
def secured(make_cluster, tmp_path: Path) -> InProcessCluster:
    return make_cluster(1, resp=True, **auth_settings(tmp_path / "auth"))


def test_the_dashboard_needs_a_user_and_health_and_metrics_stay_open(secured: InProcessCluster) -> None:
    port = secured.node("node1").http_port
    for path in ("/dashboard", "/api/cluster", "/api/key?key=k"):
        assert http(port, path)[0] == 401
        assert http(port, path, "reader", "wrong")[0] == 401
        assert http(port, path, "reader", PASSWORDS["reader"])[0] == 200
    for path in ("/metrics", "/healthz", "/readyz"):
        assert http(port, path)[0] == 200


def test_metrics_can_be_protected_too(make_cluster, tmp_path: Path) -> None:
    cluster = make_cluster(1, KV_METRICS_AUTH="true", **auth_settings(tmp_path / "auth"))
    port = cluster.node("node1").http_port
    assert http(port, "/metrics")[0] == 401
    status, body = http(port, "/metrics", "admin", PASSWORDS["admin"])
    assert status == 200 and "kv_auth_failures_total" in body
    assert http(port, "/readyz")[0] == 200


def test_the_redis_port_asks_for_auth_and_applies_roles(secured: InProcessCluster) -> None:
    port = secured.resp_ports["node1"]
    assert resp(port, ("GET", "k")) == ["NOAUTH Authentication required."]
    assert resp(port, ("AUTH", "writer", "wrong")) == ["WRONGPASS invalid username-password pair or user is disabled."]
    assert resp(port, ("AUTH", "writer", PASSWORDS["writer"]), ("SET", "k", "v"), ("GET", "k")) == ["OK", "OK", b"v"]
    reader = resp(port, ("HELLO", "2", "AUTH", "reader", PASSWORDS["reader"]), ("SET", "k", "x"), ("GET", "k"))
    assert reader[1:] == ["NOPERM User reader has no permissions to run the 'set' command", b"v"]


def test_both_ports_speak_tls_and_refuse_plaintext(make_cluster, tmp_path: Path) -> None:
    certificates = Certificates(tmp_path / "tls")
    cluster = make_cluster(1, resp=True, **auth_settings(tmp_path / "auth"), **certificates.settings("required"))
    tls = client_context(str(certificates.ca_path))
    node = cluster.node("node1")
    assert http(node.http_port, "/readyz", tls=tls)[0] == 200
    assert http(node.http_port, "/readyz")[0] == 400  # plaintext: told to use https, then closed
    port = cluster.resp_ports["node1"]
    assert resp(port, ("AUTH", "reader", PASSWORDS["reader"]), ("GET", "k"), tls=tls) == ["OK", None]
    assert resp(port, ("PING",))[0].startswith("ERR this port accepts only TLS")
