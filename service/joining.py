"""A new node asking its seeds to admit it (``KV_AUTO_JOIN=true``), before it opens its store.

On a first start (no ``membership.json``) a node with ``KV_SEEDS`` and ``KV_AUTO_JOIN`` does not
form a cluster: it sends CLUSTER_JOIN (its id and the address members reach it at, from its own
``KV_PEERS`` entry) to each seed in turn, authenticated as a member with the cluster secret, until
one answers with a record that lists it as joining. That record is saved as the node's own, and
the node starts as a joining member: it streams the partitions it will own (``change_runner``).
A seed that answers CHANGE_IN_PROGRESS (another change runs) or cannot be reached is asked again
after ``RETRY_S``, until ``deadline_s`` has passed; then the node stops with a message saying
which seeds said what.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import gevent

from client import protocol
from client.address import parse_address
from client.errors import KVError
from client.protocol import NodeAddress, Status
from service import membership
from service.config import Config, ConfigError
from service.membership import ClusterRecord, MembershipError
from service.peers import Peer, PeerSettings

RETRY_S = 2.0
"""Seconds between two rounds over the seeds: a change in progress takes at least this long."""
DEADLINE_S = 300.0
"""Seconds a new node keeps asking before it gives up: long enough for the change before it to end."""


def join_through_seeds(
    config: Config,
    settings: PeerSettings,
    identity: str,
    *,
    deadline_s: float = DEADLINE_S,
    clock: Callable[[], float] = time.monotonic,
) -> ClusterRecord:
    """The record a seed admitted this node in (``identity``: its new identity, for the log).
    ``ConfigError`` naming every seed's last answer once ``deadline_s`` has passed."""
    me = next(node for node in config.cluster if node.node_id == config.node_id)
    request = protocol.ClusterJoin(config.node_id, me.host, me.port)
    answers: dict[str, str] = {}
    give_up = clock() + deadline_s
    while True:
        for seed in config.seeds:
            host, port = parse_address(seed)
            peer = Peer(NodeAddress(f"seed {seed}", host, port), settings)
            try:
                frame = peer.call(request, retry_now=True)
                if frame.code != Status.OK:
                    error = protocol.decode_error(Status(frame.code), frame.body)
                    answers[seed] = f"{Status(frame.code).name}: {error.message}"
                    if frame.code in (Status.CHANGE_IN_PROGRESS, Status.MEMBERSHIP_CHANGED):
                        continue
                    raise ConfigError([f"seed {seed} refused to add {config.node_id}: {answers[seed]}"])
                record = membership.decode(protocol.decode_membership_reply(frame.body))
            except (KVError, protocol.ProtocolError, MembershipError) as exc:
                answers[seed] = getattr(exc, "message", None) or str(exc)
                continue
            finally:
                peer.close()
            if record.member(config.node_id) is None:
                answers[seed] = f"answered with epoch {record.epoch}, which does not list {config.node_id}"
                continue
            return record
        if clock() >= give_up:
            said = "; ".join(f"{seed}: {answer}" for seed, answer in answers.items())
            raise ConfigError(
                [
                    f"no seed in KV_SEEDS admitted {config.node_id} (identity {identity}) within {deadline_s:.0f} s "
                    f"({said}); check KV_SEEDS, the cluster secret, and that no other change is in progress"
                ]
            )
        gevent.sleep(RETRY_S)
