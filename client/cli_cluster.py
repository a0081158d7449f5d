"""``kv cluster``: ``status`` shows every member of the cluster on one line, as Cassandra's
``nodetool status``; ``join``, ``leave`` and ``remove`` change the membership, as Riak's ``cluster``
commands and ``nodetool decommission`` / ``removenode`` do.

``join HOST:PORT`` admits the node there (started with ``KV_SEEDS`` and ``KV_AUTO_JOIN=wait``: it
answers HELLO while it waits) as joining, under the id it gives, and refuses, with what to do, a
node that already serves a cluster of its own or is a member; ``join NODE=HOST:PORT`` names the
node instead, which need not answer yet;
``leave NODE`` decommissions a live member; ``remove NODE`` drops a dead one.
Each prints the new epoch and the members' states; the change then runs in the cluster, and
``status`` shows its progress (UJ/UL and the partitions still to stream).

The membership (ids, addresses, states, epoch) comes from TOPOLOGY, up or down from the first
reachable node's failure detector (MEMBERS), keys and bytes from each node's STATS, and each
member's share of the partitions from the ring the client builds (``client.ring``): the partitions
it holds a replica of, of all of them, so with N copies the shares add up to N x 100%.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

import gevent

from client import protocol
from client.address import format_address, parse_address
from client.client import Client
from client.errors import KVError, NodeUnreachableError
from client.protocol import MemberStateCode, PeerState, StatsReply, TopologyReply
from client.ring import Ring

EXIT_OK = 0
EXIT_ERROR = 2
USAGE = "usage: kv cluster status | join HOST:PORT | join NODE=HOST:PORT | leave NODE | remove NODE"
HELP = f"""{USAGE}

  status               every member as nodetool status shows it: UN, UJ, UL or DN (up or
                       down; normal, joining or leaving), address, share of the partitions,
                       keys, bytes and streaming progress; exit 2 unless every member is UN
  join HOST:PORT       admit the node at HOST:PORT as joining, under the node id it gives:
                       start it first on an empty data directory with KV_SEEDS (members it
                       learns the change from) and KV_AUTO_JOIN=wait. One that serves a
                       cluster of its own or is a member is refused. With KV_AUTO_JOIN=true
                       instead, a new node asks KV_SEEDS to add it, without this command
  join NODE=HOST:PORT  the same for a node named by its KV_NODE_ID, which need not answer
                       yet (with security on, a waiting node cannot log you in: use this)
  leave NODE           decommission a live member: its partitions stream to their new
                       owners, then it leaves
  remove NODE          drop a dead member; its replicas are re-created from the survivors

One change at a time: another while one runs is refused (CHANGE_IN_PROGRESS). Any member
may be asked; it sends the change on to the claimant, the lowest-id normal member it does not
see down, which makes every change (UNAVAILABLE while the claimant cannot be reached)."""
STATE_LETTERS = {MemberStateCode.NORMAL: "N", MemberStateCode.JOINING: "J", MemberStateCode.LEAVING: "L"}
OWNING = (MemberStateCode.NORMAL, MemberStateCode.LEAVING)


@dataclass(frozen=True)
class MemberLine:
    status: str  # UN, UJ, UL, DN, DJ, DL
    node_id: str
    address: str
    owns: float  # share of the partitions it holds a replica of, 0..1
    keys: int | None  # None: not reachable
    bytes_used: int | None
    streaming: str  # partitions still to stream into it ("-": none, "?": not reachable)


def cluster_command(client: Client, args: Sequence[str]) -> tuple[str, int]:
    """The lines ``kv cluster ARGS`` prints and its exit status: 0 when every member is up and
    normal, 2 otherwise (or for a usage error or a cluster that cannot be reached)."""
    try:
        match list(args):
            case ["status"]:
                return status_report(client)
            case ["--help" | "-h" | "help"]:
                return HELP, EXIT_OK
            case ["join", spec]:
                return join_report(client, spec)
            case ["leave", node_id]:
                return change_report(client.change_membership(protocol.ClusterLeave(node_id)))
            case ["remove", node_id]:
                return change_report(client.change_membership(protocol.ClusterRemove(node_id)))
        return USAGE, EXIT_ERROR
    except KVError as exc:
        return f"ERROR {exc.code} {exc.message}", EXIT_ERROR


def join_report(client: Client, spec: str) -> tuple[str, int]:
    """``join HOST:PORT`` or ``join NODE=HOST:PORT``: admit the node at HOST:PORT as joining. With a
    bare address the node's id comes from the node itself (``Client.identify``), so it must be
    running; a node that already serves another cluster, or is already a member, is refused here
    with what to do, before any change is made."""
    node_id, named, address = spec.partition("=")
    if not named:
        node_id, address = "", spec
    try:
        host, port = parse_address(address)
    except ValueError as exc:
        return f"ERROR {exc}; {USAGE}", EXIT_ERROR
    address = format_address(host, port)  # with the default port filled in
    if named and not node_id:
        return USAGE, EXIT_ERROR
    client.refresh_topology()  # the membership as it is now, to tell whether the node is in it
    topology = client.topology()
    cluster_id = topology.membership.cluster_id if topology.membership is not None else None
    if not node_id:
        try:
            identity = client.identify(address)
        except NodeUnreachableError as exc:
            return (
                f"ERROR {address} does not answer ({exc.message}), so its node id is unknown: start the node, "
                f"or name it: kv cluster join NODE={address}",
                EXIT_ERROR,
            )
        node_id = identity.node_id
        if identity.cluster_id is not None and identity.cluster_id != cluster_id:
            return (
                f"ERROR {node_id} at {address} serves a cluster of its own ({identity.cluster_id}), not "
                f"{cluster_id}: a node joins on its first start, with an empty data directory and KV_SEEDS, "
                "and KV_AUTO_JOIN=wait (then add it here) or KV_AUTO_JOIN=true (then it asks a seed itself)",
                EXIT_ERROR,
            )
    state = _member_state(topology, node_id)
    if state:
        return (
            f"ERROR {node_id} is already a member of cluster {cluster_id} ({state}, at "
            f"{client.node_address(node_id)}); nothing changed",
            EXIT_ERROR,
        )
    return change_report(client.change_membership(protocol.ClusterJoin(node_id, host, port)))


def _member_state(topology: TopologyReply, node_id: str) -> str:
    """``node_id``'s state in ``topology`` (``normal``, ``joining``, ``leaving``); "" if no member."""
    for index, node in enumerate(topology.nodes):
        if node.node_id == node_id:
            if topology.membership is None:
                return "normal"
            return topology.membership.states[index].name.lower()
    return ""


def change_report(record: bytes) -> tuple[str, int]:
    """``OK epoch 5: node1 normal, node4 joining`` from the record a change answered with."""
    try:
        obj = json.loads(record)
        members = ", ".join(f"{m['id']} {m['state']}" for m in obj["members"])
        return f"OK epoch {obj['epoch']}: {members}", EXIT_OK
    except (ValueError, KeyError, TypeError) as exc:
        return f"ERROR the node answered with a record that does not read: {exc}", EXIT_ERROR


def status_report(client: Client) -> tuple[str, int]:
    client.refresh_topology()  # as it is now: a change may have moved it since this client connected
    topology = client.topology()
    viewer, members = client.members()
    up = {member.node_id: member.state is PeerState.UP for member in members}
    states = (
        topology.membership.states
        if topology.membership is not None
        else (MemberStateCode.NORMAL,) * len(topology.nodes)
    )
    owners = [node.node_id for node, state in zip(topology.nodes, states, strict=True) if state in OWNING]
    shares = ownership(Ring(owners, topology.partitions), topology.n) if owners else {}
    stats = _all_stats(client, [node.node_id for node in topology.nodes])
    lines = []
    for node, state in zip(topology.nodes, states, strict=True):
        figures = stats.get(node.node_id)
        lines.append(
            MemberLine(
                ("U" if up.get(node.node_id, False) else "D") + STATE_LETTERS[state],
                node.node_id,
                client.node_address(node.node_id),
                shares.get(node.node_id, 0.0),
                figures.live_keys if figures is not None else None,
                figures.disk_used_bytes if figures is not None else None,
                _streaming(figures),
            )
        )
    head = (
        f"Cluster {topology.membership.cluster_id}, epoch {topology.membership.epoch}"
        if topology.membership is not None
        else "Cluster (nodes before membership records)"
    )
    head += f", {topology.partitions} partitions, N={topology.n} (up/down as {viewer} sees it)"
    all_well = all(line.status == "UN" for line in lines)
    return "\n".join([head, "Status=Up/Down, State=Normal/Joining/Leaving", format_table(lines)]), (
        EXIT_OK if all_well else EXIT_ERROR
    )


def _streaming(figures: StatsReply | None) -> str:
    if figures is None:
        return "?"
    return f"{figures.streams_pending} partitions to receive" if figures.streams_pending else "-"


def ownership(ring: Ring, n: int) -> dict[str, float]:
    """Each node's share of the partitions it holds one of the ``n`` replicas of."""
    counts = dict.fromkeys(ring.node_ids, 0)
    for partition in range(ring.partitions):
        for node_id in ring.partition_owners(partition)[:n]:
            counts[node_id] += 1
    return {node_id: count / ring.partitions for node_id, count in counts.items()}


def format_table(lines: Sequence[MemberLine]) -> str:
    rows = [("--", "Node", "Address", "Owns", "Keys", "Bytes", "Streaming")]
    for line in lines:
        rows.append(
            (
                line.status,
                line.node_id,
                line.address,
                f"{line.owns * 100:.1f}%",
                "?" if line.keys is None else str(line.keys),
                "?" if line.bytes_used is None else human_bytes(line.bytes_used),
                line.streaming,
            )
        )
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() for row in rows
    )


def human_bytes(count: int) -> str:
    """``1.5 MiB``: bytes in binary units, as ``nodetool status`` shows a node's load."""
    size = float(count)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def _all_stats(client: Client, node_ids: Sequence[str]) -> dict[str, StatsReply]:
    """STATS of every node that answers, asked at once."""

    def one(node_id: str) -> StatsReply | None:
        try:
            return client.stats(node_id)
        except KVError:
            return None

    probes = {node_id: gevent.spawn(one, node_id) for node_id in node_ids}
    gevent.joinall(list(probes.values()))
    return {node_id: probe.value for node_id, probe in probes.items() if probe.value is not None}
