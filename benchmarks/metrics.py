"""Serving metrics as the field defines them (vLLM's `bench serve`; genai-perf and aiperf
name two of them otherwise: their "inter-token latency" is our TPOT, and aiperf's
"inter-chunk latency" is our ITL; docs/benchmarks.md has the table).

Per request, times are seconds from the moment the request was sent:

- TTFT (time to first token): until the first chunk that carries output text.
- E2E latency: until the response ended (the last byte, `[DONE]` or the final response).
- TPOT (time per output token): (E2E - TTFT) / (output tokens - 1); defined only for
  requests with at least two output tokens. One value per request.
- ITL (inter-token latency): the gaps between consecutive chunks that carry text, pooled
  over all requests. A chunk may carry several tokens (a server that coalesces), so ITL
  is per chunk and TPOT is per token; both are reported.

Output and input token counts come from the server's `usage` (or the Triton contract's
num_output_tokens / num_input_tokens), never from counting SSE frames.

Goodput: completed requests per second that met every SLO given (TTFT, TPOT, E2E).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

PERCENTILES = (50, 90, 99)


@dataclass
class RequestRecord:
    """What the client saw of one request."""

    sent_at: float  # perf_counter when the request was sent
    input_tokens: int = 0  # from usage.prompt_tokens (or num_input_tokens)
    output_tokens: int = 0  # from usage.completion_tokens (or num_output_tokens)
    # Seconds from sent_at to each chunk that carried output text.
    chunk_times: list[float] = field(default_factory=list)
    latency: float = 0.0  # seconds from sent_at to the end of the response
    error: str | None = None  # why the request failed; None when it succeeded

    @property
    def ok(self) -> bool:
        return self.error is None and self.output_tokens > 0 and bool(self.chunk_times)

    @property
    def ttft(self) -> float:
        return self.chunk_times[0]

    @property
    def tpot(self) -> float | None:
        if self.output_tokens < 2:
            return None
        return (self.latency - self.ttft) / (self.output_tokens - 1)

    @property
    def inter_chunk_gaps(self) -> list[float]:
        times = self.chunk_times
        return [later - earlier for earlier, later in zip(times, times[1:], strict=False)]


@dataclass(frozen=True)
class SLO:
    """Service-level objectives for goodput; None means no bound on that metric."""

    ttft_s: float | None = None
    tpot_s: float | None = None
    e2e_s: float | None = None

    def met_by(self, record: RequestRecord) -> bool:
        if not record.ok:
            return False
        tpot = record.tpot
        return (
            (self.ttft_s is None or record.ttft <= self.ttft_s)
            and (self.tpot_s is None or tpot is None or tpot <= self.tpot_s)
            and (self.e2e_s is None or record.latency <= self.e2e_s)
        )


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) with linear interpolation between closest ranks
    (numpy's default method), so results match what other tools report."""
    if not values:
        return math.nan
    if not 0 <= q <= 100:
        raise ValueError(f"percentile q must be within 0..100, got {q}")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    lower = math.floor(rank)
    upper = min(lower + 1, len(ordered) - 1)
    return ordered[lower] + (ordered[upper] - ordered[lower]) * (rank - lower)


@dataclass(frozen=True)
class Distribution:
    """Mean and percentiles of one latency metric, in milliseconds."""

    mean_ms: float
    p50_ms: float
    p90_ms: float
    p99_ms: float

    @classmethod
    def of_seconds(cls, values: Sequence[float]) -> Distribution:
        mean = sum(values) / len(values) if values else math.nan
        p50, p90, p99 = (percentile(values, q) * 1000 for q in PERCENTILES)
        return cls(mean_ms=mean * 1000, p50_ms=p50, p90_ms=p90, p99_ms=p99)


@dataclass(frozen=True)
class Summary:
    """One load level's results."""

    completed: int
    failed: int
    duration_s: float  # first request sent .. last response ended
    requests_per_s: float
    output_tokens_per_s: float
    total_tokens_per_s: float  # input + output tokens per second
    mean_input_tokens: float
    mean_output_tokens: float
    goodput_requests_per_s: float | None  # None when no SLO was given
    ttft: Distribution
    tpot: Distribution
    itl: Distribution
    e2e: Distribution

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def summarize(records: Sequence[RequestRecord], duration_s: float, slo: SLO | None) -> Summary:
    """Aggregate the records of one load level measured over ``duration_s`` seconds."""
    done = [record for record in records if record.ok]
    output_tokens = sum(record.output_tokens for record in done)
    input_tokens = sum(record.input_tokens for record in done)
    per_second = 1 / duration_s if duration_s > 0 else math.nan
    goodput = None
    if slo is not None:
        goodput = sum(1 for record in done if slo.met_by(record)) * per_second
    tpots = [tpot for record in done if (tpot := record.tpot) is not None]
    gaps = [gap for record in done for gap in record.inter_chunk_gaps]
    return Summary(
        completed=len(done),
        failed=len(records) - len(done),
        duration_s=duration_s,
        requests_per_s=len(done) * per_second,
        output_tokens_per_s=output_tokens * per_second,
        total_tokens_per_s=(input_tokens + output_tokens) * per_second,
        mean_input_tokens=input_tokens / len(done) if done else math.nan,
        mean_output_tokens=output_tokens / len(done) if done else math.nan,
        goodput_requests_per_s=goodput,
        ttft=Distribution.of_seconds([record.ttft for record in done]),
        tpot=Distribution.of_seconds(tpots),
        itl=Distribution.of_seconds(gaps),
        e2e=Distribution.of_seconds([record.latency for record in done]),
    )
