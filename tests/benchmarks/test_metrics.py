"""The metric math: percentiles, TTFT / TPOT / ITL definitions, goodput."""

from __future__ import annotations

import math

import numpy as np
import pytest

from benchmarks.metrics import SLO, Distribution, RequestRecord, percentile, summarize


@pytest.mark.parametrize("values", [[3.0], [1.0, 2.0], [5.0, 1.0, 4.0, 2.0, 3.0], list(range(101))])
@pytest.mark.parametrize("q", [0, 1, 50, 90, 99, 100])
def test_percentile_matches_numpy_linear_interpolation(values: list[float], q: float) -> None:
    assert percentile(values, q) == pytest.approx(float(np.percentile(values, q)))


def test_percentile_of_nothing_is_nan_and_q_is_checked() -> None:
    assert math.isnan(percentile([], 50))
    with pytest.raises(ValueError, match="0..100"):
        percentile([1.0], 101)


def record(
    chunk_times: list[float], output_tokens: int, latency: float, input_tokens: int = 10
) -> RequestRecord:
    return RequestRecord(
        sent_at=0.0, input_tokens=input_tokens, output_tokens=output_tokens,
        chunk_times=chunk_times, latency=latency,
    )  # fmt: skip


def test_ttft_tpot_and_itl_definitions() -> None:
    # 5 tokens in 3 chunks (a server that coalesces): TPOT is per token, ITL per chunk.
    done = record([0.1, 0.3, 0.6], output_tokens=5, latency=0.9)
    assert done.ttft == 0.1
    assert done.tpot == pytest.approx((0.9 - 0.1) / 4)
    assert done.inter_chunk_gaps == pytest.approx([0.2, 0.3])


def test_tpot_needs_two_tokens() -> None:
    assert record([0.1], output_tokens=1, latency=0.1).tpot is None


def test_a_request_without_usage_or_with_an_error_did_not_complete() -> None:
    assert not record([0.1], output_tokens=0, latency=0.2).ok  # no usage: not counted
    failed = record([0.1], output_tokens=3, latency=0.2)
    failed.error = "HTTP 500"
    assert not failed.ok


def test_summary_counts_tokens_from_usage_per_duration() -> None:
    records = [record([0.1, 0.2], 4, 0.5), record([0.2, 0.4], 6, 1.0, input_tokens=20)]
    records.append(RequestRecord(sent_at=0.0, error="refused"))
    summary = summarize(records, duration_s=2.0, slo=None)
    assert (summary.completed, summary.failed) == (2, 1)
    assert summary.requests_per_s == 1.0
    assert summary.output_tokens_per_s == 5.0  # (4 + 6) / 2 s, whatever the chunk count
    assert summary.total_tokens_per_s == 20.0  # (10 + 20 + 4 + 6) / 2 s
    assert summary.goodput_requests_per_s is None
    assert summary.ttft.p50_ms == pytest.approx(150.0)
    assert summary.e2e.p99_ms == pytest.approx(995.0)


def test_goodput_counts_requests_meeting_every_slo() -> None:
    fast = record([0.05, 0.06], 2, 0.07)  # TTFT 50 ms, TPOT 20 ms
    slow_start = record([0.5, 0.51], 2, 0.52)  # TTFT 500 ms
    slow_tokens = record([0.05, 0.5], 2, 0.55)  # TPOT 500 ms
    slo = SLO(ttft_s=0.2, tpot_s=0.1)
    assert [slo.met_by(r) for r in (fast, slow_start, slow_tokens)] == [True, False, False]
    summary = summarize([fast, slow_start, slow_tokens], duration_s=1.0, slo=slo)
    assert summary.goodput_requests_per_s == 1.0
    assert summary.requests_per_s == 3.0


def test_distribution_is_in_milliseconds() -> None:
    distribution = Distribution.of_seconds([0.1, 0.2, 0.3])
    assert distribution.mean_ms == pytest.approx(200.0)
    assert distribution.p50_ms == pytest.approx(200.0)
