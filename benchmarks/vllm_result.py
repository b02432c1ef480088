"""One load level as `vllm bench serve --save-result` writes it: the same keys, so tools that
read vLLM's result files (dashboards, comparison scripts) read ours.

Times are milliseconds in the `*_ms` keys and seconds in the lists (`ttfts`, `itls`), as
vLLM writes them. vLLM's TPOT and ITL are ours (benchmarks/metrics.py); E2E is `e2el`.
`request_rate` is "inf" for a closed loop, like vLLM's JSON.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Sequence
from typing import Any

from benchmarks.metrics import SLO, RequestRecord, percentile

VLLM_METRICS = ("ttft", "tpot", "itl", "e2el")


def parse_percentiles(text: str) -> tuple[float, ...]:
    """`--metric-percentiles 50,90,99` -> (50.0, 90.0, 99.0)."""
    try:
        values = tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise ValueError(
            f"--metric-percentiles: numbers separated by commas, got {text!r}"
        ) from None
    if not values or not all(0 < value < 100 for value in values):
        raise ValueError(f"--metric-percentiles: each within (0, 100), got {text!r}")
    return values


def parse_metrics(text: str) -> tuple[str, ...]:
    """`--percentile-metrics ttft,tpot,itl,e2el` (vLLM's names)."""
    names = tuple(part.strip() for part in text.split(",") if part.strip())
    unknown = [name for name in names if name not in VLLM_METRICS]
    if unknown or not names:
        raise ValueError(
            f"--percentile-metrics: a comma list of {', '.join(VLLM_METRICS)}, got {text!r}"
        )
    return names


def _values_s(records: Sequence[RequestRecord], metric: str) -> list[float]:
    if metric == "ttft":
        return [record.ttft for record in records]
    if metric == "tpot":
        return [tpot for record in records if (tpot := record.tpot) is not None]
    if metric == "itl":
        return [gap for record in records for gap in record.inter_chunk_gaps]
    return [record.latency for record in records]


def _percentile_key(value: float) -> str:
    return str(int(value)) if value == int(value) else str(value)


def level_result(
    records: Sequence[RequestRecord],
    duration_s: float,
    *,
    backend: str,
    model: str,
    tokenizer: str | None,
    request_rate: float | None,
    burstiness: float,
    max_concurrency: int | None,
    slo: SLO | None,
    metrics: Sequence[str] = ("ttft", "tpot", "itl"),
    percentiles: Sequence[float] = (99.0,),
    label: str | None = None,
) -> dict[str, Any]:
    done = [record for record in records if record.ok]
    per_second = 1 / duration_s if duration_s > 0 else math.nan
    input_tokens = sum(record.input_tokens for record in done)
    output_tokens = sum(record.output_tokens for record in done)
    rate: float | str = "inf" if request_rate is None or math.isinf(request_rate) else request_rate
    result: dict[str, Any] = {
        "date": time.strftime("%Y%m%d-%H%M%S"),
        "backend": backend,
        "label": label,
        "model_id": model,
        "tokenizer_id": tokenizer or model,
        "num_prompts": len(records),
        "request_rate": rate,
        "burstiness": burstiness,
        "max_concurrency": max_concurrency,
        "duration": duration_s,
        "completed": len(done),
        "failed": len(records) - len(done),
        "total_input_tokens": input_tokens,
        "total_output_tokens": output_tokens,
        "request_throughput": len(done) * per_second,
        "request_goodput": (
            None if slo is None else sum(1 for r in done if slo.met_by(r)) * per_second
        ),
        "output_throughput": output_tokens * per_second,
        "total_token_throughput": (input_tokens + output_tokens) * per_second,
        "input_lens": [record.input_tokens for record in records],
        "output_lens": [record.output_tokens for record in records],
        "ttfts": [record.chunk_times[0] if record.chunk_times else 0.0 for record in records],
        "itls": [record.inter_chunk_gaps for record in records],
        "errors": [record.error or "" for record in records],
    }
    for metric in metrics:
        values = [value * 1000 for value in _values_s(done, metric)]
        result[f"mean_{metric}_ms"] = statistics.fmean(values) if values else math.nan
        result[f"median_{metric}_ms"] = statistics.median(values) if values else math.nan
        result[f"std_{metric}_ms"] = statistics.pstdev(values) if values else math.nan
        for value in percentiles:
            result[f"p{_percentile_key(value)}_{metric}_ms"] = percentile(values, value)
    return result


def default_filename(result: dict[str, Any], label: str | None) -> str:
    """vLLM's naming: <label or backend>-<rate>qps[-concurrency<N>]-<model>-<date>.json."""
    concurrency = result["max_concurrency"]
    parts = [
        label or result["backend"],
        f"{result['request_rate']}qps",
        *([f"concurrency{concurrency}"] if concurrency is not None else []),
        str(result["model_id"]).rsplit("/", 1)[-1],
        result["date"],
    ]
    return "-".join(parts) + ".json"
