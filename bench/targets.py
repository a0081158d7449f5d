"""The targets of ``kv bench``: one bench connection to the cluster or to Redis; the I/O shell.

What one "connection" is. A bench connection is one logical client that keeps ``--pipeline``
requests in flight: it runs that many greenlets ("lanes"), each sending one request and waiting for
its reply before sending the next. Against Redis a connection is one socket. Against our store it is
a small token-aware client: one multiplexed ``client.connection.Connection`` to each node, and every
request goes to the primary replica of its key (the first node of the key's preference list, from
``client.ring``), as ``Client`` routes it, so the cluster is measured as users drive it. With a
single-node cluster (the like-for-like comparison with one Redis) that is exactly one socket, too.
There is no failover: a request for a node that is down counts as an error, and the connection to
it is re-dialled at most once a second. ``Client`` itself is used only to discover the topology;
its per-request failover and routing bookkeeping would be work that the Redis side does not do.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from bench import resp
from client import protocol
from client.address import format_address, parse_address
from client.client import Client
from client.connection import Connection
from client.errors import KVError, NodeUnreachableError, ProtocolViolationError
from client.protocol import Status
from client.ring import Ring
from client.transport import ConnectionSlot, EndpointT, InOrder, PipelinedSocket, open_socket

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


def open_slot(slot: ConnectionSlot[EndpointT], name: str) -> EndpointT:
    """The slot's open connection, dialled if need be, unless the endpoint failed so recently that
    the reconnection policy says to wait: then the request fails at once, and a dead target costs
    one connect a second rather than one per request. Raises ``OpError``."""
    if slot.backing_off:
        raise OpError("UNREACHABLE", f"{name} is down; next dial within {slot.retry_in:.1f} s")
    try:
        return slot.get()
    except KVError as exc:
        raise OpError(exc.code, exc.message) from None


@dataclass(frozen=True)
class ClusterMap:
    """What a bench connection needs to route: the ring, each node's address, N and the limits."""

    ring: Ring
    addresses: dict[str, str]
    replicas: int
    max_value_bytes: int


def discover_cluster(seeds: str, timeout: float) -> ClusterMap:
    """The ring and node addresses, learnt through ``Client`` from the seed addresses, and the
    value size limit from a HELLO to the first node."""
    with Client(seeds, timeout=timeout, connect_timeout=CONNECT_TIMEOUT, client_name="kv-bench") as client:
        try:
            topology = client.topology()
            addresses = {node.node_id: client.node_address(node.node_id) for node in topology.nodes}
        except KVError as exc:
            raise BenchError(f"cannot reach the cluster at {seeds}: {exc.message}") from None
    host, port = parse_address(addresses[topology.nodes[0].node_id])
    probe = Connection(host, port, connect_timeout=CONNECT_TIMEOUT, client_name="kv-bench")
    try:
        hello = probe.connect()
    except KVError as exc:
        raise BenchError(f"cannot reach {host}:{port}: {exc.message}") from None
    finally:
        probe.close()
    ring = Ring([node.node_id for node in topology.nodes], topology.partitions)
    return ClusterMap(ring, addresses, topology.replicas, hello.max_value_bytes)


class ClusterConnection:
    """A token-aware bench connection: one multiplexed ``Connection`` per node, requests to primaries."""

    def __init__(self, cluster: ClusterMap, r: int | None, w: int | None) -> None:
        self._cluster = cluster
        self._r = r or protocol.DEFAULT_QUORUM
        self._w = w or protocol.DEFAULT_QUORUM
        self._nodes = {
            node_id: ConnectionSlot(self._dialler(address)) for node_id, address in cluster.addresses.items()
        }

    def _dialler(self, address: str) -> Callable[[], Connection]:
        host, port = parse_address(address)

        def dial() -> Connection:
            connection = Connection(host, port, connect_timeout=CONNECT_TIMEOUT, client_name="kv-bench")
            connection.connect()
            return connection

        return dial

    def connect(self) -> None:
        for node_id, slot in self._nodes.items():
            open_slot(slot, self._cluster.addresses[node_id])

    def _call(self, request: protocol.Get | protocol.Put | protocol.Delete, timeout: float) -> protocol.Frame:
        node_id = self._cluster.ring.primary(request.key)
        slot = self._nodes[node_id]
        connection = open_slot(slot, self._cluster.addresses[node_id])
        try:
            return connection.call(request, timeout=timeout)
        except KVError as exc:
            if isinstance(exc, NodeUnreachableError):
                slot.failed()
            raise OpError(exc.code, exc.message) from None

    def execute(self, op: str, key: bytes, value: bytes | None, timeout: float) -> bytes | None:
        if op == "get":
            frame = self._call(protocol.Get(key, self._r), timeout)
            return None if frame.code == Status.NOT_FOUND else protocol.decode_value(frame.body)[1]
        if op == "put":
            assert value is not None
            self._call(protocol.Put(key, value, self._w), timeout)
        else:
            self._call(protocol.Delete(key, self._w), timeout)
        return None

    def read_back(self, key: bytes, timeout: float) -> bytes | None:
        frame = self._call(protocol.Get(key, self._cluster.replicas), timeout)
        return None if frame.code == Status.NOT_FOUND else protocol.decode_value(frame.body)[1]

    def close(self) -> None:
        for slot in self._nodes.values():
            slot.close()


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
        self._name = f"redis at {format_address(host, port)}"
        self._slot: ConnectionSlot[PipelinedSocket[resp.Reply]] = ConnectionSlot(lambda: dial_redis(host, port))

    def connect(self) -> None:
        open_slot(self._slot, self._name)

    def execute(self, op: str, key: bytes, value: bytes | None, timeout: float) -> bytes | None:
        name = self.COMMANDS[op]
        args = (name, key) if value is None else (name, key, value)
        command = resp.encode_command(*args)
        redis = open_slot(self._slot, self._name)
        try:
            reply = redis.call(command, timeout)
        except KVError as exc:
            if isinstance(exc, NodeUnreachableError):
                self._slot.failed()
            raise OpError(exc.code, exc.message) from None
        if isinstance(reply, resp.ErrorReply):
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
