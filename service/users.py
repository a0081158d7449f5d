"""Users, their roles and password verifiers: the users file, and the changes ``kv users`` makes.

**The users file** (``KV_USERS_FILE``, often a Docker or Kubernetes secret, so read-only) holds one
user a line: ``NAME ROLE VERIFIER``, with ``#`` comments and blank lines ignored. A verifier is
``SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`` (``client.scram``); ``kv users hash``
prints such a line. No password is in the file, or anywhere on a node.

**Changes** (USER_SET, from ``kv users add|remove|passwd``) are kept in ``users.json`` in the node's
data directory, layered over the file: a user changed there is as the change says (a removal hides
the file's entry), any other user as the file says. Each change carries a version (Unix ms); a node
keeps the highest it has seen for each user, so the same change sent to every node, in any order
and as often as needed, leaves every node alike. The file is written whole to a temporary file,
fsynced and renamed, so a crash leaves the old or the new version, never half of one.

``parse_users_file`` is pure; ``UserDirectory`` does the file I/O.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from client.protocol import Role, UserView
from client.scram import Verifier, VerifierError
from service.roles import USER_ROLES, parse_role, role_name

USER_NAME_PATTERN = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.@-]{0,63}$")
"""1-64 letters, digits, ``_ . @ -``: no colon, so no user can pose as a member (``node:<id>``)."""
CHANGES_FILE = "users.json"


class UsersFileError(ValueError):
    """A users file that cannot be used; the message names the line and the fix."""


@dataclass(frozen=True)
class User:
    name: str
    role: Role
    verifier: Verifier
    version: int = 0
    """The version of the change that set it (Unix ms); 0: from the users file."""


def check_user_name(name: str) -> str:
    """``name`` if it may name a user; ``ValueError`` saying what one may hold otherwise."""
    if not USER_NAME_PATTERN.match(name):
        raise ValueError(f"user name {name[:64]!r} must be 1-64 letters, digits, '_', '.', '@' or '-'")
    return name


def parse_users_file(text: str) -> dict[str, User]:
    """The users in a users file's text; ``UsersFileError`` naming the first bad line."""
    users: dict[str, User] = {}
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        fields = stripped.split()
        if len(fields) != 3:
            raise UsersFileError(f"line {number}: expected NAME ROLE VERIFIER (kv users hash NAME ROLE prints one)")
        name, role_text, verifier_text = fields
        try:
            check_user_name(name)
            role = parse_role(role_text)
            verifier = Verifier.parse(verifier_text)
        except (ValueError, VerifierError) as exc:
            raise UsersFileError(f"line {number}: {exc}") from None
        if name in users:
            raise UsersFileError(f"line {number}: user {name!r} is listed twice")
        users[name] = User(name, role, verifier)
    return users


def user_line(name: str, role: Role, verifier: Verifier) -> str:
    """A users file's line for this user."""
    return f"{name} {role_name(role)} {verifier}"


@dataclass(frozen=True)
class _Change:
    version: int
    user: User | None  # None: removed


class UserDirectory:
    """The users a node knows: the users file's, with the changes kept in ``data_dir`` over them.

    ``lookup`` is a dict read (every authentication makes one); ``apply`` writes the changes file
    before it returns, so an acknowledged change survives a crash. ``reload`` reads the users file
    again (SIGHUP).
    """

    def __init__(self, users_file: str, data_dir: str) -> None:
        self._users_file = users_file
        self._changes_path = Path(data_dir) / CHANGES_FILE
        self._file_users = read_users_file(users_file)
        self._changes = self._read_changes()
        self._merged = self._merge()

    def lookup(self, name: str) -> User | None:
        return self._merged.get(name)

    def __len__(self) -> int:
        return len(self._merged)

    def users(self) -> list[UserView]:
        """Every user, by name, with its role and the version of its last change (0: the file's)."""
        return [UserView(user.name, user.role, user.version) for _, user in sorted(self._merged.items())]

    def apply(self, version: int, name: str, role: Role, verifier: Verifier | None) -> bool:
        """Record a change of user ``name``: ``role`` and ``verifier``, or ``Role.NONE`` to remove it.
        ``False`` if a change as new or newer is already held (nothing changes). ``OSError`` if the
        changes file cannot be written (nothing changes either)."""
        held = self._changes.get(name)
        if held is not None and held.version >= version:
            return False
        user = None if role is Role.NONE or verifier is None else User(name, role, verifier, version)
        changes = {**self._changes, name: _Change(version, user)}
        self._write_changes(changes)
        self._changes = changes
        self._merged = self._merge()
        return True

    def reload(self) -> None:
        """Read the users file again; ``UsersFileError`` or ``OSError`` leave the users as they were."""
        self._file_users = read_users_file(self._users_file)
        self._merged = self._merge()

    def _merge(self) -> dict[str, User]:
        merged = dict(self._file_users)
        for name, change in self._changes.items():
            if change.user is None:
                merged.pop(name, None)
            else:
                merged[name] = change.user
        return merged

    def _read_changes(self) -> dict[str, _Change]:
        try:
            raw = json.loads(self._changes_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            raise UsersFileError(f"{self._changes_path}: cannot read the users changed by kv users: {exc}") from None
        try:
            return {name: _change_from_json(name, entry) for name, entry in raw.items()}
        except (AttributeError, KeyError, TypeError, ValueError) as exc:
            raise UsersFileError(f"{self._changes_path}: not a users changes file ({exc})") from None

    def _write_changes(self, changes: Mapping[str, _Change]) -> None:
        body = {
            name: {
                "version": change.version,
                "role": role_name(change.user.role) if change.user else None,
                "verifier": str(change.user.verifier) if change.user else None,
            }
            for name, change in sorted(changes.items())
        }
        temporary = self._changes_path.with_suffix(".tmp")
        with open(temporary, "w", encoding="utf-8") as file:
            json.dump(body, file, indent=1)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, self._changes_path)
        directory = os.open(self._changes_path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)


def _change_from_json(name: str, entry: dict[str, object]) -> _Change:
    version = entry["version"]
    if not isinstance(version, int):
        raise ValueError(f"{name}: version is not a number")
    role, verifier = entry.get("role"), entry.get("verifier")
    if role is None:
        return _Change(version, None)
    if not isinstance(role, str) or role not in USER_ROLES or not isinstance(verifier, str):
        raise ValueError(f"{name}: bad role or verifier")
    return _Change(version, User(name, USER_ROLES[role], Verifier.parse(verifier), version))


def read_users_file(path: str) -> dict[str, User]:
    """The users in the file at ``path``; ``UsersFileError`` saying what is wrong with it."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UsersFileError(f"cannot read {path}: {exc}") from None
    try:
        return parse_users_file(text)
    except UsersFileError as exc:
        raise UsersFileError(f"{path}, {exc}") from None
