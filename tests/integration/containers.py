"""The integration suite's tools: the image's name, a real three-node cluster of containers, raw
sockets, metrics parsing and the compose project. ``conftest.py`` turns them into fixtures; test
modules import this module only for type annotations.

Everything here talks to real containers: nodes run the image built from this repository's
Dockerfile, on their own Docker network (aliases node1..node3, as in compose.yaml), each with its own
named volume at /data, with ports published on 127.0.0.1 only. ``Cluster.kill`` is a real SIGKILL and
``Cluster.start`` restarts the same container on the same volume.

Rules the helpers follow, because this machine has no registry and a slow storage driver:

* Ryuk (the testcontainers reaper) cannot be pulled, so it is disabled and every fixture removes
  its containers, network and volumes in a ``finally`` that always runs.
* Nothing waits on a log line (a restarted container's log still holds the old "started" line):
  readiness is ``/readyz`` answering 200 (the node can coordinate: it has a verdict on every peer)
  plus a PING over the protocol, and, for the cluster, every node reporting every peer up in
  ``kv_peer_up``.
* A restarted container gets a new host port, so ports are read again after every start.
* Every wait polls a condition with a deadline (``polling.wait_until``); there are no fixed sleeps.
"""

from __future__ import annotations

import os

# Before testcontainers is imported: its reaper image cannot be pulled on this machine.
os.environ.setdefault("TESTCONTAINERS_RYUK_DISABLED", "true")

import contextlib
import hashlib
import json
import random
import socket
import ssl
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import docker
import docker.errors
import pytest
from polling import wait_until
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample
from testcontainers.core.container import DockerContainer
from testcontainers.core.exceptions import ContainerStartException
from testcontainers.core.network import Network

from client import protocol
from client.client import Client
from client.connection import Connection, Framing
from client.errors import KVError
from client.protocol import MemberView, Record, ReplicaGet, Status
from client.security import NO_SECURITY, Credentials, Security, TlsSettings
from service.make_secrets import make_secrets

REPO_ROOT = Path(__file__).resolve().parents[2]
CHECKOUT_ID = hashlib.sha1(str(REPO_ROOT).encode()).hexdigest()[:8]
IMAGE_TAG = os.environ.get("KV_TEST_IMAGE", f"kvstore:test-{CHECKOUT_ID}")
"""Per checkout, so two checkouts testing at once (a CI clone and a work tree) never swap images."""
COMPOSE_IMAGE = f"kvstore:compose-{CHECKOUT_ID}"
DEFAULT_BASE_IMAGE = "python:3.12-slim"
OFFLINE_BASE_IMAGE = "kv-base:bookworm"

NODE_IDS = ("node1", "node2", "node3")
PROTOCOL_PORT = 5000
HTTP_PORT = 8000
PEERS = ",".join(f"{node}={node}:{PROTOCOL_PORT}" for node in NODE_IDS)

RUN_ID = uuid.uuid4().hex[:8]
"""Names every container, network and volume of this run, so parallel or leftover runs never clash."""
RUN_LABEL = "kvtest.run"

START_TIMEOUT = 60.0
"""Seconds a node may take from ``docker start`` to serving (2 cores, fuse-overlayfs: usually 2-4 s)."""
PEER_TIMEOUT = 20.0
"""Seconds for every node to see every peer up (peers are pinged once a second)."""
HTTP_TIMEOUT = 2.0

T = TypeVar("T")


# --- polling -----------------------------------------------------------------------------------------


# --- HTTP and metrics ----------------------------------------------------------------------------------

_HTTP = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # 127.0.0.1 only, never a proxy


def http_get(
    port: int, path: str, timeout: float = HTTP_TIMEOUT, https: ssl.SSLContext | None = None
) -> tuple[int, str]:
    """``(status, body)`` of ``GET http://127.0.0.1:<port><path>`` (``https://`` with that context);
    error statuses are returned, not raised."""
    opener = (
        _HTTP
        if https is None
        else urllib.request.build_opener(urllib.request.ProxyHandler({}), urllib.request.HTTPSHandler(context=https))
    )
    scheme = "http" if https is None else "https"
    try:
        with opener.open(f"{scheme}://127.0.0.1:{port}{path}", timeout=timeout) as response:
            return response.status, response.read().decode("utf-8")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode("utf-8", errors="replace")


Families = dict[str, Any]


def parse_metrics(text: str) -> Families:
    """Prometheus exposition text as ``{family name: family}`` (counters lose their ``_total``)."""
    return {family.name: family for family in text_string_to_metric_families(text)}


def samples(families: Families, sample_name: str, **labels: str) -> list[Sample]:
    """Every sample called ``sample_name`` whose labels include ``labels``."""
    found = []
    for family in families.values():
        for sample in family.samples:
            if sample.name == sample_name and all(sample.labels.get(k) == v for k, v in labels.items()):
                found.append(sample)
    return found


def sample_value(families: Families, sample_name: str, default: float | None = None, **labels: str) -> float | None:
    """The value of the one sample matching ``sample_name`` and ``labels``, or ``default`` if none does."""
    matching = samples(families, sample_name, **labels)
    if not matching:
        return default
    assert len(matching) == 1, f"{sample_name}{labels} matches {len(matching)} samples: {matching}"
    return matching[0].value


# --- the image -------------------------------------------------------------------------------------------


def base_image(docker_client: docker.DockerClient) -> str:
    """BASE_IMAGE from the environment; if unset, python:3.12-slim when present here, else kv-base:bookworm."""
    configured = os.environ.get("BASE_IMAGE", "").strip()
    if configured:
        return configured
    try:
        docker_client.images.get(DEFAULT_BASE_IMAGE)
    except docker.errors.ImageNotFound:
        return OFFLINE_BASE_IMAGE
    return DEFAULT_BASE_IMAGE


# --- the cluster -------------------------------------------------------------------------------------------


class Cluster:
    """Three nodes on one network, each with its own volume; kill and restart them for real.

    ``data_tmpfs``: nodes whose /data is a tmpfs of the given size instead (``{"node1": "3m"}``): a
    small disk that fills up. A tmpfs is emptied when its container stops.
    """

    def __init__(
        self,
        docker_client: docker.DockerClient,
        image: str,
        name: str,
        env: dict[str, str] | None = None,
        data_tmpfs: dict[str, str] | None = None,
    ) -> None:
        self.docker = docker_client
        self.image = image
        self.name = name
        # Extra environment for every node, e.g. KV_ANTI_ENTROPY_INTERVAL_S. The nodes listen on every
        # address of their containers: without users that needs KV_INSECURE, said here explicitly.
        # One worker process per node unless a test asks for more: these tests pin what one process
        # does (its memory, its exact connection limit, its log lines); test_multi_worker_nodes.py runs several.
        self.env = {"KV_INSECURE": "true", "KV_WORKERS": "1", **(env or {})}
        self.data_tmpfs = dict(data_tmpfs or {})
        self.labels = {RUN_LABEL: RUN_ID, "kvtest.cluster": name}
        self.network = Network()
        self.network.name = f"{name}-net"
        self._network_created = False
        self.containers: dict[str, DockerContainer] = {}
        self.volumes: dict[str, str] = {}
        self.ports: dict[str, int] = {}  # node id -> host port of its protocol port
        self.http_ports: dict[str, int] = {}  # node id -> host port of its HTTP port
        self.node_ids = NODE_IDS
        self.node_env: dict[str, dict[str, str]] = {}  # node id -> environment for it alone
        self.node_binds: dict[str, dict[str, str]] = {}  # node id -> host path -> path in it (read-only)
        self._admin: Client | None = None
        self.security: Security = NO_SECURITY  # how clients connect: the admin over TLS once ``secure``d
        self.https: ssl.SSLContext | None = None  # the HTTP ports' TLS, once ``secure``d
        self._secrets: tempfile.TemporaryDirectory[str] | None = None
        self._secrets_folder = ""  # mounted at /secrets in every node once ``secure``d

    # --- lifecycle ------------------------------------------------------------------------------------

    def secure(self) -> None:
        """Turn security on before ``start_all``: secrets made as compose makes them
        (``service.make_secrets``), mounted read-only at /secrets in every node; users and the
        cluster secret required; TLS only (``KV_TLS_MODE=required``) on every port and link. The
        cluster's clients log in as the admin over TLS."""
        self._secrets = tempfile.TemporaryDirectory(prefix=f"{self.name}-secrets-")
        folder = Path(self._secrets.name)
        uid, _, gid = self._image_uid_gid().partition(",gid=")
        make_secrets(folder, list(NODE_IDS), (int(uid), int(gid)))
        folder.chmod(0o755)
        del self.env["KV_INSECURE"]
        self.env.update(
            KV_USERS_FILE="/secrets/users",
            KV_CLUSTER_SECRET_FILE="/secrets/cluster-secret",
            KV_TLS_MODE="required",
            KV_TLS_CA="/secrets/ca.crt",
        )
        self._secrets_folder = str(folder)
        password = (folder / "admin.password").read_text().strip()
        tls = TlsSettings(ca=str(folder / "ca.crt"))
        self.security = Security.of(Credentials("admin", password), tls)
        self.https = tls.context()

    def start_all(self, *, wait_peers: bool = True) -> None:
        """Start every node and wait until each is ready (``/readyz``) and, unless not ``wait_peers``,
        until every node reports every peer up."""
        self.network.create()
        self._network_created = True
        for node in NODE_IDS:
            self._create_volume(node)
            self._run_container(node)
        for node in NODE_IDS:
            self._wait_serving(node)
        if wait_peers:
            self.wait_peers_up()

    def _create_volume(self, node: str) -> None:
        volume = f"{self.name}-{node}-data"
        self.docker.volumes.create(name=volume, labels=self.labels)
        self.volumes[node] = volume

    def _run_container(self, node: str) -> None:
        """Create and start the node's container: its name, alias, environment and volume never vary."""
        container = (
            DockerContainer(self.image)
            .with_name(f"{self.name}-{node}")
            .with_network(self.network)
            .with_network_aliases(node)
            .with_envs(
                **{
                    **self.env,
                    **self._tls_env(node),
                    "KV_NODE_ID": node,
                    "KV_PEERS": PEERS,
                    "KV_PORT": str(PROTOCOL_PORT),
                    "KV_HTTP_PORT": str(HTTP_PORT),
                    **self.node_env.get(node, {}),  # last: a test may misconfigure a node on purpose
                }
            )
        )
        container.with_kwargs(labels=self.labels, hostname=node)
        if node in self.data_tmpfs:  # docker's tmpfs options, owned by the user the image runs as
            container.tmpfs["/data"] = f"size={self.data_tmpfs[node]},uid={self._image_uid_gid()}"
        else:
            container.with_volume_mapping(self.volumes[node], "/data", "rw")
        binds = {self._secrets_folder: "/secrets"} if self._secrets_folder else {}
        for host_path, path in {**binds, **self.node_binds.get(node, {})}.items():
            container.with_volume_mapping(host_path, path, "ro")
        # Published on 127.0.0.1 only, each on a random free host port (docker SDK port syntax).
        container.ports[f"{PROTOCOL_PORT}/tcp"] = ("127.0.0.1",)  # type: ignore[assignment]
        container.ports[f"{HTTP_PORT}/tcp"] = ("127.0.0.1",)  # type: ignore[assignment]
        self.containers[node] = container
        container.start()

    def _tls_env(self, node: str) -> dict[str, str]:
        """The node's own certificate and key, once ``secure``d."""
        if not self._secrets_folder:
            return {}
        return {"KV_TLS_CERT": f"/secrets/{node}.crt", "KV_TLS_KEY": f"/secrets/{node}.key"}

    def _image_uid_gid(self) -> str:
        """``"<uid>,gid=<gid>"`` of the image's user (the tmpfs must be its; docker ignores a mode)."""
        _, output = self.run_once(["sh", "-c", "echo $(id -u),gid=$(id -g)"])
        return output

    def run_once(self, command: list[str], *, stderr: bool = True, **options: Any) -> tuple[int, str]:
        """Run ``command`` in a one-off container of the image (``options``: the docker SDK's, e.g.
        ``network``); its exit status and output (stdout, and stderr unless not ``stderr``). The
        container is removed with its anonymous volume: the image declares ``VOLUME /data``, and
        ``remove=True`` would leave one behind per run."""
        container = self.docker.containers.run(self.image, command, labels=self.labels, detach=True, **options)
        try:
            status = container.wait(timeout=START_TIMEOUT)
            output = container.logs(stdout=True, stderr=stderr)
            return int(status["StatusCode"]), output.decode("utf-8", errors="replace").strip()
        finally:
            container.remove(force=True, v=True)

    def close(self) -> None:
        """Remove containers, volumes and the network; try every step, report every failure at the end."""
        errors: list[str] = []
        if self._admin is not None:
            self._admin.close()
            self._admin = None
        for node, container in self.containers.items():
            try:
                container.get_wrapped_container().remove(force=True, v=True)
            except (ContainerStartException, docker.errors.NotFound):
                pass  # never created, or already gone
            except Exception as exc:
                errors.append(f"container {node}: {exc}")
        for node, volume in self.volumes.items():
            try:
                self.docker.volumes.get(volume).remove(force=True)
            except docker.errors.NotFound:
                pass
            except Exception as exc:
                errors.append(f"volume of {node}: {exc}")
        if self._network_created:
            try:
                self.network.remove()
            except docker.errors.NotFound:
                pass
            except Exception as exc:
                errors.append(f"network {self.network.name}: {exc}")
        if self._secrets is not None:
            self._secrets.cleanup()
        if errors:
            raise RuntimeError(f"cleanup of cluster {self.name} failed: " + "; ".join(errors))

    def kill(self, node: str) -> None:
        """SIGKILL the node's container (no drain, no flush) and wait until Docker reports it exited."""
        container = self.containers[node].get_wrapped_container()
        container.kill()  # SIGKILL

        def exited() -> bool:
            container.reload()
            return container.status == "exited"

        wait_until(exited, 30, message=f"{node} to exit after SIGKILL")
        exit_code = container.attrs["State"]["ExitCode"]
        assert exit_code == 137, f"{node} exited with {exit_code}, not 137 (128 + SIGKILL)"
        self._reset_admin()

    def start(self, node: str, *, wait_peers: bool = True) -> None:
        """Start the same container again (same volume), read its new ports, wait until it serves and
        (unless ``wait_peers`` is false) until every running node sees every other one up."""
        self.containers[node].get_wrapped_container().start()
        self._wait_serving(node)
        if wait_peers:
            self.wait_peers_up()
        self._reset_admin()

    def replace_disk(self, node: str) -> None:
        """Lose the node's disk: SIGKILL and remove its container, remove its volume and create it again
        empty, then run a new container with the same name, alias, environment and volume name (the
        same node id, nothing stored) and wait until it serves and every node sees every peer up."""
        self.containers[node].get_wrapped_container().remove(force=True, v=True)  # force: SIGKILL
        self._reset_admin()
        volume = self.volumes[node]
        self.docker.volumes.get(volume).remove(force=True)
        self._create_volume(node)  # same name, new and empty
        self._run_container(node)
        self._wait_serving(node)
        self.wait_peers_up()
        self._reset_admin()

    def recreate(self, node: str, *, env: dict[str, str] | None = None, binds: dict[str, str] | None = None) -> None:
        """Replace the node's container (SIGKILL) with a new one on the same volume, with ``env`` added
        to its environment and ``binds`` (host path -> path in the container) mounted read-only, and
        wait until it serves and every node sees every peer up."""
        self.node_env[node] = dict(env or {})
        self.node_binds[node] = dict(binds or {})
        self.containers[node].get_wrapped_container().remove(force=True, v=True)
        self._reset_admin()
        self._run_container(node)
        self._wait_serving(node)
        self.wait_peers_up()
        self._reset_admin()

    def run_as(self, node: str, env: dict[str, str], *, fresh_disk: bool = False) -> None:
        """Replace the node's container (SIGKILL) with one whose environment has ``env`` over the
        usual (``KV_NODE_ID`` and ``KV_PEERS`` too: a misconfigured node), on the same volume or
        (``fresh_disk``) a new empty one, and wait until it is running with its ports published; not
        until it is ready, which a misconfigured node may never be. ``run_as(node, {})`` and
        ``wait_ready(node)`` put it back."""
        self.node_env[node] = dict(env)
        self.containers[node].get_wrapped_container().remove(force=True, v=True)
        self._reset_admin()
        if fresh_disk:
            self.docker.volumes.get(self.volumes[node]).remove(force=True)
            self._create_volume(node)
        self._run_container(node)

    def add_joining(self, node: str, seeds: Iterable[str], env: dict[str, str] | None = None) -> None:
        """Run one more node, ``node`` (e.g. node4), on the cluster's network with a volume of its own,
        started as a new node joins: ``KV_PEERS`` naming only itself, ``KV_SEEDS`` and
        ``KV_AUTO_JOIN=true``; and wait until it serves. It is not in ``node_ids``: the helpers that
        go over every node leave it out; ``address``, ``kill``, ``start`` and ``metrics`` take it."""
        self.node_env[node] = {
            "KV_PEERS": f"{node}={node}:{PROTOCOL_PORT}",
            "KV_SEEDS": ",".join(f"{seed}:{PROTOCOL_PORT}" for seed in seeds),
            "KV_AUTO_JOIN": "true",
            **(env or {}),
        }
        self._create_volume(node)
        self._run_container(node)
        self._wait_serving(node)

    def add_by_admin(self, node: str, seeds: Iterable[str], env: dict[str, str] | None = None) -> str:
        """Run ``node`` as a new node that waits to be added (``KV_AUTO_JOIN=wait``, ``KV_SEEDS``),
        add it as an operator does, with ``kv cluster join node:5000`` run in a container on the
        cluster's network (asked again until the node answers HELLO), and wait until it serves.
        The CLI's output."""
        self.node_env[node] = {
            "KV_PEERS": f"{node}={node}:{PROTOCOL_PORT}",
            "KV_SEEDS": ",".join(f"{seed}:{PROTOCOL_PORT}" for seed in seeds),
            "KV_AUTO_JOIN": "wait",
            **(env or {}),
        }
        self._create_volume(node)
        self._run_container(node)
        self.wait_published(node)
        said: list[str] = []

        def added() -> bool:
            code, output = self.run_cli(["cluster", "join", f"{node}:{PROTOCOL_PORT}"])
            said.append(output)
            if code != 0 and "does not answer" not in output:
                raise AssertionError(f"kv cluster join {node}:{PROTOCOL_PORT} exited {code}: {output}")
            return code == 0

        wait_until(added, START_TIMEOUT, interval=1.0, message=f"kv cluster join {node}:{PROTOCOL_PORT} to succeed")
        self._wait_serving(node)
        return said[-1]

    def run_cli(self, args: list[str]) -> tuple[int, str]:
        """Run ``kv ARGS`` (seeded with the founders) in a one-off container of the image on the
        cluster's network, as ``docker compose run client`` does; its exit status and output."""
        nodes = ",".join(f"{node}:{PROTOCOL_PORT}" for node in NODE_IDS)
        return self.run_once(["kv", *args], environment={"KV_NODES": nodes}, network=self.network.name)

    def wait_published(self, node: str) -> None:
        """Wait until the node's container runs with its ports published; fails if it exits."""
        wait_until(lambda: self._read_ports(node), START_TIMEOUT, message=f"{node}'s published ports")

    def wait_exited(self, node: str) -> tuple[int, str]:
        """Wait until the node's container exits; its exit code and its output (stdout and stderr)."""
        container = self.containers[node].get_wrapped_container()

        def exited() -> bool:
            container.reload()
            return container.status in ("exited", "dead")

        wait_until(exited, START_TIMEOUT, message=f"{node} to exit")
        return int(container.attrs["State"]["ExitCode"]), container.logs().decode("utf-8", errors="replace")

    def wait_ready(self, node: str) -> None:
        """Wait until the node serves (``/readyz`` 200, PING) and every running node sees every peer up."""
        self._wait_serving(node)
        self.wait_peers_up()
        self._reset_admin()

    def signal(self, node: str, signal: str) -> None:
        """Send ``signal`` (``"SIGSTOP"``, ``"SIGCONT"``...) to the node's process, from the host."""
        self.containers[node].get_wrapped_container().kill(signal=signal)

    def pause(self, node: str) -> None:
        """Freeze the node's processes (cgroup freezer): its sockets stay open but nothing answers."""
        container = self.containers[node].get_wrapped_container()
        container.pause()
        container.reload()
        assert container.status == "paused", f"{node} is {container.status} after pause"

    def unpause(self, node: str) -> None:
        """Thaw a paused node and wait until it serves and every node sees every peer up again."""
        self.containers[node].get_wrapped_container().unpause()
        self._wait_serving(node)
        self.wait_peers_up()

    def is_running(self, node: str) -> bool:
        container = self.containers[node].get_wrapped_container()
        container.reload()
        return container.status == "running"

    # --- access ---------------------------------------------------------------------------------------

    def address(self, node: str) -> str:
        """The node's protocol address from this host."""
        return f"127.0.0.1:{self.ports[node]}"

    def addresses(self) -> list[str]:
        return [self.address(node) for node in NODE_IDS]

    def client(self, **options: Any) -> Client:
        """A new Client seeded with every node's current 127.0.0.1 port.

        Create it while every node is up: a node that is down cannot tell the client its id, and the
        client would fall back to the node's in-network name (node1:5000), which does not resolve here.
        """
        down = [node for node in NODE_IDS if not self.is_running(node)]
        assert not down, f"create clients while every node is up; down: {down}"
        client = Client(self.addresses(), client_name="kv-integration-tests", **options)
        client.security = self.security
        return client

    def admin(self) -> Client:
        """A shared client for direct node calls, seeded with the running nodes; rebuilt after a kill or start."""
        if self._admin is None:
            running = [self.address(node) for node in NODE_IDS if self.is_running(node)]
            assert running, "no node is running"
            self._admin = Client(running, client_name="kv-integration-admin")
            self._admin.security = self.security
        return self._admin

    def local_record(self, node: str, key: bytes | str) -> Record | None:
        """What ``node`` itself stores for ``key`` (REPLICA_GET: no coordination, no other node asked)."""
        raw_key = key.encode() if isinstance(key, str) else key
        admin = self.admin()
        # The node's own 127.0.0.1 address, never one the admin client learned from TOPOLOGY.
        frame = admin.call_node(self.address(node), ReplicaGet(raw_key, behind_ok=True))
        return None if frame.code == Status.NOT_FOUND else protocol.decode_record(frame.body)

    def epochs(self, nodes: Iterable[str]) -> dict[str, float | None]:
        """Each node's ``kv_membership_epoch`` (``None``: not exported)."""
        return {node: sample_value(self.metrics(node), "kv_membership_epoch") for node in nodes}

    def members(self, node: str) -> dict[str, MemberView]:
        """``{member id: view}`` as ``node``'s failure detector sees the cluster (MEMBERS sent to it alone)."""
        frame = self.admin().call_node(self.address(node), protocol.Members())
        return {member.node_id: member for member in protocol.decode_members_reply(frame.body)}

    def total(self, sample_name: str, nodes: Iterable[str] | None = None, **labels: str) -> float:
        """The sum over ``nodes`` (default: the running ones) of every sample of ``sample_name`` matching
        ``labels``, e.g. ``total("kv_hints_delivered_total")`` sums over every owner label too. Counters
        restart from 0 when a node restarts."""
        chosen = [node for node in NODE_IDS if self.is_running(node)] if nodes is None else list(nodes)
        return sum(sample.value for node in chosen for sample in samples(self.metrics(node), sample_name, **labels))

    def sample(self, node: str, sample_name: str, default: float | None = None, **labels: str) -> float | None:
        """One sample of the node's /metrics right now, e.g. ``sample("node1", "kv_peer_up", peer="node2")``."""
        return sample_value(self.metrics(node), sample_name, default, **labels)

    sample_value = staticmethod(sample_value)

    def http(self, node: str, path: str) -> tuple[int, str]:
        """``(status, body)`` of a GET on the node's HTTP port (HTTPS once ``secure``d)."""
        return http_get(self.http_ports[node], path, https=self.https)

    def log_lines(self, node: str) -> list[dict[str, Any]]:
        """Every stdout log line of the node, parsed as JSON (fails naming the first that is not)."""
        return json_lines(self.logs(node))

    def raw(self, node: str, timeout: float = 5.0) -> RawConnection:
        """A plain TCP connection to the node's protocol port, for bytes the Client would never send."""
        return RawConnection(self.ports[node], timeout)

    def node_of_address(self, client: Client) -> dict[str, str]:
        """``{address: node id}`` as ``client`` sees the cluster (to read ``client.where`` as node ids)."""
        return {client.node_address(node): node for node in NODE_IDS}

    def healthz(self, node: str) -> int:
        return self.http(node, "/healthz")[0]

    def readyz(self, node: str) -> int:
        return self.http(node, "/readyz")[0]

    def metrics_text(self, node: str) -> str:
        status, body = self.http(node, "/metrics")
        assert status == 200, f"/metrics of {node} answered {status}: {body[:200]}"
        return body

    def metrics(self, node: str) -> Families:
        """The node's /metrics, parsed with prometheus_client."""
        return parse_metrics(self.metrics_text(node))

    def logs(self, node: str, *, stderr: bool = False) -> str:
        """The container's whole stdout (or stderr) log, across restarts."""
        container = self.containers[node].get_wrapped_container()
        return container.logs(stdout=not stderr, stderr=stderr).decode("utf-8", errors="replace")

    def ping(self, node: str, timeout: float = 2.0) -> bool:
        """A fresh protocol connection (HELLO) to the node, then PING; ``True`` if it answered OK."""
        connection = Connection(
            "127.0.0.1",
            self.ports[node],
            connect_timeout=timeout,
            client_name="kv-tests-ping",
            framing=Framing(security=self.security),
        )
        try:
            connection.connect()
            frame = connection.call(protocol.Ping(), timeout=timeout)
            return frame.code == Status.OK
        finally:
            connection.close()

    def wait_peers_up(self, timeout: float = PEER_TIMEOUT) -> None:
        """Wait until every running node reports every other running node up in ``kv_peer_up``."""
        running = [node for node in NODE_IDS if self.is_running(node)]

        def all_up() -> bool:
            for node in running:
                families = self.metrics(node)
                for peer in running:
                    if peer != node and sample_value(families, "kv_peer_up", peer=peer) != 1:
                        raise AssertionError(f"{node} does not see {peer} up yet")
            return True

        wait_until(all_up, timeout, interval=0.2, message=f"every node of {running} to see its peers up")

    # --- internals -----------------------------------------------------------------------------------

    def _reset_admin(self) -> None:
        if self._admin is not None:
            self._admin.close()
            self._admin = None

    def _read_ports(self, node: str) -> bool:
        container = self.containers[node].get_wrapped_container()
        container.reload()
        if container.status in ("exited", "dead"):
            # Not a transient state: fail at once with the reason instead of at the deadline.
            pytest.fail(f"{node} stopped while starting ({container.status}): {self._log_tail(node)}")
        if container.status != "running":
            return False
        published = container.attrs["NetworkSettings"]["Ports"] or {}
        bindings = {}
        for port in (PROTOCOL_PORT, HTTP_PORT):
            entries = published.get(f"{port}/tcp") or []
            local = [entry for entry in entries if entry.get("HostIp") == "127.0.0.1" and entry.get("HostPort")]
            if not local:
                return False
            bindings[port] = int(local[0]["HostPort"])
        self.ports[node] = bindings[PROTOCOL_PORT]
        self.http_ports[node] = bindings[HTTP_PORT]
        return True

    def _wait_serving(self, node: str, timeout: float = START_TIMEOUT) -> None:
        """Wait until Docker publishes the node's ports, /readyz answers 200 and a PING answers OK."""
        deadline = time.monotonic() + timeout
        wait_until(lambda: self._read_ports(node), timeout, message=f"{node}'s published ports")

        def serving() -> bool:
            if not self._read_ports(node):  # also fails at once if the node exited
                raise AssertionError("its ports are not published")
            status, body = self.http(node, "/readyz")
            if status != 200:
                raise AssertionError(f"/readyz answered {status}: {body.strip()}")
            return self.ping(node)

        wait_until(
            serving,
            max(1.0, deadline - time.monotonic()),
            interval=0.2,
            message=f"{node} to answer /readyz 200 and PING on 127.0.0.1:{self.ports[node]}",
        )

    def _log_tail(self, node: str) -> str:
        container = self.containers[node].get_wrapped_container()
        return container.logs(tail=20).decode("utf-8", errors="replace")


@contextlib.contextmanager
def running_cluster(
    docker_client: docker.DockerClient,
    image: str,
    label: str,
    env: dict[str, str] | None = None,
    **options: Any,
) -> Iterator[Cluster]:
    """A started cluster, removed with its network and volumes however the block ends.

    ``env``: extra environment for every node, e.g. ``{"KV_ANTI_ENTROPY_INTERVAL_S": "3"}``;
    ``data_tmpfs=``: nodes whose /data is a small tmpfs, e.g. ``{"node1": "3m"}``; ``secured=True``:
    users, the cluster secret and TLS on every link (``Cluster.secure``), else ``KV_INSECURE=true``.
    """
    name = f"kvtest-{RUN_ID}-{label}-{uuid.uuid4().hex[:6]}"
    cluster = Cluster(docker_client, image, name, env, options.get("data_tmpfs"))
    try:
        if options.get("secured"):
            cluster.secure()
        cluster.start_all()
        yield cluster
    finally:
        cluster.close()


# --- raw sockets -------------------------------------------------------------------------------------------


class RawConnection:
    """A plain TCP socket to a node for sending bytes the Client would never send."""

    def __init__(self, port: int, timeout: float = 5.0) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.decoder = protocol.FrameDecoder(max_frame_bytes=64 * 1024 * 1024)
        self._frames: list[protocol.Frame] = []

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def read_frame(self, timeout: float = 5.0) -> protocol.Frame:
        """The next frame from the node; fails if none arrives within ``timeout`` s or the node closes."""
        deadline = time.monotonic() + timeout
        for _ in range(10_000):
            if self._frames:
                return self._frames.pop(0)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            self.sock.settimeout(remaining)
            try:
                data = self.sock.recv(256 * 1024)
            except TimeoutError:
                break
            if not data:
                raise AssertionError("the node closed the connection instead of replying")
            self._frames.extend(self.decoder.feed(data))
        raise AssertionError(f"no reply frame within {timeout:g} s")

    def hello(self) -> protocol.HelloReply:
        self.send(protocol.encode_request(1, protocol.Hello(client_name="kv-tests-raw")))
        frame = self.read_frame()
        assert frame.code == Status.OK, f"HELLO answered {frame.code:#x}: {frame.body!r}"
        return protocol.decode_hello_reply(frame.body)

    def wait_closed_by_peer(self, timeout: float = 10.0) -> bytes:
        """Read until the node closes the connection; return what it sent first. Fails on timeout.

        A reset counts as closed: a node that closes with unread bytes in its buffer resets instead.
        """
        received = bytearray()
        deadline = time.monotonic() + timeout
        for _ in range(10_000):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            self.sock.settimeout(remaining)
            try:
                data = self.sock.recv(256 * 1024)
            except TimeoutError:
                break
            except (ConnectionResetError, BrokenPipeError):
                return bytes(received)
            if not data:
                return bytes(received)
            received += data
        raise AssertionError(f"the node kept the connection open for {timeout:g} s (received {bytes(received)[:64]!r})")

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> RawConnection:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def free_port() -> int:
    """A port free on 127.0.0.1 right now (bound to port 0, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def json_lines(text: str) -> list[dict[str, Any]]:
    """Every non-empty line of ``text`` parsed as JSON; fails naming the first line that is not."""
    parsed = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as exc:
            raise AssertionError(f"log line {number} is not JSON ({exc}): {line!r}") from None
        assert isinstance(value, dict), f"log line {number} is JSON but not an object: {line!r}"
        parsed.append(value)
    return parsed


# --- docker compose ----------------------------------------------------------------------------------------

COMPOSE_UP_TIMEOUT = 180.0
"""Seconds for ``up --build --wait`` (an image build, normally fully cached, then three healthy nodes)."""
COMPOSE_TIMEOUT = 60.0


class ComposeProject:
    """The repository's compose.yaml under a unique project name, its host ports moved to free ones."""

    def __init__(self, base: str) -> None:
        self.name = f"kvtest-{RUN_ID}-{uuid.uuid4().hex[:6]}"
        self.env = {**os.environ, "BASE_IMAGE": base, "KV_IMAGE": COMPOSE_IMAGE}
        for variable in ("COMPOSE_PROJECT_NAME", "COMPOSE_FILE", "COMPOSE_PROFILES", "KV_BIND"):
            self.env.pop(variable, None)  # the file's own defaults, whatever the caller's shell has set
        chosen: set[int] = set()
        for number in (1, 2, 3):
            for suffix in ("PORT", "HTTP_PORT", "RESP_PORT"):
                port = free_port()
                for _ in range(100):  # a released port handed out twice in a row is rare; bounded anyway
                    if port not in chosen:
                        break
                    port = free_port()
                chosen.add(port)
                self.env[f"KV_NODE{number}_{suffix}"] = str(port)

    def run(
        self, *args: str, stdin: str | None = None, timeout: float = COMPOSE_TIMEOUT
    ) -> subprocess.CompletedProcess:
        command = ["docker", "compose", "-p", self.name, "-f", str(REPO_ROOT / "compose.yaml"), *args]
        return subprocess.run(
            command,
            check=False,
            cwd=REPO_ROOT,
            env=self.env,
            input=stdin,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def check(self, *args: str, stdin: str | None = None, timeout: float = COMPOSE_TIMEOUT) -> list[str]:
        """Run ``docker compose <args>``, fail unless it exits 0, and return its stdout lines."""
        result = self.run(*args, stdin=stdin, timeout=timeout)
        assert result.returncode == 0, (
            f"docker compose {' '.join(args)} exited {result.returncode}\n"
            f"stdout:\n{result.stdout}\nstderr:\n{result.stderr[-3000:]}"
        )
        return output_lines(result.stdout)

    def client_session(self, session: str) -> list[str]:
        """``docker compose run --rm -T client`` fed ``session`` on stdin; its output lines."""
        return self.check("run", "--rm", "-T", "client", stdin=session)


def output_lines(raw: bytes | str | None) -> list[str]:
    text = raw.decode("utf-8", errors="replace") if isinstance(raw, bytes) else (raw or "")
    return [line.rstrip("\r") for line in text.splitlines()]


@dataclass
class ChangeLoad:
    """A bounded load for a membership change: puts, overwrites and deletes of ``keys`` keys named
    ``prefix`` and four digits, each followed by a read of the key, one request at a time.

    ``acked`` holds each key's last acknowledged value (``None``: deleted); ``maybe`` the values
    written since whose outcome is unknown (their request failed), any of which the key may hold.
    ``ok`` and ``failed`` count requests; ``errors`` says why each failure failed."""

    prefix: str
    keys: int
    rng: random.Random
    acked: dict[str, bytes | None] = field(default_factory=dict)
    maybe: dict[str, set[bytes | None]] = field(default_factory=dict)
    ok: int = 0
    failed: int = 0
    errors: list[str] = field(default_factory=list)
    operations: int = 0

    def key(self, index: int) -> str:
        return f"{self.prefix}{index:04d}"

    def seed(self, kv: Client, value: bytes) -> None:
        """Put ``value`` under every key, one at a time, each acknowledged."""
        for index in range(self.keys):
            kv.put(self.key(index), value)
            self.acked[self.key(index)] = value

    def run_until(self, kv: Client, done: Callable[[], bool], timeout: float, limit: int = 20_000) -> None:
        """Run until ``done()``, ``timeout`` seconds, or ``limit`` more writes, whichever comes first."""
        deadline = time.monotonic() + timeout
        stop_at = self.operations + limit
        while not done() and time.monotonic() < deadline and self.operations < stop_at:
            for _ in range(50):
                self.operations += 1
                key = self.key(self.rng.randrange(self.keys))
                value = None if self.rng.random() < 0.15 else f"{self.prefix}{self.operations}".encode()
                self.maybe.setdefault(key, set()).add(value)
                try:
                    if value is None:
                        kv.delete(key)
                    else:
                        kv.put(key, value)
                    kv.get(key)
                except KVError as exc:
                    self.failed += 1
                    self.errors.append(f"{type(exc).__name__}: {exc}")
                    continue
                self.ok += 2
                self.acked[key] = value
                self.maybe[key] = set()
