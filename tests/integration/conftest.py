"""Fixtures for the integration suite: the image, built once, and a real three-node cluster per module.

The tools behind them (``Cluster``, ``RawConnection``, ``ComposeProject``, metrics parsing) live in
``containers.py``. A module configures its ``cluster`` by overriding the ``cluster_env`` fixture
(extra environment for every node), and ``cluster_factory(label, env)`` starts further clusters
configured otherwise. ``Cluster.replace_disk`` loses a node's volume and starts the same node id on a
new, empty one.

Test modules reach all of this through fixtures (``cluster``, ``kv``, ``compose``, ``wait_until``) and
the methods of the objects they return; they import ``containers`` only for type annotations.
"""

from __future__ import annotations

import os

# Before testcontainers is imported: its reaper image cannot be pulled on this machine.
os.environ.setdefault("TESTCONTAINERS_RYUK_DISABLED", "true")

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import docker
import docker.errors
import pytest
from containers import (
    COMPOSE_UP_TIMEOUT,
    IMAGE_TAG,
    REPO_ROOT,
    Cluster,
    ComposeProject,
    base_image,
    running_cluster,
)
from polling import wait_until

from client.client import Client


@pytest.fixture(scope="session")
def docker_client() -> Iterator[docker.DockerClient]:
    client = docker.from_env(timeout=120)
    try:
        yield client
    finally:
        client.close()


@pytest.fixture(scope="session")
def kv_image(docker_client: docker.DockerClient) -> str:
    """The node image, built once per session from the repository root with the legacy builder."""
    base = base_image(docker_client)
    try:
        docker_client.images.get(base)
    except docker.errors.ImageNotFound:
        pytest.fail(
            f"base image {base!r} is not present and no registry is reachable: "
            "build one with `export BASE_IMAGE=$(deploy/build-base-image.sh | tail -n 1)`"
        )
    try:
        docker_client.images.build(
            path=str(REPO_ROOT), tag=IMAGE_TAG, buildargs={"BASE_IMAGE": base}, rm=True, forcerm=True
        )
    except docker.errors.BuildError as exc:
        log = "".join(str(chunk.get("stream", chunk.get("error", ""))) for chunk in exc.build_log)
        pytest.fail(f"building {IMAGE_TAG} from {REPO_ROOT} with BASE_IMAGE={base} failed: {exc}\n{log[-4000:]}")
    return IMAGE_TAG


@pytest.fixture(scope="module")
def cluster_env() -> dict[str, str]:
    """Extra environment for the nodes of the module's ``cluster``: none. A module overrides this
    fixture to configure its cluster, e.g. a shorter anti-entropy interval."""
    return {}


@pytest.fixture(scope="module")
def cluster_secured() -> bool:
    """Whether the module's ``cluster`` runs with users, the cluster secret and TLS on every link
    (``Cluster.secure``): no, with ``KV_INSECURE=true``; a module overrides this to say yes."""
    return False


@pytest.fixture(scope="module")
def cluster(
    request: pytest.FixtureRequest,
    docker_client: docker.DockerClient,
    kv_image: str,
    cluster_env: dict[str, str],
    cluster_secured: bool,
) -> Iterator[Cluster]:
    """A fresh three-node cluster for each test module."""
    label = request.module.__name__.rsplit(".", 1)[-1].removeprefix("test_")[:12].replace("_", "-")
    with running_cluster(docker_client, kv_image, label, cluster_env, secured=cluster_secured) as started:
        yield started


@pytest.fixture(scope="session")
def cluster_factory(docker_client: docker.DockerClient, kv_image: str) -> Callable[..., Any]:
    """``cluster_factory(label, env, data_tmpfs=None)``: a context manager for one more cluster,
    configured with ``env`` (and small tmpfs disks), for modules that need clusters configured in
    different ways."""

    def make(
        label: str, env: dict[str, str] | None = None, data_tmpfs: dict[str, str] | None = None, secured: bool = False
    ) -> contextlib.AbstractContextManager[Cluster]:
        return running_cluster(docker_client, kv_image, label, env, data_tmpfs=data_tmpfs, secured=secured)

    return make


@pytest.fixture
def kv(cluster: Cluster) -> Iterator[Client]:
    """A client for the module's cluster, closed after the test."""
    client = cluster.client()
    try:
        yield client
    finally:
        client.close()


@pytest.fixture(scope="session", name="wait_until")
def wait_until_fixture() -> Callable[..., Any]:
    """``wait_until(predicate, timeout, interval=0.1, message=...)``: poll with a deadline, no fixed sleeps."""
    return wait_until


@pytest.fixture(scope="module")
def compose(docker_client: docker.DockerClient) -> Iterator[ComposeProject]:
    """The compose cluster, up and healthy; always taken down with its volumes."""
    project = ComposeProject(base_image(docker_client))
    try:
        project.check("up", "-d", "--build", "--wait", "--wait-timeout", "120", timeout=COMPOSE_UP_TIMEOUT)
        yield project
    finally:
        down = project.run("down", "--volumes", "--remove-orphans", "--timeout", "5", timeout=COMPOSE_UP_TIMEOUT)
        assert down.returncode == 0, f"docker compose -p {project.name} down failed: {down.stderr[-2000:]}"
