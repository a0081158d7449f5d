"""Who gets a connection: client slots, links from the cluster's other members, and a short wait for
connections that arrive when every client slot is taken.

Pure bookkeeping, no sockets. Every connection is accepted (never left in the listen backlog, where
a client learns nothing and the node logs nothing) and takes a ``Ticket``:

* a **client slot**, one of ``KV_MAX_CONNECTIONS``, while any is free;
* otherwise a place in the **waiting room** (``max_waiting`` places): a connection there must send
  HELLO within a moment, and is admitted only if it names itself as one of the cluster's members
  (``node:<id>``, as ``service.peers`` does) or a client slot has come free meanwhile;
* a member's connection moves to one of that member's **peer links** (``links_per_member`` each),
  which client connections never use up, so a node reaches its peers however many clients it has.

A client that lies about being a member can hold no more than that member's few links.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass

PEER_NAME_PREFIX = "node:"
"""A node names itself ``node:<id>`` in HELLO when it connects to another member (``service.peers``)."""


class Seat(enum.Enum):
    CLIENT = "client"
    PEER = "peer"
    WAITING = "waiting"


@dataclass(frozen=True, slots=True)
class Ticket:
    """What a connection holds: a seat, and for a peer link the member it belongs to."""

    seat: Seat
    member: str | None = None


class Admission:
    """Counts the seats taken; ``arrive``, ``identify`` and ``leave`` move connections between them.

    ``members``: the other members' node ids, whose HELLO (``node:<id>``) earns a peer link.
    """

    def __init__(self, max_clients: int, members: Iterable[str], links_per_member: int, max_waiting: int) -> None:
        self.max_clients = max_clients
        self.links_per_member = links_per_member
        self.max_waiting = max_waiting
        self.clients = 0
        self.waiting = 0
        self.links = dict.fromkeys(members, 0)

    def add_member(self, member: str) -> None:
        """``member`` (one that joined) earns peer links from now on."""
        self.links.setdefault(member, 0)

    def arrive(self) -> Ticket | None:
        """A new connection's ticket: a client slot if one is free, else a place in the waiting
        room; ``None`` if that is full too (refuse it at once)."""
        if self.clients < self.max_clients:
            self.clients += 1
            return Ticket(Seat.CLIENT)
        if self.waiting < self.max_waiting:
            self.waiting += 1
            return Ticket(Seat.WAITING)
        return None

    def identify(self, ticket: Ticket, client_name: str) -> Ticket | None:
        """The ticket a connection holds once its HELLO named it ``client_name``, in place of
        ``ticket``; ``None``: refused, and ``ticket`` is given up."""
        if ticket.seat is Seat.PEER:
            return ticket  # a second HELLO (after UNSUPPORTED_VERSION): already placed
        member = self.member_named(client_name)
        if member is not None and self.links[member] < self.links_per_member:
            self.leave(ticket)
            self.links[member] += 1
            return Ticket(Seat.PEER, member)
        if ticket.seat is Seat.CLIENT:
            return ticket
        self.leave(ticket)
        if self.clients < self.max_clients:
            self.clients += 1
            return Ticket(Seat.CLIENT)
        return None

    def leave(self, ticket: Ticket) -> None:
        """The connection holding ``ticket`` closed (or moved on): its seat is free again."""
        if ticket.seat is Seat.CLIENT:
            self.clients -= 1
        elif ticket.seat is Seat.WAITING:
            self.waiting -= 1
        elif ticket.member is not None:
            self.links[ticket.member] -= 1

    def member_named(self, client_name: str) -> str | None:
        """The member a HELLO's client name claims to be (``node:<id>``), if ``<id>`` is one."""
        if not client_name.startswith(PEER_NAME_PREFIX):
            return None
        node_id = client_name[len(PEER_NAME_PREFIX) :]
        return node_id if node_id in self.links else None
