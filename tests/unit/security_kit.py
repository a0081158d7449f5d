"""Files a secured in-process cluster needs: a users file, a cluster secret, and throwaway TLS
certificates from ``trustme``; and the settings that point nodes at them."""

from __future__ import annotations

from pathlib import Path

import trustme

from client.scram import make_verifier
from client.security import Credentials, Security, TlsSettings
from service.roles import parse_role
from service.users import user_line

PASSWORDS = {"reader": "r-pass-1", "writer": "w-pass-2", "admin": "a-pass-3"}
ROLES = {"reader": "read", "writer": "readwrite", "admin": "admin"}
CLUSTER_SECRET = "cluster-secret-0123456789abcdef"


def write_users(directory: Path, users: dict[str, tuple[str, str]] | None = None) -> Path:
    """A users file with ``users`` (name -> (role, password)); by default reader, writer and admin."""
    users = users or {name: (ROLES[name], password) for name, password in PASSWORDS.items()}
    path = directory / "users"
    lines = ["# name role verifier"]
    lines += [user_line(name, parse_role(role), make_verifier(password)) for name, (role, password) in users.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def auth_settings(directory: Path, secret: str = CLUSTER_SECRET) -> dict[str, str]:
    """KV_USERS_FILE and KV_CLUSTER_SECRET_FILE for nodes, the files written into ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    secret_path = directory / "cluster-secret"
    secret_path.write_text(secret + "\n")
    return {"KV_USERS_FILE": str(write_users(directory)), "KV_CLUSTER_SECRET_FILE": str(secret_path)}


def as_user(name: str, tls: TlsSettings | None = None) -> Security:
    """A client's security as one of the default users."""
    return Security.of(Credentials(name, PASSWORDS[name]), tls)


class Certificates:
    """A throwaway CA and a certificate for 127.0.0.1 signed by it, written as PEM files."""

    def __init__(self, directory: Path, name: str = "ca") -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.ca = trustme.CA()
        self.ca_path = directory / f"{name}.crt"
        self.ca.cert_pem.write_to_path(str(self.ca_path))
        self.cert_path, self.key_path = self.issue(directory, f"{name}-node")

    def issue(self, directory: Path, name: str) -> tuple[Path, Path]:
        """A new certificate for 127.0.0.1 and localhost: its chain's file and its key's."""
        cert = self.ca.issue_cert("127.0.0.1", "localhost")
        cert_path, key_path = directory / f"{name}.crt", directory / f"{name}.key"
        cert.cert_chain_pems[0].write_to_path(str(cert_path))
        for extra in cert.cert_chain_pems[1:]:
            extra.write_to_path(str(cert_path), append=True)
        cert.private_key_pem.write_to_path(str(key_path))
        return cert_path, key_path

    def settings(self, mode: str = "required") -> dict[str, str]:
        return {
            "KV_TLS_MODE": mode,
            "KV_TLS_CERT": str(self.cert_path),
            "KV_TLS_KEY": str(self.key_path),
            "KV_TLS_CA": str(self.ca_path),
        }

    def client(self) -> TlsSettings:
        return TlsSettings(ca=str(self.ca_path))
