"""The targets of ``kv bench``: one bench connection to the cluster or to Redis; the I/O shell.

What one "connection" is. A bench connection is one logical client that keeps ``--pipeline``
requests in flight: it runs that many greenlets ("lanes"), each sending one request and waiting for
its reply before sending the next. Against Redis a connection is one socket. Against our store it is
a ``Client`` of its own, so one multiplexed connection to each node, with the ``PrimaryOnly``
routing policy: every request goes to the primary replica of its key, as a token-aware client sends
it, so the cluster is measured as users drive it, through the public client API alone. With a
single-node cluster (the like-for-like comparison with one Redis) that is exactly one socket, too.
There is no failover, which would be work the Redis side does not do: a request for a node that is
down counts as an error, and the node is dialled again at most once a second (the reconnection
policy, as for Redis).
"""

from __future__ import annotations

from typing import NamedTuple, Protocol

from client import protocol, resp
from client.address import format_address, parse_address
from client.client import Client
from client.errors import KVError, NodeUnreachableError, ProtocolViolationError
from client.policies import PrimaryOnly
from client.security import NO_SECURITY, Security
from client.transport import ConnectionSlot, InOrder, PipelinedSocket, open_socket

CONNECT_TIMEOUT = 2.0
"""Seconds to open a connection (and, for our store, finish HELLO): generous, as a loaded host's
accept queue can be slow, and it is paid only at start and on a re-dial."""


class BenchError(Exception):
    """The benchmark cannot run (bad option, unreachable target); the message says why."""


class OpError(Exception):
    """An operation failed; ``kind`` is the error's code (TIMEOUT, UNAVAILABLE, ERR...)."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message


class BenchConnection(Protocol):
    def connect(self) -> None: ...

    def execute(self, op: str, key: bytes, value: bytes | None, timeout: float) -> bytes | None:
        """Run one op; a GET returns the value or None. Raises ``OpError``."""
        ...

    def read_back(self, key: bytes, timeout: float) -> bytes | None:
        """The key's value by the strongest read the target offers. Raises ``OpError``."""
        ...

    def close(self) -> None: ...


class ClusterFacts(NamedTuple):
    """What the options are checked against: the cluster's replication factor N and value limit."""

    replicas: int
    max_value_bytes: int


def cluster_facts(seeds: str, timeout: float, security: Security = NO_SECURITY) -> ClusterFacts:
    """N and the value size limit, asked of the cluster at the seed addresses through a ``Client``."""
    with Client(seeds, timeout=timeout, connect_timeout=CONNECT_TIMEOUT, client_name="kv-bench") as client:
        client.security = security
        try:
            return ClusterFacts(client.topology().n, client.limits.max_value_bytes)
        except KVError as exc:
            raise BenchError(f"cannot reach the cluster at {seeds}: {exc.message}") from None


class ClusterConnection:
    """A bench connection to the cluster: a ``Client`` that sends each request to its key's primary."""

    def __init__(
        self, seeds: str, r: int | None, w: int | None, timeout: float, security: Security = NO_SECURITY
    ) -> None:
        """``timeout`` is every request's: the ``Client``'s own, so ``execute`` takes the same value;
        ``security``: the user and TLS the connections use (each authenticates once, when it opens)."""
        self._client = Client(seeds, timeout=timeout, connect_timeout=CONNECT_TIMEOUT, client_name="kv-bench")
        self._client.routing = PrimaryOnly()
        self._client.security = security
        self._r = r
        self._w = w
        self._replicas = 0  # N, for the read-back; learnt on connect

    def connect(self) -> None:
        """Learn the ring and open the connection to every node now, so measurement pays no dial."""
        client = self._client
        try:
            topology = client.topology()
            for node in topology.nodes:
                client.call_node(client.node_address(node.node_id), protocol.Ping())
        except KVError as exc:
            raise OpError(exc.code, exc.message) from None
        self._replicas = topology.n

    def execute(self, op: str, key: bytes, value: bytes | None, timeout: float) -> bytes | None:
        client = self._client
        try:
            if op == "get":
                return client.get(key, r=self._r)
            if op == "put":
                assert value is not None
                client.put(key, value, w=self._w)
            else:
                client.delete(key, w=self._w)
        except KVError as exc:
            raise OpError(exc.code, exc.message) from None
        return None

    def read_back(self, key: bytes, timeout: float) -> bytes | None:
        try:
            return self._client.get(key, r=self._replicas)
        except KVError as exc:
            raise OpError(exc.code, exc.message) from None

    def close(self) -> None:
        self._client.close()


def dial_redis(host: str, port: int) -> PipelinedSocket[resp.Reply]:
    """One RESP2 socket to Redis, pipelined: replies come back in command order (``InOrder``).
    Raises ``KVError`` (UNREACHABLE, PROTOCOL, TIMEOUT) if it cannot be opened or is not Redis."""
    address = format_address(host, port)
    sock = open_socket(host, port, CONNECT_TIMEOUT, what="redis at ")
    redis: PipelinedSocket[resp.Reply] = PipelinedSocket(sock, address, InOrder(resp.ReplyParser()))
    reply = redis.call(resp.encode_command("PING"), CONNECT_TIMEOUT)
    if reply != "PONG":
        redis.close()
        raise ProtocolViolationError(f"{address} answered PING with {reply!r}: is it Redis?")
    return redis


class RedisConnection:
    """A bench connection to Redis: GET, SET and DEL over one pipelined socket (``dial_redis``)."""

    COMMANDS = {"get": b"GET", "put": b"SET", "delete": b"DEL"}

    def __init__(self, address: str) -> None:
        host, port = parse_address(address, default_port=6379)
        name = f"redis at {format_address(host, port)}"
        self._slot: ConnectionSlot[PipelinedSocket[resp.Reply]] = ConnectionSlot(lambda: dial_redis(host, port), name)

    def connect(self) -> None:
        self._open()

    def _open(self) -> PipelinedSocket[resp.Reply]:
        """The socket, dialled if need be, unless Redis failed so recently that the reconnection
        policy says to wait: then the request fails at once (a dead Redis costs a connect a second)."""
        try:
            return self._slot.get(dial_backing_off=False)
        except KVError as exc:
            raise OpError(exc.code, exc.message) from None

    def execute(self, op: str, key: bytes, value: bytes | None, timeout: float) -> bytes | None:
        name = self.COMMANDS[op]
        args = (name, key) if value is None else (name, key, value)
        command = resp.encode_command(*args)
        redis = self._open()
        try:
            reply = redis.call(command, timeout)
        except KVError as exc:
            if isinstance(exc, NodeUnreachableError):
                self._slot.failed()
            raise OpError(exc.code, exc.message) from None
        if isinstance(reply, resp.RespError):
            raise OpError(reply.kind, reply.message)
        if op == "get":
            if reply is not None and not isinstance(reply, bytes):
                raise OpError("PROTOCOL", f"GET answered with {type(reply).__name__}")
            return reply
        return None

    def read_back(self, key: bytes, timeout: float) -> bytes | None:
        return self.execute("get", key, None, timeout)

    def close(self) -> None:
        self._slot.close()
