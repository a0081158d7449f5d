"""The monitoring kit in ``deploy/``: Prometheus's config and alert rules pass ``promtool``, the alerts
fire on made-up series as ``alerts.test.yml`` says, and the Grafana dashboard and the alerts name
only metrics a node exports. (A real Prometheus scraping real nodes is
``tests/integration/test_monitoring.py``.) The promtool checks are skipped where Debian's
``prometheus`` package is not installed."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import generate_latest

from service.metrics import Metrics, StoreState

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
PROMETHEUS = DEPLOY / "prometheus"
GRAFANA = DEPLOY / "grafana"
PROMTOOL = shutil.which("promtool")

needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason="promtool missing (apt-get install prometheus)")


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run([PROMTOOL, *args], cwd=PROMETHEUS, capture_output=True, text=True, timeout=60, check=False)


@needs_promtool
@pytest.mark.parametrize(
    "args",
    [("check", "config", "prometheus.yml"), ("check", "rules", "alerts.yml"), ("test", "rules", "alerts.test.yml")],
)
def test_promtool_passes(args: tuple[str, ...]) -> None:
    result = promtool(*args)
    assert result.returncode == 0, result.stdout + result.stderr


@needs_promtool
def test_every_alert_has_a_test() -> None:
    alerts = set(re.findall(r"^\s+- alert: (\w+)", (PROMETHEUS / "alerts.yml").read_text(), flags=re.M))
    tested = set(re.findall(r'alertname="(\w+)"', (PROMETHEUS / "alerts.test.yml").read_text()))
    assert alerts == tested
    assert {"KvNodeDown", "KvHintsGrowing", "KvReplicaWriteErrors", "KvHighLatency", "KvStorageFull"} <= alerts
    assert "KvClockOffset" in alerts


def grafana_dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((GRAFANA / "dashboards" / "kvstore.json").read_text())
    return loaded


def dashboard_expressions() -> list[str]:
    return [target["expr"] for panel in grafana_dashboard()["panels"] for target in panel.get("targets", [])]


def exported_metric_names() -> set[str]:
    """Every sample name a node's /metrics can carry: each family's, and a histogram's suffixes."""
    metrics = Metrics()
    metrics.observe_request("GET", "OK", 0.001)
    metrics.registry.register(StoreState(lambda: (False, False, 0, 0, 0)))  # as a node tracks its store
    names = set()
    for name, kind in re.findall(r"^# TYPE (\S+) (\S+)$", generate_latest(metrics.registry).decode(), flags=re.M):
        names.add(name)
        if kind == "histogram":
            names |= {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
    return names


def test_the_dashboard_and_the_alerts_name_only_metrics_a_node_exports() -> None:
    text = " ".join(dashboard_expressions()) + (PROMETHEUS / "alerts.yml").read_text()
    used = set(re.findall(r"\bkv_[a-z_]+", text))
    assert used - exported_metric_names() == set()
    # What the issue asks the dashboard to show.
    for metric in (
        "kv_requests_total",
        "kv_request_duration_seconds_bucket",
        "kv_keys",
        "kv_peer_up",
        "kv_hints_pending",
        "kv_antientropy_keys_repaired_total",
        "kv_read_repairs_total",
    ):
        assert metric in used, metric


def test_every_grafana_panel_reads_the_provisioned_prometheus() -> None:
    datasource = (GRAFANA / "provisioning" / "datasources" / "prometheus.yml").read_text()
    uid = re.search(r"^\s+uid: (\S+)$", datasource, flags=re.M)
    assert uid is not None
    dashboard = grafana_dashboard()
    panels = [panel for panel in dashboard["panels"] if panel["type"] != "row"]
    assert panels
    for panel in panels:
        assert panel["datasource"]["uid"] == uid.group(1), panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == uid.group(1)
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    provider = (GRAFANA / "provisioning" / "dashboards" / "kvstore.yml").read_text()
    assert "path: /etc/grafana/dashboards" in provider
