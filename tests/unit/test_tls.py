"""TLS on the protocol port and peer links, with throwaway certificates from ``trustme``: TLS-only
and migration modes, members' certificates, and certificates reloaded without a restart."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from cluster import InProcessCluster
from gevent import socket
from security_kit import Certificates, as_user, auth_settings

from client import protocol
from client.connection import Connection, Framing
from client.errors import AuthFailedError, TlsError, TlsRequiredError
from client.security import Credentials, Security, TlsSettings
from client.transport import open_socket

pytestmark = pytest.mark.unit


@pytest.fixture
def certificates(tmp_path: Path) -> Certificates:
    return Certificates(tmp_path / "tls")


def tls_client(cluster: InProcessCluster, tls: TlsSettings, user: str = "writer"):
    client = cluster.client()
    client.security = as_user(user, tls)
    return client


def test_a_tls_only_cluster_serves_tls_and_refuses_plaintext_cleanly(
    make_cluster, tmp_path: Path, certificates: Certificates
) -> None:
    cluster = make_cluster(3, **auth_settings(tmp_path / "auth"), **certificates.settings("required"))
    client = tls_client(cluster, certificates.client())
    client.put("k", b"v")  # W=2: the coordinator reached a replica over a TLS peer link
    assert client.get("k") == b"v"
    plain = cluster.client()
    plain.security = as_user("writer")
    with pytest.raises(TlsRequiredError, match="accepts only TLS"):
        plain.get("k")
    # A raw plaintext HELLO gets the one refusal frame, then the node closes; it keeps serving.
    with socket.create_connection(("127.0.0.1", cluster.ports["node1"]), timeout=3) as raw:
        raw.sendall(protocol.encode_request(1, protocol.Hello(client_name="plain")))
        data = b""
        while chunk := raw.recv(4096):
            data += chunk
    (frame,) = protocol.FrameDecoder().feed(data)
    assert (frame.request_id, frame.code) == (0, protocol.Status.TLS_REQUIRED)
    assert tls_client(cluster, certificates.client(), "reader").get("k") == b"v"
    assert cluster.node("node1").metrics.registry.get_sample_value("kv_tls_handshake_failures_total") >= 1


def test_a_client_that_does_not_trust_the_node_fails_with_a_tls_error(
    make_cluster, tmp_path: Path, certificates: Certificates
) -> None:
    cluster = make_cluster(1, **certificates.settings("required"))
    stranger = Certificates(tmp_path / "other", "other")
    client = cluster.client()
    client.security = Security.of(None, stranger.client())
    with pytest.raises(TlsError, match="certificate verify failed"):
        client.get("k")


def test_a_certificate_from_another_ca_is_refused_on_a_peer_link(
    make_cluster, tmp_path: Path, certificates: Certificates
) -> None:
    cluster = make_cluster(2, **auth_settings(tmp_path / "auth"), **certificates.settings("required"))
    stranger = Certificates(tmp_path / "other", "other")
    # A process posing as node2, with the cluster's CA trusted but a certificate of its own CA.
    context = TlsSettings(ca=str(certificates.ca_path), cert=str(stranger.cert_path), key=str(stranger.key_path))
    with pytest.raises(OSError, match="unknown ca"):  # ssl.SSLError: the node's alert
        sock = open_socket("127.0.0.1", cluster.ports["node1"], 2.0, tls=context.context())
        sock.sendall(protocol.encode_request(1, protocol.Hello(client_name="node:node2")))
        sock.recv(4096)  # TLS 1.3: the client learns of the refusal on its first read
    # Without any certificate the TLS handshake succeeds, but the member's link is refused even with the secret.
    member = Security.of(Credentials("node:node2", "cluster-secret-0123456789abcdef"), certificates.client())
    connection = Connection(
        "127.0.0.1", cluster.ports["node1"], client_name="node:node2", framing=Framing(security=member)
    )
    with pytest.raises(AuthFailedError, match="must present its certificate"):
        connection.connect()


def test_a_reloaded_certificate_is_used_for_new_connections(
    make_cluster, tmp_path: Path, certificates: Certificates
) -> None:
    cluster = make_cluster(1, **certificates.settings("required"))
    old = cluster.client()
    old.security = Security.of(None, certificates.client())
    old.put("k", b"v")
    certificates_before = TlsSettings(ca=str(shutil.copy(certificates.ca_path, tmp_path / "old-ca.crt")))
    # The operator replaces the files with a new CA and certificate, then sends SIGHUP.
    renewed = Certificates(tmp_path / "renewed", "renewed")
    shutil.copy(renewed.ca_path, certificates.ca_path)
    shutil.copy(renewed.cert_path, certificates.cert_path)
    shutil.copy(renewed.key_path, certificates.key_path)
    cluster.node("node1").reload()
    assert old.get("k") == b"v"  # an open connection goes on as it was
    fresh = cluster.client()
    fresh.security = Security.of(None, renewed.client())
    assert fresh.get("k") == b"v"
    stale = cluster.client()
    stale.security = Security.of(None, certificates_before)
    with pytest.raises(TlsError, match="certificate verify failed"):
        stale.get("k")


def test_a_failed_reload_keeps_the_certificates_in_use(make_cluster, certificates: Certificates, log_sink) -> None:
    cluster = make_cluster(1, **certificates.settings("required"))
    certificates.key_path.write_text("not a key")
    cluster.node("node1").reload()
    assert log_sink.events("reload_failed")
    client = cluster.client()
    client.security = Security.of(None, certificates.client())
    client.put("k", b"v")


def test_migrate_mode_accepts_tls_and_plaintext(make_cluster, certificates: Certificates) -> None:
    cluster = make_cluster(2, **certificates.settings("migrate"))
    tls = cluster.client()
    tls.security = Security.of(None, certificates.client())
    tls.put("k", b"v")
    assert cluster.client().get("k") == b"v"
