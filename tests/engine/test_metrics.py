"""Engine metrics: states are gauges, counts since start are counters fed by their growth."""

from __future__ import annotations

from dataclasses import dataclass

from engine.metrics import EngineMetrics


@dataclass
class SchedulerStats:
    num_running: int = 0
    num_waiting: int = 0
    num_used_blocks: int = 0
    num_total_blocks: int = 64
    prefix_cache_queries: int = 0  # since start, as the scheduler counts
    prefix_cache_hits: int = 0


class RecordingSink:
    def __init__(self) -> None:
        self.kinds: dict[str, str] = {}
        self.gauges: dict[str, float] = {}
        self.counters: dict[str, float] = {}

    def gauge(self, name: str, description: str, value: float) -> None:
        self.kinds[name] = "gauge"
        self.gauges[name] = value

    def counter(self, name: str, description: str, increment: float) -> None:
        self.kinds[name] = "counter"
        self.counters[name] = self.counters.get(name, 0.0) + increment

    def histogram(self, name: str, description: str, buckets: list[float], value: float) -> None:
        self.kinds[name] = "histogram"


def test_prefix_cache_counts_are_counters_that_grow_by_each_step() -> None:
    sink = RecordingSink()
    metrics = EngineMetrics(sink)
    stats = SchedulerStats(
        num_running=2, num_used_blocks=16, prefix_cache_queries=40, prefix_cache_hits=16
    )
    metrics.record_step(stats, num_preempted=1)
    stats.prefix_cache_queries, stats.prefix_cache_hits = 100, 64
    metrics.record_step(stats, num_preempted=0)
    assert sink.counters["tritium_prefix_cache_queries_total"] == 100
    assert sink.counters["tritium_prefix_cache_hits_total"] == 64
    assert sink.counters["tritium_requests_preempted_total"] == 1
    # Every counter is named _total and every _total is a counter (Prometheus' convention).
    for name, kind in sink.kinds.items():
        assert name.endswith("_total") == (kind == "counter"), name
    assert "tritium_prefix_cache_hit_rate" not in sink.kinds  # a rate is PromQL's job


def test_kv_cache_usage_is_a_fraction() -> None:
    sink = RecordingSink()
    metrics = EngineMetrics(sink)
    metrics.record_step(SchedulerStats(num_used_blocks=16, num_total_blocks=64), num_preempted=0)
    assert sink.gauges["tritium_kv_cache_usage_perc"] == 0.25
    metrics.record_step(SchedulerStats(num_used_blocks=64, num_total_blocks=64), num_preempted=0)
    assert sink.gauges["tritium_kv_cache_usage_perc"] == 1.0
    assert sink.gauges["tritium_kv_blocks_used"] == 64


def test_a_gauge_reaches_the_sink_when_it_changes() -> None:
    """On Triton every sink call is a round trip to the server: a step that changes
    nothing sends nothing, and a change is sent at once."""
    sink = RecordingSink()
    calls: list[str] = []
    gauge = sink.gauge
    sink.gauge = lambda name, description, value: (calls.append(name), gauge(name, description, value))  # type: ignore[method-assign]
    metrics = EngineMetrics(sink)
    stats = SchedulerStats(num_running=1, num_used_blocks=3)
    metrics.record_step(stats, num_preempted=0)
    first = len(calls)
    assert first == 5 and sink.gauges["tritium_requests_waiting"] == 0  # each gauge once, zeros too
    metrics.record_step(stats, num_preempted=0)
    assert len(calls) == first
    stats.num_used_blocks = 4
    metrics.record_step(stats, num_preempted=0)
    assert sorted(calls[first:]) == ["tritium_kv_blocks_used", "tritium_kv_cache_usage_perc"]
    assert sink.gauges["tritium_kv_blocks_used"] == 4
