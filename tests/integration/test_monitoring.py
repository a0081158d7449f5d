"""A real scrape: Debian's Prometheus server, run on this host, scrapes the cluster's containers with
the kit's alert rules, and answers over its HTTP API. Every node is up, traffic shows as a request
rate, every Grafana and alert expression evaluates, and a killed node fires KvNodeDown. Then the
compose file's `monitoring` profile: its Prometheus, configured by ``deploy/prometheus/prometheus.yml``
itself, scrapes the compose nodes.

The generated config scrapes every second and evaluates every second, and the rules' ``for:`` are cut
to one second, so the test takes seconds; everything else is the kit as shipped. Skipped where the
``prometheus`` package is not installed (``.ci/run`` installs it).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from containers import CHECKOUT_ID, REPO_ROOT, free_port, http_get
from polling import wait_until

if TYPE_CHECKING:
    from containers import Cluster, ComposeProject

    from client.client import Client

PROMETHEUS = shutil.which("prometheus")
pytestmark = pytest.mark.skipif(PROMETHEUS is None, reason="prometheus missing (apt-get install prometheus)")

KIT = REPO_ROOT / "deploy"
NODE_IDS = ("node1", "node2", "node3")
SCRAPE_INTERVAL = "1s"
RATE_WINDOW = "5s"
"""What Grafana's $__rate_interval becomes here: several scrapes, as Grafana makes it (4 x the scrape
interval at least)."""
STARTUP_TIMEOUT = 30.0


class PrometheusServer:
    """``prometheus`` run on 127.0.0.1 with a config and rules in ``folder``; stopped by its pid."""

    def __init__(self, folder: Path, config: dict[str, Any]) -> None:
        self.port = free_port()
        self.folder = folder
        (folder / "prometheus.yml").write_text(json.dumps(config, indent=2))  # JSON is YAML
        self.log = (folder / "prometheus.log").open("w")
        assert PROMETHEUS is not None
        self.process = subprocess.Popen(
            [
                PROMETHEUS,
                f"--config.file={folder / 'prometheus.yml'}",
                f"--storage.tsdb.path={folder / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--log.level=warn",
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        wait_until(self._ready, STARTUP_TIMEOUT, interval=0.2, message=f"Prometheus on :{self.port} to be ready")

    def _ready(self) -> bool:
        if self.process.poll() is not None:
            pytest.fail(f"prometheus exited {self.process.returncode}: {self.logs()}")
        return http_get(self.port, "/-/ready")[0] == 200

    def logs(self) -> str:
        self.log.flush()
        return (self.folder / "prometheus.log").read_text()[-3000:]

    def api(self, path: str, **params: str) -> Any:
        """The ``data`` of a successful API answer; fails with Prometheus's error otherwise."""
        status, body = http_get(self.port, f"/api/v1/{path}?{urllib.parse.urlencode(params)}", timeout=10)
        answer = json.loads(body)
        assert status == 200 and answer["status"] == "success", f"{path} {params}: {status} {body[:500]}"
        return answer["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        data = self.api("query", query=expr)
        result: list[dict[str, Any]] = data["result"]
        return result

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=15)
        self.log.close()


def fast_rules(text: str) -> str:
    """The kit's alert rules with every ``for:`` cut to one second."""
    return re.sub(r"^(\s+for:) \S+$", r"\1 1s", text, flags=re.M)


@pytest.fixture(scope="module")
def prometheus(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrometheusServer]:
    folder = tmp_path_factory.mktemp("prometheus")
    (folder / "alerts.yml").write_text(fast_rules((KIT / "prometheus" / "alerts.yml").read_text()))
    config = {
        "global": {"scrape_interval": SCRAPE_INTERVAL, "scrape_timeout": SCRAPE_INTERVAL, "evaluation_interval": "1s"},
        "rule_files": ["alerts.yml"],
        "scrape_configs": [
            {
                "job_name": "kvstore",
                "static_configs": [
                    {"targets": [f"127.0.0.1:{cluster.http_ports[node]}"], "labels": {"node": node}}
                    for node in NODE_IDS
                ],
            }
        ],
    }
    server = PrometheusServer(folder, config)
    try:
        yield server
    finally:
        server.stop()


def grafana_expressions() -> list[str]:
    """Every expression of the Grafana dashboard, with Grafana's variables as Prometheus sees them
    once Grafana has filled them in: every node, and the rate window."""
    dashboard = json.loads((KIT / "grafana" / "dashboards" / "kvstore.json").read_text())
    expressions = [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]
    return [expr.replace("$node", ".+").replace("$__rate_interval", RATE_WINDOW) for expr in expressions]


def values_by_node(result: list[dict[str, Any]]) -> dict[str, float]:
    return {sample["metric"]["node"]: float(sample["value"][1]) for sample in result}


def test_prometheus_scrapes_every_node(prometheus: PrometheusServer) -> None:
    wait_until(
        lambda: values_by_node(prometheus.query('up{job="kvstore"}')) == dict.fromkeys(NODE_IDS, 1.0),
        20,
        interval=0.5,
        message="up == 1 for every node",
    )
    # Grafana's node variable: label_values(up{job="kvstore"}, node).
    assert prometheus.api("label/node/values", **{"match[]": 'up{job="kvstore"}'}) == list(NODE_IDS)


def test_traffic_shows_as_a_request_rate(prometheus: PrometheusServer, kv: Client) -> None:
    sent = 0

    def client_rate() -> float:
        # Traffic across several scrapes: a counter's first scrape already holding every request
        # would show no increase, so no rate.
        nonlocal sent
        for _ in range(20):
            kv.put(f"scraped-{sent}", b"v")
            sent += 1
        result = prometheus.query(f'sum(rate(kv_requests_total{{job="kvstore", op=~"GET|PUT|DELETE"}}[{RATE_WINDOW}]))')
        return float(result[0]["value"][1]) if result else 0.0

    assert wait_until(client_rate, 20, interval=0.5, message="a positive client request rate") > 0
    wait_until(
        lambda: sum(values_by_node(prometheus.query('kv_keys{job="kvstore"}')).values()) == 2 * sent,
        20,
        interval=0.5,
        message="kv_keys to count every key written, on N=2 nodes",
    )


def test_every_dashboard_and_alert_expression_evaluates(prometheus: PrometheusServer, kv: Client) -> None:
    for i in range(50):
        kv.get(f"scraped-{i % 20}")
    wait_until(lambda: prometheus.query('kv_request_duration_seconds_bucket{op="GET"}'), 20, interval=0.5)
    empty = []
    for expr in grafana_expressions():
        if not prometheus.query(expr):  # raises if Prometheus cannot evaluate it
            empty.append(expr)
    # Panels over what a healthy cluster under traffic always has show data; the others (hints,
    # repairs, a full store, clock offsets) may rightly be empty.
    always = re.compile(
        r"\b(up|kv_requests_total|kv_request_duration_seconds_bucket|kv_keys|kv_peer_up|kv_connections)\b"
    )
    assert not [expr for expr in empty if always.search(expr)], empty
    rules = prometheus.api("rules")["groups"][0]["rules"]
    assert len(rules) == 7
    for rule in rules:
        prometheus.query(rule["query"])
    wait_until(
        lambda: all(rule["health"] == "ok" for rule in prometheus.api("rules")["groups"][0]["rules"]),
        10,
        interval=0.5,
        message="every rule evaluated without error",
    )
    assert prometheus.api("alerts")["alerts"] == []  # a healthy cluster fires nothing


def test_a_killed_node_fires_the_node_down_alert(prometheus: PrometheusServer, cluster: Cluster) -> None:
    cluster.kill("node3")
    try:

        def firing() -> list[str]:
            return [
                alert["labels"]["node"]
                for alert in prometheus.api("alerts")["alerts"]
                if alert["labels"]["alertname"] == "KvNodeDown" and alert["state"] == "firing"
            ]

        assert wait_until(firing, 20, interval=0.5, message="KvNodeDown firing for node3") == ["node3"]
    finally:
        cluster.start("node3")


def test_the_compose_monitoring_profile_scrapes_the_compose_nodes(compose: ComposeProject) -> None:
    port = free_port()
    compose.env["KV_PROMETHEUS_PORT"] = str(port)
    compose.env["KV_PROMETHEUS_IMAGE"] = f"kvstore-prometheus:compose-{CHECKOUT_ID}"  # kept: the next run's cache
    compose.check("--profile", "monitoring", "up", "-d", "--build", "prometheus", timeout=300)
    try:

        def every_node_up() -> bool:
            status, body = http_get(port, "/api/v1/query?query=" + urllib.parse.quote('up{job="kvstore"}'))
            if status != 200:
                return False
            result = json.loads(body)["data"]["result"]
            return values_by_node(result) == dict.fromkeys(NODE_IDS, 1.0)

        # prometheus.yml scrapes every 15 s: the first scrape of each node comes within one interval.
        wait_until(every_node_up, 60, interval=1.0, message="the compose Prometheus to scrape node1..node3")
        status, body = http_get(port, "/api/v1/rules")
        assert status == 200 and len(json.loads(body)["data"]["groups"][0]["rules"]) == 7
    finally:
        # The whole project with the profile, volumes included; the fixture's own `down` finds it gone.
        compose.run("--profile", "monitoring", "down", "--volumes", "--remove-orphans", "--timeout", "5")
