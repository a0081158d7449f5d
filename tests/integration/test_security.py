"""A secured cluster (users, cluster secret, TLS only) seen from a container on its network that has
no credentials: it can say HELLO, and nothing else."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from containers import Cluster

PROBE = r"""
import json, ssl, urllib.request, urllib.error
from client import protocol
from client.connection import Connection, Framing
from client.errors import KVError
from client.security import Credentials, Security, client_context

results = {}
def attempt(name, security, client_name="intruder"):
    connection = Connection("node1", 5000, client_name=client_name, framing=Framing(security=security))
    try:
        connection.connect()
    except KVError as exc:
        results[name] = exc.code
        return None
    results[name] = "OK"
    return connection

attempt("plaintext_hello", Security())
blind = client_context(None, check_hostname=False)
blind.verify_mode = ssl.CERT_NONE  # no CA: whatever the node shows is taken
connection = attempt("tls_hello", Security(tls_context=blind))
for name, request in [
    ("PING", protocol.Ping()), ("GET", protocol.Get(b"k")), ("PUT", protocol.Put(b"k", b"v")),
    ("TOPOLOGY", protocol.Topology()), ("MEMBERS", protocol.Members()), ("STATS", protocol.Stats()),
    ("REPAIR", protocol.Repair()), ("USERS", protocol.Users()),
    ("REPLICA_PUT", protocol.ReplicaPut(b"k", protocol.Record(protocol.Version(1, "node2"), b"x"))),
]:
    try:
        results[name] = protocol.Status(connection.call(request, timeout=5).code).name
    except KVError as exc:
        results[name] = exc.code
guess = Security(Credentials("node:node2", "guessed-cluster-secret-000"), tls_context=blind)
attempt("as_member", guess, client_name="node:node2")
attempt("as_admin", Security(Credentials("admin", "admin"), tls_context=blind))
opener = urllib.request.build_opener(urllib.request.ProxyHandler({}), urllib.request.HTTPSHandler(context=blind))
for path in ("/api/cluster", "/dashboard", "/metrics"):
    try:
        results[path] = opener.open("https://node1:8000" + path, timeout=5).status
    except urllib.error.HTTPError as exc:
        results[path] = exc.code
print(json.dumps(results))
"""


@pytest.fixture(scope="module")
def cluster_secured() -> bool:
    return True


@pytest.fixture
def probe(cluster: Cluster) -> Iterator[dict[str, Any]]:
    """What the probe saw, run in a container of the image on the cluster's network."""
    code, output = cluster.run_once(["python3", "-c", PROBE], stderr=False, network=cluster.network.name)
    assert code == 0, output
    yield json.loads(output.splitlines()[-1])


def test_a_container_without_credentials_can_do_nothing_but_hello(probe: dict[str, Any]) -> None:
    assert probe["plaintext_hello"] == "TLS_REQUIRED"
    assert probe["tls_hello"] == "OK"
    for op in ("PING", "GET", "PUT", "TOPOLOGY", "MEMBERS", "STATS", "REPAIR", "USERS", "REPLICA_PUT"):
        assert probe[op] == "AUTH_REQUIRED", (op, probe)
    assert probe["as_member"] == "AUTH_FAILED"
    assert probe["as_admin"] == "AUTH_FAILED"
    assert probe["/api/cluster"] == probe["/dashboard"] == 401
    assert probe["/metrics"] == 200  # open by default, for Prometheus (KV_METRICS_AUTH protects it)


def test_the_failures_are_counted_and_logged_without_secrets(cluster: Cluster, probe: dict[str, Any]) -> None:
    assert cluster.sample("node1", "kv_auth_failures_total", user="node:node2") >= 1
    assert cluster.sample("node1", "kv_auth_failures_total", user="admin") >= 1
    lines = [line for line in cluster.log_lines("node1") if line.get("event") == "auth_failed"]
    assert lines and all("guessed" not in json.dumps(line) for line in lines)
