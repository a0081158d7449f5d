"""Membership changes on a node of several workers, one process standing in for each worker: what one
worker records or saves in the shared data directory, another sees (``membership_file``,
``stream_done``). A real node of two worker processes leaving a cluster is in
``test_workers_leave.py``."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from cluster import start_cluster

from client import protocol
from client.protocol import IdentifyReply, MembershipVersion, PeerIdentity, Status
from service import membership, membership_changes, membership_store
from service.change_runner import ChangeError, ChangeParts, ChangeRunner
from service.logging import get_logger
from service.member_parts import MemberParts
from service.membership import ClusterRecord, MemberState
from service.membership_file import MembershipFile
from service.membership_store import LocalMembership
from service.membership_view import MembershipEvents, MembershipView
from service.streaming import StreamEvents, StreamSettings
from service.workers import WorkerEpochs, WorkerSlot

pytestmark = pytest.mark.unit

IDENTITY = "a" * 32


def founded(tmp_path: Path) -> ClusterRecord:
    """A three-node cluster as node ``a``'s data directory (``tmp_path/data``) holds it after a first
    start."""
    record = membership.form("kv", [("a", "h", 1), ("b", "h", 2), ("c", "h", 3)], 16, "a", IDENTITY)
    membership_store.save(str(tmp_path / "data"), LocalMembership("a", IDENTITY, record))
    return record


def version_of(record: ClusterRecord) -> MembershipVersion:
    """What PING reports of a node holding ``record`` (every worker of it, if it has several)."""
    return MembershipVersion(record.epoch, membership.digest(record))


class Worker:
    """Worker ``index`` of node ``a``'s two: its own view and change runner over the shared data
    directory, started (it published the epoch it holds)."""

    def __init__(self, data_dir: Path, index: int) -> None:
        self.file = MembershipFile(str(data_dir))
        local = membership_store.decode_local(membership_store.path_in(str(data_dir)).read_bytes())
        self.view = MembershipView(local, self.file.save, MembershipEvents())
        self.view.apply_ring = lambda record: True
        run_dir = data_dir.parent / "run"
        run_dir.mkdir(exist_ok=True)
        self.view.workers = WorkerEpochs(WorkerSlot(index, 2, -1, -1, -1, str(run_dir), os.getpid()))
        self.view.publish()
        members = MemberParts(
            self.view,
            None,  # type: ignore[arg-type]  # no stream runs here: only the reports and the leave's end
            {},
            lambda node_id: False,
            2,
        )
        parts = ChangeParts(
            members,
            StreamSettings(str(data_dir)),
            StreamEvents(),
            get_logger(),
        )
        self.changes = ChangeRunner(parts)

    def reload(self) -> None:
        """What the node's ``membership_reload`` task does each tick."""
        record = self.file.changed()
        if record is not None:
            self.view.reload(record)


def test_a_change_one_worker_makes_is_served_by_the_other_at_its_next_look(tmp_path: Path) -> None:
    record = founded(tmp_path)
    first, second = Worker(tmp_path / "data", 0), Worker(tmp_path / "data", 1)
    leaving = membership_changes.decommission(record, "c")
    assert second.view.change(leaving, "admin")  # the admin's CLUSTER_LEAVE landed on worker 1
    assert first.view.record == record
    first.reload()
    assert first.view.record == leaving and first.view.serving == leaving
    first.reload()  # nothing new: no second adoption, no write
    assert first.file.changed() is None and second.file.changed() is None


def test_ping_reports_the_lowest_epoch_a_worker_holds_until_every_worker_has_the_change(tmp_path: Path) -> None:
    record = founded(tmp_path)
    first, second = Worker(tmp_path / "data", 0), Worker(tmp_path / "data", 1)
    leaving = membership_changes.decommission(record, "c")
    assert second.view.change(leaving, "admin")
    # Worker 0 still routes by the old record: a receiver that asks worker 1 must not start yet.
    assert second.view.version().epoch == record.epoch
    assert first.view.version().epoch == record.epoch
    first.reload()
    assert second.view.version() == first.view.version() == version_of(leaving)


def test_a_worker_behind_never_takes_the_file_back_to_an_older_record(tmp_path: Path) -> None:
    record = founded(tmp_path)
    first, second = Worker(tmp_path / "data", 0), Worker(tmp_path / "data", 1)
    leaving = membership_changes.decommission(record, "c")
    assert second.view.change(leaving, "admin")
    # Worker 0 learns a member's identity at the old epoch before it has looked at the file: the
    # save merges with the newer record there, and worker 0 adopts that.
    first.view.check_answer(
        "b",
        "h:2",
        IdentifyReply(PeerIdentity(record.cluster_id, "b", "b" * 32, "h", 2, record.epoch, b""), True),
    )
    on_disk = membership_store.decode_local(membership_store.path_in(str(tmp_path / "data")).read_bytes()).record
    assert on_disk.epoch == leaving.epoch
    assert first.view.record == on_disk
    assert getattr(on_disk.member("c"), "state", None) is MemberState.LEAVING


def test_a_change_made_on_a_record_another_worker_changed_first_is_refused_not_merged(tmp_path: Path) -> None:
    record = founded(tmp_path)
    first, second = Worker(tmp_path / "data", 0), Worker(tmp_path / "data", 1)
    leaving = membership_changes.decommission(record, "c")
    assert second.view.change(leaving, "admin")
    # Worker 0 has not looked at the file yet, and makes another change from the record it holds: at
    # the same epoch, which a merge would settle by dropping one of two acknowledged changes.
    joining = membership_changes.admit(record, "d", "h", 4)
    assert joining.epoch == leaving.epoch
    assert not first.view.change(joining, "admin")
    assert first.view.record == leaving  # it serves the change that was made first
    on_disk = membership_store.decode_local(membership_store.path_in(str(tmp_path / "data")).read_bytes()).record
    assert on_disk == leaving


def test_a_change_asked_of_a_worker_behind_another_is_answered_change_in_progress(tmp_path: Path) -> None:
    founded(tmp_path)
    first, second = Worker(tmp_path / "data", 0), Worker(tmp_path / "data", 1)
    leaving = second.changes.request(protocol.ClusterLeave("c"))  # an admin's request lands on worker 1
    with pytest.raises(ChangeError) as refused:  # another, at the same moment, on worker 0
        first.changes.request(protocol.ClusterJoin("d", "h", 4))
    assert refused.value.status is Status.CHANGE_IN_PROGRESS
    assert f"another membership change was made at the same time (epoch {leaving.epoch})" in refused.value.message
    assert first.view.record == leaving


def test_stream_done_on_worker_1_lets_worker_0_finish_the_leave(tmp_path: Path) -> None:
    record = founded(tmp_path)
    owner, other = Worker(tmp_path / "data", 0), Worker(tmp_path / "data", 1)
    leaving = membership_changes.decommission(record, "a")  # this node, a, is decommissioned
    assert owner.view.change(leaving, "admin")
    other.reload()
    receivers = {r for move in membership_changes.plan(leaving, 2).moves for r in move.receivers}
    assert receivers == {"b", "c"}
    for receiver in receivers:  # every receiver's link happens to land on worker 1
        other.changes.stream_done(leaving.epoch, receiver)
    other.changes.stream_done(leaving.epoch, "../../etc")  # no member: no file name of its making
    assert owner.changes.reported.receivers(leaving.epoch) == receivers
    owner.changes._finish_leaving(leaving)  # returns at once: every receiver reported
    assert owner.view.left
    assert owner.changes.reported.receivers(leaving.epoch) == set()  # forgotten once the leave ended
    other.reload()
    assert other.view.left and other.view.record == owner.view.record


def test_a_worker_not_started_yet_is_named_until_it_publishes(tmp_path: Path) -> None:
    slots = [WorkerSlot(index, 3, -1, -1, -1, str(tmp_path), os.getpid()) for index in range(3)]
    first, second, third = (WorkerEpochs(slot) for slot in slots)
    assert first.not_started() == [1, 2]
    second.publish(4)
    assert first.not_started() == [2] and third.not_started() == [0]
    third.publish(4)
    assert first.not_started() == []


def test_a_node_is_not_ready_while_another_of_its_workers_has_not_started_serving(tmp_path: Path) -> None:
    # Ready too soon, a two-worker node had clients that connected at once (a benchmark's 50
    # connections) all accepted by the one worker already listening, for good: 1.0 core of 2 used.
    cluster = start_cluster(tmp_path, 1)
    try:
        node = cluster.node("node1")
        assert node.readiness_problem() is None
        run_dir = tmp_path / "run"
        run_dir.mkdir()
        node.membership.workers = WorkerEpochs(WorkerSlot(0, 2, -1, -1, -1, str(run_dir), os.getpid()))
        problem = node.readiness_problem()
        assert problem is not None and "worker(s) 1" in problem
        WorkerEpochs(WorkerSlot(1, 2, -1, -1, -1, str(run_dir), os.getpid())).publish(node.membership.record.epoch)
        assert node.readiness_problem() is None
    finally:
        cluster.stop_all()
