"""Partition streaming between real in-process nodes: pages, merge, checkpoints, source failover,
pacing and digest verification."""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import Any

import gevent
import gevent.pool
import pytest
from cluster import LOG_SINK, InProcessCluster

from client.errors import BadRequestError
from client.protocol import Frame, Op, PartitionRecords, Record, Request, Role, Version
from service.node import Node
from service.peers import Peer
from service.roles import ALLOWED
from service.streaming import (
    STREAMS_AT_ONCE,
    Checkpoints,
    PartitionStream,
    StreamEvents,
    StreamQueue,
    StreamSettings,
)
from service.transfer import Checkpoint, Phase, TransferSettings

pytestmark = pytest.mark.unit

SMALL_FRAMES = {"KV_MAX_VALUE_BYTES": "1024", "KV_PARTITIONS": "16"}  # pages of a few dozen keys
KEYS = 400


class Recorder(StreamEvents):
    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple[object, ...]]] = []
        self.on_bytes: Callable[[int], None] = lambda pages: None
        self.on_failed: Callable[[], None] = lambda: None
        self.pages = 0
        self.received = 0

    def stream_started(self, partition: int, sources: Sequence[str], checkpoint: Checkpoint | None) -> None:
        self.calls.append(("started", (partition, tuple(sources), checkpoint)))

    def stream_bytes(self, count: int) -> None:
        self.pages += 1
        self.received += count
        self.on_bytes(self.pages)

    def stream_source_failed(self, partition: int, source: str, reason: str) -> None:
        self.calls.append(("source_failed", (partition, source, reason)))

    def stream_failed(self, partition: int, reason: str, retry_in_s: float) -> None:
        self.calls.append(("failed", (partition, reason)))
        self.on_failed()

    def stream_finished(self, partition: int, seconds: float, size: int, keys: int) -> None:
        self.calls.append(("finished", (partition, size, keys)))

    def streams_pending(self, count: int) -> None:
        self.calls.append(("pending", (count,)))

    def named(self, name: str) -> list[tuple[object, ...]]:
        return [args for call, args in self.calls if call == name]


def partition_not_on(cluster: InProcessCluster, node_id: str) -> tuple[int, list[str]]:
    """A partition ``node_id`` does not replicate, and its replicas."""
    ring = cluster.ring()
    for partition in range(ring.partitions):
        owners = list(ring.partition_owners(partition)[: cluster.config.n])
        if node_id not in owners:
            return partition, owners
    raise AssertionError("every partition is on " + node_id)


def fill(cluster: InProcessCluster, partition: int, count: int = KEYS) -> list[bytes]:
    """``count`` keys of ``partition`` on both its replicas, a tenth overwritten and a tenth deleted.

    Written into the replicas' stores directly, each record to both, as a coordinator's write with
    W=N leaves them: through a client, on a machine busy enough to make a replica look stalled, a
    write would be held as a hint for a while and the replicas would briefly differ."""
    ring = cluster.ring()
    rng = random.Random(partition)
    keys: list[bytes] = []
    while len(keys) < count:
        key = b"key-%d" % rng.getrandbits(48)
        if ring.partition(key) == partition:
            keys.append(key)
    owners = [cluster.node(node_id) for node_id in ring.partition_owners(partition)[: cluster.config.n]]
    writes = [(key, rng.randbytes(200)) for key in keys]
    writes += [(key, b"second version") for key in keys[::10]]
    writes += [(key, None) for key in keys[5::10]]  # deletes: tombstones
    stamped = [(key, Record(Version(owners[0].clock.now(), owners[0].config.node_id), value)) for key, value in writes]
    for owner in owners:  # many writes at once, so group commit batches their fsyncs
        gevent.pool.Pool(64).map(lambda item, owner=owner: owner.store.write(*item), stamped)
    return keys


def records(node: Node, partition: int) -> dict[bytes, Record]:
    return node.store.partition_records(partition)


def stream_into(
    node: Node, settings: StreamSettings | None = None, events: StreamEvents | None = None
) -> PartitionStream:
    return PartitionStream(node.store, node.peers, settings or StreamSettings(node.config.data_dir), events)


@pytest.fixture
def cluster(make_cluster: Callable[..., InProcessCluster]) -> InProcessCluster:
    return make_cluster(3, **SMALL_FRAMES)


def test_a_partition_streams_whole_with_tombstones_and_verifies(cluster: InProcessCluster) -> None:
    partition, sources = partition_not_on(cluster, "node3")
    fill(cluster, partition)
    receiver = cluster.node("node3")
    assert records(receiver, partition) == {}
    events = Recorder()
    machine = stream_into(receiver, events=events).run(partition, sources)
    assert machine.phase is Phase.DONE
    assert machine.verified_by == "digests"
    expected = records(cluster.node(sources[0]), partition)
    assert records(receiver, partition) == expected
    assert sum(record.value is None for record in expected.values()) == KEYS // 10  # tombstones came too
    assert receiver.store.digests([partition]) == cluster.node(sources[0]).store.digests([partition])
    assert machine.pages_copied > 3  # several pages, so the cursor was used
    assert events.named("finished") == [(partition, machine.bytes_copied, KEYS)]
    assert events.received == machine.bytes_copied
    assert Checkpoints(receiver.config.data_dir).saved() == []  # done: the checkpoint is gone


def test_a_newer_version_on_the_receiver_is_never_overwritten(cluster: InProcessCluster) -> None:
    partition, sources = partition_not_on(cluster, "node3")
    keys = fill(cluster, partition)
    receiver = cluster.node("node3")
    held = cluster.node(sources[0]).store.read(keys[1])
    assert held is not None
    newer = Record(Version(held.version.timestamp + 1, "node3"), b"written during the move")
    receiver.store.write(keys[1], newer)
    machine = stream_into(receiver).run(partition, sources)
    assert receiver.store.read(keys[1]) == newer
    # The sources lack that write, so the digests differ for good; the delta pass that follows finds
    # nothing to copy, which proves the receiver holds everything the source has.
    assert machine.phase is Phase.DONE
    assert machine.verified_by == "listing"
    assert receiver.store.digests([partition]) != cluster.node(sources[0]).store.digests([partition])
    expected = records(cluster.node(sources[0]), partition)
    expected[keys[1]] = newer
    assert records(receiver, partition) == expected


def test_digests_that_keep_differing_fail_the_stream(cluster: InProcessCluster) -> None:
    partition, sources = partition_not_on(cluster, "node3")
    keys = fill(cluster, partition)
    receiver = cluster.node("node3")
    held = cluster.node(sources[0]).store.read(keys[1])
    assert held is not None
    receiver.store.write(keys[1], Record(Version(held.version.timestamp + 1, "node3"), b"newer"))
    events = Recorder()
    # One round: no delta pass follows the first mismatch.
    settings = StreamSettings(receiver.config.data_dir, transfer=TransferSettings(verify_rounds=1))
    stream = stream_into(receiver, settings, events)
    events.on_failed = stream.stop
    machine = stream.run(partition, sources)
    assert machine.phase is Phase.FAILED
    assert events.named("failed") == [(partition, "digests differed 1 times")]
    assert Checkpoints(receiver.config.data_dir).load(partition) == Checkpoint()  # the retry starts over


def test_a_source_stopped_mid_stream_is_replaced_by_the_other_replica(cluster: InProcessCluster) -> None:
    partition, sources = partition_not_on(cluster, "node3")
    fill(cluster, partition)
    receiver = cluster.node("node3")
    expected = records(cluster.node(sources[1]), partition)
    events = Recorder()
    events.on_bytes = lambda pages: cluster.stop(sources[0]) if pages == 2 else None
    machine = stream_into(receiver, events=events).run(partition, sources)
    assert machine.phase is Phase.DONE
    assert sources[0] not in cluster.running
    assert [args[1] for args in events.named("source_failed")] == [sources[0]]
    assert machine.source == sources[1]
    assert records(receiver, partition) == expected


def test_a_restarted_receiver_resumes_from_its_checkpoint(cluster: InProcessCluster) -> None:
    partition, sources = partition_not_on(cluster, "node3")
    fill(cluster, partition)
    receiver = cluster.node("node3")
    first = stream_into(receiver)
    events = Recorder()
    first.events = events
    events.on_bytes = lambda pages: first.stop() if pages == 3 else None
    interrupted = first.run(partition, sources)
    assert interrupted.phase is Phase.STREAMING
    saved = Checkpoints(receiver.config.data_dir).load(partition)
    assert saved is not None and saved.cursor and not saved.complete
    copied_before = len(records(receiver, partition))

    receiver = cluster.restart("node3")  # the node itself restarts: the checkpoint is on its disk
    assert len(records(receiver, partition)) == copied_before
    resumed_events = Recorder()
    machine = stream_into(receiver, events=resumed_events).run(partition, sources)
    assert machine.phase is Phase.DONE
    assert resumed_events.named("started") == [(partition, tuple(sources), saved)]
    assert machine.keys_copied == KEYS - copied_before  # only what the first run had not copied
    assert records(receiver, partition) == records(cluster.node(sources[0]), partition)


def test_every_source_down_backs_off_and_retries_until_one_returns(cluster: InProcessCluster) -> None:
    partition, sources = partition_not_on(cluster, "node3")
    fill(cluster, partition)
    for source in sources:
        cluster.stop(source)
    receiver = cluster.node("node3")
    events = Recorder()
    settings = StreamSettings(receiver.config.data_dir, transfer=TransferSettings(retry_after_s=0.05, retry_max_s=0.05))
    stream = stream_into(receiver, settings, events)

    def restart_one() -> None:
        if len(events.named("failed")) == 2:
            cluster.start(sources[1])

    events.on_failed = restart_one
    machine = stream.run(partition, sources)
    assert machine.phase is Phase.DONE
    # More than two: the peer link waits out its reconnection policy (a second) before dialling again.
    assert len(events.named("failed")) >= 2
    assert records(receiver, partition) == records(cluster.node(sources[1]), partition)


class FakeTime:
    def __init__(self) -> None:
        self.now = 0.0
        self.slept = 0.0

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds
        self.slept += seconds
        gevent.sleep(0)


def paced(data_dir: str, fake: FakeTime, rate: float, burst: int) -> StreamSettings:
    """Streams at ``rate`` bytes/s after a ``burst``, on ``fake``'s clock and sleep."""
    return StreamSettings(
        data_dir,
        rate_bytes_per_s=rate,
        transfer=TransferSettings(burst_bytes=burst),
        clock=fake.clock,
        sleep=fake.sleep,
    )


def test_streams_are_paced_to_the_rate(cluster: InProcessCluster) -> None:
    partition, sources = partition_not_on(cluster, "node3")
    fill(cluster, partition)
    receiver = cluster.node("node3")
    fake = FakeTime()
    rate = 20_000.0
    burst = 4096
    settings = paced(receiver.config.data_dir, fake, rate, burst)
    machine = stream_into(receiver, settings).run(partition, sources)
    assert machine.phase is Phase.DONE
    largest_page = receiver.config.max_frame_bytes + 400 * 250  # a listing and its records, at most
    assert fake.slept >= (machine.bytes_copied - burst - largest_page) / rate
    assert fake.slept <= machine.bytes_copied / rate + 1  # and no slower than the rate asks


def test_a_queue_streams_many_partitions_and_counts_down(cluster: InProcessCluster) -> None:
    ring = cluster.ring()
    moves = [
        (p, list(ring.partition_owners(p)[:2]))
        for p in range(ring.partitions)
        if "node3" not in ring.partition_owners(p)[:2]
    ]
    assert len(moves) >= 2
    for partition, _ in moves:
        fill(cluster, partition, 30)
    receiver = cluster.node("node3")
    events = Recorder()
    queue = StreamQueue(receiver.store, receiver.peers, StreamSettings(receiver.config.data_dir), events)
    finished = queue.run(moves)
    assert all(machine.phase is Phase.DONE for machine in finished)
    counts = [args[0] for args in events.named("pending")]
    assert counts == list(range(len(moves), -1, -1))
    assert queue.pending == 0
    for partition, sources in moves:
        assert records(receiver, partition) == records(cluster.node(sources[0]), partition)


def test_a_queue_keeps_the_rate_across_partitions_smaller_than_its_burst(
    make_cluster: Callable[..., InProcessCluster],
) -> None:
    cluster = make_cluster(3, KV_MAX_VALUE_BYTES="1024", KV_PARTITIONS="64")
    ring = cluster.ring()
    moves = [(p, list(ring.partition_owners(p)[:2])) for p in range(64) if "node3" not in ring.partition_owners(p)[:2]]
    for partition, _ in moves:
        fill(cluster, partition, 20)
    receiver = cluster.node("node3")
    fake = FakeTime()
    rate = 20_000.0
    burst = 8192
    settings = paced(receiver.config.data_dir, fake, rate, burst)
    finished = StreamQueue(receiver.store, receiver.peers, settings).run(moves)
    assert all(machine.phase is Phase.DONE for machine in finished)
    largest = max(machine.bytes_copied for machine in finished)
    assert largest < burst  # each partition alone would pass as a burst: only a shared pace holds the rate
    received = sum(machine.bytes_copied for machine in finished)
    # One burst in all; each stream may have a page out and one fetched ahead beyond what is paid for.
    assert fake.now >= (received - burst - 2 * STREAMS_AT_ONCE * largest) / rate > 0


def test_a_node_reports_streams_as_metrics_and_log_lines(cluster: InProcessCluster) -> None:
    partition, sources = partition_not_on(cluster, "node3")
    fill(cluster, partition, 50)
    receiver = cluster.node("node3")
    assert receiver.config.stream_rate_bytes_per_s == 25 * 1024 * 1024  # KV_STREAM_RATE_MBPS's default
    queue = StreamQueue(receiver.store, receiver.peers, StreamSettings(receiver.config.data_dir), receiver.events)
    (machine,) = queue.run([(partition, sources)])
    registry = receiver.metrics.registry
    assert registry.get_sample_value("kv_stream_bytes_total", {"direction": "in"}) == machine.bytes_copied > 0
    # The source counts what it served the same way: every page came from the first source.
    sent = cluster.node(sources[0]).metrics.registry.get_sample_value("kv_stream_bytes_total", {"direction": "out"})
    assert sent == machine.bytes_copied
    assert registry.get_sample_value("kv_stream_partitions_pending") == 0
    finished = [line for line in LOG_SINK.events("stream_finished") if line.get("partition") == partition]
    assert finished and finished[-1]["keys"] == 50


def test_stop_is_heard_during_a_long_back_off(cluster: InProcessCluster) -> None:
    partition, sources = partition_not_on(cluster, "node3")
    for source in sources:
        cluster.stop(source)
    receiver = cluster.node("node3")
    fake = FakeTime()

    def sleep(seconds: float) -> None:
        assert seconds <= 0.5
        fake.sleep(seconds)
        if fake.now >= 2.0:
            stream.stop()

    settings = StreamSettings(
        receiver.config.data_dir, transfer=TransferSettings(retry_after_s=30.0), clock=fake.clock, sleep=sleep
    )
    stream = stream_into(receiver, settings)
    machine = stream.run(partition, sources)
    assert machine.phase is Phase.FAILED
    assert 2.0 <= fake.now <= 2.5  # stopped within a slice, not after the 30 s back-off


class PeerWithoutRecordsOp:
    """A source running a version from before PARTITION_RECORDS: it answers that op BAD_REQUEST."""

    def __init__(self, peer: Peer) -> None:
        self.peer = peer
        self.refused = 0

    def call(self, request: Request, **kwargs: Any) -> Frame:
        if isinstance(request, PartitionRecords):
            self.refused += 1
            raise BadRequestError("unknown op code 0x18")
        return self.peer.call(request, **kwargs)


def test_a_source_without_the_records_op_is_listed_and_fetched_from(cluster: InProcessCluster) -> None:
    partition, sources = partition_not_on(cluster, "node3")
    fill(cluster, partition)
    receiver = cluster.node("node3")
    old = PeerWithoutRecordsOp(receiver.peers[sources[0]])
    peers: dict[str, Any] = {**receiver.peers, sources[0]: old}
    machine = PartitionStream(receiver.store, peers, StreamSettings(receiver.config.data_dir)).run(partition, sources)
    assert machine.phase is Phase.DONE
    assert old.refused == 1  # asked once, then listed and fetched for the rest of the stream
    assert records(receiver, partition) == records(cluster.node(sources[0]), partition)


def test_a_delta_pass_moves_only_the_records_that_differ(cluster: InProcessCluster) -> None:
    partition, sources = partition_not_on(cluster, "node3")
    keys = fill(cluster, partition)
    receiver = cluster.node("node3")
    stream_into(receiver).run(partition, sources)
    # One key changes on the sources alone (as if its write to node3 were lost), after the copy.
    source_nodes = [cluster.node(source) for source in sources]
    changed = Record(Version(source_nodes[0].clock.now(), sources[0]), b"changed")
    for node in source_nodes:
        node.store.write(keys[7], changed)
    Checkpoints(receiver.config.data_dir).save(partition, Checkpoint(b"", complete=True))  # verify again
    machine = stream_into(receiver).run(partition, sources)
    assert machine.phase is Phase.DONE
    assert machine.keys_copied == 1  # the delta pass listed every key and fetched only the changed one
    assert receiver.store.read(keys[7]) == changed


def test_only_members_may_stream_records() -> None:
    """A partition's whole records are a member's business: an admin may inspect keys (PARTITION_KEYS)."""
    assert Op.PARTITION_RECORDS in ALLOWED[Role.PEER]
    assert Op.PARTITION_RECORDS not in ALLOWED[Role.ADMIN]
    assert Op.PARTITION_KEYS in ALLOWED[Role.ADMIN]


def test_a_source_that_is_not_a_peer_is_refused_up_front(cluster: InProcessCluster) -> None:
    receiver = cluster.node("node3")
    with pytest.raises(ValueError, match="not peers"):
        stream_into(receiver).run(0, ["node1", "node9"])
