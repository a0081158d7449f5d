"""``membership.json`` as the processes of one node share it: saved under a lock, merged, read back.

A node of several workers (``service.workers``) holds one membership record, but each worker is a
process with its own ``MembershipView``. A change one worker makes (the kernel hands an admin's
CLUSTER_JOIN, LEAVE or REMOVE to any worker) or learns (a peer's gossip reaches one worker) must
reach the others: worker 0 streams partitions and finishes joins and leaves from the record it
holds, and every worker routes requests by its own.

* **Saving merges.** A record is saved under an exclusive lock on ``membership.lock`` (``flock``):
  the file is read, the record merged with the file's (``membership.merge``, as two nodes' records
  merge by gossip), and the result written if it differs (``membership_store.save``: atomic and
  durable) and returned, for the view to adopt. So the file never goes back to a record older than
  one another worker saved, and a worker that restarts starts from the newest.
* **Reading back.** ``changed`` looks at the file (a ``stat``: a save renames a new file over it, so
  its inode changes) and returns its record when another process replaced it; each worker asks every
  ``RELOAD_INTERVAL`` and merges it in (``MembershipView.reload``). Two workers therefore serve the
  same record within that interval of a save, rather than after a round of gossip through a peer.

A node of one process saves through this too: the lock is never contended, the merge changes
nothing, and it never asks ``changed``.

The lock is held for one read and at most one write and fsync; a worker waiting for it blocks its
event loop for that long, as the write itself does.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Iterator
from dataclasses import replace

from service import membership, membership_store
from service.membership import ClusterRecord
from service.membership_store import LocalMembership

LOCK_NAME = "membership.lock"
RELOAD_INTERVAL = 0.25
"""Seconds between two looks at the file by each worker of a node of several: how long a record one
worker saved may go unserved by the others. A look is one ``stat``."""

_Stamp = tuple[int, int, int]  # inode, mtime in ns, size


class MembershipFile:
    """``<data_dir>/membership.json`` shared by a node's processes (see the module docstring)."""

    def __init__(self, data_dir: str) -> None:
        self.data_dir = data_dir
        self._path = membership_store.path_in(data_dir)
        self._seen: _Stamp | None = None  # the file as this process last read or wrote it; None: not yet

    def save(self, local: LocalMembership, *, advance: bool = False) -> LocalMembership:
        """Make ``local`` durable, merged with the record the file holds; the membership the file
        holds afterwards. ``advance``: ``local``'s record is a change, saved only if its epoch is above
        the file's (else another worker made or learnt a change first: the two would conflict at one
        epoch, and the merge would drop one already acknowledged). ``OSError`` if it cannot be
        written (the file is left as it was)."""
        os.makedirs(self.data_dir, exist_ok=True)
        with self._locked():
            held = self._read()
            if held is not None and held.cluster_id == local.record.cluster_id:
                if advance and held.epoch >= local.record.epoch:
                    return replace(local, record=held)
                local = replace(local, record=membership.merge(held, local.record))
                if local.record == held:
                    self._seen = self._stamp()
                    return local
            membership_store.save(self.data_dir, local)
            self._seen = self._stamp()  # under the lock: no other process wrote since
            return local

    def changed(self) -> ClusterRecord | None:
        """The file's record if another process replaced the file since this one last read or wrote
        it; ``None`` if not, or if it cannot be read now (the next look tries again)."""
        stamp = self._stamp()
        if stamp is None or stamp == self._seen:
            return None
        held = self._read()  # at least as new as the stamp: a save replaces the file whole
        if held is not None:
            self._seen = stamp
        return held

    def _read(self) -> ClusterRecord | None:
        """The file's record, or ``None`` if it is absent or damaged (a save replaces it). Read here
        rather than by ``membership_store.decode_local``, which refuses a record without this node:
        the one a worker saves when the node's decommission ends, which the others must see."""
        try:
            return membership.from_json(json.loads(self._path.read_bytes())["record"])
        except (OSError, ValueError, KeyError, TypeError):  # MembershipError is a ValueError
            return None

    def _stamp(self) -> _Stamp | None:
        try:
            status = os.stat(self._path)
        except OSError:
            return None
        return status.st_ino, status.st_mtime_ns, status.st_size

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        fd = os.open(os.path.join(self.data_dir, LOCK_NAME), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the lock
