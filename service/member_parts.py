"""What a node's membership work acts on: its view of the membership, its store, its peers, the
failure detector's verdict and N. Changes (``change_runner``) and clean-up (``cleanup``) both
work with this one bundle, which the node builds once."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from service.local_store import LocalStore
from service.membership_view import MembershipView
from service.peers import Peer


@dataclass(frozen=True)
class MemberParts:
    """``peers``: the node's peers by id (the node adds joined members to it); ``is_down``: the
    failure detector's verdict; ``n``: replicas per key."""

    view: MembershipView
    store: LocalStore
    peers: Mapping[str, Peer]
    is_down: Callable[[str], bool]
    n: int


class MemberWork:
    """A part of the node doing membership work: keeps the ``MemberParts`` it acts on as
    attributes, and this node's id."""

    def __init__(self, members: MemberParts) -> None:
        self.view = members.view
        self.node_id = members.view.node_id
        self.store = members.store
        self.peers = members.peers
        self.is_down = members.is_down
        self.n = members.n
