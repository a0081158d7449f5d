"""What each Redis command means on this store: one parsed command in, one encoded RESP2 reply out.

The Redis-protocol port speaks to redis-cli, redis-benchmark and Redis client libraries. This module
owns the command set they may use: the table of commands (name, arity, flags and key positions, as
Redis's ``COMMAND`` reports them) and what each does. It sees no sockets (``resp_server`` owns
those) and reaches the data only through the node's ``Coordinator``, with the node's R and W, so a
key written here is read through the binary protocol and the other way round.

Data commands: ``GET``, ``SET`` (no options: keys never expire, and there are no conditional writes),
``DEL``, ``EXISTS``, ``MGET`` and ``MSET``. A multi-key command runs one coordinator request per
distinct key, up to ``KEY_CONCURRENCY`` at once, as Twemproxy and Dynomite split them; it is not
atomic: when one key fails, the reply is that key's error and the keys already written stay written.
``DEL`` answers how many of its keys existed: it reads each key (with R) before deleting it (with
W). A read cannot be made atomic with the delete, so with other clients writing the same keys at
that moment the count is what the read saw (two concurrent ``DEL`` of one key may both count it, and
a ``SET`` landing between read and delete is deleted but not counted); the delete itself always
happens, whatever the read saw.

Connection commands (``PING``, ``ECHO``, ``SELECT 0``, ``QUIT``, ``HELLO``, ``CLIENT``), and the
introspection redis-cli, redis-benchmark and client libraries ask for (``COMMAND``, ``INFO``, ``CONFIG
GET``) answer from this node alone. A client may choose RESP3 with ``HELLO 3`` (redis-py 8 does, and
does not fall back to RESP2); for these commands it changes only how null and maps are sent.

Errors use Redis's wording where Redis has one; the node's own failures begin with the status name
of the binary protocol (``-UNAVAILABLE 1 of 2 required replicas acked; ...``, ``-TIMEOUT ...``,
``-KEY_TOO_LARGE ...``).
"""

from __future__ import annotations

import fnmatch
import os
import platform
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from itertools import count
from typing import TypeVar

import gevent.pool

from client.protocol import PeerState, Role
from client.resp import (
    NULL,
    OK,
    PONG,
    RESP3_NULL,
    Reply,
    encode_bulk,
    encode_error,
    encode_integer,
    encode_map,
    encode_reply,
)
from service.authentication import AuthRefused
from service.config import Config
from service.handler import RequestError, RequestHandler
from service.quorum import QuorumFailure
from service.storage import StorageError

REDIS_VERSION = "7.0.0"
"""The Redis version INFO and HELLO claim: the commands here behave as Redis 7.0's do, and Debian
bookworm's redis-cli and redis-benchmark (7.0) are what the port is tested with."""
KEY_CONCURRENCY = 32
"""Keys of one multi-key command in flight at once: enough to overlap their replica round trips and
share group commits, few enough that one MSET of thousands of keys cannot flood the node."""
MULTI_KEY_REPLY_FRAMES = 16
"""An MGET reply may carry this many times ``KV_MAX_FRAME_BYTES`` of values (16 MiB by default):
one command must not make the node hold an unbounded reply."""

Outcome = tuple[bytes, str]
"""A command's encoded reply and its status for metrics and logs: ``OK``, ``NOT_FOUND`` (a GET of a
missing key), or an error reply's first word (``ERR``, ``UNAVAILABLE``...)."""

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class CommandSpec:
    """A command as Redis's ``COMMAND`` describes it. ``arity``: the exact argument count, name
    included, or its negative as a minimum. Keys are the arguments ``first_key`` to ``last_key`` (-1:
    the last) in steps of ``step``; 0, 0, 0 for a command with none."""

    name: str
    arity: int
    flags: tuple[str, ...]
    first_key: int = 0
    last_key: int = 0
    step: int = 0
    waits: bool = False
    """Always waits on replicas, so it runs in a greenlet of its own rather than the session's
    reading greenlet (writes; reads try the reading greenlet first, see ``MustWait``)."""
    op: str = field(init=False)
    """The ``op`` label of its metrics and log lines: ``RESP_`` and the name."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "op", "RESP_" + self.name.upper())

    def arity_ok(self, count: int) -> bool:
        return count == self.arity if self.arity >= 0 else count >= -self.arity

    def keys(self, args: Sequence[bytes]) -> list[bytes]:
        """The keys among ``args`` (the whole command, name first)."""
        if not self.step:
            return []
        last = len(args) - 1 if self.last_key < 0 else self.last_key
        return list(args[self.first_key : last + 1 : self.step])


_SPECS = (
    CommandSpec("get", 2, ("readonly", "fast"), 1, 1, 1),
    CommandSpec("set", -3, ("write", "denyoom"), 1, 1, 1, waits=True),
    CommandSpec("del", -2, ("write",), 1, -1, 1, waits=True),
    CommandSpec("exists", -2, ("readonly", "fast"), 1, -1, 1),
    CommandSpec("mget", -2, ("readonly", "fast"), 1, -1, 1),
    CommandSpec("mset", -3, ("write", "denyoom"), 1, -1, 2, waits=True),
    CommandSpec("ping", -1, ("fast", "stale")),
    CommandSpec("echo", 2, ("fast", "stale")),
    CommandSpec("select", 2, ("fast", "loading", "stale")),
    CommandSpec("quit", -1, ("fast", "loading", "stale", "no_auth")),
    CommandSpec("hello", -1, ("fast", "loading", "stale", "no_auth")),
    CommandSpec("auth", -2, ("fast", "loading", "stale", "no_auth")),
    CommandSpec("client", -2, ("loading", "stale")),
    CommandSpec("command", -1, ("loading", "stale")),
    CommandSpec("info", -1, ("loading", "stale")),
    CommandSpec("config", -2, ("admin", "loading", "stale")),
)
COMMANDS: dict[bytes, CommandSpec] = {spec.name.upper().encode(): spec for spec in _SPECS}
"""Every command the port answers, by upper-case name (a command's name is case-insensitive)."""

_NAMES = frozenset(spec.name for spec in _SPECS)
NOT_AUTHENTICATED_COMMANDS = _NAMES - {"auth", "hello", "quit"}
"""What a connection may not run before AUTH on a node with users (Redis answers ``-NOAUTH``)."""
_WRITES = frozenset({"set", "del", "mset"})
RESP_DENIED: dict[Role, frozenset[str]] = {
    Role.READ: _WRITES,
    Role.READWRITE: frozenset(),
    Role.ADMIN: frozenset(),
    Role.PEER: _NAMES,  # members never log in here
}
"""Role -> the commands it may not run: ``read`` reads (and asks INFO, CLIENT...), ``readwrite`` and
``admin`` may run everything this port has (there is no administration on it)."""

UNKNOWN_OP = "RESP_UNKNOWN"
"""The metrics ``op`` of commands not in ``COMMANDS``: a label per name sent would let any client
grow the node's metrics without bound."""

UNSUPPORTED_SET_OPTIONS = {
    "EX": "keys never expire in this store",
    "PX": "keys never expire in this store",
    "EXAT": "keys never expire in this store",
    "PXAT": "keys never expire in this store",
    "KEEPTTL": "keys never expire in this store",
    "NX": "this store has no conditional writes",
    "XX": "this store has no conditional writes",
    "GET": "SET does not return the old value here; send GET first",
}
"""SET's Redis options, each refused with the reason. Anything else after the value is a syntax
error, as in Redis."""

CONFIG_PARAMETERS = ("save", "appendonly", "appendfsync", "databases")
"""What ``CONFIG GET`` answers: the durability settings redis-benchmark prints at its start, as their
nearest Redis equivalents, and the number of databases. Any other parameter matches nothing, as an
unknown one does in Redis."""

CLIENT_NAME_CHARACTERS = frozenset(range(0x21, 0x7F))
"""What a client name may hold (Redis: no spaces, newlines or other special characters)."""


@dataclass
class RespClient:
    """One connection's state, as ``CLIENT`` and ``HELLO`` show and change it."""

    id: int
    address: str
    local_address: str
    name: bytes = b""
    library_name: bytes = b""
    library_version: bytes = b""
    connected_at: float = field(default_factory=time.monotonic)
    protocol: int = 2
    """2 (RESP2) until the client sends ``HELLO 3``."""
    null: bytes = NULL
    """This connection's null reply: RESP2's null bulk string, or RESP3's null."""
    closing: bool = False
    """Set by QUIT: the session closes once every reply up to QUIT's has gone out."""
    user: str = ""
    """Who the connection authenticated as (AUTH, HELLO's AUTH); empty before, or without users."""
    denied: frozenset[str] = frozenset()
    """Commands this connection may not run (by name, lower case): all but ``AUTH``, ``HELLO`` and
    ``QUIT`` before authenticating on a node with users, then those its role does not allow."""


def error(message: str) -> Outcome:
    """An error reply; its status is its first word."""
    return encode_error(message), message.split(" ", 1)[0]


def arity_error(name: str) -> Outcome:
    return error(f"ERR wrong number of arguments for '{name}' command")


def unknown_command(args: Sequence[bytes]) -> Outcome:
    """Redis's wording: the name, then arguments quoted until 128 characters of them are shown."""
    shown = ""
    for arg in args[1:]:
        if len(shown) >= 128:
            break
        shown += f"'{_text(arg)[: 128 - len(shown)]}' "
    return error(f"ERR unknown command '{_text(args[0])[:128]}', with args beginning with: {shown}")


class RespHandler:
    """Runs Redis commands against this node's coordinator. Holds no socket; ``clients`` is every
    open connection's state (``CLIENT LIST``, ``INFO``'s connected_clients).

    ``requests`` (the binary protocol's handler) supplies the coordinator, the key and value limits
    and their errors, R and W, this node's store and its view of the cluster; ``config`` what INFO
    and CONFIG GET report; ``started``: when the node started (``time.time()``), for the uptime.
    """

    def __init__(self, config: Config, requests: RequestHandler, started: float) -> None:
        self._config = config
        self._requests = requests
        self._coordinator = requests.coordinator
        self._r = config.read_quorum
        self._w = config.write_quorum
        self._max_reply = config.max_frame_bytes * MULTI_KEY_REPLY_FRAMES
        self._started = started
        self._accounts = requests.accounts
        self.clients: dict[int, RespClient] = {}
        self._client_ids = count(1)
        self._runners: dict[str, Callable[[list[bytes], RespClient, bool], Outcome]] = {
            "get": self._get,
            "set": self._set,
            "del": self._del,
            "exists": self._exists,
            "mget": self._mget,
            "mset": self._mset,
            "ping": self._ping,
            "echo": self._echo,
            "select": self._select,
            "quit": self._quit,
            "hello": self._hello,
            "auth": self._auth,
            "client": self._client,
            "command": self._command,
            "info": self._info,
            "config": self._config_command,
        }

    def open_client(self, address: str, local_address: str) -> RespClient:
        """A new connection's state, with the next client id, registered until ``close_client``."""
        client = RespClient(next(self._client_ids), address, local_address)
        if self._accounts is not None and self._accounts.required:
            client.denied = NOT_AUTHENTICATED_COMMANDS
        self.clients[client.id] = client
        return client

    def close_client(self, client: RespClient) -> None:
        self.clients.pop(client.id, None)

    def run(self, spec: CommandSpec | None, args: list[bytes], client: RespClient, *, inline: bool = False) -> Outcome:
        """``args`` (name first) run as ``spec`` (``None``: not a command we know); the reply.

        ``inline``: in the session's reading greenlet, which must not wait, so a read that needs
        another node raises ``MustWait`` (before sending anything) and the session runs it again in
        a greenlet of its own. Every refusal and failure of the store becomes an error reply; other
        exceptions are bugs, left to the session, which answers ``INTERNAL_ERROR`` and logs them.
        """
        if spec is None:
            return unknown_command(args)
        if not spec.arity_ok(len(args)):
            return arity_error(spec.name)
        if spec.name in client.denied:
            return self._refuse(spec, client)
        try:
            return self._runners[spec.name](args, client, inline)
        except (RequestError, QuorumFailure) as exc:
            return error(f"{exc.status.name} {exc.message}")
        except StorageError as exc:
            return error(f"INTERNAL_ERROR {exc}")

    # --- data ---------------------------------------------------------------------------------------

    def _read(self, key: bytes, inline: bool) -> bytes | None:
        """The value of ``key`` read with R, ``None`` if missing or deleted."""
        record = self._coordinator.get(key, self._r, wait=not inline)
        return None if record is None else record.value

    def _get(self, args: list[bytes], client: RespClient, inline: bool) -> Outcome:
        self._requests.check_key(args[1])
        value = self._read(args[1], inline)
        return (client.null, "NOT_FOUND") if value is None else (encode_bulk(value), "OK")

    def _set(self, args: list[bytes], client: RespClient, inline: bool) -> Outcome:
        if len(args) > 3:
            option = _text(args[3]).upper()
            reason = UNSUPPORTED_SET_OPTIONS.get(option)
            return error(f"ERR SET option {option} is not supported: {reason}" if reason else "ERR syntax error")
        key, value = args[1], args[2]
        self._requests.check_key(key)
        self._requests.check_value(value)
        self._coordinator.put(key, value, self._w)
        return OK, "OK"

    def _mset(self, args: list[bytes], client: RespClient, inline: bool) -> Outcome:
        if len(args) % 2 == 0:
            return arity_error("mset")
        values = dict(zip(args[1::2], args[2::2], strict=True))  # a key given twice keeps its last value
        for key, value in values.items():
            self._requests.check_key(key)
            self._requests.check_value(value)
        _each(lambda key: self._coordinator.put(key, values[key], self._w), list(values))
        return OK, "OK"

    def _del(self, args: list[bytes], client: RespClient, inline: bool) -> Outcome:
        keys = self._checked_keys(args)

        def delete(key: bytes) -> bool:
            existed = self._read(key, False) is not None
            self._coordinator.delete(key, self._w)
            return existed

        return encode_integer(sum(_each(delete, keys))), "OK"

    def _exists(self, args: list[bytes], client: RespClient, inline: bool) -> Outcome:
        found = self._read_all(self._checked_keys(args), inline)
        return encode_integer(sum(found[key] is not None for key in args[1:])), "OK"

    def _mget(self, args: list[bytes], client: RespClient, inline: bool) -> Outcome:
        found = self._read_all(self._checked_keys(args), inline)
        size = sum(len(value) for value in found.values() if value is not None)
        if size > self._max_reply:
            return error(
                f"ERR MGET reply of {size} bytes of values exceeds the limit of {self._max_reply} "
                f"(KV_MAX_FRAME_BYTES x {MULTI_KEY_REPLY_FRAMES}); ask for fewer keys at once"
            )
        values = (found[key] for key in args[1:])
        return b"*%d\r\n" % (len(args) - 1) + b"".join(
            client.null if v is None else encode_bulk(v) for v in values
        ), "OK"

    def _checked_keys(self, args: list[bytes]) -> list[bytes]:
        """The distinct keys of a multi-key command, in order, each within the key limit."""
        keys = list(dict.fromkeys(args[1:]))
        for key in keys:
            self._requests.check_key(key)
        return keys

    def _read_all(self, keys: list[bytes], inline: bool) -> dict[bytes, bytes | None]:
        """Every key's value; inline, one after the other, each from this node's store or
        ``MustWait``; otherwise in parallel."""
        if inline:
            return {key: self._read(key, True) for key in keys}
        return dict(zip(keys, _each(lambda key: self._read(key, False), keys), strict=True))

    # --- the connection -----------------------------------------------------------------------------

    def _ping(self, args: list[bytes], client: RespClient, inline: bool) -> Outcome:
        if len(args) > 2:
            return arity_error("ping")
        return (PONG if len(args) == 1 else encode_bulk(args[1])), "OK"

    def _echo(self, args: list[bytes], client: RespClient, inline: bool) -> Outcome:
        return encode_bulk(args[1]), "OK"

    def _select(self, args: list[bytes], client: RespClient, inline: bool) -> Outcome:
        if not _is_integer(args[1]):
            return error("ERR value is not an integer or out of range")
        if int(args[1]) != 0:
            return error("ERR DB index is out of range (this store has one database, 0)")
        return OK, "OK"

    def _quit(self, args: list[bytes], client: RespClient, inline: bool) -> Outcome:
        client.closing = True
        return OK, "OK"

    def _refuse(self, spec: CommandSpec, client: RespClient) -> Outcome:
        if not client.user:
            return error("NOAUTH Authentication required.")
        return error(f"NOPERM User {client.user} has no permissions to run the '{spec.name}' command")

    def _auth(self, args: list[bytes], client: RespClient, inline: bool) -> Outcome:
        """``AUTH [user] password``: Redis 6's form, with ``default`` as the user when only a password
        is given. The password itself crosses the wire (RESP has no challenge-response): use TLS."""
        if len(args) > 3:
            return error("ERR syntax error")
        user = _text(args[1]) if len(args) == 3 else "default"
        return self._log_in(client, user, _text(args[-1]))

    def _log_in(self, client: RespClient, user: str, password: str) -> Outcome:
        accounts = self._accounts
        if accounts is None or not accounts.required:
            return error(
                "ERR AUTH <password> called without any password configured for the default user. "
                "Are you sure your configuration is correct? (this node has no users: KV_USERS_FILE)"
            )
        try:
            identity = accounts.check_password(user, password, client.address)
        except AuthRefused:
            return error("WRONGPASS invalid username-password pair or user is disabled.")
        client.user = identity.user
        client.denied = RESP_DENIED[identity.role]
        return OK, "OK"

    def _hello(self, args: list[bytes], client: RespClient, inline: bool) -> Outcome:
        """``HELLO [protover [AUTH user pass] [SETNAME name]]``: RESP2 or RESP3, which differ here only
        in how null and maps are sent. (redis-py 8 asks for RESP3 and does not fall back.)"""
        protocol = client.protocol
        if len(args) > 1:
            if not _is_integer(args[1]):
                return error("ERR Protocol version is not an integer or out of range")
            protocol = int(args[1])
            if protocol not in (2, 3):
                return error("NOPROTO sorry, this protocol version is not supported")
        options = args[2:]
        name: bytes | None = None
        while options:
            option = options[0].upper()
            if option == b"AUTH" and len(options) >= 3:
                outcome = self._log_in(client, _text(options[1]), _text(options[2]))
                if outcome[1] != "OK":
                    return outcome
                options = options[3:]
                continue
            if option == b"SETNAME" and len(options) >= 2:
                name, options = options[1], options[2:]
                continue
            return error(f"ERR Syntax error in HELLO option '{_text(options[0])}'")
        if name is not None:
            refused = _set_name(client, name)
            if refused is not None:
                return refused
        client.protocol = protocol
        client.null = NULL if protocol == 2 else RESP3_NULL
        fields: list[tuple[Reply, Reply]] = [
            (b"server", b"redis"),
            (b"version", REDIS_VERSION.encode()),
            (b"proto", protocol),
            (b"id", client.id),
            (b"mode", b"standalone"),
            (b"role", b"master"),
            (b"modules", []),
        ]
        return encode_map(fields, protocol), "OK"

    def _client(self, args: list[bytes], client: RespClient, inline: bool) -> Outcome:
        sub = args[1].upper()
        if sub == b"SETNAME" and len(args) == 3:
            return _set_name(client, args[2]) or (OK, "OK")
        if sub == b"GETNAME" and len(args) == 2:
            return (encode_bulk(client.name) if client.name else client.null), "OK"
        if sub == b"ID" and len(args) == 2:
            return encode_integer(client.id), "OK"
        if sub == b"INFO" and len(args) == 2:
            return encode_bulk(self._client_line(client)), "OK"
        if sub == b"LIST" and len(args) == 2:
            return encode_bulk(b"".join(self._client_line(each) for each in self.clients.values())), "OK"
        if sub == b"SETINFO" and len(args) == 4:
            attribute = args[2].upper()
            if attribute not in (b"LIB-NAME", b"LIB-VER"):
                return error(f"ERR Unrecognized option '{_text(args[2])}'")
            if any(byte not in CLIENT_NAME_CHARACTERS for byte in args[3]):
                return error(f"ERR {_text(args[2])} cannot contain spaces, newlines or special characters.")
            if attribute == b"LIB-NAME":
                client.library_name = args[3]
            else:
                client.library_version = args[3]
            return OK, "OK"
        if sub in (b"SETNAME", b"GETNAME", b"ID", b"INFO", b"LIST", b"SETINFO"):
            return arity_error(f"client|{_text(args[1]).lower()}")
        return error(f"ERR unknown subcommand '{_text(args[1])[:128]}'. Try CLIENT HELP.")

    def _client_line(self, client: RespClient) -> bytes:
        """A client as ``CLIENT INFO`` and ``CLIENT LIST`` show one, in Redis's field=value form."""
        age = int(time.monotonic() - client.connected_at)
        return b"id=%d addr=%s laddr=%s name=%b age=%d db=0 resp=%d lib-name=%b lib-ver=%b\n" % (
            client.id,
            client.address.encode(),
            client.local_address.encode(),
            client.name,
            age,
            client.protocol,
            client.library_name,
            client.library_version,
        )

    # --- introspection ------------------------------------------------------------------------------

    def _command(self, args: list[bytes], client: RespClient, inline: bool) -> Outcome:
        """``COMMAND``, ``COMMAND COUNT``, ``COMMAND INFO name...``, ``COMMAND LIST`` and ``COMMAND
        DOCS`` (an empty map: redis-cli 7 asks for it at start and then uses its built-in help)."""
        if len(args) == 1:
            return encode_reply([_command_entry(spec) for spec in _SPECS]), "OK"
        sub = args[1].upper()
        if sub == b"COUNT" and len(args) == 2:
            return encode_integer(len(_SPECS)), "OK"
        if sub == b"LIST" and len(args) == 2:
            return encode_reply([spec.name.encode() for spec in _SPECS]), "OK"
        if sub == b"DOCS":
            return encode_map([], client.protocol), "OK"
        if sub == b"INFO":
            specs = _SPECS if len(args) == 2 else [COMMANDS.get(name.upper()) for name in args[2:]]
            entries = (encode_reply(_command_entry(spec)) if spec else client.null for spec in specs)
            return b"*%d\r\n" % len(specs) + b"".join(entries), "OK"
        return error(f"ERR unknown subcommand '{_text(args[1])[:128]}'. Try COMMAND HELP.")

    def _info(self, args: list[bytes], client: RespClient, inline: bool) -> Outcome:
        """The sections asked for (all when none, ``all``, ``default`` or ``everything`` is), as Redis
        lays them out: ``# Title`` then ``field:value`` lines; an unknown section shows nothing."""
        sections = self._info_sections()
        wanted = {_text(arg).lower() for arg in args[1:]}
        if not wanted or wanted & {"all", "default", "everything"}:
            wanted = set(sections)
        text = "\r\n".join(
            f"# {title.capitalize()}\r\n" + "".join(f"{name}:{value}\r\n" for name, value in fields)
            for title, fields in sections.items()
            if title in wanted
        )
        return encode_bulk(text.encode()), "OK"

    def _info_sections(self) -> dict[str, list[tuple[str, object]]]:
        config = self._config
        uptime = int(time.time() - self._started)
        members = self._requests.reports.members()
        return {
            "server": [
                ("redis_version", REDIS_VERSION),
                ("redis_mode", "standalone"),  # not Redis Cluster's protocol: any node takes any key
                ("os", f"{platform.system()} {platform.release()} {platform.machine()}"),
                ("arch_bits", 64 if sys.maxsize > 2**32 else 32),
                ("process_id", os.getpid()),
                ("tcp_port", config.resp_port),
                ("uptime_in_seconds", uptime),
                ("uptime_in_days", uptime // 86400),
                ("kv_node_id", config.node_id),
            ],
            "clients": [("connected_clients", len(self.clients))],
            # Every node takes writes for any key (it coordinates them), which Redis calls a master.
            "replication": [("role", "master"), ("connected_slaves", 0)],
            "keyspace": [("db0", f"keys={self._requests.store.live_keys},expires=0,avg_ttl=0")],
            "kvstore": [
                ("node_id", config.node_id),
                ("members", ",".join(member.node_id for member in members)),
                ("members_up", sum(member.state is PeerState.UP for member in members)),
                ("replicas", config.n),
                ("read_quorum", config.read_quorum),
                ("write_quorum", config.write_quorum),
                ("fsync", "always" if config.fsync_always else "periodic"),
                ("protocol_port", config.port),
                ("note", "keys counts this node's replicas only, not the cluster's keys"),
            ],
        }

    def _config_command(self, args: list[bytes], client: RespClient, inline: bool) -> Outcome:
        """``CONFIG GET pattern...``: the parameters in ``CONFIG_PARAMETERS`` that match, as a flat
        list of names and values. Nothing can be set: the node is configured by KV_* variables."""
        sub = args[1].upper()
        if sub != b"GET":
            return error(
                f"ERR unknown subcommand '{_text(args[1])[:128]}'; only CONFIG GET is supported "
                "(the node is configured by its KV_* environment variables)"
            )
        if len(args) < 3:
            return arity_error("config|get")
        values = {
            "save": "",  # no snapshots
            "appendonly": "yes",  # every write reaches the store's log before its ack
            "appendfsync": "always" if self._config.fsync_always else "everysec",
            "databases": "1",
        }
        patterns = [_text(arg).lower() for arg in args[2:]]
        matched = [name for name in CONFIG_PARAMETERS if any(fnmatch.fnmatchcase(name, p) for p in patterns)]
        return encode_map([(name.encode(), values[name].encode()) for name in matched], client.protocol), "OK"


def _command_entry(spec: CommandSpec) -> list[Reply]:
    """A command as Redis 7's ``COMMAND`` lists it: name, arity, flags, first key, last key, step, and
    (empty here) ACL categories, tips, key specifications and subcommands."""
    flags: list[Reply] = [flag.encode() for flag in spec.flags]
    return [spec.name.encode(), spec.arity, flags, spec.first_key, spec.last_key, spec.step, [], [], [], []]


def _set_name(client: RespClient, name: bytes) -> Outcome | None:
    """Set the client's name (empty clears it); the error if the name holds a space or control byte."""
    if any(byte not in CLIENT_NAME_CHARACTERS for byte in name):
        return error("ERR Client names cannot contain spaces, newlines or special characters.")
    client.name = name
    return None


def _each(function: Callable[[bytes], T], keys: list[bytes]) -> list[T]:
    """``function(key)`` for every key, ``KEY_CONCURRENCY`` at once, results in key order. If any
    raised, the first such exception in key order is raised once all have finished."""
    if len(keys) == 1:
        return [function(keys[0])]
    results: dict[int, T] = {}
    failures: dict[int, Exception] = {}

    def run(index: int) -> None:
        try:
            results[index] = function(keys[index])
        except Exception as exc:  # kept, to be raised in key order below, rather than printed by gevent
            failures[index] = exc

    pool = gevent.pool.Pool(KEY_CONCURRENCY)
    for index in range(len(keys)):
        pool.spawn(run, index)
    pool.join()
    if failures:
        raise failures[min(failures)]
    return [results[index] for index in range(len(keys))]


def _is_integer(arg: bytes) -> bool:
    digits = arg[1:] if arg[:1] == b"-" else arg
    return digits.isdigit() and len(digits) <= 18


def _text(arg: bytes) -> str:
    return arg.decode("utf-8", errors="replace")
