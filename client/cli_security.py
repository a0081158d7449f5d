"""The ``kv`` command's security: its options (``--user``, ``--tls``...), where the password comes
from, and ``kv users``, the administration of the cluster's users.

A password is never an argument (it would show in ``ps`` and shell history): it comes from
``KV_PASSWORD``, a file (``--password-file``, ``KV_PASSWORD_FILE``), or a prompt on the terminal.
``kv users`` makes each new password's verifier here (``client.scram``) and sends only that, with
USER_SET, to every node; a node down meanwhile misses the change, and the same command run again
once it is back brings it level (each change carries a version, the newest wins).
"""

from __future__ import annotations

import argparse
import getpass
import os
import ssl
import time

from client import protocol
from client.client import Client
from client.errors import AuthFailedError, InvalidArgumentError, KVError, TlsError
from client.protocol import Role
from client.scram import make_verifier
from client.security import Credentials, Security, TlsSettings

ROLE_CODES = {"read": Role.READ, "readwrite": Role.READWRITE, "admin": Role.ADMIN}
USERS_USAGE = (
    "kv users add NAME ROLE | passwd NAME | remove NAME | list | hash NAME ROLE  "
    "(ROLE: read, readwrite or admin; the new password from KV_NEW_PASSWORD, --new-password-file or a prompt)"
)


def add_security_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("security (a cluster with users and TLS)")
    group.add_argument(
        "--user", default=os.environ.get("KV_USER") or None, help="authenticate as this user (env KV_USER)"
    )
    group.add_argument(
        "--password-file",
        default=os.environ.get("KV_PASSWORD_FILE") or None,
        help="read the password from this file (env KV_PASSWORD_FILE); else KV_PASSWORD, else a prompt",
    )
    group.add_argument(
        "--tls",
        action="store_true",
        default=os.environ.get("KV_TLS", "").lower() in ("1", "true", "yes", "on"),
        help="connect with TLS (env KV_TLS=true; implied by --tls-ca, --tls-cert)",
    )
    group.add_argument(
        "--tls-ca",
        default=os.environ.get("KV_TLS_CA") or None,
        help="CA that signed the nodes' certificates (env KV_TLS_CA; default: the system's)",
    )
    group.add_argument(
        "--tls-cert",
        default=os.environ.get("KV_TLS_CLIENT_CERT") or None,
        help="client certificate, for nodes that ask (env KV_TLS_CLIENT_CERT)",
    )
    group.add_argument(
        "--tls-key", default=os.environ.get("KV_TLS_CLIENT_KEY") or None, help="its private key (env KV_TLS_CLIENT_KEY)"
    )


class SecurityOptionError(Exception):
    """The security options cannot be used; the message is the CLI's one error line."""


def security_settings(options: argparse.Namespace) -> tuple[Credentials | None, TlsSettings | None]:
    """The credentials and TLS settings the options ask for (the password read now);
    ``SecurityOptionError`` if no password can be had."""
    credentials = None
    if options.user:
        credentials = Credentials(options.user, read_password(options.password_file, f"password for {options.user}: "))
    tls = None
    if options.tls or options.tls_ca or options.tls_cert:
        tls = TlsSettings(options.tls_ca, options.tls_cert, options.tls_key)
    return credentials, tls


def security_from(options: argparse.Namespace) -> Security:
    """The ``Security`` the options ask for; ``SecurityOptionError`` with an ``ERROR ...`` line."""
    credentials, tls = security_settings(options)
    try:
        return Security.of(credentials, tls)
    except (OSError, ssl.SSLError) as exc:
        raise SecurityOptionError(
            f"ERROR TLS cannot load the TLS files (--tls-ca, --tls-cert, --tls-key): {exc}"
        ) from None


def read_password(path: str | None, prompt: str, environment: str = "KV_PASSWORD") -> str:
    """The password from ``path``, else ``$environment``, else the terminal; ``SecurityOptionError``
    if none of them has one (a pipe's stdin carries commands, never the password)."""
    if path:
        try:
            with open(path, encoding="utf-8") as file:
                password = file.readline().rstrip("\r\n")
        except (OSError, UnicodeDecodeError) as exc:
            raise SecurityOptionError(f"ERROR AUTH_FAILED cannot read the password file {path}: {exc}") from None
        if not password:
            raise SecurityOptionError(f"ERROR AUTH_FAILED the password file {path} is empty")
        return password
    password = os.environ.get(environment, "")
    if password:
        return password
    try:
        return getpass.getpass(prompt)
    except (EOFError, OSError, getpass.GetPassWarning):
        raise SecurityOptionError(
            f"ERROR AUTH_FAILED no password: set {environment}, give a password file, or run kv on a terminal"
        ) from None


def new_password(path: str | None) -> str:
    """A new user's password: from ``path``, ``KV_NEW_PASSWORD``, or typed twice at a prompt."""
    if path or os.environ.get("KV_NEW_PASSWORD"):
        return read_password(path, "", "KV_NEW_PASSWORD")
    first = read_password(None, "new password: ", "KV_NEW_PASSWORD")
    if read_password(None, "again: ", "KV_NEW_PASSWORD") != first:
        raise SecurityOptionError("ERROR BAD_REQUEST the two passwords differ; nothing changed")
    return first


def users_command(client: Client, args: list[str]) -> tuple[str, int]:
    """``kv users ...``: the line to print and the exit status (0 done, 2 error)."""
    parser = argparse.ArgumentParser(prog="kv users", add_help=False, exit_on_error=False)
    parser.add_argument("action", choices=["add", "passwd", "remove", "list", "hash"])
    parser.add_argument("name", nargs="?")
    parser.add_argument("role", nargs="?")
    parser.add_argument("--new-password-file")
    try:
        options = parser.parse_args(args)
    except (argparse.ArgumentError, SystemExit):
        return f"ERROR BAD_REQUEST usage: {USERS_USAGE}", 2
    action, name, role_text = options.action, options.name, options.role
    needs_role = action in ("add", "hash")
    if (action != "list" and not name) or needs_role != (role_text is not None) or (action == "list" and name):
        return f"ERROR BAD_REQUEST usage: {USERS_USAGE}", 2
    assert name is not None or action == "list"
    role = ROLE_CODES.get((role_text or "").lower(), Role.NONE)
    if needs_role and role is Role.NONE:
        return f"ERROR BAD_REQUEST unknown role {role_text!r}: read, readwrite or admin", 2
    try:
        if action == "list":
            return list_users(client), 0
        assert name is not None
        if action == "remove":
            return change_everywhere(client, protocol.UserSet(version_now(), name, Role.NONE), "removed")
        verifier = str(make_verifier(new_password(options.new_password_file)))
        if action == "hash":
            return f"{name} {role.name.lower()} {verifier}", 0
        if action == "passwd":
            role = current_role(client, name)
        return change_everywhere(
            client, protocol.UserSet(version_now(), name, role, verifier), "added" if action == "add" else "changed"
        )
    except SecurityOptionError as exc:
        return str(exc), 2
    except KVError as exc:
        return f"ERROR {exc.code} {exc.message}", 2


def version_now() -> int:
    """A change's version: this machine's clock in ms, so the latest change made wins everywhere."""
    return int(time.time() * 1000)


def list_users(client: Client) -> str:
    node = client.topology().nodes[0]
    frame = client.call_node(client.node_address(node.node_id), protocol.Users())
    users = protocol.decode_users_reply(frame.body)
    return ", ".join(f"{user.user} ({Role(user.role).name.lower()})" for user in users) or "no users"


def current_role(client: Client, name: str) -> Role:
    """``name``'s role as a node has it; ``InvalidArgumentError`` if there is no such user."""
    node = client.topology().nodes[0]
    frame = client.call_node(client.node_address(node.node_id), protocol.Users())
    for user in protocol.decode_users_reply(frame.body):
        if user.user == name:
            return Role(user.role)
    raise InvalidArgumentError(f"no user {name!r}: kv users add {name} ROLE")


def change_everywhere(client: Client, change: protocol.UserSet, done: str) -> tuple[str, int]:
    """Send ``change`` to every node; ``OK`` if all took it, else which did not, and why."""
    nodes = [node.node_id for node in client.topology().nodes]
    failures: list[str] = []
    for node_id in nodes:
        try:
            client.call_node(client.node_address(node_id), change)
        except KVError as exc:
            if isinstance(exc, AuthFailedError | TlsError) or exc.code in ("FORBIDDEN", "BAD_REQUEST"):
                raise
            failures.append(f"{node_id}: {exc.message}")
    if failures:
        return (
            f"ERROR UNAVAILABLE user {change.user} {done} on {len(nodes) - len(failures)} of {len(nodes)} nodes; "
            f"not on {'; '.join(failures)}: run the same command again once they are up",
            2,
        )
    return f"OK user {change.user} {done} on {len(nodes)} of {len(nodes)} nodes", 0
