"""compose.yaml and the Kubernetes manifests: valid against their schemas, and wired with
the ports, variables and probes of the code."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import fields
from typing import Any

import kubernetes_validate
import pytest
import yaml

from adapter.config import ENV_PREFIX, AdapterConfig
from adapter.discovery import is_dns_url, parse_dns_url
from tests.docker.deploy_files import (
    DOCKER_DIR,
    K8S_DIR,
    KSERVE_MANIFEST,
    Dockerfile,
    container_env,
    k8s_manifests,
    k8s_resources,
    load_yaml_documents,
)
from tritium.tritonserver import TritonServerOptions

KUBERNETES_VERSIONS = ["1.29.0", "1.37.0"]  # oldest we document, newest the validator knows
TRITON_DEFAULTS = {f.name: f.default for f in fields(TritonServerOptions)}
ADAPTER_SETTINGS = {ENV_PREFIX + f.name.upper() for f in fields(AdapterConfig)}
HEALTHCHECK = ["/opt/tritium/docker/healthcheck.py"]


def compose() -> dict[str, Any]:
    return yaml.safe_load((DOCKER_DIR / "compose.yaml").read_text())


def adapter_config(env: dict[str, str]) -> AdapterConfig:
    assert set(k for k in env if k.startswith(ENV_PREFIX)) <= ADAPTER_SETTINGS
    return AdapterConfig.from_env(env)


def test_compose_validates_against_the_compose_specification() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.compose-spec",
         str(DOCKER_DIR / "compose.yaml")],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_wires_the_adapter_to_triton_by_service_name() -> None:
    services = compose()["services"]
    gpu, cpu, adapter = services["triton"], services["triton-cpu"], services["adapter"]
    assert gpu["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]
    assert "deploy" not in cpu and gpu["profiles"] == ["gpu"] and cpu["profiles"] == ["cpu"]
    assert set(adapter["profiles"]) == {"gpu", "cpu"}
    env = {k: str(v) for k, v in adapter["environment"].items() if v is not None}
    env.pop("TRITIUM_API_KEYS")  # ${TRITIUM_API_KEYS:-} from the caller's environment
    config = adapter_config(env)
    (url,) = config.triton_urls
    host, port = url.rsplit(":", 1)
    for triton in (gpu, cpu):
        names = {"triton"} if triton is gpu else set(triton["networks"]["default"]["aliases"])
        assert host in names
        triton_env = triton["environment"]
        assert int(port) == int(triton_env["TRITIUM_GRPC_PORT"]) == TRITON_DEFAULTS["grpc_port"]
        assert int(triton_env["TRITIUM_HTTP_PORT"]) == TRITON_DEFAULTS["http_port"]
        assert int(triton_env["TRITIUM_METRICS_PORT"]) == TRITON_DEFAULTS["metrics_port"]
        assert triton["healthcheck"]["test"][2:] == [*HEALTHCHECK, "triton"]
        assert triton["build"]["dockerfile"] == "docker/Dockerfile.triton"
        assert triton_env["TRITIUM_MODEL_REPOSITORY"] == "/models"
    assert adapter["ports"] == [f"{config.port}:{config.port}"]
    assert adapter["healthcheck"]["test"][2:] == [*HEALTHCHECK, "adapter"]
    assert set(adapter["depends_on"]) == {"triton", "triton-cpu"}
    # The images' own defaults say the same as compose.
    image_env = Dockerfile.read("Dockerfile.adapter").env()
    assert image_env["TRITIUM_TRITON_URLS"] == url and int(image_env["TRITIUM_PORT"]) == config.port


def test_prometheus_scrapes_triton_and_the_adapter() -> None:
    config = yaml.safe_load((DOCKER_DIR / "prometheus.yml").read_text())
    targets = {
        job["job_name"]: job["static_configs"][0]["targets"] for job in config["scrape_configs"]
    }
    assert targets == {
        "triton": [f"triton:{TRITON_DEFAULTS['metrics_port']}"],
        "adapter": [f"adapter:{AdapterConfig().port}"],
    }
    volume = compose()["services"]["prometheus"]["volumes"][0]
    assert volume.startswith("./prometheus.yml:")


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_manifests_validate_against_the_kubernetes_schemas(version: str) -> None:
    manifests = k8s_manifests()
    manifests.pop(KSERVE_MANIFEST)  # a KServe custom resource: checked below
    assert manifests
    for documents in manifests.values():
        for document in documents:
            # strict: unknown fields (typos) are errors too
            kubernetes_validate.validate(document, version, strict=True)


def test_kustomization_lists_every_manifest() -> None:
    kustomization = yaml.safe_load((K8S_DIR / "kustomization.yaml").read_text())
    expected = {p.name for p in k8s_manifests() if p != KSERVE_MANIFEST}
    assert set(kustomization["resources"]) == expected
    images = {image["name"] for image in kustomization["images"]}
    used = {
        c["image"]
        for doc in k8s_resources().values()
        if doc["kind"] in ("Deployment", "Job")
        for c in doc["spec"]["template"]["spec"]["containers"]
    }
    assert used <= images


def pod_spec(kind: str, name: str) -> dict[str, Any]:
    return k8s_resources()[(kind, name)]["spec"]["template"]["spec"]


def test_every_pod_runs_as_non_root_without_service_links() -> None:
    for (kind, name), doc in k8s_resources().items():
        if kind in ("Deployment", "Job"):
            spec = doc["spec"]["template"]["spec"]
            assert spec["securityContext"]["runAsNonRoot"] is True, name
            user = int(Dockerfile.read("Dockerfile.triton").user())
            assert spec["securityContext"]["runAsUser"] == user, name
            # Service links would inject e.g. TRITIUM_ADAPTER_PORT=tcp://...
            assert spec["enableServiceLinks"] is False, name


def probe_port(container: dict[str, Any], probe: str) -> int:
    port = container[probe]["httpGet"]["port"]
    named = {p["name"]: p["containerPort"] for p in container["ports"]}
    return named.get(port, port)


def test_triton_deployment_matches_the_image_and_the_code() -> None:
    spec = pod_spec("Deployment", "triton")
    (container,) = spec["containers"]
    env = container_env(container)
    for variable, name in [
        ("TRITIUM_HTTP_PORT", "http_port"),
        ("TRITIUM_GRPC_PORT", "grpc_port"),
        ("TRITIUM_METRICS_PORT", "metrics_port"),
    ]:
        assert int(env[variable]) == TRITON_DEFAULTS[name]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {
        "http": int(env["TRITIUM_HTTP_PORT"]),
        "grpc": int(env["TRITIUM_GRPC_PORT"]),
        "metrics": int(env["TRITIUM_METRICS_PORT"]),
    }
    assert container["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    # Liveness sees a dead Python-backend stub (tests/docker/test_entrypoints.py kills one).
    assert container["livenessProbe"]["exec"]["command"] == ["python3", *HEALTHCHECK, "triton-live"]
    assert probe_port(container, "readinessProbe") == int(env["TRITIUM_HTTP_PORT"])
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert mounts["models"] == env["TRITIUM_MODEL_REPOSITORY"] and mounts["dshm"] == "/dev/shm"
    claim = next(v for v in spec["volumes"] if v["name"] == "models")["persistentVolumeClaim"]
    assert ("PersistentVolumeClaim", claim["claimName"]) in k8s_resources()
    # Triton finishes in-flight requests for exit_timeout_seconds after SIGTERM.
    assert spec["terminationGracePeriodSeconds"] > TRITON_DEFAULTS["exit_timeout_seconds"] + 10


def test_the_adapter_reaches_every_triton_pod_through_the_headless_service() -> None:
    resources = k8s_resources()
    (container,) = pod_spec("Deployment", "tritium-adapter")["containers"]
    config = adapter_config(container_env(container))
    (url,) = config.triton_urls
    assert is_dns_url(url)
    host, port = parse_dns_url(url)
    headless = resources[("Service", host)]["spec"]
    assert headless["clusterIP"] == "None"
    triton = resources[("Deployment", "triton")]
    assert headless["selector"] == triton["spec"]["selector"]["matchLabels"]
    (service_port,) = headless["ports"]
    assert service_port["port"] == port == TRITON_DEFAULTS["grpc_port"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/health/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/health"
    assert probe_port(container, "readinessProbe") == config.port == AdapterConfig().port
    service = resources[("Service", "tritium-adapter")]["spec"]
    assert service["ports"][0]["port"] == config.port


def test_the_adapter_autoscales_on_cpu() -> None:
    resources = k8s_resources()
    hpa = resources[("HorizontalPodAutoscaler", "tritium-adapter")]["spec"]
    target = hpa["scaleTargetRef"]
    assert (target["kind"], target["name"]) in resources
    (container,) = pod_spec("Deployment", "tritium-adapter")["containers"]
    assert container["resources"]["requests"]["cpu"]  # utilization needs a request
    assert hpa["minReplicas"] >= 2


def test_kserve_example_uses_the_triton_runtime_and_a_valid_container() -> None:
    (service,) = load_yaml_documents(KSERVE_MANIFEST)
    assert service["apiVersion"] == "serving.kserve.io/v1beta1"
    assert service["kind"] == "InferenceService"
    model = dict(service["spec"]["predictor"]["model"])
    assert model.pop("modelFormat") == {"name": "triton"}
    assert model.pop("runtime") == "kserve-tritonserver"
    assert model.pop("protocolVersion") == "v2"
    assert model.pop("storageUri").startswith("pvc://tritium-models/")
    env = container_env(model)
    assert env["TRITIUM_MODEL_REPOSITORY"] == "/mnt/models"  # where KServe puts storageUri
    assert int(env["TRITIUM_HTTP_PORT"]) == 8080 and int(env["TRITIUM_GRPC_PORT"]) == 9000
    (entrypoint,) = Dockerfile.read("Dockerfile.triton").exec_form("ENTRYPOINT")
    assert model["command"] == [entrypoint]
    # The rest of a KServe model spec is a core/v1 Container: validate it as one.
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "kserve-predictor"},
        "spec": {"containers": [{"name": "kserve-container", **model}]},
    }
    for version in KUBERNETES_VERSIONS:
        kubernetes_validate.validate(pod, version, strict=True)
