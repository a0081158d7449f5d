"""The ``kv`` CLI as users run it: inside a node container, and through the real compose.yaml.

(Named test_kv_cli.py, not test_cli.py: tests/unit/test_cli.py exists, and without __init__.py files
pytest's default import mode needs every test file's basename to be unique.)
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from client.ring import DEFAULT_PARTITIONS, Ring

if TYPE_CHECKING:
    from containers import Cluster, ComposeProject

NODE_IDS = ("node1", "node2", "node3")
SEED_SESSION = "PUT foo bar\nGET foo\nDELETE foo\nGET foo\nEXIT\n"
SEED_OUTPUT = ["OK", "bar", "OK", "NOT_FOUND"]
IN_NETWORK_NODES = "node1:5000,node2:5000,node3:5000"


def lines_of(raw: bytes | None) -> list[str]:
    return [line.rstrip("\r") for line in (raw or b"").decode("utf-8", errors="replace").splitlines()]


# --- kv inside a node container -----------------------------------------------------------------------------


def test_cli_session_inside_a_node_container(cluster: Cluster) -> None:
    container = cluster.containers["node2"].get_wrapped_container()
    script = f"printf {shlex.quote(SEED_SESSION)} | KV_NODES={IN_NETWORK_NODES} kv"
    exit_code, (stdout, stderr) = container.exec_run(["sh", "-c", script], demux=True)
    assert exit_code == 0, (exit_code, stdout, stderr)
    assert lines_of(stdout) == SEED_OUTPUT, (stdout, stderr)


def test_cli_one_shot_commands_and_exit_codes(cluster: Cluster) -> None:
    container = cluster.containers["node3"].get_wrapped_container()
    key = f"cli-{uuid.uuid4().hex[:8]}"

    def kv(*args: str) -> tuple[int, list[str]]:
        exit_code, (stdout, _) = container.exec_run(["kv", "--nodes", IN_NETWORK_NODES, *args], demux=True)
        return exit_code, lines_of(stdout)

    assert kv("put", key, "hello", "world") == (0, ["OK"])
    assert kv("get", key) == (0, ["hello world"])
    exit_code, lines = kv("where", key)
    assert exit_code == 0 and len(lines) == 1, lines
    replicas = lines[0].split()
    assert len(replicas) == 2 and set(replicas) <= {f"{node}:5000" for node in NODE_IDS}, lines
    assert kv("delete", key) == (0, ["OK"])
    assert kv("get", key) == (1, ["NOT_FOUND"])
    exit_code, lines = kv("bogus")
    assert exit_code == 2 and len(lines) == 1 and lines[0].startswith("ERROR BAD_REQUEST"), lines


def test_cli_takes_any_bytes_inside_a_node_container_in_the_c_locale(cluster: Cluster) -> None:
    """Quoting, bytes that are not UTF-8 and a stored status word, through the image's own kv and
    Python, with LANG=C and an ASCII stdio encoding: exact bytes out, exit 0, nothing on stderr."""
    container = cluster.containers["node1"].get_wrapped_container()
    key = f"sp key {uuid.uuid4().hex[:8]}"

    def kv(*args: str, stdin: str | None = None) -> tuple[int, bytes, bytes]:
        command = shlex.join(["kv", "--nodes", IN_NETWORK_NODES, *args])
        if stdin is not None:
            command = f"printf {shlex.quote(stdin)} | {command}"
        exit_code, (stdout, stderr) = container.exec_run(
            ["sh", "-c", command], environment={"LANG": "C", "LC_ALL": "C", "PYTHONIOENCODING": "ascii"}, demux=True
        )
        return exit_code, stdout or b"", stderr or b""

    assert kv("put", key, "v1") == (0, b"OK\n", b"")  # kv put "sp key ..." v1
    session = (
        f'GET "{key}"\\n'  # printf turns \\n into a newline and \\377 into the byte 0xff
        "PUT bin \\377\\376\\n"
        "GET bin\\n"
        'PUT nf "NOT_FOUND"\\n'
        "GET nf\\n"
        'PUT empty ""\\n'
        "GET empty\\n"
        'GET "unbalanced\\n'
        "GET bin\\n"
    )
    assert kv(stdin=session) == (
        0,
        b'v1\nOK\n"\\xff\\xfe"\nOK\n"NOT_FOUND"\nOK\n""\nERROR BAD_REQUEST unbalanced quotes\n"\\xff\\xfe"\n',
        b"",
    )
    assert kv("--raw", "get", "bin") == (0, b"\xff\xfe\n", b"")


# --- the real compose.yaml ---------------------------------------------------------------------------------------


def key_with_primary(node: str) -> str:
    """A key whose first replica is ``node``, so killing that node forces the client to fail over."""
    ring = Ring(NODE_IDS, DEFAULT_PARTITIONS)
    for i in range(1000):
        key = f"x{i}"
        if ring.primary(key.encode()) == node:
            return key
    raise AssertionError(f"no key among 1000 has {node} as its primary")


@pytest.mark.skipif(
    shutil.which("redis-cli") is None, reason="redis-cli is not installed (apt-get install redis-server)"
)
def test_compose_cluster_serves_redis_cli_on_every_node(compose: ComposeProject) -> None:
    """Compose publishes each node's Redis port (6379 in the container) where KV_NODE<n>_RESP_PORT
    says; by default 127.0.0.1:6379, 6380 and 6381. Runs before the test that kills node1."""
    ports = {}
    for number, node in enumerate(NODE_IDS, start=1):
        ports[node] = compose.env[f"KV_NODE{number}_RESP_PORT"]
        assert compose.check("port", node, "6379") == [f"127.0.0.1:{ports[node]}"]

    # Compose's nodes take only TLS and users: redis-cli logs in as the admin, trusting compose's CA.
    (password,) = compose.check("run", "--rm", "-T", "--entrypoint", "cat", "client", "/secrets/admin.password")
    secured = [
        "--tls",
        "--cacert",
        str(Path(__file__).resolve().parents[2] / ".secrets" / "ca.crt"),
        "--user",
        "admin",
        "--pass",
        password,
    ]

    def redis_cli(node: str, *args: str) -> str:
        result = subprocess.run(
            ["redis-cli", "-p", ports[node], *secured, "--no-auth-warning", *args],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert result.returncode == 0, (args, result.stdout, result.stderr)
        return result.stdout.rstrip("\n")

    key = f"redis-{uuid.uuid4().hex[:8]}"
    assert redis_cli("node1", "PING") == "PONG"
    assert redis_cli("node1", "SET", key, "set through node1") == "OK"
    assert redis_cli("node3", "GET", key) == "set through node1"
    assert compose.client_session(f"GET {key}\n") == ["set through node1"]  # the binary protocol's view
    assert redis_cli("node2", "DEL", key) == "1"
    assert redis_cli("node1", "EXISTS", key) == "0"


def test_compose_cluster_serves_the_cli_and_survives_killing_node1(compose: ComposeProject) -> None:
    published = compose.check("port", "node1", "5000")
    assert published == [f"127.0.0.1:{compose.env['KV_NODE1_PORT']}"], published

    assert compose.client_session(SEED_SESSION) == SEED_OUTPUT

    key = key_with_primary("node1")
    assert compose.client_session(f"PUT {key} survives-node1\nGET {key}\n") == ["OK", "survives-node1"]

    compose.check("kill", "node1")
    running = compose.check("ps", "--services", "--status", "running")
    assert sorted(running) == ["node2", "node3"], running

    assert compose.client_session(f"GET {key}\n") == ["survives-node1"]
