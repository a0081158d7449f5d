"""A node's security, loaded from the files its configuration names: users, the cluster secret and
TLS certificates; reloaded on SIGHUP.

``load_security`` reads and checks every file at start-up and raises ``ConfigError`` naming the
variable and what is wrong, so a missing certificate or a bad users file stops the node before it
serves anything. ``NodeSecurity.reload`` reads them again (the users file and the certificates):
what fails to load is reported and the node keeps what it had.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path

from client.security import Credentials, Security
from service.admission import PEER_NAME_PREFIX
from service.authentication import MIN_CLUSTER_SECRET_BYTES, Authenticator, AuthEvents
from service.config import Config, ConfigError
from service.tls import TlsContexts, TlsFiles, TlsMode
from service.users import UserDirectory, UsersFileError


@dataclass
class NodeSecurity:
    """What a node secures itself with: who may connect (``authenticator``), and TLS (``tls``,
    ``None`` with ``KV_TLS_MODE=off``)."""

    node_id: str
    authenticator: Authenticator
    mode: TlsMode
    tls: TlsContexts | None
    cluster_secret: str | None

    def peer_security(self) -> Security:
        """How this node dials a peer now: as ``node:<id>`` with the cluster secret, over TLS with
        its current certificate unless TLS is off."""
        credentials = None
        if self.authenticator.required and self.cluster_secret is not None:
            credentials = Credentials(PEER_NAME_PREFIX + self.node_id, self.cluster_secret)
        return Security(credentials, None, self.tls.peer if self.tls is not None else None)

    def reload(self) -> list[str]:
        """Read the users file and the certificates again; what could not be loaded, one line each
        (the node keeps the old ones for those)."""
        problems: list[str] = []
        users = self.authenticator.users
        if users is not None:
            try:
                users.reload()
            except (UsersFileError, OSError) as exc:
                problems.append(f"KV_USERS_FILE: {exc}")
        if self.tls is not None:
            try:
                self.tls.reload()
            except (OSError, ssl.SSLError, ValueError) as exc:
                problems.append(f"KV_TLS_CERT/KV_TLS_KEY/KV_TLS_CA: {describe_tls_error(exc)}")
        return problems


def load_security(config: Config, events: AuthEvents) -> NodeSecurity:
    """The node's security from the files ``config`` names; ``ConfigError`` listing what is wrong."""
    problems: list[str] = []
    users = None
    if config.users_file:
        try:
            users = UserDirectory(config.users_file, config.data_dir)
        except UsersFileError as exc:
            problems.append(f"KV_USERS_FILE: {exc}")
    secret = None
    if config.cluster_secret_file:
        try:
            secret = Path(config.cluster_secret_file).read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            problems.append(f"KV_CLUSTER_SECRET_FILE: cannot read {config.cluster_secret_file}: {exc}")
        else:
            if len(secret.encode()) < MIN_CLUSTER_SECRET_BYTES:
                problems.append(
                    f"KV_CLUSTER_SECRET_FILE: the secret in {config.cluster_secret_file} is shorter than "
                    f"{MIN_CLUSTER_SECRET_BYTES} bytes: use a long random one (openssl rand -base64 32)"
                )
    mode = TlsMode(config.tls_mode)
    tls = None
    if mode is not TlsMode.OFF:
        try:
            tls = TlsContexts(TlsFiles(config.tls_cert, config.tls_key, config.tls_ca))
        except (OSError, ssl.SSLError, ValueError) as exc:
            problems.append(
                f"KV_TLS_CERT={config.tls_cert}, KV_TLS_KEY={config.tls_key}, KV_TLS_CA={config.tls_ca}: "
                f"cannot load them: {describe_tls_error(exc)}"
            )
    if problems:
        raise ConfigError(problems)
    authenticator = Authenticator(users, secret, events)
    return NodeSecurity(config.node_id, authenticator, mode, tls, secret)


def describe_tls_error(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLError):
        return f"{exc.reason or exc} (is each file PEM, and does the key match the certificate?)"
    return str(exc)
