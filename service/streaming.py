"""Partition streaming on a receiving node: the I/O around ``transfer.Transfer``.

``PartitionStream`` copies one partition from its old owners to this node. It carries out what the
state machine asks and tells it what happened:

* **a page** (``RequestPage``): the source's records after the cursor, a frame's worth at most
  (``PARTITION_RECORDS``, one round trip per page), each written through the local store unless it
  holds that version or a newer one: a write that reached this node during the move is never
  overwritten by an older copy, tombstones included. A delta pass (after the digests differed) and
  a source from before that op list the keys and versions instead (``PARTITION_KEYS``) and fetch
  only the records newer there (``REPLICA_GET``, ``FETCH_CONCURRENCY`` at once over the peer's one
  multiplexed connection). Writes go many at once, so group commit batches their fsyncs;
* **a checkpoint** (``SaveCheckpoint``): the cursor, in a small file in the data directory
  (``streams/<partition>.json``, written to a temporary file, fsynced, renamed), after the page's
  records are committed, so a restarted receiver resumes where it stopped;
* **a digest comparison** (``CompareDigests``): this node's partition digest against the source's
  (``DIGESTS``, the digests anti-entropy keeps);
* a source that does not answer, refuses (its store is behind) or goes away is a ``SourceFailed``,
  and the machine picks the next source. A failure to write here (this store is full, a clock too
  far ahead) fails the source too: another source will not do better, but the back-off and retry
  that follow are what a local failure needs.

Waiting (the pace, a retry's back-off) is the only sleeping, and ``StreamSettings`` injects both the
clock and the sleep so tests need not wait. ``StreamQueue`` runs many partitions' streams, a few at
once, all drawing on one ``transfer.Pace`` at the node's rate (a bucket per partition would let
each small partition through at once as its own burst), and reports how many remain
(``kv_stream_partitions_pending``) and the bytes received (``kv_stream_bytes_total{direction="in"}``).

``change_runner`` runs it for a membership change (join, leave, remove), with the ownership
planner's moves for this node (``ownership.Plan.receiving``).
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import gevent
import gevent.pool

from client import protocol
from client.errors import BadRequestError, KVError
from client.protocol import Record, Status
from service.local_store import LocalStore
from service.peers import Peer
from service.storage import StorageError
from service.transfer import (
    Action,
    Checkpoint,
    CompareDigests,
    DigestsCompared,
    Event,
    MarkDone,
    Pace,
    PageCopied,
    ReportFailure,
    RequestPage,
    SaveCheckpoint,
    SourceFailed,
    Transfer,
    TransferSettings,
)
from service.versioning import ClockSkew

FETCH_CONCURRENCY = 32
"""Records fetched at once from a source while copying one page: enough to hide the round trip on
the peer's multiplexed connection, as anti-entropy's transfers do."""
STREAMS_AT_ONCE = 4
"""Partitions streamed at once by a ``StreamQueue``: enough to keep the pace busy while one waits on a
slow source, few enough to leave the peer links to client traffic. They share the queue's pace."""
CHECKPOINT_DIR = "streams"
STOP_CHECK_S = 0.5
"""Longest sleep between two looks at ``stop``: a paced or backing-off stream stops this fast."""


class StreamEvents:
    """What streaming reports; ``events.NodeEvents`` turns these into metrics and logs. Ignored by default."""

    def stream_started(self, partition: int, sources: Sequence[str], checkpoint: Checkpoint | None) -> None:
        """A partition's stream began, or resumed from ``checkpoint``."""

    def stream_bytes(self, count: int) -> None:
        """``count`` bytes were received from a source (listings and records)."""

    def stream_source_failed(self, partition: int, source: str, reason: str) -> None:
        """A source failed mid-stream; the next one takes over from the same cursor."""

    def stream_failed(self, partition: int, reason: str, retry_in_s: float) -> None:
        """Every source failed (or the digests kept differing); the stream retries in ``retry_in_s``."""

    def stream_finished(self, partition: int, seconds: float, size: int, keys: int) -> None:
        """The partition is here whole and its digest matches the source's."""

    def streams_pending(self, count: int) -> None:
        """Partitions still to stream here (0 once none remains)."""


@dataclass(frozen=True)
class StreamSettings:
    data_dir: str
    """The node's data directory; checkpoints go in its ``streams/``."""
    rate_bytes_per_s: float = 0.0
    """The pace of all streams into this node together (``KV_STREAM_RATE_MBPS``); 0: unpaced."""
    transfer: TransferSettings = field(default_factory=TransferSettings)
    """Burst, back-off and verification settings; its rate is replaced by this one."""
    clock: Callable[[], float] = time.monotonic
    """Seconds on a monotonic clock."""
    sleep: Callable[[float], object] = gevent.sleep


class Checkpoints:
    """Each partition's ``Checkpoint`` in a file of its own under ``<data_dir>/streams/``."""

    def __init__(self, data_dir: str) -> None:
        self.directory = os.path.join(data_dir, CHECKPOINT_DIR)

    def _path(self, partition: int) -> str:
        return os.path.join(self.directory, f"{partition}.json")

    def load(self, partition: int) -> Checkpoint | None:
        """The saved checkpoint, or ``None`` if there is none (or it is unreadable: start over, which
        is safe, since copying a record twice keeps the newer version)."""
        try:
            with open(self._path(partition), encoding="utf-8") as file:
                saved = json.load(file)
            return Checkpoint(bytes.fromhex(saved["cursor"]), bool(saved["complete"]))
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def save(self, partition: int, checkpoint: Checkpoint) -> None:
        """Write it durably: a temporary file, fsynced, renamed over the old one, the directory fsynced."""
        os.makedirs(self.directory, exist_ok=True)
        path = self._path(partition)
        temporary = path + ".tmp"
        with open(temporary, "w", encoding="utf-8") as file:
            json.dump({"cursor": checkpoint.cursor.hex(), "complete": checkpoint.complete}, file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
        self._sync_directory()

    def clear(self, partition: int) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.remove(self._path(partition))
        self._sync_directory()

    def saved(self) -> list[int]:
        """Partitions with a checkpoint: streams a crash interrupted."""
        try:
            names = os.listdir(self.directory)
        except FileNotFoundError:
            return []
        return sorted(int(name[:-5]) for name in names if name.endswith(".json") and name[:-5].isdigit())

    def _sync_directory(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            directory = os.open(self.directory, os.O_RDONLY)
            try:
                os.fsync(directory)
            finally:
                os.close(directory)


class PartitionStream:
    """One partition streamed into ``store`` from ``peers`` (``sources`` names them, best first);
    ``run`` returns once the partition is here whole and verified, or ``stop`` was called."""

    def __init__(
        self,
        store: LocalStore,
        peers: Mapping[str, Peer],
        settings: StreamSettings,
        events: StreamEvents | None = None,
    ) -> None:
        self.store = store
        self.peers = peers
        self.settings = settings
        self.events = events or StreamEvents()
        self.checkpoints = Checkpoints(settings.data_dir)
        self.machine: Transfer | None = None
        self._stopped = False
        self._without_records_op: set[str] = set()  # sources that answered PARTITION_RECORDS BAD_REQUEST
        self._prefetch: tuple[str, bytes, gevent.Greenlet] | None = None  # the next page, being fetched

    def stop(self) -> None:
        """Make ``run`` return after the action under way, or within ``STOP_CHECK_S`` while it waits
        (its checkpoint stays for a later run)."""
        self._stopped = True

    def run(self, partition: int, sources: Sequence[str], pace: Pace | None = None) -> Transfer:
        """Stream ``partition`` here; ``pace``: the token bucket it shares with other streams (default:
        its own, at the settings' rate). Returns the finished state machine (``finished`` is false
        only after ``stop``). Raises ``ValueError`` for a source that is not one of this node's peers."""
        unknown = [source for source in sources if source not in self.peers]
        if unknown:
            raise ValueError(f"partition {partition}: sources {unknown} are not peers of this node")
        settings = self.settings
        checkpoint = self.checkpoints.load(partition)
        transfer_settings = TransferSettings(
            rate_bytes_per_s=settings.rate_bytes_per_s,
            burst_bytes=settings.transfer.burst_bytes,
            retry_after_s=settings.transfer.retry_after_s,
            retry_max_s=settings.transfer.retry_max_s,
            verify_rounds=settings.transfer.verify_rounds,
        )
        machine = self.machine = Transfer(partition, sources, transfer_settings, checkpoint, pace)
        self.events.stream_started(partition, sources, checkpoint)
        started = settings.clock()
        pending: deque[Action] = deque(machine.start(started))
        try:
            while (pending or not machine.finished) and not self._stopped:
                if not pending:
                    wake = machine.next_wake()
                    if wake is None:  # cannot happen: the machine always waits on a request or a time
                        raise RuntimeError(f"partition {partition}: the transfer is stuck in {machine.phase}")
                    # In slices, so that stop() is heard within one even during a long back-off.
                    settings.sleep(min(max(0.0, wake - settings.clock()), STOP_CHECK_S))
                    pending.extend(machine.tick(settings.clock()))
                    continue
                event = self._carry_out(machine, pending.popleft())
                if event is not None:
                    pending.extend(machine.step(event, settings.clock()))
        finally:
            if self._prefetch is not None:  # stopped, or a delta pass took over: nobody will take it
                self._prefetch[2].kill(block=False)
                self._prefetch = None
        if machine.finished:
            self.events.stream_finished(
                partition, settings.clock() - started, machine.bytes_copied, machine.keys_copied
            )
        return machine

    def _carry_out(self, machine: Transfer, action: Action) -> Event | None:
        partition = machine.partition
        match action:
            case RequestPage(source, cursor, delta):
                try:
                    if not delta and source not in self._without_records_op:
                        try:
                            return self._copy_records(partition, source, cursor)
                        except BadRequestError:  # a node from before PARTITION_RECORDS: list and fetch
                            self._without_records_op.add(source)
                    return self._copy_listed(partition, source, cursor)
                except (KVError, StorageError, ClockSkew, protocol.ProtocolError) as exc:
                    reason = getattr(exc, "message", None) or str(exc)
                    self.events.stream_source_failed(partition, source, reason)
                    return SourceFailed(source, reason)
            case CompareDigests(source):
                try:
                    theirs = protocol.decode_digests_reply(self.peers[source].call(protocol.Digests((partition,))).body)
                except (KVError, protocol.ProtocolError) as exc:
                    reason = getattr(exc, "message", None) or str(exc)
                    self.events.stream_source_failed(partition, source, reason)
                    return SourceFailed(source, reason)
                return DigestsCompared(source, theirs == self.store.digests([partition]))
            case SaveCheckpoint(checkpoint):
                self.checkpoints.save(partition, checkpoint)
            case MarkDone():
                self.checkpoints.clear(partition)
            case ReportFailure(reason, retry_at):
                self.events.stream_failed(partition, reason, max(0.0, retry_at - self.settings.clock()))
        return None

    def _copy_records(self, partition: int, source: str, cursor: bytes) -> PageCopied:
        """One page of ``source``'s records after ``cursor`` (PARTITION_RECORDS), each written here
        unless this store holds the same version or a newer one. Raises what the peer or the store
        raised."""
        page = self._prefetched(source, cursor) or self._fetch_records(partition, source, cursor)
        if page.cursor:
            # Fetch the next page while this one is written: the two overlap, as the listing's
            # concurrent fetches do. The pace is held a page late, which its burst allows for.
            self._prefetch = (source, page.cursor, gevent.spawn(self._fetch_ahead, partition, source, page.cursor))
        newer = [(key, record) for key, record in page.entries if _is_newer(self.store.read(key), record)]
        self._write_all(newer)
        size = sum(protocol.record_entry_size(key, record) for key, record in page.entries)
        self.events.stream_bytes(size)
        return PageCopied(source, page.cursor, size, len(newer))

    def _fetch_records(self, partition: int, source: str, cursor: bytes) -> protocol.PartitionRecordsReply:
        frame = self.peers[source].call(protocol.PartitionRecords(partition, cursor))
        return protocol.decode_partition_records_reply(frame.body)

    def _fetch_ahead(
        self, partition: int, source: str, cursor: bytes
    ) -> protocol.PartitionRecordsReply | KVError | protocol.ProtocolError:
        """``_fetch_records``, its failure returned rather than raised: the page may never be taken
        (a stop, a delta pass), and a greenlet that dies raising is printed to stderr by gevent."""
        try:
            return self._fetch_records(partition, source, cursor)
        except (KVError, protocol.ProtocolError) as exc:
            return exc

    def _prefetched(self, source: str, cursor: bytes) -> protocol.PartitionRecordsReply | None:
        """The page fetched ahead, if it is the one asked for (raising what its fetch raised); a
        page fetched ahead for another source or cursor is dropped."""
        prefetch, self._prefetch = self._prefetch, None
        if prefetch is None:
            return None
        ahead_source, ahead_cursor, greenlet = prefetch
        if (ahead_source, ahead_cursor) != (source, cursor):
            greenlet.kill(block=False)
            return None
        page: protocol.PartitionRecordsReply | KVError | protocol.ProtocolError = greenlet.get()
        if isinstance(page, Exception):
            raise page
        return page

    def _write_all(self, records: Sequence[tuple[bytes, Record]]) -> None:
        """Write every record here, many at once so that group commit batches them; raise the first
        failure after all were tried."""
        errors: list[BaseException] = []

        def write(item: tuple[bytes, Record]) -> None:
            try:
                self.store.write(*item)
            except Exception as exc:
                errors.append(exc)

        gevent.pool.Pool(FETCH_CONCURRENCY).map(write, records)
        if errors:
            raise errors[0]

    def _copy_listed(self, partition: int, source: str, cursor: bytes) -> PageCopied:
        """One page from ``source``: its listing after ``cursor`` (PARTITION_KEYS), then every record
        newer there than here (REPLICA_GET), written here: what a delta pass moves. Raises what the
        peer or the store raised."""
        peer = self.peers[source]
        frame = peer.call(protocol.PartitionKeys(partition, cursor))
        if frame.code != Status.OK:
            raise KVError(f"PARTITION_KEYS answered {frame.code}")
        listing = protocol.decode_partition_keys_reply(frame.body)
        size = len(frame.body)
        wanted = [entry.key for entry in listing.entries if _is_newer(self.store.read(entry.key), entry)]
        fetched = 0
        errors: list[BaseException] = []

        def fetch(key: bytes) -> int:
            reply = peer.call(protocol.ReplicaGet(key))
            if reply.code == Status.NOT_FOUND:  # purged since the listing: nothing to copy
                return 0
            record: Record = protocol.decode_record(reply.body)
            self.store.write(key, record)
            return len(reply.body)

        def guarded(key: bytes) -> int:
            try:
                return fetch(key)
            except Exception as exc:  # the first failure fails the page; the rest are not retried
                errors.append(exc)
                return 0

        for count in gevent.pool.Pool(FETCH_CONCURRENCY).imap_unordered(guarded, wanted):
            fetched += count
        if errors:
            raise errors[0]
        size += fetched
        self.events.stream_bytes(size)
        return PageCopied(source, listing.cursor, size, len(wanted))


def _is_newer(held: Record | None, theirs: Record | protocol.KeyVersion) -> bool:
    """Whether the source's version of a key is newer than this store's (or the store has none)."""
    return held is None or held.version < theirs.version


class StreamQueue:
    """Many partitions streamed into this node, ``STREAMS_AT_ONCE`` at a time, sharing one pace.
    ``pending`` is how many have not finished; ``run`` returns when none remains (or ``stop``)."""

    def __init__(
        self,
        store: LocalStore,
        peers: Mapping[str, Peer],
        settings: StreamSettings,
        events: StreamEvents | None = None,
    ) -> None:
        self.store = store
        self.peers = peers
        self.settings = settings
        self.events = events or StreamEvents()
        self.pending = 0
        self.finished: list[Transfer] = []
        self._streams: list[PartitionStream] = []
        self._stopped = False

    def run(self, moves: Sequence[tuple[int, Sequence[str]]]) -> list[Transfer]:
        """Stream every ``(partition, sources)`` here; return their finished state machines."""
        self.pending = len(moves)
        self.events.streams_pending(self.pending)
        at_once = max(1, min(STREAMS_AT_ONCE, len(moves)))
        pace = Pace(self.settings.rate_bytes_per_s, self.settings.transfer.burst_bytes)

        def one(move: tuple[int, Sequence[str]]) -> Transfer:
            stream = PartitionStream(self.store, self.peers, self.settings, self.events)
            self._streams.append(stream)
            if self._stopped:
                stream.stop()
            try:
                machine = stream.run(move[0], move[1], pace)
            finally:
                self._streams.remove(stream)
            if machine.finished:
                self.pending -= 1
                self.events.streams_pending(self.pending)
            return machine

        self.finished = list(gevent.pool.Pool(at_once).imap_unordered(one, moves))
        return self.finished

    @property
    def stopped(self) -> bool:
        return self._stopped

    def stop(self) -> None:
        self._stopped = True
        for stream in list(self._streams):
            stream.stop()
