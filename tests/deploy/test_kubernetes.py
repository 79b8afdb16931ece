"""deploy/kubernetes: valid against the Kubernetes schemas, and consistent with the gateway."""

from __future__ import annotations

import shutil
import socket
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import kubernetes_validate
import pytest
import yaml

from flask_inference_gateway.settings import SETTINGS, Settings
from tests.conftest import ROOT

HERE = ROOT / "deploy" / "kubernetes"
MANIFESTS = sorted(p for p in HERE.iterdir()
                   if p.suffix in (".yaml", ".yml") and p.stem != "kustomization")
# The oldest schemas the test extra's kubernetes-validate>=1.28 ships, and the newest
# the installed one does.
VERSIONS = sorted({"1.28", kubernetes_validate.latest_version()})


def load(path: Path) -> list[dict[str, Any]]:
    """Return the documents of one YAML file (empty ones left out)."""
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


DOCS = [(path.name, doc) for path in MANIFESTS for doc in load(path)]


def one(kind: str, name: str | None = None) -> dict[str, Any]:
    """Return the only manifest of ``kind`` (named ``name`` when given)."""
    found = [doc for _, doc in DOCS if doc["kind"] == kind
             and (name is None or doc["metadata"]["name"] == name)]
    assert len(found) == 1, f"{len(found)} {kind} {name or ''}"
    return found[0]


def gateway() -> dict[str, Any]:
    return one("Deployment", "gateway")


def pod_labels(workload: dict[str, Any]) -> dict[str, str]:
    return workload["spec"]["template"]["metadata"]["labels"]


def container(workload: dict[str, Any]) -> dict[str, Any]:
    (only,) = workload["spec"]["template"]["spec"]["containers"]
    return only


def config() -> dict[str, str]:
    return one("ConfigMap", "gateway-config")["data"]


def matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and selector.items() <= labels.items()


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make every outgoing connection fail: what runs must work offline."""

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise OSError("no network in this test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


# --- schemas -----------------------------------------------------------------------------

def test_every_manifest_is_listed_and_every_listed_one_exists() -> None:
    kustomization = yaml.safe_load((HERE / "kustomization.yaml").read_text())
    listed = kustomization["resources"]
    assert len(listed) == len(set(listed))
    assert sorted(listed) == [path.name for path in MANIFESTS]


@pytest.mark.usefixtures("no_network")
@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("doc", [doc for _, doc in DOCS],
                         ids=[f"{name}:{doc['kind']}" for name, doc in DOCS])
def test_each_manifest_validates_strictly_offline(doc: dict[str, Any], version: str) -> None:
    kubernetes_validate.validate(doc, version, strict=True)


@pytest.mark.usefixtures("no_network")
def test_the_validation_is_strict() -> None:
    service = yaml.safe_load((HERE / "gateway-service.yaml").read_text())
    service["spec"]["ports"][0]["targetPotr"] = "http"
    latest = kubernetes_validate.latest_version()
    kubernetes_validate.validate(service, latest, strict=False)  # unknown fields pass here
    with pytest.raises(kubernetes_validate.ValidationError, match="targetPotr"):
        kubernetes_validate.validate(service, latest, strict=True)


def test_kustomize_renders_every_manifest() -> None:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not on PATH: kustomize rendering not checked")
    done = subprocess.run([kubectl, "kustomize", str(HERE)], capture_output=True, text=True,
                          timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    rendered = [doc for doc in yaml.safe_load_all(done.stdout) if doc]
    names = sorted((doc["kind"], doc["metadata"]["name"]) for doc in rendered)
    assert names == sorted((doc["kind"], doc["metadata"]["name"]) for _, doc in DOCS)
    deployment = next(doc for doc in rendered if doc["kind"] == "Deployment")
    assert container(deployment)["image"] == "flask-inference-gateway:0.1.0"


# --- the gateway's pods ------------------------------------------------------------------

def test_probes_are_readyz_and_healthz_on_the_served_port() -> None:
    gateway_container = container(gateway())
    (port,) = gateway_container["ports"]
    assert port["containerPort"] == int(config()["GATEWAY_BIND"].rsplit(":", 1)[1])
    for probe, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")):
        assert gateway_container[probe]["httpGet"] == {"path": path, "port": port["name"]}


def test_the_pod_outlives_its_drain() -> None:
    spec = gateway()["spec"]["template"]["spec"]
    graceful = Settings.from_mapping(config()).graceful_timeout
    pre_stop = container(gateway())["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    # Kubernetes counts the preStop sleep inside the grace period.
    assert spec["terminationGracePeriodSeconds"] > int(pre_stop[1]) + graceful


def test_prometheus_scrapes_the_metrics_path_of_the_pod() -> None:
    annotations = gateway()["spec"]["template"]["metadata"]["annotations"]
    (port,) = container(gateway())["ports"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == str(port["containerPort"])
    assert annotations["prometheus.io/path"] == "/metrics"


def test_every_container_has_requests_and_limits() -> None:
    for _, doc in DOCS:
        if doc["kind"] in ("Deployment", "StatefulSet"):
            resources = container(doc)["resources"]
            assert resources["requests"] and resources["limits"], doc["metadata"]["name"]


def test_the_env_comes_from_the_configmap_and_the_secret() -> None:
    sources = container(gateway())["envFrom"]
    assert [s["configMapRef"]["name"] for s in sources if "configMapRef" in s] == [
        one("ConfigMap")["metadata"]["name"]]
    assert [s["secretRef"]["name"] for s in sources if "secretRef" in s] == [
        one("Secret")["metadata"]["name"]]
    secret = one("Secret")
    Settings.from_mapping({**config(), **secret.get("stringData", {})})  # every value parses


def test_every_gateway_variable_is_a_real_setting() -> None:
    used = set(config()) | set(one("Secret").get("stringData", {})) | set(
        one("Secret").get("data", {}))
    for _, doc in DOCS:
        if doc["kind"] in ("Deployment", "StatefulSet"):
            used |= {env["name"] for env in container(doc).get("env", [])}
    gateway_names = {name for name in used if name.startswith("GATEWAY_")}
    assert {"GATEWAY_METRICS_TOKEN", "GATEWAY_API_KEYS", "GATEWAY_REDIS_URL"} <= gateway_names
    assert gateway_names - {s.name for s in SETTINGS} == set()


# --- what selects what -------------------------------------------------------------------

def test_the_service_and_the_budget_select_the_gateway_pods() -> None:
    labels = pod_labels(gateway())
    assert gateway()["spec"]["selector"]["matchLabels"].items() <= labels.items()
    service = one("Service", "gateway")
    assert matches(service["spec"]["selector"], labels)
    assert service["spec"]["ports"][0]["targetPort"] == container(gateway())["ports"][0]["name"]
    budget = one("PodDisruptionBudget")
    assert budget["spec"]["selector"]["matchLabels"] == gateway()["spec"]["selector"]["matchLabels"]
    assert matches(budget["spec"]["selector"]["matchLabels"], labels)


def test_the_autoscaler_scales_the_gateway_on_cpu() -> None:
    spec = one("HorizontalPodAutoscaler")["spec"]
    assert spec["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                      "name": gateway()["metadata"]["name"]}
    assert 2 <= spec["minReplicas"] <= spec["maxReplicas"]
    assert [m["resource"]["name"] for m in spec["metrics"]] == ["cpu"]
    assert "replicas" not in gateway()["spec"]  # the autoscaler owns the count


def test_ollama_backends_are_every_pod_of_a_headless_service() -> None:
    url = urlsplit(config()["GATEWAY_OLLAMA_URL"].removeprefix("dns+"))
    assert config()["GATEWAY_OLLAMA_URL"].startswith("dns+http://")
    service = one("Service", url.hostname)
    assert service["spec"]["clusterIP"] == "None"
    assert url.port in [port["port"] for port in service["spec"]["ports"]]
    ollama = one("StatefulSet", "ollama")
    assert matches(service["spec"]["selector"], pod_labels(ollama))
    assert ollama["spec"]["serviceName"] == service["metadata"]["name"]
    assert container(ollama)["resources"]["limits"]["nvidia.com/gpu"] == 1


def test_the_backend_cap_is_what_each_gpu_runs_at_once() -> None:
    env = {e["name"]: e["value"] for e in container(one("StatefulSet", "ollama"))["env"]}
    assert config()["GATEWAY_BACKEND_MAX_CONCURRENCY"] == env["OLLAMA_NUM_PARALLEL"]
    assert config()["GATEWAY_REDIS_URL"]  # so the cap holds for the whole fleet


def test_redis_is_where_the_gateway_looks_for_it() -> None:
    url = urlsplit(config()["GATEWAY_REDIS_URL"])
    assert url.scheme == "redis" and config()["GATEWAY_KEYS_BACKEND"] == "redis"
    service = one("Service", url.hostname)
    assert url.port in [port["port"] for port in service["spec"]["ports"]]
    redis = one("StatefulSet", "redis")
    assert matches(service["spec"]["selector"], pod_labels(redis))
    assert redis["spec"]["volumeClaimTemplates"]  # API keys survive a restart
