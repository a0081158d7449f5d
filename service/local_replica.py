"""This node's own store as a replica, so the coordinator treats local and remote replicas alike."""

from __future__ import annotations

from collections.abc import Callable

from client.protocol import Record
from service.group_commit import GroupCommitter
from service.storage import PutHint, PutRecord, Storage
from service.versioning import HybridLogicalClock, wall_clock_ms


class LocalReplica:
    reads_block = False
    """A read is one LMDB lookup in memory-mapped pages: the coordinator needs no timeout around it."""

    def __init__(
        self,
        node_id: str,
        storage: Storage,
        committer: GroupCommitter,
        clock: HybridLogicalClock,
        on_hint_stored: Callable[[str, bytes], None] = lambda owner, key: None,
    ) -> None:
        self.node_id = node_id
        self._on_hint_stored = on_hint_stored
        self._storage = storage
        self._committer = committer
        self._clock = clock

    def read(self, key: bytes) -> Record | None:
        return self._storage.get(key)

    def write(self, key: bytes, record: Record) -> bool:
        """Store ``record`` durably if newer than the key's; return whether it was stored."""
        # Observing every version written keeps this node's clock ahead of all data it holds, so its
        # own later writes to these keys are ordered after them.
        self._clock.observe(record.version.timestamp)
        return self._committer.submit(PutRecord(key, record))

    def write_hint(self, key: bytes, record: Record, owner: str) -> bool:
        """Hold ``record`` durably for ``owner`` until the handoff delivers it."""
        self._clock.observe(record.version.timestamp)
        stored = self._committer.submit(PutHint(owner, key, record, wall_clock_ms()))
        self._on_hint_stored(owner, key)
        return stored
