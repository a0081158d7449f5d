"""Clean-up: drop the data of partitions this node no longer owns, once their owners hold it.

After a join, a leave or a removal switches ownership, the old owners still hold copies of the
partitions they gave away (the **retiring owners** of ``ownership.plan``). Clean-up gives the room
back, without ever making the only copy of a write disappear:

* **Which partitions** (``ownership.unowned_partitions``, pure): those this node holds records in that are
  neither among the first N owners on the current ring nor pending for this node in a change.
* **When**: a pass does nothing while a membership change is in progress, while the node serves
  another ring than its record's, or before every live member holds the record's epoch (then no
  coordinator still sends this node writes for those partitions as an owner).
* **Which keys** (``ownership.sort_keys``, pure): a key is dropped only if every one of the partition's N
  current owners holds the same or a newer version. An owner that lacks it, or holds it older, is
  sent it (REPLICA_PUT, as read repair does) and the key waits for the next pass; a partition with
  an owner that is down waits whole. Tombstones are data here: one not yet on the owners is copied
  like a value, never dropped first.
* **How**: ``LocalStore.drop_record``, a local delete of exactly the version checked (a newer write
  that arrived meanwhile stays), which leaves no tombstone, replicates nothing and keeps the
  partition digests and the live-key count right.

Each pass is bounded (``PARTITIONS_PER_PASS`` partitions, a page of keys at a time) and the node
runs one every ``CLEANUP_INTERVAL_S`` in its owner process, like anti-entropy.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import gevent
import gevent.lock

from client import protocol
from client.errors import KVError
from client.protocol import Record, Status, Version
from service import membership, membership_changes
from service.local_store import listing_page_bytes
from service.member_parts import MemberParts, MemberWork
from service.ownership import sort_keys, unowned_partitions
from service.peers import Peer

CLEANUP_INTERVAL_S = 10.0
"""Seconds between two clean-up passes: ownership changes are rare, and a pass that finds nothing
to do costs one digest scan of local memory and a ping per member."""
PARTITIONS_PER_PASS = 32
"""Most partitions one pass cleans, so that a pass after a large change does not hold the node's
owner process (and the peers' listings) busy for long; the rest wait for the next pass."""


class CleanupEvents:
    """What clean-up reports; ``events.NodeEvents`` turns these into metrics and logs."""

    def cleanup_keys_dropped(self, count: int) -> None:
        """``count`` records of partitions this node no longer owns were deleted here."""

    def cleanup_partition_finished(self, partition: int, dropped: int) -> None:
        """``partition`` holds nothing here any more; ``dropped`` records went in this pass."""


@dataclass(frozen=True)
class CleanupParts:
    """What a ``Cleanup`` works with besides the ``MemberParts``: ``max_frame_bytes`` bounds a page
    of keys."""

    members: MemberParts
    max_frame_bytes: int
    events: CleanupEvents


class Cleanup(MemberWork):
    """See the module docstring; ``run_pass`` runs one pass."""

    def __init__(self, parts: CleanupParts) -> None:
        super().__init__(parts.members)
        self.page_bytes = listing_page_bytes(parts.max_frame_bytes)
        self.events = parts.events
        self._pass_lock = gevent.lock.Semaphore()

    def run_pass(self) -> int:
        """Clean up to ``PARTITIONS_PER_PASS`` partitions; the records dropped (0 when it may not run
        now, or another pass is running)."""
        if self._pass_lock.locked():
            return 0
        with self._pass_lock:
            return self._run_pass()

    def _run_pass(self) -> int:
        record = self.view.record
        if (
            record.member(self.node_id) is None
            or membership_changes.changing(record)
            or not membership.same_ring(record, self.view.serving)
            or not self._all_members_hold(record)
        ):
            return 0
        ring = membership.ring(record)
        everything = range(ring.partitions)
        held = [p for p, digest in zip(everything, self.store.digests(everything), strict=True) if any(digest)]
        dropped = 0
        pending = membership_changes.pending_owners(record, self.n)  # none: no change runs
        for partition in unowned_partitions(ring, self.n, self.node_id, held, pending)[:PARTITIONS_PER_PASS]:
            owners = ring.partition_owners(partition)[: self.n]
            dropped += self._clean(partition, owners, record.epoch)
        return dropped

    def _all_members_hold(self, record: membership.ClusterRecord) -> bool:
        """Whether every live member holds ``record``'s epoch or a later one."""
        for member in record.members:
            peer = self.peers.get(member.node_id)
            if member.node_id == self.node_id or peer is None or self.is_down(member.node_id):
                continue
            reply = peer.ping()
            if reply is None or (reply.membership is not None and reply.membership.epoch < record.epoch):
                return False
        return True

    def _clean(self, partition: int, owners: Sequence[str], epoch: int) -> int:
        """Drop what every owner of ``partition`` holds; copy to them what they lack. The records
        dropped. A partition with an owner that is down or does not answer waits for a later pass,
        and the pass stops between pages once the node holds another epoch than ``epoch`` (a new
        change may make this node a pending owner of the partition again: what it streams in must
        stay)."""
        peers = [self.peers.get(owner) for owner in owners]
        if not owners or any(peer is None or self.is_down(peer.node_id) for peer in peers):
            return 0
        try:
            listings = {peer.node_id: self._listing(peer, partition) for peer in peers if peer is not None}
        except KVError:
            return 0
        dropped = 0
        kept = 0
        cursor = b""
        while True:
            if self.view.record.epoch != epoch:
                return dropped
            page, cursor = self.store.records_page(partition, cursor, self.page_bytes)
            decision = sort_keys(page, listings)
            mine = dict(page)
            for owner, keys in decision.send.items():
                kept += len(keys)
                self._send(self.peers[owner], {key: mine[key] for key in keys})
            page_dropped = sum(self.store.drop_record(key, version) for key, version in decision.drop.items())
            kept += len(decision.drop) - page_dropped  # rewritten meanwhile: checked again next pass
            dropped += page_dropped
            if page_dropped:
                self.events.cleanup_keys_dropped(page_dropped)
            if not cursor:
                break
            gevent.sleep(0)  # let requests in between pages
        if not kept:
            self.events.cleanup_partition_finished(partition, dropped)
        return dropped

    def _send(self, peer: Peer, records: Mapping[bytes, Record]) -> None:
        for key, record in records.items():
            try:
                peer.write(key, record)
            except KVError:
                return  # the owner is failing now: the rest are sent next pass

    @staticmethod
    def _listing(peer: Peer, partition: int) -> dict[bytes, Version]:
        """Every key ``peer`` holds in ``partition`` and its version (PARTITION_KEYS, page by page).
        Raises ``KVError`` if it cannot list them all."""
        versions: dict[bytes, Version] = {}
        cursor = b""
        while True:
            frame = peer.call(protocol.PartitionKeys(partition, cursor))
            if frame.code != Status.OK:
                raise KVError(f"{peer.node_id} did not list partition {partition}: status {frame.code}")
            reply = protocol.decode_partition_keys_reply(frame.body)
            versions.update((entry.key, entry.version) for entry in reply.entries)
            cursor = reply.cursor
            if not cursor:
                return versions
