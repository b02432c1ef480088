"""The monitoring examples (Grafana dashboard, PodMonitors, KEDA ScaledObject) name only
metrics the code exports, and the pods, ports and Deployments of the manifests."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from adapter.metrics import AdapterMetrics
from engine.metrics import EngineMetrics
from tests.docker.deploy_files import DOCKER_DIR, K8S_DIR, k8s_resources, load_yaml_documents

MONITORING_DIR = K8S_DIR / "monitoring"
DASHBOARD = DOCKER_DIR / "grafana" / "tritium-dashboard.json"
METRIC_NAME = re.compile(r"\b((?:tritium|process|python)_[a-z_]+)\b")


class NameSink:
    def __init__(self) -> None:
        self.names: set[str] = set()

    def gauge(self, name: str, description: str, value: float) -> None:
        self.names.add(name)

    def counter(self, name: str, description: str, increment: float) -> None:
        self.names.add(name)

    def histogram(self, name: str, description: str, buckets: list[float], value: float) -> None:
        self.names |= {f"{name}_bucket", f"{name}_sum", f"{name}_count"}


class Stats:
    num_running = num_waiting = num_used_blocks = 1
    num_total_blocks = prefix_cache_queries = prefix_cache_hits = 2


def exported_names() -> set[str]:
    """Every series name the adapter's registry and the engine's metrics produce."""
    sink = NameSink()
    engine = EngineMetrics(sink)
    engine.record_step(Stats(), num_preempted=1)
    engine.add_prompt_tokens(1)
    engine.add_generation_tokens(1)
    engine.observe_first_token(0.1)
    engine.observe_time_per_output_token(0.01)
    one = {("a:1",): 1.0}
    adapter = AdapterMetrics(
        in_flight=lambda: 0,
        endpoint_in_flight=lambda: one,
        endpoint_requests=lambda: one,
        endpoint_healthy=lambda: one,
    )
    adapter.requests.labels("/v1/completions", "POST", "200").inc()
    adapter.time_to_first_token.labels("m").observe(0.1)
    adapter.request_duration.labels("/v1/completions").observe(0.1)
    adapter.prompt_tokens.labels("m").inc()
    adapter.completion_tokens.labels("m").inc()
    names = {
        sample.name for family in adapter.registry.collect() for sample in family.samples
    }
    return sink.names | names


def queries() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    expressions = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    (scaled,) = load_yaml_documents(MONITORING_DIR / "keda-scaledobject.yaml")
    expressions += [trigger["metadata"]["query"] for trigger in scaled["spec"]["triggers"]]
    return expressions


@pytest.mark.parametrize("query", queries())
def test_queries_use_exported_metrics(query: str) -> None:
    used = set(METRIC_NAME.findall(query))
    assert used, query
    assert used <= exported_names(), used - exported_names()


def test_counters_end_in_total_and_kv_usage_is_there() -> None:
    names = exported_names()
    assert "tritium_kv_cache_usage_perc" in names
    assert {"tritium_prefix_cache_hits_total", "tritium_prefix_cache_queries_total"} <= names
    assert {"process_cpu_seconds_total", "process_resident_memory_bytes"} <= names


def pod_template(name: str) -> dict[str, Any]:
    return k8s_resources()[("Deployment", name)]["spec"]["template"]


def test_pod_monitors_select_the_pods_and_their_metrics_ports() -> None:
    monitors = load_yaml_documents(MONITORING_DIR / "podmonitors.yaml")
    assert {m["metadata"]["name"] for m in monitors} == {"triton", "tritium-adapter"}
    for monitor in monitors:
        template = pod_template(monitor["metadata"]["name"])
        labels = monitor["spec"]["selector"]["matchLabels"]
        assert labels.items() <= template["metadata"]["labels"].items()
        ports = {
            port["name"]: port["containerPort"]
            for container in template["spec"]["containers"]
            for port in container["ports"]
        }
        (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
        assert endpoint["port"] in ports and endpoint["path"] == "/metrics"
        # The same port the scrape annotations name.
        annotations = template["metadata"]["annotations"]
        assert int(annotations["prometheus.io/port"]) == ports[endpoint["port"]]


def test_keda_scales_the_triton_deployment() -> None:
    (scaled,) = load_yaml_documents(MONITORING_DIR / "keda-scaledobject.yaml")
    target = scaled["spec"]["scaleTargetRef"]
    assert ("Deployment", target["name"]) in k8s_resources() and target["name"] == "triton"
    assert scaled["spec"]["minReplicaCount"] >= 1
