"""Which ops each role may run; pure.

| role | may run |
|---|---|
| before authentication | HELLO, AUTH_START, AUTH_FINISH |
| ``read`` | + PING, GET, TOPOLOGY, MEMBERS, STATS, EPOCH |
| ``readwrite`` | + PUT, DELETE |
| ``admin`` | + REPAIR, USER_SET, USERS, cluster membership ops (0x23-0x2F), replica reads (below) |
| ``peer`` | every op: + REPLICA_PUT, HINTED_PUT, IDENTIFY, MEMBERSHIP, PARTITION_RECORDS (0x15-0x1F but EPOCH) |

Replica reads (REPLICA_GET, DIGESTS, PARTITION_KEYS) show a replica's own records as they are: an
admin may inspect them. ``peer`` is a member of the cluster, authenticated with the cluster secret; no user has it.

A session keeps its role's **denied** set, computed once, and checks each request's op code against
it: one set lookup per request, nothing allocated. An op code no role names (not yet assigned) is not
denied, so it gets BAD_REQUEST for being unknown rather than FORBIDDEN.
"""

from __future__ import annotations

from client.protocol import Op, Role

BEFORE_AUTH: frozenset[int] = frozenset({Op.HELLO, Op.AUTH_START, Op.AUTH_FINISH})
"""What a connection may send before it has authenticated (anything else gets AUTH_REQUIRED)."""

STREAMING_OPS = frozenset(range(0x15, 0x20))
"""Reserved for elastic membership's node-to-node streaming: members only."""
CLUSTER_MEMBERSHIP_OPS = frozenset(range(0x23, 0x30))
"""Reserved for elastic membership's administration (join, leave...): the admin role."""

READ_OPS = frozenset(
    {Op.HELLO, Op.AUTH_START, Op.AUTH_FINISH, Op.PING, Op.GET, Op.TOPOLOGY, Op.MEMBERS, Op.STATS, Op.EPOCH}
)
"""EPOCH (0x17) lies in the members' range but is a client's: it says which ring the client routes by."""
READWRITE_OPS = READ_OPS | {Op.PUT, Op.DELETE}
REPLICA_READS = frozenset({Op.REPLICA_GET, Op.DIGESTS, Op.PARTITION_KEYS})
"""A replica's own records, as they are: what an admin inspects (``kv`` tests, a key's replicas)."""
ADMIN_OPS = READWRITE_OPS | {Op.REPAIR, Op.USER_SET, Op.USERS} | CLUSTER_MEMBERSHIP_OPS | REPLICA_READS
REPLICA_WRITES = frozenset({Op.REPLICA_PUT, Op.HINTED_PUT}) | STREAMING_OPS
"""Writes that carry their own versions, applied as they come: members only."""
PEER_OPS = ADMIN_OPS | REPLICA_WRITES

ALLOWED: dict[Role, frozenset[int]] = {
    Role.READ: READ_OPS,
    Role.READWRITE: READWRITE_OPS,
    Role.ADMIN: ADMIN_OPS,
    Role.PEER: PEER_OPS,
}

_GUARDED = frozenset(int(op) for op in Op) | STREAMING_OPS | CLUSTER_MEMBERSHIP_OPS
"""Every op code some role is refused: the known ops and the reserved ranges."""

DENIED: dict[Role, frozenset[int]] = {role: frozenset(_GUARDED - allowed) for role, allowed in ALLOWED.items()}
"""Role -> the op codes it may not run, as the session checks them."""
NOTHING_DENIED: frozenset[int] = frozenset()
"""A node without users: every connection may run every op."""
NOT_AUTHENTICATED: frozenset[int] = frozenset(_GUARDED - BEFORE_AUTH)

USER_ROLES = {"read": Role.READ, "readwrite": Role.READWRITE, "admin": Role.ADMIN}
"""The roles a user may have, by the name the users file and ``kv users`` use."""


def role_name(role: int) -> str:
    """``read``, ``readwrite``, ``admin``, ``peer``, or the code if unknown."""
    try:
        return Role(role).name.lower()
    except ValueError:
        return str(role)


def parse_role(name: str) -> Role:
    """A user role by name; ``ValueError`` naming the roles otherwise."""
    role = USER_ROLES.get(name.strip().lower())
    if role is None:
        raise ValueError(f"unknown role {name[:32]!r}: a user's role is read, readwrite or admin")
    return role
