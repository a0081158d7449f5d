"""The node's durable store: versioned records in LMDB, with last-writer-wins applied on write.

Why LMDB: a committed transaction is on disk (``sync=True`` fsyncs on commit) and a crash needs no
recovery step; reads are memory-mapped and need no copy through a cache; keys are ordered, so a hash
range of the ring is one contiguous scan for anti-entropy and for streaming data to a new node.

Layout. The ``data`` database maps a storage key to an encoded record. The storage key is the key's
8-byte ring position followed by the key itself, so records sort by ring position. LMDB keys stop at
511 bytes, so a key longer than ``SHORT_KEY_MAX`` is stored as its first ``SHORT_KEY_MAX`` bytes plus
its 32-byte BLAKE2b digest (a storage key of exactly ``LONG_STORAGE_KEY_SIZE`` bytes, a length no short
key can have), and its record carries the full key. The ``meta`` database holds counters that change
in the same transaction as the data: the live key count and the highest timestamp ever stored.

This class is synchronous and knows nothing of gevent; ``group_commit`` decides when it runs.
"""

from __future__ import annotations

import hashlib
import os
import struct
from collections.abc import Sequence

import lmdb

from client.protocol import Record, Version
from client.ring import position
from service.versioning import supersedes

SHORT_KEY_MAX = 470
POSITION_SIZE = 8
DIGEST_SIZE = 32
LONG_STORAGE_KEY_SIZE = POSITION_SIZE + SHORT_KEY_MAX + DIGEST_SIZE  # 510, under LMDB's 511

_TOMBSTONE = 0x01
_FULL_KEY = 0x02
_RECORD_HEAD = struct.Struct(">BQB")  # flags, timestamp, node id length
_U16 = struct.Struct(">H")
_U64 = struct.Struct(">Q")

_META_LIVE_KEYS = b"live_keys"
_META_MAX_TIMESTAMP = b"max_timestamp"


class StorageError(Exception):
    """The store cannot be opened or written; the message says why and what to do."""


def storage_key(key: bytes) -> bytes:
    prefix = position(key).to_bytes(POSITION_SIZE, "big")
    if len(key) <= SHORT_KEY_MAX:
        return prefix + key
    return prefix + key[:SHORT_KEY_MAX] + hashlib.blake2b(key, digest_size=DIGEST_SIZE).digest()


def encode_record(key: bytes, record: Record) -> bytes:
    node_id = record.version.node_id.encode()
    flags = _TOMBSTONE if record.value is None else 0
    parts = [b"", node_id]
    if len(key) > SHORT_KEY_MAX:
        flags |= _FULL_KEY
        parts.append(_U16.pack(len(key)) + key)
    parts[0] = _RECORD_HEAD.pack(flags, record.version.timestamp, len(node_id))
    if record.value is not None:
        parts.append(record.value)
    return b"".join(parts)


def decode_record(raw: bytes) -> tuple[Record, bytes | None]:
    """The record in ``raw``, and the full key when the record carries one."""
    flags, timestamp, id_length = _RECORD_HEAD.unpack_from(raw)
    offset = _RECORD_HEAD.size
    node_id = bytes(raw[offset : offset + id_length]).decode()
    offset += id_length
    full_key = None
    if flags & _FULL_KEY:
        (key_length,) = _U16.unpack_from(raw, offset)
        offset += _U16.size
        full_key = bytes(raw[offset : offset + key_length])
        offset += key_length
    value = None if flags & _TOMBSTONE else bytes(raw[offset:])
    return Record(Version(timestamp, node_id), value), full_key


class Storage:
    """One node's records. Reads are direct; ``apply`` writes a batch in one durable transaction."""

    def __init__(self, path: str, map_size: int) -> None:
        try:
            os.makedirs(path, exist_ok=True)
            self._env = lmdb.open(
                path,
                map_size=map_size,
                max_dbs=4,
                sync=True,  # a commit returns only after fsync: that is what an ack promises
                metasync=True,
                readahead=False,  # random point reads; readahead would only evict useful pages
            )
        except (OSError, lmdb.Error) as exc:
            raise StorageError(f"cannot open the data directory {path!r}: {exc}") from exc
        self._data = self._env.open_db(b"data")
        self._meta = self._env.open_db(b"meta")
        with self._env.begin(db=self._meta) as txn:
            self._live_keys = _read_u64(txn.get(_META_LIVE_KEYS))
            self._max_timestamp = _read_u64(txn.get(_META_MAX_TIMESTAMP))
        self.path = path

    @property
    def live_keys(self) -> int:
        """Keys whose newest record is a value, not a tombstone."""
        return self._live_keys

    @property
    def max_timestamp(self) -> int:
        """The highest version timestamp ever stored; the clock resumes above it after a restart."""
        return self._max_timestamp

    def get(self, key: bytes) -> Record | None:
        with self._env.begin(db=self._data, buffers=True) as txn:
            raw = txn.get(storage_key(key))
            return None if raw is None else decode_record(raw)[0]

    def apply(self, writes: Sequence[tuple[bytes, Record]]) -> list[bool]:
        """Store each record that supersedes what the key holds, all in one fsynced transaction.

        Returns, per write, whether it was stored (``False``: the key already held a newer version).
        Writes to the same key within the batch are applied in order.
        """
        applied: list[bool] = []
        live_delta = 0
        max_timestamp = self._max_timestamp
        try:
            with self._env.begin(write=True, db=self._data) as txn:
                for key, record in writes:
                    skey = storage_key(key)
                    raw = txn.get(skey)
                    current = None if raw is None else decode_record(raw)[0]
                    if not supersedes(record, current):
                        applied.append(False)
                        continue
                    txn.put(skey, encode_record(key, record))
                    applied.append(True)
                    live_delta += _is_live(record) - _is_live(current)
                    max_timestamp = max(max_timestamp, record.version.timestamp)
                live_keys = self._live_keys + live_delta
                txn.put(_META_LIVE_KEYS, _U64.pack(live_keys), db=self._meta)
                txn.put(_META_MAX_TIMESTAMP, _U64.pack(max_timestamp), db=self._meta)
        except lmdb.MapFullError as exc:
            raise StorageError(
                f"the store is full ({self._env.info()['map_size']} bytes); raise KV_STORAGE_LIMIT_MB"
            ) from exc
        except lmdb.Error as exc:
            raise StorageError(f"write failed: {exc}") from exc
        self._live_keys = live_keys
        self._max_timestamp = max_timestamp
        return applied

    def close(self) -> None:
        self._env.close()


def _is_live(record: Record | None) -> int:
    return int(record is not None and record.value is not None)


def _read_u64(raw: bytes | None) -> int:
    return 0 if raw is None else _U64.unpack(raw)[0]
