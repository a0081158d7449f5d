"""Exceptions a client sees, and the one table that maps wire status codes to them."""

from __future__ import annotations

from client.protocol import ErrorReply, Frame, ProtocolError, Status, decode_error


class KVError(Exception):
    """Base of every error this package raises. ``code`` is the name printed as ``ERROR <CODE>``."""

    code = "ERROR"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class BadRequestError(KVError):
    code = "BAD_REQUEST"


class InvalidArgumentError(BadRequestError, ValueError):
    """The client refused an argument before sending anything: a quorum out of range, a ``str``
    that is not valid UTF-8, an unknown node id. Also a ``ValueError``, as Python code expects."""


class InvalidArgumentTypeError(BadRequestError, TypeError):
    """The client refused an argument of the wrong type (a key that is neither bytes nor str, a
    quorum that is not an int). Also a ``TypeError``, as Python code expects."""


class KeyTooLargeError(KVError):
    code = "KEY_TOO_LARGE"


class ValueTooLargeError(KVError):
    code = "VALUE_TOO_LARGE"


class FrameTooLargeError(KVError):
    code = "FRAME_TOO_LARGE"


class UnsupportedVersionError(KVError):
    code = "UNSUPPORTED_VERSION"


class ClockSkewError(KVError):
    """A timestamp in the request, or a version the key already holds, is further ahead of the
    node's clock than the cluster's maximum clock offset allows."""

    code = "CLOCK_SKEW"


class StorageFullError(KVError):
    """The node's store cannot take writes: its disk, or its storage limit, is full."""

    code = "STORAGE_FULL"


class ReplicaBehindError(KVError):
    """A replica read was refused: the node's store may lack acknowledged writes (it is full, or the
    writes held for it meanwhile have not all arrived). Nodes send it to each other; a coordinator
    asks another replica."""

    code = "REPLICA_BEHIND"


class PartitionNotHereError(KVError):
    """A replica read was refused for this key alone: the node does not hold the key's partition
    whole (it does not own it by the ring it serves, or the partition is still streaming in after a
    removal), so its NOT_FOUND would say nothing. Nodes send it to each other; a coordinator asks
    another replica, and still reads the node's other keys."""

    code = "PARTITION_NOT_HERE"


class QuorumError(KVError):
    """Too few replicas answered: ``acked`` of the ``required`` replies came back."""

    def __init__(self, message: str, acked: int = 0, required: int = 0) -> None:
        super().__init__(message)
        self.acked = acked
        self.required = required


class UnavailableError(QuorumError):
    code = "UNAVAILABLE"


class RequestTimeoutError(QuorumError):
    code = "TIMEOUT"


class InternalServerError(KVError):
    code = "INTERNAL_ERROR"


class NodeUnreachableError(KVError):
    """No connection could be made or kept to a node (raised by the client, not sent by a node)."""

    code = "UNREACHABLE"


class AbandonedRequestError(NodeUnreachableError):
    """The client reset a connection to a node that answered nothing (paused, swapping) while this
    request was on it. For routing the node is unreachable, and a read goes to another replica. A
    write is not sent elsewhere: its bytes left this host and may still be applied when the node
    wakes (a proxy or load balancer in between may already hold them), after a newer write of the
    same key; the caller learns it failed, and that its outcome is unknown."""


class TooManyConnectionsError(NodeUnreachableError):
    """The node is serving as many client connections as it may; it closed this one. A kind of
    unreachable: the client fails over to another node, and backs off from this one."""

    code = "TOO_MANY_CONNECTIONS"


class AuthRequiredError(KVError):
    """The node requires authentication before this request: connect with a user and password."""

    code = "AUTH_REQUIRED"


class AuthFailedError(KVError):
    """Authentication failed: an unknown user, a wrong password, or a node that could not prove it
    holds the user's verifier. The node closes the connection after it."""

    code = "AUTH_FAILED"


class ForbiddenError(KVError):
    """The user's role does not allow the request; the connection stays usable."""

    code = "FORBIDDEN"


class TlsError(NodeUnreachableError):
    """A TLS connection could not be made: the handshake failed, or the node's certificate did not
    verify. A kind of unreachable: the client tries another node."""

    code = "TLS"


class TlsRequiredError(TlsError):
    """The node accepts only TLS connections and this one was plaintext; it closed it."""

    code = "TLS_REQUIRED"


class MembershipChangedError(KVError):
    """The node's membership view is not the one this request was routed by, or not yet the one its
    peers hold: refresh the ring (TOPOLOGY) and send it again. Nothing was done."""

    code = "MEMBERSHIP_CHANGED"


class NotAMemberError(NodeUnreachableError):
    """The node is not an accepted member of the cluster (its peers refused it: another cluster, or
    another process claims its node id), so it coordinates nothing. A kind of unreachable: the
    client tries another node."""

    code = "NOT_A_MEMBER"


class ChangeInProgressError(KVError):
    """A membership change (join, leave, remove) was refused because another one is still running:
    changes are made one at a time. Wait until ``kv cluster status`` shows every member normal."""

    code = "CHANGE_IN_PROGRESS"


class ProtocolViolationError(KVError):
    """A node sent bytes that do not follow the protocol."""

    code = "PROTOCOL"


STATUS_ERRORS: dict[Status, type[KVError]] = {
    Status.BAD_REQUEST: BadRequestError,
    Status.KEY_TOO_LARGE: KeyTooLargeError,
    Status.VALUE_TOO_LARGE: ValueTooLargeError,
    Status.FRAME_TOO_LARGE: FrameTooLargeError,
    Status.UNSUPPORTED_VERSION: UnsupportedVersionError,
    Status.TOO_MANY_CONNECTIONS: TooManyConnectionsError,
    Status.CLOCK_SKEW: ClockSkewError,
    Status.AUTH_REQUIRED: AuthRequiredError,
    Status.AUTH_FAILED: AuthFailedError,
    Status.FORBIDDEN: ForbiddenError,
    Status.MEMBERSHIP_CHANGED: MembershipChangedError,
    Status.NOT_A_MEMBER: NotAMemberError,
    Status.CHANGE_IN_PROGRESS: ChangeInProgressError,
    Status.STORAGE_FULL: StorageFullError,
    Status.REPLICA_BEHIND: ReplicaBehindError,
    Status.PARTITION_NOT_HERE: PartitionNotHereError,
    Status.TLS_REQUIRED: TlsRequiredError,
    Status.UNAVAILABLE: UnavailableError,
    Status.TIMEOUT: RequestTimeoutError,
    Status.INTERNAL_ERROR: InternalServerError,
}


def error_from_reply(reply: ErrorReply) -> KVError:
    """The exception for an error response."""
    error_class = STATUS_ERRORS.get(reply.status, KVError)
    if issubclass(error_class, QuorumError):
        return error_class(reply.message, reply.acked or 0, reply.required or 0)
    return error_class(reply.message)


def error_from_frame(frame: Frame) -> KVError:
    """The exception for a frame whose code is an error status; ``ProtocolViolationError`` for a code
    that is no status, or a body that does not parse."""
    try:
        return error_from_reply(decode_error(Status(frame.code), frame.body))
    except (ValueError, ProtocolError):
        return ProtocolViolationError(f"unknown reply status 0x{frame.code:02x}")
