"""What each request means: one decoded request in, one encoded reply out.

``RequestHandler`` holds no connection state and sees no sockets (``server`` owns those). Each op is
one case in ``_run``: client GET, PUT and DELETE go to the coordinator; replica reads and writes,
hints, digests and listings go to this node's ``LocalStore``; REPAIR runs an anti-entropy round;
MEMBERS and STATS are this node's reports on itself (``NodeReports``); CLUSTER_JOIN, CLUSTER_LEAVE
and CLUSTER_REMOVE make a membership change (``changes``, which the node sets); USER_SET and USERS change and
list the node's users (``Authenticator``). Who may send which op is the server's check, not this.
Refusals (an oversize key or value, an impossible quorum, a partition out of range, a replica read
while this node's store is full or catching up) are ``RequestError``s with the status to send; a
store with no room answers STORAGE_FULL, a timestamp too far ahead CLOCK_SKEW; every failure
becomes an error reply, so a bad request costs one reply, never the connection.
"""

from __future__ import annotations

from collections.abc import Callable

from client import protocol
from client.protocol import Status
from service.anti_entropy import AntiEntropy
from service.authentication import Authenticator
from service.config import Config
from service.coordinator import Coordinator
from service.local_store import LocalStore, listing_page_bytes, records_page_bytes
from service.membership import ClusterRecord
from service.membership import encode as encode_record
from service.membership_view import MembershipView
from service.node_stats import NodeReports
from service.quorum import QuorumFailure, resolve_quorum
from service.storage import StorageError, StorageFull
from service.versioning import ClockSkew


class RequestError(Exception):
    """A request the node refuses, with the status and message to send back."""

    def __init__(self, status: Status, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class RequestHandler:
    """Turns one decoded request into its reply frame. Holds no connection state.

    ``config`` gives the limits checked and advertised (HELLO), the ring's shape (TOPOLOGY) and the
    default R and W; ``reports`` gives this node's view of the cluster (MEMBERS) and its figures (STATS).
    """

    def __init__(
        self,
        config: Config,
        coordinator: Coordinator,
        store: LocalStore,
        anti_entropy: AntiEntropy,
        reports: NodeReports,
    ) -> None:
        self.coordinator = coordinator
        self.store = store
        self.anti_entropy = anti_entropy
        self.reports = reports
        self.hello = protocol.HelloReply(
            protocol.PROTOCOL_VERSION,
            config.node_id,
            config.max_key_bytes,
            config.max_value_bytes,
            config.max_frame_bytes,
        )
        self._hello_body = protocol.encode_hello_reply(self.hello)
        self._listing_limit = listing_page_bytes(config.max_frame_bytes)  # a page must fit one frame
        self._shape = (config.n, config.read_quorum, config.write_quorum)
        self._cluster = config.cluster
        self._records_limit = records_page_bytes(config.max_frame_bytes)
        self.n = config.n
        self._members = frozenset(node.node_id for node in config.cluster)
        self.read_quorum = config.read_quorum
        self.write_quorum = config.write_quorum
        self.accounts: Authenticator | None = None
        """The node's users, for USER_SET and USERS (the node sets it; ``None``: it has none)."""
        self.changes: (
            Callable[[protocol.ClusterJoin | protocol.ClusterLeave | protocol.ClusterRemove], ClusterRecord] | None
        ) = None
        """Has a membership change made (by the claimant, perhaps another node) and returns the new
        record (the node sets it); raises ``RequestError`` (CHANGE_IN_PROGRESS, BAD_REQUEST; UNAVAILABLE
        or TIMEOUT when the claimant did not answer) when it may not be made."""
        self.stream_done: Callable[[int, str], None] | None = None
        """Hears STREAM_DONE (the node sets it); ``OSError`` if it cannot record it."""
        self.membership: MembershipView | None = None
        """The node's membership view (the node sets it): IDENTIFY, MEMBERSHIP, EPOCH and TOPOLOGY
        answer from it, and while it names a problem GET, PUT and DELETE are refused with it."""

    @property
    def epoch(self) -> int:
        """The membership epoch of the ring this node serves (0 without a membership view)."""
        return self.membership.serving.epoch if self.membership is not None else 0

    def epoch_moved(self, request_id: int, client_epoch: int) -> bytes:
        """MEMBERSHIP_CHANGED for a client that said it routes by ``client_epoch`` (EPOCH)."""
        return protocol.encode_error(
            request_id,
            Status.MEMBERSHIP_CHANGED,
            f"the cluster's membership moved from epoch {client_epoch} to {self.epoch}; refresh the topology and retry",
        )

    def _check_membership(self, *, changing_ok: bool = False) -> None:
        """``RequestError`` while this node may not coordinate (``MembershipView.problem``);
        ``changing_ok``: only if it is not an accepted member (TOPOLOGY is the remedy for a change)."""
        membership = self.membership
        problem = membership.problem if membership is not None else None
        if problem is not None and not (changing_ok and problem[0] is Status.MEMBERSHIP_CHANGED):
            raise RequestError(*problem)

    def reply(self, request_id: int, request: protocol.Request, *, inline: bool = False) -> bytes:
        """The encoded reply; every failure becomes an error reply, never an exception, except
        ``MustWait``: with ``inline`` (the session's reading greenlet, which must not block) a read
        that turns out to need another node raises it, and the session runs it in a greenlet."""
        try:
            status, body = self._run(request, inline)
        except RequestError as exc:
            return protocol.encode_error(request_id, exc.status, exc.message)
        except QuorumFailure as exc:
            return protocol.encode_error(request_id, exc.status, exc.message, exc.acked, exc.required)
        except ClockSkew as exc:
            return protocol.encode_error(request_id, Status.CLOCK_SKEW, str(exc))
        except StorageFull as exc:
            return protocol.encode_error(request_id, Status.STORAGE_FULL, str(exc))
        except StorageError as exc:
            return protocol.encode_error(request_id, Status.INTERNAL_ERROR, str(exc))
        return protocol.encode_response(request_id, status, body)

    def _run(self, request: protocol.Request, inline: bool) -> tuple[Status, bytes]:
        match request:
            case protocol.Get(key, quorum):
                self._check_membership()
                self.check_key(key)
                record = self.coordinator.get(key, self._quorum(quorum, self.read_quorum, "R"), wait=not inline)
                if record is None or record.value is None:
                    return Status.NOT_FOUND, b""
                return Status.OK, protocol.encode_value(record.version, record.value)
            case protocol.Put(key, value, quorum, after):
                self._check_membership()
                self.check_key(key)
                self.check_value(value)
                version = self.coordinator.put(key, value, self._quorum(quorum, self.write_quorum, "W"), after)
                return Status.OK, protocol.encode_version(version)
            case protocol.Delete(key, quorum, after):
                self._check_membership()
                self.check_key(key)
                version = self.coordinator.delete(key, self._quorum(quorum, self.write_quorum, "W"), after)
                return Status.OK, protocol.encode_version(version)
            case protocol.ReplicaGet(key, behind_ok):
                self.check_key(key)
                if not behind_ok and not self.store.readable_alone:
                    raise RequestError(
                        Status.REPLICA_BEHIND,
                        f"{self.hello.node_id}: {self.store.state_description()}; "
                        "its store may lack acknowledged writes, ask another replica",
                    )
                if not behind_ok and self.store.arriving_key(key):
                    raise RequestError(
                        Status.PARTITION_NOT_HERE,
                        f"{self.hello.node_id}: the key's partition is still streaming in; ask another replica",
                    )
                stored = self.store.read(key)
                if stored is None:
                    if not behind_ok and not self._owns(key):
                        # A coordinator on another ring (a change not spread yet, or this node gave
                        # the key away): this node's NOT_FOUND would say nothing about the key.
                        raise RequestError(
                            Status.PARTITION_NOT_HERE,
                            f"{self.hello.node_id} does not own this key at epoch {self.epoch}; ask another replica",
                        )
                    return Status.NOT_FOUND, b""
                return Status.OK, protocol.encode_record(stored)
            case protocol.ReplicaPut(key, record):
                self.check_key(key)
                if record.value is not None:
                    self.check_value(record.value)
                return Status.OK, protocol.encode_replica_put_reply(self.store.write(key, record))
            case protocol.HintedPut(key, record, owner, epoch):
                self.check_key(key)
                if record.value is not None:
                    self.check_value(record.value)
                members = self._members if self.membership is None else self.membership.record.node_ids
                # A member of a newer epoch than this node holds (a node just admitted; gossip brings
                # it here within a heartbeat or two, and hinted handoff then delivers).
                newer = self.membership is not None and epoch > self.membership.record.epoch
                if owner == self.hello.node_id or (owner not in members and not newer):
                    # Nobody would ever take it: it would sit on disk for the whole hint window.
                    raise RequestError(Status.BAD_REQUEST, f"a hint for {owner!r}, which is not another member")
                self.store.write_hint(key, record, owner)
                return Status.OK, b""
            case protocol.Digests(partitions):
                self._check_partitions(partitions)
                return Status.OK, protocol.encode_digests_reply(self.store.digests(partitions))
            case protocol.PartitionKeys(partition, cursor):
                self._check_partitions((partition,))
                page = self.store.partition_keys(partition, cursor, self._listing_limit)
                return Status.OK, protocol.encode_partition_keys_reply(page)
            case protocol.PartitionRecords(partition, cursor):
                self._check_partitions((partition,))
                records = self.store.partition_records_page(partition, cursor, self._records_limit)
                return Status.OK, protocol.encode_partition_records_reply(records)
            case protocol.Repair():
                return Status.OK, protocol.encode_repair_reply(self.anti_entropy.run_round().reply())
            case protocol.Members():
                return Status.OK, protocol.encode_members_reply(self.reports.members())
            case protocol.Stats():
                return Status.OK, protocol.encode_stats_reply(self.reports.stats())
            case protocol.Ping(membership):
                held = self.membership.version() if membership and self.membership is not None else None
                reply = protocol.PingReply(self.coordinator.clock.physical_now(), self.store.flags, held)
                return Status.OK, protocol.encode_ping_reply(reply)
            case protocol.Topology(with_epoch):
                self._check_membership(changing_ok=True)
                return Status.OK, self._topology(with_epoch)
            case protocol.Identify(sender):
                if self.membership is None:
                    raise RequestError(Status.BAD_REQUEST, "this node keeps no membership record")
                return Status.OK, protocol.encode_identify_reply(self.membership.identify(sender))
            case protocol.MembershipRecord():
                if self.membership is None:
                    raise RequestError(Status.BAD_REQUEST, "this node keeps no membership record")
                return Status.OK, protocol.encode_membership_reply(encode_record(self.membership.record))
            case protocol.ClusterJoin() | protocol.ClusterLeave() | protocol.ClusterRemove():
                if self.changes is None:
                    raise RequestError(Status.BAD_REQUEST, "this node makes no membership changes")
                return Status.OK, protocol.encode_membership_reply(encode_record(self.changes(request)))
            case protocol.StreamDone(epoch, node_id):
                if self.stream_done is not None:
                    try:
                        self.stream_done(epoch, node_id)
                    except OSError as exc:  # the receiver sends it again until the change ends
                        raise RequestError(Status.INTERNAL_ERROR, f"cannot record STREAM_DONE: {exc}") from None
                return Status.OK, b""
            case protocol.Epoch():
                self._check_membership(changing_ok=True)
                return Status.OK, protocol.encode_epoch_reply(self.epoch)
            case protocol.Hello():
                return self.negotiate(request)
            case protocol.UserSet():
                try:
                    applied = self.accounts is not None and self.accounts.set_user(request)
                except ValueError as exc:
                    raise RequestError(Status.BAD_REQUEST, str(exc)) from None
                except OSError as exc:
                    raise RequestError(Status.INTERNAL_ERROR, f"cannot record the change: {exc}") from None
                if self.accounts is None:
                    raise RequestError(Status.BAD_REQUEST, "this node has no users (KV_USERS_FILE is not set)")
                return Status.OK, protocol.encode_user_set_reply(applied)
            case protocol.Users():
                users = self.accounts.list_users() if self.accounts is not None else []
                return Status.OK, protocol.encode_users_reply(users)
        raise RequestError(Status.BAD_REQUEST, f"unsupported request {type(request).__name__}")

    def _topology(self, with_epoch: bool) -> bytes:
        """TOPOLOGY's reply: the ring this node serves, from its membership record (with its epoch,
        cluster id and member states if asked)."""
        n, r, w = self._shape
        if self.membership is None:
            reply = protocol.TopologyReply(n, r, w, self.store.partitions, self._cluster)
            return protocol.encode_topology_reply(reply)
        record = self.membership.serving
        nodes = tuple(protocol.NodeAddress(m.node_id, m.host, m.port) for m in record.members)
        extra = None
        if with_epoch:
            states = tuple(protocol.MemberStateCode[m.state.name] for m in record.members)
            extra = protocol.TopologyMembership(record.epoch, record.cluster_id, states)
        return protocol.encode_topology_reply(protocol.TopologyReply(n, r, w, record.partitions, nodes, extra))

    def _owns(self, key: bytes) -> bool:
        """Whether this node holds ``key`` by the ring it serves: one of its N replicas, or a
        pending owner while a change moves its partition."""
        placement = self.coordinator.placement
        node_id = self.hello.node_id
        return node_id in placement.preference_list(key) or node_id in placement.pending_owners(key)

    def negotiate(self, hello: protocol.Hello) -> tuple[Status, bytes]:
        if hello.min_version <= protocol.PROTOCOL_VERSION <= hello.max_version:
            return Status.OK, self._hello_body
        raise RequestError(
            Status.UNSUPPORTED_VERSION,
            f"this node speaks protocol version {protocol.PROTOCOL_VERSION}; "
            f"the client offered {hello.min_version}-{hello.max_version}",
        )

    def _quorum(self, requested: int, default: int, name: str) -> int:
        try:
            return resolve_quorum(requested, default, self.n, name)
        except ValueError as exc:
            raise RequestError(Status.BAD_REQUEST, str(exc)) from None

    def _check_partitions(self, partitions: tuple[int, ...]) -> None:
        limit = self.store.partitions
        if any(partition >= limit for partition in partitions):
            raise RequestError(Status.BAD_REQUEST, f"partitions are numbered 0 to {limit - 1}")

    def check_key(self, key: bytes) -> None:
        """``RequestError(KEY_TOO_LARGE)`` for a key over ``KV_MAX_KEY_BYTES`` (the Redis port's too)."""
        if len(key) > self.hello.max_key_bytes:
            raise RequestError(
                Status.KEY_TOO_LARGE, f"key of {len(key)} bytes exceeds the limit of {self.hello.max_key_bytes}"
            )

    def check_value(self, value: bytes) -> None:
        """``RequestError(VALUE_TOO_LARGE)`` for a value over ``KV_MAX_VALUE_BYTES``."""
        if len(value) > self.hello.max_value_bytes:
            raise RequestError(
                Status.VALUE_TOO_LARGE,
                f"value of {len(value)} bytes exceeds the limit of {self.hello.max_value_bytes}",
            )
