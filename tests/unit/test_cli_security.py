"""The kv command against a cluster with users and TLS: --user with the password from KV_PASSWORD
or a file, --tls and its files, one-line errors, and kv users."""

from __future__ import annotations

from pathlib import Path

import pytest
from cluster import InProcessCluster
from security_kit import PASSWORDS, Certificates, auth_settings

from client import cli
from service.users import parse_users_file

pytestmark = pytest.mark.unit


@pytest.fixture
def certificates(tmp_path: Path) -> Certificates:
    return Certificates(tmp_path / "tls")


@pytest.fixture
def secured(make_cluster, tmp_path: Path, certificates: Certificates) -> InProcessCluster:
    return make_cluster(3, **auth_settings(tmp_path / "auth"), **certificates.settings("required"))


@pytest.fixture
def kv(secured: InProcessCluster, certificates: Certificates, capsys, monkeypatch):
    """Runs kv with the cluster's nodes and CA; ``user`` picks who, with its password in KV_PASSWORD."""
    for variable in ("KV_USER", "KV_PASSWORD", "KV_PASSWORD_FILE", "KV_TLS", "KV_TLS_CA", "KV_NEW_PASSWORD"):
        monkeypatch.delenv(variable, raising=False)

    def run(*args: str, user: str | None = None, tls: bool = True) -> tuple[int, list[str]]:
        options = ["--nodes", ",".join(secured.addresses)]
        if tls:
            options += ["--tls-ca", str(certificates.ca_path)]
        if user is not None:
            monkeypatch.setenv("KV_PASSWORD", PASSWORDS.get(user, "wrong"))
            options += ["--user", user]
        code = cli.main([*options, *args])
        captured = capsys.readouterr()
        return code, captured.out.splitlines() + captured.err.splitlines()

    return run


def test_a_user_works_with_the_password_from_the_environment_or_a_file(kv, tmp_path: Path, monkeypatch) -> None:
    assert kv("put", "k", "hello", user="writer") == (0, ["OK"])
    assert kv("get", "k", user="reader") == (0, ["hello"])
    password_file = tmp_path / "pw"
    password_file.write_text(PASSWORDS["reader"] + "\n")
    code, lines = kv("--password-file", str(password_file), "--user", "reader", "get", "k")
    monkeypatch.delenv("KV_PASSWORD", raising=False)
    assert (code, lines) == (0, ["hello"])


def test_failures_are_one_line_each(kv, tmp_path: Path) -> None:
    code, (line,) = kv("get", "k")
    assert code == 2 and line.startswith("ERROR AUTH_REQUIRED ")
    code, (line,) = kv("get", "k", user="intruder")
    assert code == 2 and line.startswith("ERROR AUTH_FAILED ") and "unknown user or wrong password" in line
    code, (line,) = kv("put", "k", "v", user="reader")
    assert code == 2 and line.startswith("ERROR FORBIDDEN PUT is not allowed for reader (read)")
    code, (line,) = kv("get", "k", user="reader", tls=False)
    assert code == 2 and line.startswith("ERROR TLS_REQUIRED ")
    other = Certificates(tmp_path / "other", "other")
    code, (line,) = kv("--tls-ca", str(other.ca_path), "get", "k", user="reader", tls=False)
    assert code == 2 and line.startswith("ERROR TLS ") and "certificate verify failed" in line
    code, (line,) = kv("--tls-ca", str(tmp_path / "missing.crt"), "get", "k", user="reader", tls=False)
    assert code == 2 and line.startswith("ERROR TLS cannot load the TLS files")


def test_kv_users_adds_changes_and_removes_a_user_on_every_node(kv, secured: InProcessCluster, monkeypatch) -> None:
    monkeypatch.setenv("KV_NEW_PASSWORD", "bob-pw-1")
    assert kv("users", "add", "bob", "readwrite", user="admin") == (0, ["OK user bob added on 3 of 3 nodes"])
    code, (line,) = kv("users", "add", "eve", "readwrite", user="writer")
    assert code == 2 and line.startswith("ERROR FORBIDDEN USER_SET is not allowed for writer")
    assert kv("users", "list", user="admin")[1] == ["admin (admin), bob (readwrite), reader (read), writer (readwrite)"]
    monkeypatch.setitem(PASSWORDS, "bob", "bob-pw-1")
    assert kv("put", "b", "1", user="bob") == (0, ["OK"])
    monkeypatch.setenv("KV_NEW_PASSWORD", "bob-pw-2")
    assert kv("users", "passwd", "bob", user="admin")[1] == ["OK user bob changed on 3 of 3 nodes"]
    assert kv("get", "b", user="bob")[1][0].startswith("ERROR AUTH_FAILED")
    monkeypatch.setitem(PASSWORDS, "bob", "bob-pw-2")
    assert kv("get", "b", user="bob") == (0, ["1"])
    assert kv("users", "remove", "bob", user="admin")[1] == ["OK user bob removed on 3 of 3 nodes"]
    for node_id in secured.node_ids:
        assert secured.node(node_id).security.authenticator.identify("bob") is None
    # A node that was down misses a change; the same command, run again, brings it level.
    secured.stop("node3")
    monkeypatch.setenv("KV_NEW_PASSWORD", "carol-pw")
    code, (line,) = kv("users", "add", "carol", "read", user="admin")
    assert code == 2 and line.startswith("ERROR UNAVAILABLE user carol added on 2 of 3 nodes; not on node3")


def test_kv_users_hash_prints_a_users_file_line(kv, monkeypatch) -> None:
    monkeypatch.setenv("KV_NEW_PASSWORD", "dave-pw")
    code, (line,) = kv("users", "hash", "dave", "admin", tls=False)
    assert code == 0
    (user,) = parse_users_file(line).values()
    assert (user.name, user.role.name) == ("dave", "ADMIN")
    assert kv("users", "hash", "dave", tls=False)[1][0].startswith("ERROR BAD_REQUEST usage: kv users")
