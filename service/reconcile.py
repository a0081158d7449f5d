"""Reconciliation rules: which keys two replicas must exchange, and which tombstones may go.

Pure: anti-entropy lists a partition on both sides and asks ``differences`` what to push and what
to pull; the newest version wins in both directions.

Tombstones. A delete leaves a tombstone so that a stale replica's older value cannot come back.
A tombstone may be purged only when both hold:

* it is older than the grace period (``KV_TOMBSTONE_GRACE_S``), so no hint, read repair or slow write
  carrying an older value can still be on its way (hints expire sooner: the hint window is shorter);
* this node finished an anti-entropy exchange of its partition with every other replica after the
  tombstone was written, so every replica holds it or something newer.

Once one replica purged a tombstone, the others may still hold it. "An old tombstone here, nothing
there" is therefore not a difference: both sides mean "deleted", and shipping the tombstone back
would only undo the purge.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple

from client.protocol import KeyVersion, Version
from service.versioning import physical_ms


class Differences(NamedTuple):
    push: list[bytes]  # keys the peer lacks or holds older
    pull: list[bytes]  # keys this node lacks or holds older


def is_expired_tombstone(entry: KeyVersion, now_ms: int, grace_ms: int) -> bool:
    return entry.tombstone and now_ms - physical_ms(entry.version.timestamp) > grace_ms


def differences(mine: Iterable[KeyVersion], theirs: Iterable[KeyVersion], *, now_ms: int, grace_ms: int) -> Differences:
    """What to send each way so both sides end with the newest version of every key."""
    my_versions = {entry.key: entry for entry in mine}
    their_versions = {entry.key: entry for entry in theirs}
    return Differences(
        _newer_on(my_versions, their_versions, now_ms, grace_ms),
        _newer_on(their_versions, my_versions, now_ms, grace_ms),
    )


def _newer_on(side: dict[bytes, KeyVersion], other: dict[bytes, KeyVersion], now_ms: int, grace_ms: int) -> list[bytes]:
    """Keys ``side`` must send to ``other``: missing there (unless an expired tombstone), or older."""
    keys = []
    for key, entry in side.items():
        counterpart = other.get(key)
        if counterpart is None:
            if not is_expired_tombstone(entry, now_ms, grace_ms):
                keys.append(key)
        elif entry.version > counterpart.version:
            keys.append(key)
    return keys


def purgeable(version: Version, *, now_ms: int, grace_ms: int, synced_at_ms: int | None) -> bool:
    """Whether a tombstone with ``version`` may be deleted, given when its partition was last fully
    synced with every other replica (``None``: never)."""
    written_ms = physical_ms(version.timestamp)
    return synced_at_ms is not None and written_ms < synced_at_ms and now_ms - written_ms > grace_ms
