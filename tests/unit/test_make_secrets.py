"""The secrets compose makes on its first up: certificates the nodes' TLS accepts, a users file whose
admin verifier matches the password, a long cluster secret; made once, never overwritten."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest

from client.scram import password_matches
from service.make_secrets import COMPLETE_MARKER, main, make_secrets
from service.tls import TlsFiles, peer_context, server_context
from service.users import read_users_file

pytestmark = pytest.mark.unit


def test_the_secrets_work_together_and_are_made_once(tmp_path: Path) -> None:
    folder = tmp_path / "secrets"
    assert make_secrets(folder, ["node1", "node2"]) is True
    files = TlsFiles(str(folder / "node1.crt"), str(folder / "node1.key"), str(folder / "ca.crt"))
    assert isinstance(server_context(files), ssl.SSLContext) and isinstance(peer_context(files), ssl.SSLContext)
    password = (folder / "admin.password").read_text().strip()
    (admin,) = read_users_file(str(folder / "users")).values()
    assert admin.name == "admin" and password_matches(admin.verifier, password)
    assert password not in (folder / "users").read_text()
    assert len((folder / "cluster-secret").read_text().strip()) >= 32
    for private in ("ca.key", "node1.key", "admin.password", "cluster-secret", "users"):
        assert (folder / private).stat().st_mode & 0o077 == 0, private
    before = (folder / "admin.password").read_text()
    assert make_secrets(folder, ["node1", "node2"]) is False
    assert (folder / "admin.password").read_text() == before and (folder / COMPLETE_MARKER).exists()


def test_the_command_says_what_it_did(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(tmp_path / "s"), "--nodes", "a,b"]) == 0
    assert "certificates for a, b" in capsys.readouterr().out
    assert main([str(tmp_path / "s")]) == 0
    assert "nothing changed" in capsys.readouterr().out
