"""deploy/k8s: every manifest valid against the Kubernetes schemas (kubernetes-validate, which bundles
them: no network), and the manifests in agreement with each other, with compose.yaml (ports, probes,
variables), with the node's configuration rules and with the image."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from prometheus_client import CollectorRegistry

from service.config import SETTINGS, load_config
from service.http import make_app

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "deploy" / "k8s"
KUBERNETES_VERSION = "1.30"
CRDS = {"ServiceMonitor"}  # the Prometheus Operator's: no schema in kubernetes-validate
JOIN_SETTINGS = {"KV_SEEDS", "KV_AUTO_JOIN"}  # read by the join step of issue 10 once it lands


def manifests() -> list[dict[str, Any]]:
    documents = []
    for path in sorted(K8S.glob("*.yaml")):
        if path.name != "kustomization.yaml":
            documents += [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
    return documents


def kind(name: str) -> dict[str, Any]:
    (found,) = [doc for doc in manifests() if doc["kind"] == name]
    return found


def services() -> dict[str, dict[str, Any]]:
    return {doc["metadata"]["name"]: doc for doc in manifests() if doc["kind"] == "Service"}


def container() -> dict[str, Any]:
    (only,) = kind("StatefulSet")["spec"]["template"]["spec"]["containers"]
    return only


def pod_environment(pod: str) -> dict[str, str]:
    """The container's variables as Kubernetes gives them to pod ``pod`` ($(VAR) expanded)."""
    environ: dict[str, str] = {}
    for variable in container()["env"]:
        if "valueFrom" in variable:
            assert variable["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
            environ[variable["name"]] = pod
        else:
            environ[variable["name"]] = re.sub(r"\$\((\w+)\)", lambda m: environ[m.group(1)], str(variable["value"]))
    return environ


def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((REPO / "compose.yaml").read_text())
    return loaded


def compose_default(value: str) -> str:
    """A compose value with ``${VAR:-default}`` read as its default."""
    return re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", str(value))


# --- schemas ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("document", manifests(), ids=lambda doc: f"{doc['kind']}/{doc['metadata']['name']}")
def test_every_manifest_is_valid_against_the_kubernetes_schemas(document: dict[str, Any]) -> None:
    if document["kind"] in CRDS:
        with pytest.raises(kubernetes_validate.SchemaNotFoundError):
            kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)
        return
    kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)  # raises ValidationError


def test_a_wrong_manifest_is_refused() -> None:
    """The validation above can fail: a misspelt field is an error."""
    broken = kind("StatefulSet")
    broken["spec"]["replica"] = broken["spec"].pop("replicas")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)


def test_the_kustomization_lists_every_manifest() -> None:
    listed = yaml.safe_load((K8S / "kustomization.yaml").read_text())["resources"]
    assert sorted(listed) == sorted(path.name for path in K8S.glob("*.yaml") if path.name != "kustomization.yaml")


def test_the_service_monitor_has_what_the_operator_needs() -> None:
    monitor = kind("ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    peers = services()["kvstore-peers"]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= peers["metadata"]["labels"].items()
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] in {port["name"] for port in peers["spec"]["ports"]}
    assert endpoint["path"] == "/metrics"
    assert endpoint["scheme"] == ("https" if pod_environment("kvstore-0")["KV_TLS_MODE"] == "required" else "http")
    labels = {relabel["targetLabel"]: relabel for relabel in endpoint["relabelings"]}
    assert labels["job"]["replacement"] == "kvstore"  # what alerts.yml selects
    assert labels["node"]["sourceLabels"] == ["__meta_kubernetes_pod_name"]  # what alerts.yml groups by


# --- the manifests agree with each other ----------------------------------------------------------


def test_services_and_budget_select_the_pods_and_name_their_ports() -> None:
    statefulset = kind("StatefulSet")
    pod_labels = statefulset["spec"]["template"]["metadata"]["labels"]
    port_names = {port["name"] for port in container()["ports"]}
    for service in services().values():
        assert service["spec"]["selector"].items() <= pod_labels.items()
        assert {port["targetPort"] for port in service["spec"]["ports"]} <= port_names
    assert kind("PodDisruptionBudget")["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert kind("PodDisruptionBudget")["spec"]["maxUnavailable"] == 1


def test_peers_find_each_other_by_the_statefulsets_stable_names() -> None:
    statefulset = kind("StatefulSet")
    name, service = statefulset["metadata"]["name"], statefulset["spec"]["serviceName"]
    peers = services()[service]
    assert peers["spec"]["clusterIP"] == "None"  # headless: one DNS name per pod
    assert peers["spec"]["publishNotReadyAddresses"] is True  # peers are found before they are ready
    assert statefulset["spec"]["podManagementPolicy"] == "Parallel"
    environ = pod_environment(f"{name}-0")
    replicas = statefulset["spec"]["replicas"]
    expected = [f"{name}-{i}={name}-{i}.{service}:{environ['KV_PORT']}" for i in range(replicas)]
    assert environ["KV_PEERS"].split(",") == expected
    assert environ["KV_SEEDS"].split(",") == [entry.split("=")[1] for entry in expected]
    assert environ["KV_AUTO_JOIN"] == "false"  # founders form the cluster; see the next test
    assert int(environ["FOUNDERS"]) == replicas
    # Each node's certificate names its peer DNS name (make_secrets --nodes kvstore-0.kvstore-peers,...).
    assert environ["KV_TLS_CERT"] == f"/secrets/{name}-0.{service}.crt"
    assert environ["KV_TLS_KEY"] == f"/secrets/{name}-0.{service}.key"


def environment_after_command(pod: str) -> dict[str, str]:
    """The ``KV_*`` variables the node process of pod ``pod`` starts with: the manifest's, as the
    container's shell command changes them (run here with ``env`` in place of the node)."""
    command, args = container()["command"], container()["args"]
    assert command == ["/bin/sh", "-c"] and len(args) == 1
    script = args[0].replace("exec python3 -m service", "exec env")
    assert script != args[0], "the command no longer ends by starting the node"
    printed = subprocess.run(
        ["/bin/sh", "-c", script], env=pod_environment(pod), capture_output=True, text=True, check=True, timeout=10
    ).stdout
    pairs = (line.split("=", 1) for line in printed.splitlines() if line.startswith("KV_"))
    return dict(pairs)


def test_a_founder_forms_and_a_pod_beyond_them_joins_through_the_seeds() -> None:
    founder = environment_after_command("kvstore-2")
    assert founder == {name: value for name, value in pod_environment("kvstore-2").items() if name.startswith("KV_")}
    assert load_config(founder).auto_join is False
    joiner = environment_after_command("kvstore-3")
    assert joiner["KV_PEERS"] == "kvstore-3=kvstore-3.kvstore-peers:5000"  # only itself, as a joining node
    assert joiner["KV_AUTO_JOIN"] == "true"
    config = load_config(joiner)  # raises ConfigError naming every problem
    assert config.auto_join and config.node_id == "kvstore-3"
    assert config.seeds == tuple(founder["KV_SEEDS"].split(","))
    assert joiner["KV_TLS_CERT"] == "/secrets/kvstore-3.kvstore-peers.crt"  # make_secrets names kvstore-0..5


@pytest.mark.parametrize("pod", ["kvstore-0", "kvstore-2"])
def test_an_initial_pod_has_a_configuration_the_node_accepts(pod: str) -> None:
    environ = {name: value for name, value in pod_environment(pod).items() if name.startswith("KV_")}
    config = load_config(environ)  # raises ConfigError naming every problem
    assert config.node_id == pod
    assert config.storage_limit_bytes < 5 * 1024**3  # below the volume claim, so the store fills first
    claim = kind("StatefulSet")["spec"]["volumeClaimTemplates"][0]
    assert claim["spec"]["resources"]["requests"]["storage"] == "5Gi"
    known = {setting.name for setting in SETTINGS} | JOIN_SETTINGS
    assert set(environ) <= known, set(environ) - known


def test_the_pods_run_as_the_images_non_root_user() -> None:
    security = kind("StatefulSet")["spec"]["template"]["spec"]["securityContext"]
    assert security["runAsNonRoot"] is True
    uid = re.search(r"useradd [^\n]*--uid (\d+)", (REPO / "Dockerfile").read_text())
    assert uid is not None
    assert security["runAsUser"] == security["fsGroup"] == int(uid.group(1))
    assert container()["securityContext"]["allowPrivilegeEscalation"] is False


# --- the manifests agree with compose ---------------------------------------------------------------


def test_ports_agree_with_compose() -> None:
    compose_environ = compose()["x-node-environment"]
    ports = {port["name"]: port["containerPort"] for port in container()["ports"]}
    environ = pod_environment("kvstore-0")
    for variable, name in (("KV_PORT", "protocol"), ("KV_HTTP_PORT", "http"), ("KV_RESP_PORT", "redis")):
        assert int(compose_default(compose_environ[variable])) == ports[name] == int(environ[variable])


def test_variables_agree_with_compose() -> None:
    environ = pod_environment("kvstore-0")
    per_node = {"KV_PEERS", "KV_NODE_ID", "KV_TLS_CERT", "KV_TLS_KEY"}  # different by design
    for variable, value in compose()["x-node-environment"].items():
        assert variable in environ, f"{variable} is set in compose.yaml but not in the StatefulSet"
        if variable not in per_node:
            assert environ[variable] == compose_default(value), variable
    node1 = compose()["services"]["node1"]["environment"]
    assert {name for name in node1 if name not in compose()["x-node-environment"]} <= set(environ)


def test_probes_agree_with_compose() -> None:
    check = compose()["x-node"]["healthcheck"]
    assert check["test"] == ["CMD", "python3", "-m", "service.healthcheck"]  # which asks /readyz
    readiness, liveness, startup = (container()[probe] for probe in ("readinessProbe", "livenessProbe", "startupProbe"))
    scheme = "HTTPS" if pod_environment("kvstore-0")["KV_TLS_MODE"] == "required" else "HTTP"
    assert readiness["httpGet"] == {"path": "/readyz", "port": "http", "scheme": scheme}
    assert readiness["periodSeconds"] == int(check["interval"].rstrip("s"))
    assert readiness["timeoutSeconds"] == int(check["timeout"].rstrip("s"))
    assert readiness["failureThreshold"] == check["retries"]
    assert startup["periodSeconds"] * startup["failureThreshold"] == int(check["start_period"].rstrip("s"))
    for probe in (liveness, startup):
        assert probe["httpGet"] == {"path": "/livez", "port": "http", "scheme": scheme}


@pytest.mark.parametrize("path", ["/livez", "/readyz"])
def test_the_probed_paths_are_served(path: str) -> None:
    statuses: list[str] = []
    app = make_app(CollectorRegistry(), lambda: "storage full", lambda: None)
    body = b"".join(app({"PATH_INFO": path}, lambda status, headers: statuses.append(status)))
    assert statuses == ["200 OK"], body  # /livez stays 200 though /healthz would say 503 here
