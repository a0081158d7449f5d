"""The dashboard in headless Chromium, against three in-process nodes: what a person checks on the
page, with no JavaScript error. A node killed and restarted is the integration suite's
(``tests/integration/test_dashboard.py``), since it waits out the failure detector's 5 seconds.
Skipped where Debian's chromium or Playwright is missing."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from cluster import InProcessCluster
from dashboard_page import DashboardBrowser, browser_missing, dashboard_browser
from polling import wait_until

pytestmark = pytest.mark.skipif(browser_missing() is not None, reason=browser_missing() or "")


@pytest.fixture(scope="module")
def browser() -> Iterator[DashboardBrowser]:
    """One Chromium for the module (launching it takes most of a second); each test gets a new page."""
    with dashboard_browser() as started:
        yield started


@pytest.fixture(autouse=True)
def fresh_page(browser: DashboardBrowser) -> None:
    browser.new_page(width=1280, height=1000)
    browser.console_errors.clear()


def test_the_page_shows_the_cluster_and_finds_a_key(cluster: InProcessCluster, browser: DashboardBrowser) -> None:
    with cluster.running_client() as kv:
        for i in range(40):
            kv.put(f"shown-{i}", b"v")
    browser.open(f"http://127.0.0.1:{cluster.node('node2').http_port}/dashboard")

    assert browser.node_states() == {"node1": "up", "node2": "up", "node3": "up"}
    assert "node2" in browser.served_by()

    def counts_match_kv_keys() -> bool:
        registries = {node_id: cluster.node(node_id).metrics.registry for node_id in cluster.node_ids}
        return browser.key_counts() == {node_id: r.get_sample_value("kv_keys") for node_id, r in registries.items()}

    wait_until(counts_match_kv_keys, 6, message="the page's key counts to match every node's kv_keys")

    preference, rows = browser.look_up("shown-7")
    assert preference == cluster.replicas_of("shown-7")
    assert set(rows) == set(preference)
    assert all(holds.startswith("value, 1 B") for holds in rows.values()), rows
    browser.screenshot("dashboard-unit.png")
    assert browser.console_errors == []


def test_the_page_fits_a_phone_and_follows_dark_mode(cluster: InProcessCluster, browser: DashboardBrowser) -> None:
    url = f"http://127.0.0.1:{cluster.node('node1').http_port}/dashboard"
    browser.open(url)
    light = browser.background_luminance()
    browser.new_page(width=390, height=844, dark=True)
    browser.open(url)
    assert light > 0.8
    assert browser.background_luminance() < 0.1
    assert not browser.overflows_horizontally()
    browser.look_up("a key with spaces/and/slashes")
    assert not browser.overflows_horizontally()
    browser.screenshot("dashboard-phone-dark.png")
    assert browser.console_errors == []
