"""Engine metrics, exported through a sink (Triton custom metrics inside the backend).

The engine calls these from its one thread. The sink is any object with
`gauge(name, description, value)`, `counter(name, description, increment)` and
`histogram(name, description, buckets, value)`; `None` keeps the numbers in memory
only (tests read `snapshot`).
"""

from __future__ import annotations

from typing import Any, Protocol

# Seconds. TTFT spans queueing + prefill; TPOT is the mean gap between output tokens.
TTFT_BUCKETS = [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0]
TPOT_BUCKETS = [0.005, 0.01, 0.02, 0.04, 0.06, 0.1, 0.2, 0.5, 1.0, 2.5]
# Seconds to compile a structured_outputs grammar (a regex: ms; a large JSON schema: s).
GRAMMAR_COMPILE_BUCKETS = [0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0]


class MetricSink(Protocol):
    def gauge(self, name: str, description: str, value: float) -> None: ...

    def counter(self, name: str, description: str, increment: float) -> None: ...

    def histogram(self, name: str, description: str, buckets: list[float], value: float) -> None: ...


class EngineMetrics:
    def __init__(self, sink: MetricSink | None) -> None:
        self.sink = sink
        # Latest values, readable in tests and logs without a metrics backend.
        self.snapshot: dict[str, float] = {}

    def _gauge(self, name: str, description: str, value: float) -> None:
        # Only a change reaches the sink: on Triton every update is a round trip from the
        # stub to the server (0.03-0.24 ms on 2 cores, `python -m
        # benchmarks.triton_round_trips`), and the engine sets its gauges every step.
        if name in self.snapshot and self.snapshot[name] == value:
            return
        self.snapshot[name] = value
        if self.sink is not None:
            self.sink.gauge(name, description, value)

    def _counter(self, name: str, description: str, increment: float) -> None:
        self.snapshot[name] = self.snapshot.get(name, 0.0) + increment
        if self.sink is not None and increment:
            self.sink.counter(name, description, increment)

    def record_step(self, stats: Any, num_preempted: int) -> None:
        """After a step; `stats` is the `Scheduler` (its counting properties). Values that
        only grow are counters (Prometheus takes rates of them); states are gauges."""
        self._gauge("tritium_requests_running", "Sequences in the running batch", stats.num_running)
        self._gauge("tritium_requests_waiting", "Sequences waiting for admission", stats.num_waiting)
        self._counter(
            "tritium_requests_preempted_total", "Sequences preempted (KV recomputed)", num_preempted
        )
        used, total = stats.num_used_blocks, stats.num_total_blocks
        self._gauge("tritium_kv_blocks_used", "KV cache blocks in use", used)
        self._gauge("tritium_kv_blocks_capacity", "KV cache blocks in all", total)
        self._gauge(
            "tritium_kv_cache_usage_perc",
            "Fraction of the KV cache in use, 0..1 (vLLM's kv_cache_usage_perc)",
            used / total if total else 0.0,
        )
        # The scheduler counts since start; the counters grow by what this step added.
        self._counter_to(
            "tritium_prefix_cache_queries_total",
            "Prompt tokens looked up in the prefix cache",
            stats.prefix_cache_queries,
        )
        self._counter_to(
            "tritium_prefix_cache_hits_total",
            "Prompt tokens found in the prefix cache",
            stats.prefix_cache_hits,
        )

    def _counter_to(self, name: str, description: str, total: float) -> None:
        """Bring counter `name` up to `total`, a count kept elsewhere since start."""
        self._counter(name, description, total - self.snapshot.get(name, 0.0))

    def add_prompt_tokens(self, count: int) -> None:
        self._counter("tritium_prompt_tokens_total", "Prompt tokens admitted", count)

    def add_generation_tokens(self, count: int) -> None:
        self._counter("tritium_generation_tokens_total", "Tokens generated", count)

    def observe_first_token(self, seconds: float) -> None:
        self.snapshot["tritium_last_time_to_first_token_seconds"] = seconds
        if self.sink is not None:
            self.sink.histogram(
                "tritium_time_to_first_token_seconds",
                "Arrival to first output token",
                TTFT_BUCKETS,
                seconds,
            )

    def observe_time_per_output_token(self, seconds: float) -> None:
        if self.sink is not None:
            self.sink.histogram(
                "tritium_time_per_output_token_seconds",
                "Mean time between output tokens of a finished sequence",
                TPOT_BUCKETS,
                seconds,
            )

    def observe_structured_request(self, compile_seconds: float | None) -> None:
        """A request with structured_outputs was admitted; `compile_seconds` is None when
        its grammar came from the cache. Recorded on the engine thread, at admission."""
        self._counter(
            "tritium_structured_output_requests_total", "Requests with structured_outputs", 1
        )
        if compile_seconds is None:
            self._counter(
                "tritium_grammar_cache_hits_total", "Grammars found in the compiled-grammar cache", 1
            )
            return
        self._counter(
            "tritium_grammar_cache_misses_total", "Grammars compiled (not in the cache)", 1
        )
        self.snapshot["tritium_last_grammar_compile_seconds"] = compile_seconds
        if self.sink is not None:
            self.sink.histogram(
                "tritium_grammar_compile_seconds",
                "Time to compile a structured_outputs grammar (off the engine thread)",
                GRAMMAR_COMPILE_BUCKETS,
                compile_seconds,
            )
