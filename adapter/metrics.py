"""The adapter's Prometheus metrics, with prometheus_client.

One registry per app (tests build many apps in one process): the HTTP side of serving
(requests, TTFT as the client sees it, tokens), the routing over Triton endpoints, and
the process (CPU, memory, file descriptors, GC). Engine metrics (queue, KV usage, TPOT)
are Triton custom metrics on Triton's own /metrics; docs/deploy.md maps both to vLLM's
names.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

# Seconds; TTFT of a small model on CPU is ~0.05 s, a long prompt on a busy GPU ~10 s.
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
CONTENT_TYPE = CONTENT_TYPE_LATEST
PREFIX = "tritium_adapter_"

# Per Triton endpoint: (url,) -> value; see adapter.backends.EndpointStats.
EndpointValues = Callable[[], dict[tuple[str, ...], float]]


class AdapterMetrics:
    def __init__(
        self,
        in_flight: Callable[[], float],
        endpoint_in_flight: EndpointValues = dict,
        endpoint_requests: EndpointValues = dict,
        endpoint_healthy: EndpointValues = dict,
    ) -> None:
        self.registry = CollectorRegistry()
        for collector in (ProcessCollector, PlatformCollector, GCCollector):
            collector(registry=self.registry)
        # Counters are declared without `_total`: prometheus_client adds it.
        self.requests = Counter(
            PREFIX + "requests",
            "HTTP requests by route, method and status.",
            ("route", "method", "status"),
            registry=self.registry,
        )
        self.request_duration = Histogram(
            PREFIX + "request_duration_seconds",
            "Time to the end of the response body.",
            ("route",),
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.time_to_first_token = Histogram(
            PREFIX + "time_to_first_token_seconds",
            "From the request's arrival to its first generated text.",
            ("model",),
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.prompt_tokens = Counter(
            PREFIX + "prompt_tokens",
            "Prompt tokens of finished requests.",
            ("model",),
            registry=self.registry,
        )
        self.completion_tokens = Counter(
            PREFIX + "completion_tokens",
            "Generated tokens of finished requests.",
            ("model",),
            registry=self.registry,
        )
        self.in_flight = Gauge(
            PREFIX + "generation_requests_in_flight",
            "Generation requests being served.",
            registry=self.registry,
        )
        self.in_flight.set_function(in_flight)
        self.registry.register(
            _EndpointCollector(endpoint_in_flight, endpoint_requests, endpoint_healthy)
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _EndpointCollector:
    """How requests spread over the Triton endpoints (least-outstanding routing), read
    from the backends at scrape time."""

    def __init__(
        self, in_flight: EndpointValues, requests: EndpointValues, healthy: EndpointValues
    ) -> None:
        self.in_flight, self.requests, self.healthy = in_flight, requests, healthy

    def describe(self) -> list[Metric]:
        return []  # label values are known at scrape time only

    def collect(self) -> Iterator[Metric]:
        in_flight = GaugeMetricFamily(
            PREFIX + "triton_requests_in_flight",
            "Generation requests running on each Triton endpoint.",
            labels=("url",),
        )
        requests = CounterMetricFamily(
            PREFIX + "triton_requests",
            "Generation requests sent to each Triton endpoint since start.",
            labels=("url",),
        )
        healthy = GaugeMetricFamily(
            PREFIX + "triton_endpoint_healthy",
            "1 if the Triton endpoint answered its last check, else 0.",
            labels=("url",),
        )
        for family, read in ((in_flight, self.in_flight), (requests, self.requests)):
            for labels, value in sorted(read().items()):
                family.add_metric(list(labels), value)
        for labels, value in sorted(self.healthy().items()):
            healthy.add_metric(list(labels), value)
        yield from (in_flight, requests, healthy)
