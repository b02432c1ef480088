"""Adapter metrics in the Prometheus text format (0.0.4), with a tiny registry.

prometheus_client is not a dependency of the adapter image; the three metric kinds
we need fit in this file. Engine metrics (queue, KV usage, TPOT) are Triton's
custom metrics on Triton's own /metrics; these are the HTTP side.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable, Iterable

LabelValues = tuple[str, ...]

# Seconds; TTFT of a small model on CPU is ~0.05 s, a long prompt on a busy GPU ~10 s.
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(names: tuple[str, ...], values: LabelValues, extra: str = "") -> str:
    pairs = [f'{name}="{_escape(value)}"' for name, value in zip(names, values, strict=True)]
    if extra:
        pairs.append(extra)
    return "{" + ",".join(pairs) + "}" if pairs else ""


def _number(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value)) if not float(value).is_integer() else str(int(value))


class Counter:
    kind = "counter"

    def __init__(self, name: str, help_text: str, label_names: tuple[str, ...] = ()) -> None:
        self.name, self.help_text, self.label_names = name, help_text, label_names
        self.values: dict[LabelValues, float] = {}

    def inc(self, *labels: str, amount: float = 1.0) -> None:
        self.values[labels] = self.values.get(labels, 0.0) + amount

    def samples(self) -> Iterable[str]:
        for labels, value in sorted(self.values.items()):
            yield f"{self.name}{_labels(self.label_names, labels)} {_number(value)}"


class Gauge:
    """A value read at scrape time (no bookkeeping to get wrong)."""

    kind = "gauge"

    def __init__(self, name: str, help_text: str, read: Callable[[], float]) -> None:
        self.name, self.help_text, self.read = name, help_text, read

    def samples(self) -> Iterable[str]:
        yield f"{self.name} {_number(self.read())}"


class Histogram:
    kind = "histogram"

    def __init__(
        self,
        name: str,
        help_text: str,
        label_names: tuple[str, ...] = (),
        buckets: tuple[float, ...] = LATENCY_BUCKETS,
    ) -> None:
        self.name, self.help_text, self.label_names = name, help_text, label_names
        self.buckets = tuple(sorted(buckets))
        # labels -> (count per bucket, not cumulative; last slot = above every bound), sum
        self.counts: dict[LabelValues, list[int]] = {}
        self.sums: dict[LabelValues, float] = {}

    def observe(self, value: float, *labels: str) -> None:
        counts = self.counts.setdefault(labels, [0] * (len(self.buckets) + 1))
        counts[bisect.bisect_left(self.buckets, value)] += 1
        self.sums[labels] = self.sums.get(labels, 0.0) + value

    def samples(self) -> Iterable[str]:
        for labels, counts in sorted(self.counts.items()):
            cumulative = 0
            for bound, count in zip((*self.buckets, math.inf), counts, strict=True):
                cumulative += count
                le = f'le="{_number(bound)}"'
                yield f"{self.name}_bucket{_labels(self.label_names, labels, le)} {cumulative}"
            yield f"{self.name}_sum{_labels(self.label_names, labels)} {_number(self.sums[labels])}"
            yield f"{self.name}_count{_labels(self.label_names, labels)} {cumulative}"


class LabeledGauge:
    """Values per label set, all read at scrape time."""

    kind = "gauge"

    def __init__(
        self,
        name: str,
        help_text: str,
        label_names: tuple[str, ...],
        read: Callable[[], dict[LabelValues, float]],
    ) -> None:
        self.name, self.help_text, self.label_names, self.read = name, help_text, label_names, read

    def samples(self) -> Iterable[str]:
        for labels, value in sorted(self.read().items()):
            yield f"{self.name}{_labels(self.label_names, labels)} {_number(value)}"


Metric = Counter | Gauge | Histogram | LabeledGauge

# Per Triton endpoint: (url,) -> value; see adapter.backends.EndpointStats.
EndpointValues = Callable[[], dict[LabelValues, float]]


class AdapterMetrics:
    def __init__(
        self,
        in_flight: Callable[[], float],
        endpoint_in_flight: EndpointValues = dict,
        endpoint_requests: EndpointValues = dict,
        endpoint_healthy: EndpointValues = dict,
    ) -> None:
        prefix = "tritium_adapter_"
        self.requests = Counter(
            prefix + "requests_total",
            "HTTP requests by route, method and status.",
            ("route", "method", "status"),
        )
        self.request_duration = Histogram(
            prefix + "request_duration_seconds",
            "Time to the end of the response body.",
            ("route",),
        )
        self.time_to_first_token = Histogram(
            prefix + "time_to_first_token_seconds",
            "From the request's arrival to its first generated text.",
            ("model",),
        )
        self.prompt_tokens = Counter(
            prefix + "prompt_tokens_total", "Prompt tokens of finished requests.", ("model",)
        )
        self.completion_tokens = Counter(
            prefix + "completion_tokens_total", "Generated tokens of finished requests.", ("model",)
        )
        self.in_flight = Gauge(
            prefix + "generation_requests_in_flight", "Generation requests being served.", in_flight
        )
        # How requests spread over the Triton endpoints (least-outstanding routing).
        self.endpoints = [
            LabeledGauge(
                prefix + "triton_requests_in_flight",
                "Generation requests running on each Triton endpoint.",
                ("url",),
                endpoint_in_flight,
            ),
            LabeledGauge(
                prefix + "triton_requests",
                "Generation requests sent to each Triton endpoint since start.",
                ("url",),
                endpoint_requests,
            ),
            LabeledGauge(
                prefix + "triton_endpoint_healthy",
                "1 if the Triton endpoint answered its last check, else 0.",
                ("url",),
                endpoint_healthy,
            ),
        ]
        self.all: list[Metric] = [
            self.requests,
            self.request_duration,
            self.time_to_first_token,
            self.prompt_tokens,
            self.completion_tokens,
            self.in_flight,
            *self.endpoints,
        ]

    def render(self) -> str:
        lines: list[str] = []
        for metric in self.all:
            lines.append(f"# HELP {metric.name} {metric.help_text}")
            lines.append(f"# TYPE {metric.name} {metric.kind}")
            lines.extend(metric.samples())
        return "\n".join(lines) + "\n"
