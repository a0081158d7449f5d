"""docs/capacity.md holds what docs/capacity_plan.py computes: its rows for the first sizes are
computed again here (the whole plan takes a minute) and must appear in the document as printed."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

pytestmark = pytest.mark.unit

DOCS = Path(__file__).resolve().parents[2] / "docs"


def capacity_plan() -> ModuleType:
    spec = importlib.util.spec_from_file_location("capacity_plan", DOCS / "capacity_plan.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["capacity_plan"] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


def test_the_documents_figures_are_the_scripts() -> None:
    plan = capacity_plan()
    document = (DOCS / "capacity.md").read_text()
    rows = [line for line in plan.report(10).splitlines() if line.startswith("| ") and "---" not in line]
    joins = [row for row in rows if " -> " in row]
    assert len(joins) >= 10
    for row in joins:
        assert row in document, row
    per_node = [row for row in rows if row.startswith(("| 3 |", "| 10 |")) and "KiB/s" in row]
    assert len(per_node) == 2
    for row in per_node:  # the last two columns are timed on the machine that ran it: left out
        assert row.rsplit(" | ", 2)[0] in document, row


def test_a_join_moves_the_ideal_share_to_the_new_node_only() -> None:
    plan = capacity_plan()
    for join in plan.growth(6):
        assert join.only_to_new_node
        assert abs(join.moved_fraction - join.ideal) <= 0.1 * join.ideal
        assert join.busiest_source <= join.mean_source + 1  # the planner spreads the sources


def test_heartbeat_traffic_is_the_ping_frames() -> None:
    plan = capacity_plan()
    payload, wire = plan.heartbeat_bytes_per_s(3)
    assert payload == 2 * 2 * (9 + 18)  # two peers; a 9-byte PING and an 18-byte answer, each way
    assert wire > payload
