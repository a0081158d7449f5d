"""A new node getting its first membership record from its seeds, before it opens its store.

``KV_AUTO_JOIN=true`` (``join_through_seeds``): the node asks a seed to admit it.
``KV_AUTO_JOIN=wait`` (``wait_until_admitted``): an admin adds it (``kv cluster join HOST:PORT`` at a
member, which asks the node its id: ``unadmitted.WaitingServer`` answers that meanwhile), and the
node learns of it by reading its seeds' records (MEMBERSHIP) every ``RETRY_S``, for as long as it
takes, until one lists it. Either way the record is saved as the node's own, and the node starts
as a joining member: it streams the partitions it will own (``change_runner``).

Asking: on a first start (no ``membership.json``) a node with ``KV_SEEDS`` and
``KV_AUTO_JOIN=true`` does not form a cluster: it sends CLUSTER_JOIN (its id and the address
members reach it at, from its own ``KV_PEERS`` entry) to each seed in turn, authenticated as a
member with the cluster secret, until one answers with a record that lists it as joining. A seed
that answers CHANGE_IN_PROGRESS (another change runs) or cannot be reached is asked again after
``RETRY_S``, until ``deadline_s`` has passed; then the node stops with a message saying which
seeds said what.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import gevent
import structlog

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
            answer = _ask(seed, settings, request, config.node_id)
            if isinstance(answer, ClusterRecord):
                return answer
            answers[seed], status = answer
            if status is not None and status not in (Status.CHANGE_IN_PROGRESS, Status.MEMBERSHIP_CHANGED):
                raise ConfigError([f"seed {seed} refused to add {config.node_id}: {answers[seed]}"])
        if clock() >= give_up:
            said = "; ".join(f"{seed}: {answer}" for seed, answer in answers.items())
            raise ConfigError(
                [
                    f"no seed in KV_SEEDS admitted {config.node_id} (identity {identity}) within {deadline_s:.0f} s "
                    f"({said}); check KV_SEEDS, the cluster secret, and that no other change is in progress"
                ]
            )
        gevent.sleep(RETRY_S)


WAIT_LOG_S = 60.0
"""Seconds between two log lines saying a waiting node still waits, and what its seeds said."""


def wait_until_admitted(
    config: Config,
    settings: PeerSettings,
    log: structlog.typing.FilteringBoundLogger,
    *,
    poll_s: float = RETRY_S,
    clock: Callable[[], float] = time.monotonic,
) -> ClusterRecord:
    """The first record one of ``config.seeds`` holds that lists this node (``KV_AUTO_JOIN=wait``):
    asked every ``poll_s`` seconds, without a deadline (an admin adds the node when they choose),
    logging what the seeds said every ``WAIT_LOG_S``."""
    request = protocol.MembershipRecord()
    next_log = clock() + WAIT_LOG_S
    while True:
        answers: dict[str, str] = {}
        for seed in config.seeds:
            answer = _ask(seed, settings, request, config.node_id)
            if isinstance(answer, ClusterRecord):
                return answer
            answers[seed] = answer[0]
        if clock() >= next_log:
            next_log = clock() + WAIT_LOG_S
            log.info("still_waiting_to_be_added", node=config.node_id, seeds=answers)
        gevent.sleep(poll_s)


def _ask(
    seed: str, settings: PeerSettings, request: protocol.ClusterJoin | protocol.MembershipRecord, node_id: str
) -> ClusterRecord | tuple[str, Status | None]:
    """The record ``seed`` answers ``request`` with, if it lists ``node_id``; otherwise what it said,
    and the error status it answered (``None``: no answer, or a record without the node)."""
    host, port = parse_address(seed)
    peer = Peer(NodeAddress(f"seed {seed}", host, port), settings)
    try:
        frame = peer.call(request, retry_now=True)
        if frame.code != Status.OK:
            error = protocol.decode_error(Status(frame.code), frame.body)
            return f"{Status(frame.code).name}: {error.message}", Status(frame.code)
        record = membership.decode(protocol.decode_membership_reply(frame.body))
    except (KVError, protocol.ProtocolError, MembershipError) as exc:
        return getattr(exc, "message", None) or str(exc), None
    finally:
        peer.close()
    if record.member(node_id) is None:
        return f"answered with epoch {record.epoch}, which does not list {node_id}", None
    return record
