"""The dashboard in headless Chromium, served by a node container of a real cluster, through a SIGKILL
and a restart: what a person watching it during an incident would see. Screenshots are saved in
``tests/artifacts/`` (``dashboard-node-down.png`` is the one in docs/dashboard.md and the README).
Skipped where Debian's chromium or Playwright is missing (``.ci/run`` installs chromium)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest
from dashboard_page import DashboardBrowser, browser_missing, dashboard_browser
from polling import wait_until

from client.ring import Ring
from service.cluster_view import VIEW_MAX_AGE
from service.failure_detector import DOWN_AFTER

if TYPE_CHECKING:
    from containers import Cluster

    from client.client import Client

pytestmark = pytest.mark.skipif(browser_missing() is not None, reason=browser_missing() or "")

NODE_IDS = ("node1", "node2", "node3")
REFRESH_S = 2.0  # the page's refresh (REFRESH_MS in dashboard.js)
SHOWN_DOWN_WITHIN = DOWN_AFTER + VIEW_MAX_AGE + REFRESH_S + 2.0
"""Seconds from a kill to the page saying down: the failure detector's 5 s, one shared gathering,
one refresh, and two seconds for a busy machine."""


@pytest.fixture(scope="module")
def browser() -> Iterator[DashboardBrowser]:
    with dashboard_browser() as started:
        yield started


def test_the_dashboard_through_a_kill_and_a_restart(cluster: Cluster, kv: Client, browser: DashboardBrowser) -> None:
    for i in range(300):
        kv.put(f"user:{i}", b"x" * (i % 50))
    browser.open(f"http://127.0.0.1:{cluster.http_ports['node1']}/dashboard")
    assert browser.node_states() == dict.fromkeys(NODE_IDS, "up")
    assert "node1" in browser.served_by()

    def counts_match_kv_keys() -> bool:
        return browser.key_counts() == {node: int(cluster.sample(node, "kv_keys") or 0) for node in NODE_IDS}

    wait_until(counts_match_kv_keys, 10, interval=0.5, message="the page's key counts to match each node's kv_keys")

    ring = Ring(NODE_IDS)
    preference, rows = browser.look_up("user:42")
    assert preference == ring.preference_list(b"user:42", 2)
    assert all(holds.startswith("value, ") for holds in rows.values()), rows
    browser.screenshot("dashboard-all-up.png")

    # A node killed: the page marks it down within the failure detector's time, and keeps it listed.
    victim = "node3"
    killed_at = time.monotonic()
    cluster.kill(victim)
    wait_until(
        lambda: browser.node_states()[victim] == "down",
        SHOWN_DOWN_WITHIN + 5,
        interval=0.25,
        message=f"the page to show {victim} down",
    )
    shown_down_after = time.monotonic() - killed_at
    assert shown_down_after <= SHOWN_DOWN_WITHIN, f"{victim} shown down after {shown_down_after:.1f} s"
    assert browser.node_states() == {"node1": "up", "node2": "up", victim: "down"}
    key = next(f"user:{i}" for i in range(300) if victim in ring.preference_list(f"user:{i}".encode(), 2))
    preference, rows = browser.look_up(key)
    assert rows[victim].startswith("down")
    assert all(holds.startswith("value, ") for node, holds in rows.items() if node != victim), rows
    browser.screenshot("dashboard-node-down.png")

    # Restarted: up again once the heartbeats see it, a second or two.
    cluster.start(victim)
    wait_until(
        lambda: browser.node_states() == dict.fromkeys(NODE_IDS, "up"),
        15,
        interval=0.25,
        message=f"the page to show {victim} up again",
    )
    assert browser.console_errors == []
    print(f"\n{victim} shown down {shown_down_after:.1f} s after SIGKILL")  # a figure for the report (pytest -s)
