"""Which receivers told a leaving node they hold everything (STREAM_DONE), kept in its data directory.

A node decommissioned (``kv cluster leave``) makes the epoch without itself once every receiver of
its partitions has said STREAM_DONE (``change_runner``). On a node of several workers the kernel
hands each receiver's link to any worker (``SO_REUSEPORT``), while worker 0 alone finishes the
leave: a set in one worker's memory would never be seen by the one that reads it. So each report is
an empty file, ``<KV_DATA_DIR>/stream-done/<epoch>-<node id>``, which every worker of the node sees.

Creating an empty file is atomic, and two workers recording one report create the same name. The
files are not fsynced: a receiver sends STREAM_DONE again every ``DONE_RESEND_S`` until the change
ends, so a report a crash loses is made again. Node ids are checked against the record before they
become file names (``ReportedDone.add``'s caller): a member's id is letters, digits, ``.``, ``_``
and ``-``, never starting with ``.``.
"""

from __future__ import annotations

import contextlib
import os

DIRECTORY = "stream-done"


class ReportedDone:
    """The STREAM_DONE reports this node holds, by epoch, under ``data_dir``."""

    def __init__(self, data_dir: str) -> None:
        self.directory = os.path.join(data_dir, DIRECTORY)

    def add(self, epoch: int, node_id: str) -> None:
        """Record that ``node_id`` holds everything it receives in the change of ``epoch``.
        ``OSError`` if the data directory cannot be written."""
        os.makedirs(self.directory, exist_ok=True)
        with open(os.path.join(self.directory, f"{epoch}-{node_id}"), "ab"):
            pass

    def receivers(self, epoch: int) -> set[str]:
        """The node ids that reported done for ``epoch`` (any worker may have recorded them)."""
        prefix = f"{epoch}-"
        return {name[len(prefix) :] for name in self._names() if name.startswith(prefix)}

    def clear(self, up_to_epoch: int) -> None:
        """Forget the reports of ``up_to_epoch`` and every earlier epoch (their changes ended)."""
        for name in self._names():
            epoch, _, _ = name.partition("-")
            if epoch.isdigit() and int(epoch) <= up_to_epoch:
                with contextlib.suppress(FileNotFoundError):  # another worker removed it first
                    os.remove(os.path.join(self.directory, name))

    def _names(self) -> list[str]:
        try:
            return os.listdir(self.directory)
        except FileNotFoundError:
            return []
