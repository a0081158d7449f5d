"""Makes the secrets a secured cluster needs, once: ``python3 -m service.make_secrets DIR``.

Into ``DIR`` (compose's one-shot ``secrets`` service runs it on the first ``up``, into the git-ignored
``.secrets/``; ``deploy/make-secrets.sh`` runs it the same way by hand):

* ``ca.crt``, ``ca.key``: a CA (EC P-256, 10 years) that signs every certificate below;
* ``<node>.crt``, ``<node>.key`` for each node: valid for the node's name, ``localhost`` and
  ``127.0.0.1``, for serving and for dialling peers (TLS server and client use);
* ``cluster-secret``: 32 random bytes, base64: the members' password to each other;
* ``admin.password``: the first admin's password (24 random bytes, base64), and ``users``: the users
  file holding only its verifier, never the password.

It does nothing if ``DIR/.complete`` exists, so secrets survive every later ``up``, and it writes
that marker last, so an interrupted run starts over. ``--owner UID:GID`` makes the files that
user's (the image's ``kv`` user reads them); private files are readable by their owner alone.
"""

from __future__ import annotations

import argparse
import base64
import datetime
import ipaddress
import os
import secrets
import sys
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from client.protocol import Role
from client.scram import make_verifier
from service.users import user_line

COMPLETE_MARKER = ".complete"
CA_DAYS = 3650
CERT_DAYS = 825
"""Certificates' lifetime: the longest the CA/Browser Forum allowed when this was written; rotate
before it ends (README, "Security")."""


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [x509.NameAttribute(NameOID.ORGANIZATION_NAME, "kvstore"), x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
    )


def make_ca() -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name("kvstore CA"))
        .issuer_name(_name("kvstore CA"))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def issue(
    ca_key: ec.EllipticCurvePrivateKey, ca_cert: x509.Certificate, host: str
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A key and a certificate for ``host`` (and localhost, 127.0.0.1), for TLS servers and clients."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    names: list[x509.GeneralName] = [x509.DNSName(host), x509.DNSName("localhost")]
    names.append(x509.IPAddress(ipaddress.ip_address("127.0.0.1")))
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(host))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=CERT_DAYS))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
        )
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return key, cert


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def make_secrets(directory: Path, nodes: list[str], owner: tuple[int, int] | None = None) -> bool:
    """Write every secret into ``directory``; ``False`` if they were there already (nothing written)."""
    if (directory / COMPLETE_MARKER).exists():
        return False
    directory.mkdir(parents=True, exist_ok=True)
    files: dict[str, tuple[bytes, int]] = {}
    ca_key, ca_cert = make_ca()
    files["ca.crt"] = (_cert_pem(ca_cert), 0o644)
    files["ca.key"] = (_key_pem(ca_key), 0o600)
    for node in nodes:
        key, cert = issue(ca_key, ca_cert, node)
        files[f"{node}.crt"] = (_cert_pem(cert), 0o644)
        files[f"{node}.key"] = (_key_pem(key), 0o600)
    files["cluster-secret"] = (base64.b64encode(secrets.token_bytes(32)) + b"\n", 0o600)
    password = base64.urlsafe_b64encode(secrets.token_bytes(24)).decode()
    files["admin.password"] = (password.encode() + b"\n", 0o600)
    users = "# users: NAME ROLE VERIFIER (kv users hash NAME ROLE prints a line; kv users add changes them live)\n"
    users += user_line("admin", Role.ADMIN, make_verifier(password)) + "\n"
    files["users"] = (users.encode(), 0o600)
    for name, (content, mode) in files.items():
        _write(directory / name, content, mode, owner)
    _write(directory / COMPLETE_MARKER, b"", 0o644, owner)
    return True


def _write(path: Path, content: bytes, mode: int, owner: tuple[int, int] | None) -> None:
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(descriptor, "wb") as file:
        file.write(content)
    os.chmod(path, mode)
    if owner is not None:
        os.chown(path, *owner)


def _owner(text: str) -> tuple[int, int]:
    user, _, group = text.partition(":")
    return int(user), int(group or user)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m service.make_secrets", description=__doc__.split("\n\n")[0])
    parser.add_argument("directory", type=Path)
    parser.add_argument(
        "--nodes", default="node1,node2,node3", help="node names for certificates (default %(default)s)"
    )
    parser.add_argument("--owner", type=_owner, help="UID:GID to own the files (the nodes' user)")
    options = parser.parse_args(argv)
    nodes = [node.strip() for node in options.nodes.split(",") if node.strip()]
    try:
        made = make_secrets(options.directory, nodes, options.owner)
    except OSError as exc:
        print(f"make_secrets: cannot write into {options.directory}: {exc}", file=sys.stderr)
        return 1
    if made:
        made_for = ", ".join(nodes)
        print(f"make_secrets: a CA, certificates for {made_for}, a cluster secret, an admin: {options.directory}")
    else:
        print(f"make_secrets: secrets already in {options.directory}; nothing changed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
