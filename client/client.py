"""The Client API: ``get``, ``put``, ``delete`` and ``pipeline()``, routed straight to a key's replicas.

On first use the client connects to its seed addresses, learns each seed's node id from HELLO, and
fetches the ring with TOPOLOGY. Where each request goes is the routing policy's choice
(``client.policies``). By default it goes to the first replica in the key's preference list (one hop,
like a token-aware driver); if that node cannot be reached, the request moves on to the next replica
and then to any other node, since every node can coordinate. A node that just failed is tried last
until the reconnection policy allows the next dial, so a dead node costs one failed connect, not one
per request.

Nodes advertise addresses valid inside their network (``node1:5000``); a client outside it reaches
them by the seed addresses it was given, so a seed's address always wins over the advertised one.

Arguments are checked before anything is sent: a key or value that is neither bytes nor str, a str
that is not valid UTF-8, a quorum that is not 1..N, a timeout that is not a positive number or an
unknown node id raises ``InvalidArgumentError`` (also a ``ValueError``) or ``InvalidArgumentTypeError``
(also a ``TypeError``), both ``BadRequestError``s, never an encoder's ``struct.error`` or
``UnicodeError``.
"""

from __future__ import annotations

import contextlib
import math
import operator
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, NamedTuple

import gevent
import gevent.pool
from gevent.event import AsyncResult

from client import protocol
from client.address import format_address, parse_address
from client.connection import Connection, Framing, check_reply
from client.errors import (
    AbandonedRequestError,
    AuthRequiredError,
    BadRequestError,
    ClockSkewError,
    ForbiddenError,
    InvalidArgumentError,
    InvalidArgumentTypeError,
    KeyTooLargeError,
    KVError,
    MembershipChangedError,
    NodeUnreachableError,
    NotAMemberError,
    RequestTimeoutError,
    ValueTooLargeError,
)
from client.policies import DEFAULT_RECONNECTION, Backoff, ReconnectionPolicy, ReplicasFirst, RoutingPolicy
from client.protocol import Frame, MemberView, RepairReply, Request, StatsReply, Status, TopologyReply, Version
from client.ring import Ring
from client.security import NO_SECURITY, Security
from client.transport import ConnectionSlot

SLOW_AFTER = 0.25
"""Seconds a node may leave requests unanswered, hearing nothing from it, before it counts as slow:
routed to last, like a node that failed, until it answers again. A node that accepts connections
but does not answer (paused, swapping) reveals itself no other way; a false alarm only sends a few
requests to another node, which can coordinate them as well."""
SPECULATIVE_READ_AFTER = 0.25
"""Seconds a GET waits for its node before it is also sent to the next one (speculative retry); the
first answer wins. Only reads are repeated: a write sent twice could be applied a second time
later, after a newer write of the same key, by a node that was paused while it sat in its queue."""
MEMBERSHIP_RETRIES = 7
"""Times a request is sent again after MEMBERSHIP_CHANGED from every node tried, each after a fresh
TOPOLOGY: views converge within a heartbeat or two (a second each), and a membership change moves
the epoch twice in a few seconds; seven tries spaced by ``MEMBERSHIP_RETRY_DELAY`` (doubling) cover
about six seconds, so a busy machine's late heartbeats still fit (a leave under load on a loaded
test machine lost one request in 600 to five tries)."""
MEMBERSHIP_RETRY_DELAY = 0.1
STALLED_GIVE_UP = 1.0
"""Seconds a write waits on a node that answers nothing at all (``Connection.stalled``) before it
fails with TIMEOUT rather than wait out the whole timeout: the node is paused or swapping, every
other request already goes around it, and a lane held for the full timeout would halve a client's
throughput for that long. The write may still be applied when the node wakes, as any write that
timed out may."""
DEFAULT_TIMEOUT = 5.0
"""Seconds to wait for a reply. Above a node's own request timeout (2 s), so the node's TIMEOUT or
UNAVAILABLE answer, with its numbers, arrives before the client gives up."""
DEFAULT_CONNECT_TIMEOUT = 1.0
REPAIR_TIMEOUT = 600.0
"""Seconds ``repair`` waits: a round compares every partition with every peer and may copy a lot."""
PIPELINE_CONCURRENCY = 256
"""Requests a pipeline keeps in flight at once; the rest wait, so a huge batch cannot exhaust sockets."""
MAX_CLIENT_NAME_BYTES = 255
"""HELLO carries the client's name after a one-byte length (PROTOCOL.md)."""

Key = bytes | str
Value = bytes | str


class NodeStatus(NamedTuple):
    node_id: str
    address: str
    up: bool


class NodeIdentity(NamedTuple):
    """Who the node at an address says it is (``Client.identify``)."""

    node_id: str  # from its HELLO
    cluster_id: str | None  # the cluster of the membership record it serves; None: it serves none
    # (not an accepted member of any cluster, or a node from before membership records)


class Limits(NamedTuple):
    """The largest key, value and frame the cluster accepts (from a node's HELLO), in bytes."""

    max_key_bytes: int
    max_value_bytes: int
    max_frame_bytes: int


def to_bytes(data: Key, what: str = "key") -> bytes:
    """A key or value as bytes: a ``str`` as UTF-8, a bytes-like object as it is.

    Raises ``InvalidArgumentTypeError`` for anything else (``bytes(5)`` would silently be five zero
    bytes) and ``InvalidArgumentError`` for a ``str`` UTF-8 cannot encode (a lone surrogate).
    """
    if isinstance(data, str):
        try:
            return data.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise InvalidArgumentError(
                f"{what} is not valid UTF-8 text ({exc.reason} at index {exc.start}); pass bytes instead"
            ) from None
    if isinstance(data, bytes | bytearray | memoryview):
        return bytes(data)
    raise InvalidArgumentTypeError(f"{what} must be bytes or str, not {type(data).__name__}")


def to_quorum(value: int | None, name: str) -> int:
    """The quorum byte a request carries for ``r`` or ``w``: ``None`` asks for the cluster's default
    (0 on the wire), an int must be 1 or more. The upper bound, N, is checked once the ring is known.
    Raises ``InvalidArgumentTypeError`` or ``InvalidArgumentError``."""
    if value is None:
        return protocol.DEFAULT_QUORUM
    if isinstance(value, bool):  # an int to Python, but r=True is a mistake, not 1
        raise InvalidArgumentTypeError(f"{name} must be an int or None, not bool")
    try:
        number = operator.index(value)
    except TypeError:
        raise InvalidArgumentTypeError(f"{name} must be an int or None, not {type(value).__name__}") from None
    if number < 1:
        raise InvalidArgumentError(f"{name}={number}: a request waits for 1 to N replicas, or None for the default")
    return number


def _check_seconds(value: float, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidArgumentTypeError(f"{name} must be a number of seconds, not {type(value).__name__}")
    if not (value > 0 and math.isfinite(value)):
        raise InvalidArgumentError(f"{name}={value}: must be a positive, finite number of seconds")
    return value


def split_addresses(nodes: str | Sequence[str]) -> list[str]:
    """``"a:1, b:2"`` or ``["a:1", "b:2"]`` as ``["a:1", "b:2"]``. Raises ``InvalidArgumentTypeError``
    for anything but a str or a sequence of str, and ``ValueError`` when no address is given."""
    if not isinstance(nodes, str) and not (
        isinstance(nodes, Sequence) and all(isinstance(item, str) for item in nodes)
    ):
        raise InvalidArgumentTypeError(
            f"nodes must be a str 'host:port,...' or a sequence of str, not {type(nodes).__name__}"
        )
    items = nodes.split(",") if isinstance(nodes, str) else list(nodes)
    addresses = [item.strip() for item in items if item.strip()]
    if not addresses:
        raise ValueError("no node addresses given")
    return addresses


class Client:
    """A cluster client. Cooperative under gevent; share one per program, not across OS threads.

    Two policies (``client.policies``) are attributes, to set before first use if the defaults do
    not suit: ``routing``, which nodes a request for a key goes to (``ReplicasFirst``), and
    ``reconnection``, how long a node that failed is left before it is dialled again. So is
    ``security`` (``client.security``): a user to authenticate as and TLS settings, for a cluster
    that asks for them::

        client = Client("node1:5000")
        client.security = Security.of(Credentials("alice", password), TlsSettings(ca="ca.crt"))
    """

    def __init__(
        self,
        nodes: str | Sequence[str],
        *,
        timeout: float = DEFAULT_TIMEOUT,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
        client_name: str = "kv-client",
        connection_factory: Callable[..., Connection] = Connection,
    ) -> None:
        try:
            self.seeds = [format_address(*parse_address(address)) for address in split_addresses(nodes)]
        except ValueError as exc:
            raise InvalidArgumentError(str(exc)) from None
        self.timeout = _check_seconds(timeout, "timeout")
        self.connect_timeout = _check_seconds(connect_timeout, "connect_timeout")
        if not isinstance(client_name, str):
            raise InvalidArgumentTypeError(f"client_name must be a str, not {type(client_name).__name__}")
        if len(to_bytes(client_name, "client_name")) > MAX_CLIENT_NAME_BYTES:
            raise InvalidArgumentError(f"client_name is longer than {MAX_CLIENT_NAME_BYTES} bytes in UTF-8")
        self.client_name = client_name
        self._connection_factory = connection_factory
        self.routing: RoutingPolicy = ReplicasFirst()
        self.reconnection: ReconnectionPolicy = DEFAULT_RECONNECTION
        self.security: Security = NO_SECURITY
        self._slots: dict[str, ConnectionSlot[Connection]] = {}
        self._topology: TopologyReply | None = None
        self._ring: Ring | None = None
        self._addresses: dict[str, str] = {}  # node id -> address reachable from here
        self._limits: Limits | None = None
        self._seen_timestamp = 0
        self.epoch = 0
        """The membership epoch of the ring this client routes by (0: none known, or an older cluster)."""
        self._stale = False  # a node said the membership moved on: refresh the ring before the next request

    # --- commands ---------------------------------------------------------------------------------

    def get(self, key: Key, *, r: int | None = None) -> bytes | None:
        """The key's value, or ``None`` if it does not exist. ``r``: replies to wait for, 1 to N
        (``None``: the cluster's R)."""
        frame = self._execute(protocol.Get(to_bytes(key), to_quorum(r, "r")))
        if frame.code == Status.NOT_FOUND:
            return None
        version, value = protocol.decode_value(frame.body)
        self._saw(version)
        return value

    def put(self, key: Key, value: Value, *, w: int | None = None) -> Version:
        """Store ``value`` under ``key``; returns the version it was stored with. ``w``: acks to wait
        for, 1 to N (``None``: the cluster's W)."""
        request = protocol.Put(to_bytes(key), to_bytes(value, "value"), to_quorum(w, "w"), self._seen_timestamp)
        return self._saw(protocol.decode_version(self._execute(request).body))

    def delete(self, key: Key, *, w: int | None = None) -> Version:
        """Delete ``key`` (a versioned tombstone); returns the tombstone's version."""
        request = protocol.Delete(to_bytes(key), to_quorum(w, "w"), self._seen_timestamp)
        return self._saw(protocol.decode_version(self._execute(request).body))

    def _saw(self, version: Version) -> Version:
        """Remember the highest timestamp seen. Every write carries it, and the coordinator stamps
        the write above it, so this client's writes are ordered after everything it has read or
        written, even when two of them go to different coordinators within one millisecond."""
        self._seen_timestamp = max(self._seen_timestamp, version.timestamp)
        return version

    def pipeline(self) -> Pipeline:
        """A batch of commands sent together: ``with client.pipeline() as p: p.put(..); p.execute()``."""
        return Pipeline(self)

    def topology(self) -> TopologyReply:
        """The cluster as the nodes describe it: N, R, W, partitions and every node's address."""
        self._ensure_topology()
        assert self._topology is not None
        return self._topology

    @property
    def limits(self) -> Limits:
        """The largest key, value and frame the cluster accepts; learnt on first use, like the ring."""
        self._ensure_topology()
        assert self._limits is not None
        return self._limits

    def where(self, key: Key) -> list[str]:
        """The addresses of the key's replicas, primary first."""
        return [self._addresses[node_id] for node_id in self._preference_list(to_bytes(key))]

    def status(self) -> list[NodeStatus]:
        """Every node, its address, and whether it answers PING now."""
        nodes = self.topology().nodes
        probes = [gevent.spawn(self._ping, self._addresses[node.node_id]) for node in nodes]
        gevent.joinall(probes)
        return [
            NodeStatus(node.node_id, self._addresses[node.node_id], bool(probe.value))
            for node, probe in zip(nodes, probes, strict=True)
        ]

    def members(self) -> tuple[str, list[MemberView]]:
        """The cluster as the first reachable node's failure detector sees it: that node's id, and
        every member's state (up, suspect, down), since when, and the hints held for it."""
        failures: list[KVError] = []
        self._ensure_topology()
        for address in dict.fromkeys([*self.seeds, *self._addresses.values()]):
            try:
                connection = self._connection(address)
                frame = connection.call(protocol.Members(), timeout=self.timeout)
            except NodeUnreachableError as exc:
                failures.append(exc)
                continue
            assert connection.hello is not None
            return connection.hello.node_id, protocol.decode_members_reply(frame.body)
        raise none_reachable(failures)

    def change_membership(
        self, request: protocol.ClusterJoin | protocol.ClusterLeave | protocol.ClusterRemove
    ) -> bytes:
        """Ask the first reachable node to make a membership change (join, leave, remove); the
        membership record that holds it (canonical JSON). Raises ``ChangeInProgressError`` while
        another change runs, ``BadRequestError`` for a change that cannot be made."""
        failures: list[KVError] = []
        self._ensure_topology()
        for address in dict.fromkeys([*self.seeds, *self._addresses.values()]):
            try:
                frame = self._connection(address).call(request, timeout=self.timeout)
            except NodeUnreachableError as exc:
                failures.append(exc)
                continue
            return protocol.decode_membership_reply(frame.body)
        raise none_reachable(failures)

    def identify(self, address: str) -> NodeIdentity:
        """Ask the node at ``address`` (``host:port``) who it is, on a connection of its own that
        tells it no epoch (``kv cluster join HOST:PORT`` asks a node that is no member of this
        cluster yet): its HELLO's node id, and the cluster id of the record it serves (TOPOLOGY).
        Raises ``InvalidArgumentError`` for a malformed address, ``NodeUnreachableError`` when
        nothing answers there, ``AuthFailedError`` when it refuses this client's user."""
        try:
            parse_address(address)
        except ValueError as exc:
            raise InvalidArgumentError(str(exc)) from None
        connection, hello = self._open(address)
        try:
            frame = connection.call(protocol.Topology(epoch=True), timeout=self.timeout)
            membership = protocol.decode_topology_reply(frame.body).membership
        except (NotAMemberError, BadRequestError):  # serves no cluster, or from before TOPOLOGY's epoch
            membership = None
        finally:
            connection.close()
        return NodeIdentity(hello.node_id, membership.cluster_id if membership is not None else None)

    def repair(self, node_id: str, *, timeout: float = REPAIR_TIMEOUT) -> RepairReply:
        """Run one anti-entropy round on ``node_id`` now, with all its peers, and wait for it."""
        address = self.node_address(node_id)
        frame = self._connection(address).call(protocol.Repair(), timeout=_check_seconds(timeout, "timeout"))
        return protocol.decode_repair_reply(frame.body)

    def stats(self, node_id: str) -> StatsReply:
        """Node ``node_id``'s figures (STATS): keys, disk, hints, recent requests, its view of the
        cluster, and the progress of its anti-entropy round."""
        frame = self._connection(self.node_address(node_id)).call(protocol.Stats(), timeout=self.timeout)
        return protocol.decode_stats_reply(frame.body)

    def close(self) -> None:
        for slot in self._slots.values():
            slot.close()
        self._slots.clear()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # --- routing ----------------------------------------------------------------------------------

    def node_address(self, node_id: str) -> str:
        """The address this client uses for ``node_id``; ``InvalidArgumentError`` if no node has that id."""
        self._ensure_topology()
        address = self._addresses.get(node_id) if isinstance(node_id, str) else None
        if address is None:
            raise InvalidArgumentError(f"unknown node id {node_id!r}; the nodes are {', '.join(self._addresses)}")
        return address

    def call_node(self, address: str, request: Request) -> Frame:
        """Send ``request`` to the node at ``address`` only, with no failover (admin and tests)."""
        if not isinstance(address, str):
            raise InvalidArgumentTypeError(f"address must be a str 'host:port', not {type(address).__name__}")
        try:
            parse_address(address)
        except ValueError as exc:
            raise InvalidArgumentError(str(exc)) from None
        return self._connection(address).call(request, timeout=self.timeout)

    def _execute(self, request: protocol.Get | protocol.Put | protocol.Delete) -> Frame:
        """Send ``request`` by the ring; when every node tried answers MEMBERSHIP_CHANGED (their views
        of the cluster are converging), refresh the ring and send it again, a few times. A node that
        answers so did nothing, so sending again is safe."""
        delay = MEMBERSHIP_RETRY_DELAY
        for _ in range(MEMBERSHIP_RETRIES):
            try:
                return self._execute_once(request)
            except MembershipChangedError:
                gevent.sleep(delay)
                delay *= 2
                self._stale = True
        return self._execute_once(request)

    def _execute_once(self, request: protocol.Get | protocol.Put | protocol.Delete) -> Frame:
        if self._ring is None or self._stale:  # _ensure_topology, inline on this path: it also learns the limits
            self.refresh_topology()
        self._check_limits(request)
        assert self._ring is not None and self._topology is not None
        plan = self.routing.plan(request.key, self._ring, self._topology.n, self._avoided)
        # The plan's addresses as of its ring: another greenlet may refresh the ring while this one
        # waits on a node, and a node the cluster dropped meanwhile is still tried here, then skipped.
        addresses = self._addresses
        if isinstance(request, protocol.Get) and len(plan) > 1:
            return self._read(request, plan, addresses)
        failures: list[KVError] = []
        for node_id in plan:
            slot = self._slot(addresses[node_id])
            reused = slot.usable
            try:
                connection = slot.get(dial_backing_off=self.routing.dials_backing_off)
            except NodeUnreachableError as exc:  # refused while backing off, or a failed dial (the slot counts it)
                failures.append(exc)
                continue
            try:
                return connection.call(request, self.timeout, stalled_after=STALLED_GIVE_UP)
            except AbandonedRequestError as exc:
                # Sent, then given up on with the node silent: it may still apply the write when it
                # wakes, so another coordinator must not apply it too (the late copy would be stamped
                # after, and overwrite, whatever this client writes next to the key).
                slot.failed()
                raise RequestTimeoutError(f"{exc.message}; the write may still be applied") from None
            except NodeUnreachableError as exc:
                failure = exc
                if reused and not connection.is_open:
                    # The node may have closed this connection while it sat unused (its idle
                    # timeout, or a restart), unseen until now: dial it once more before moving on.
                    try:
                        return slot.get().call(request, self.timeout, stalled_after=STALLED_GIVE_UP)
                    except NodeUnreachableError as again:
                        failure = again
                slot.failed()
                failures.append(failure)
            except ClockSkewError as exc:  # this coordinator's clock is off, and it wrote nothing: try another
                failures.append(exc)
            except MembershipChangedError as exc:  # its view is changing, and it did nothing: try another
                self._stale = True
                failures.append(exc)
        raise _retry_or_unreachable(failures)

    def _read(self, request: protocol.Get, plan: Sequence[str], addresses: Mapping[str, str]) -> Frame:
        """A GET sent to the plan's nodes (at ``addresses``) in turn: to the next one when the last
        failed, or has not answered within ``SPECULATIVE_READ_AFTER``; the first answer wins
        (speculative retry)."""
        deadline = time.monotonic() + self.timeout
        nodes = iter([addresses[node_id] for node_id in plan])
        waiting: dict[AsyncResult, str] = {}  # a reply due -> its node's address
        failures: list[KVError] = []
        more = self._send_to_next(nodes, request, waiting, failures)
        # Each turn sends to one more node, takes one reply, or waits SPECULATIVE_READ_AFTER: bounded.
        for _ in range(2 * len(plan) + int(self.timeout / SPECULATIVE_READ_AFTER) + 2):
            if not waiting:
                if not more:
                    break
                more = self._send_to_next(nodes, request, waiting, failures)
                continue
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            patience = min(remaining, SPECULATIVE_READ_AFTER) if more else remaining
            ready = gevent.wait(list(waiting), timeout=patience, count=1)
            if not ready:  # slow: ask the next node too; the slow one's answer still counts
                if more:
                    more = self._send_to_next(nodes, request, waiting, failures)
                continue
            address = waiting.pop(ready[0])
            try:
                return check_reply(ready[0].get())
            except NodeUnreachableError as exc:
                self._slots[address].failed()
                failures.append(exc)
            except MembershipChangedError as exc:
                self._stale = True
                failures.append(exc)
                if not waiting and not more:
                    raise
        if waiting:
            raise RequestTimeoutError(f"no reply within {self.timeout:g} s from {', '.join(waiting.values())}")
        raise _retry_or_unreachable(failures)

    def _send_to_next(
        self, nodes: Iterator[str], request: Request, waiting: dict[AsyncResult, str], failures: list[KVError]
    ) -> bool:
        """Send ``request`` to the next address of ``nodes`` that can be reached, adding its reply to
        ``waiting``; ``False`` when no node is left."""
        for address in nodes:
            try:
                waiting[self._connection_for(address).send(request)] = address
            except NodeUnreachableError as exc:
                failures.append(exc)
                continue
            return True
        return False

    def _connection_for(self, address: str) -> Connection:
        """The open connection to ``address``, dialled if the routing policy allows it while the node
        is backing off; raises ``NodeUnreachableError`` (a failed dial counts in the slot)."""
        return self._slot(address).get(dial_backing_off=self.routing.dials_backing_off)

    def _avoided(self, node_id: str) -> bool:
        """Whether requests should try the node last: it failed so recently that the reconnection
        policy would rather wait, or it leaves requests unanswered (``SLOW_AFTER``)."""
        slot = self._slots.get(self._addresses[node_id])
        if slot is None:
            return False
        if slot.backing_off:
            return True
        connection = slot.connection
        return connection is not None and connection.stalled(SLOW_AFTER)

    def _preference_list(self, key: bytes) -> list[str]:
        self._ensure_topology()
        assert self._ring is not None and self._topology is not None
        return self._ring.preference_list(key, self._topology.n)

    def _check_limits(self, request: protocol.Get | protocol.Put | protocol.Delete) -> None:
        """Refuse a quorum above N and oversize keys and values here: sent, they would only come back
        as errors, and a quorum or key too large for its field could not even be encoded."""
        limits, topology = self._limits, self._topology
        if limits is None or topology is None:
            return
        if request.quorum > topology.n:
            name = "r" if isinstance(request, protocol.Get) else "w"
            raise InvalidArgumentError(
                f"{name}={request.quorum} exceeds N={topology.n}: a request waits for 1 to {topology.n} replicas, "
                "or None for the default"
            )
        if len(request.key) > limits.max_key_bytes:
            raise KeyTooLargeError(f"key of {len(request.key)} bytes exceeds the limit of {limits.max_key_bytes}")
        if isinstance(request, protocol.Put) and len(request.value) > limits.max_value_bytes:
            raise ValueTooLargeError(
                f"value of {len(request.value)} bytes exceeds the limit of {limits.max_value_bytes}"
            )

    def _ensure_topology(self) -> None:
        if self._ring is None:
            self.refresh_topology()

    def refresh_topology(self) -> None:
        """Connect to the seeds, learn their node ids, and fetch the ring from the first that answers."""
        probes = [gevent.spawn(_capture, (self._connection, (address,), {})) for address in self.seeds]
        outcomes = [probe.get() for probe in probes]
        failures = [outcome for outcome in outcomes if isinstance(outcome, KVError)]
        reachable = [outcome for outcome in outcomes if isinstance(outcome, Connection)]
        if not reachable:
            raise none_reachable(failures)
        try:
            frame = reachable[0].call(protocol.Topology(epoch=True), timeout=self.timeout)
        except BadRequestError:  # a node from before membership records: the reply without the epoch
            frame = reachable[0].call(protocol.Topology(), timeout=self.timeout)
        topology = protocol.decode_topology_reply(frame.body)
        addresses = {node.node_id: node.address for node in topology.nodes}
        for connection in reachable:
            assert connection.hello is not None
            addresses[connection.hello.node_id] = connection.address
        self._topology = topology
        epoch = topology.membership.epoch if topology.membership is not None else 0
        if epoch != self.epoch:
            self.epoch = epoch
            for slot in self._slots.values():  # each open connection's node learns the new epoch
                open_connection = slot.connection
                if open_connection is not None and open_connection.is_open:
                    with contextlib.suppress(KVError):
                        open_connection.send(protocol.Epoch(epoch))  # the reply is not waited for
        self._stale = False
        self._ring = Ring([node.node_id for node in topology.nodes], topology.partitions)
        self._addresses = addresses
        hello = reachable[0].hello
        assert hello is not None  # a connection is returned only once HELLO succeeded
        self._limits = Limits(hello.max_key_bytes, hello.max_value_bytes, hello.max_frame_bytes)

    def _connection(self, address: str) -> Connection:
        """An open connection to ``address``, connecting once even when many greenlets ask at once."""
        return self._slot(address).get()

    def _slot(self, address: str) -> ConnectionSlot[Connection]:
        slot = self._slots.get(address)
        if slot is None:
            slot = self._slots[address] = ConnectionSlot(
                lambda: self._dial(address), address, Backoff(self.reconnection)
            )
        return slot

    def _dial(self, address: str) -> Connection:
        connection, _ = self._open(address)
        self._tell_epoch(connection)
        return connection

    def _open(self, address: str) -> tuple[Connection, protocol.HelloReply]:
        """A new connection to ``address``, connected (HELLO, and authentication if configured),
        and the node's HELLO reply."""
        host, port = parse_address(address)
        connection = self._connection_factory(
            host,
            port,
            connect_timeout=self.connect_timeout,
            client_name=self.client_name,
            framing=Framing(security=self.security),
        )
        return connection, connection.connect()

    def _tell_epoch(self, connection: Connection) -> None:
        """Tell a new connection's node which membership epoch this client routes by (EPOCH), so it
        can answer MEMBERSHIP_CHANGED once it moves on; a node with a newer one makes the client
        refresh its ring. ``NotAMemberError`` (the connection closed) if the node is not an accepted
        member: it coordinates nothing, and its HELLO's node id is not to be believed."""
        try:
            frame = connection.call(protocol.Epoch(self.epoch), timeout=self.timeout)
        except NotAMemberError:
            connection.close()
            raise
        except (BadRequestError, ForbiddenError, AuthRequiredError):
            return  # a node from before EPOCH; or no user yet, which the first request reports
        if protocol.decode_epoch_reply(frame.body) > self.epoch and self._topology is not None:
            self._stale = True

    def _ping(self, address: str) -> bool:
        try:
            self._connection(address).call(protocol.Ping(), timeout=self.connect_timeout)
        except KVError:
            return False
        return True


class Pipeline:
    """Commands queued with ``get``/``put``/``delete`` and sent concurrently by ``execute``."""

    def __init__(self, client: Client) -> None:
        self._client = client
        self._commands: list[tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any]]] = []

    # Arguments are checked as each command is queued, so a bad one raises at the line that passed it.

    def get(self, key: Key, *, r: int | None = None) -> Pipeline:
        to_quorum(r, "r")
        self._commands.append((self._client.get, (to_bytes(key),), {"r": r}))
        return self

    def put(self, key: Key, value: Value, *, w: int | None = None) -> Pipeline:
        to_quorum(w, "w")
        self._commands.append((self._client.put, (to_bytes(key), to_bytes(value, "value")), {"w": w}))
        return self

    def delete(self, key: Key, *, w: int | None = None) -> Pipeline:
        to_quorum(w, "w")
        self._commands.append((self._client.delete, (to_bytes(key),), {"w": w}))
        return self

    def __len__(self) -> int:
        return len(self._commands)

    def execute(self, *, raise_on_error: bool = True) -> list[Any]:
        """Each command's result in order. With ``raise_on_error=False`` failures are returned
        as exception objects instead of raising the first one."""
        commands, self._commands = self._commands, []
        self._client._ensure_topology()
        results = list(gevent.pool.Pool(PIPELINE_CONCURRENCY).imap(_capture, commands))
        if raise_on_error:
            for result in results:
                if isinstance(result, KVError):
                    raise result
        return results

    def __enter__(self) -> Pipeline:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._commands.clear()


def none_reachable(failures: Sequence[KVError]) -> KVError:
    """The error when no node could take a request, listing why each failed: the failures' own kind
    when they all are of one (every node refused with TOO_MANY_CONNECTIONS, AUTH_FAILED, or TLS),
    CLOCK_SKEW when a coordinator refused for its clock (the request was fine, but no node with a
    trusted clock could be reached), else UNREACHABLE."""
    message = "no node reachable: " + "; ".join(failure.message for failure in failures)
    kinds = {type(failure) for failure in failures}
    if len(kinds) == 1:
        (kind,) = kinds
        return kind(message)
    if any(isinstance(failure, ClockSkewError) for failure in failures):
        return ClockSkewError(message)
    return NodeUnreachableError(message)


def _retry_or_unreachable(failures: Sequence[KVError]) -> KVError:
    """What a request every node of its plan failed raises: ``MembershipChangedError`` if some node
    said its view is converging (the others failed too: one that has just left the cluster answers
    NOT_A_MEMBER, say), which ``_execute`` retries with a fresh ring a bounded few times; otherwise
    ``none_reachable``."""
    changed = [failure for failure in failures if isinstance(failure, MembershipChangedError)]
    return changed[-1] if changed else none_reachable(failures)


def _capture(command: tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any]]) -> Any:
    function, args, kwargs = command
    try:
        return function(*args, **kwargs)
    except KVError as exc:
        return exc
