"""benchmarks/aiperf_agreement.py: aiperf's export read under our names, and the comparison."""

from __future__ import annotations

from pathlib import Path

from benchmarks.aiperf_agreement import agreement, aiperf_command, aiperf_summary


def export(ttft: float, itl: float, throughput: float) -> dict:
    """The parts of aiperf's profile_export_aiperf.json that we read."""
    return {
        "time_to_first_token": {"unit": "ms", "avg": ttft, "p50": ttft},
        "inter_token_latency": {"unit": "ms", "avg": itl, "p50": itl},
        "output_token_throughput": {"unit": "tokens/sec", "avg": throughput},
        "request_throughput": {"unit": "requests/sec", "avg": throughput / 32},
    }


def test_aiperf_inter_token_latency_is_compared_with_our_tpot() -> None:
    summary = aiperf_summary(export(120.0, 40.0, 96.0))
    assert summary["tpot_mean_ms"] == 40.0 and summary["ttft_p50_ms"] == 120.0
    ours = [dict(summary, tpot_mean_ms=42.0), dict(summary, tpot_mean_ms=50.0)]
    theirs = [summary, aiperf_summary(export(120.0, 40.0, 96.0))]
    rows = agreement(ours, theirs)
    assert rows["ttft_p50_ms"]["relative_difference"] == 0.0
    assert rows["tpot_mean_ms"]["tritium_bench"] == 46.0  # the median of the rounds
    assert rows["tpot_mean_ms"]["relative_difference"] == 0.15
    assert not rows["tpot_mean_ms"]["within_tolerance"]


def test_the_aiperf_command_matches_our_workload(tmp_path: Path) -> None:
    import argparse

    args = argparse.Namespace(
        aiperf="aiperf", model="m", url="http://h:1", tokenizer=tmp_path, input_len=64,
        output_len=16, concurrency=4, num_prompts=12, request_rate=None,
    )  # fmt: skip
    command = aiperf_command(args, tmp_path / "artifacts")
    pairs = dict(zip(command[2::1], command[3::1], strict=False))
    assert pairs["--synthetic-input-tokens-mean"] == "64"
    assert pairs["--synthetic-input-tokens-stddev"] == "0"
    assert pairs["--output-tokens-mean"] == "16" and pairs["--concurrency"] == "4"
    assert pairs["--extra-inputs"] == "ignore_eos:true"
    assert "--use-server-token-count" in command and "--streaming" in command
    assert "--request-rate" not in command  # closed loop, as tritium bench's Load(4)
    args.request_rate = 100.0
    paced = aiperf_command(args, tmp_path / "artifacts")
    assert paced[-4:] == ["--request-rate", "100", "--arrival-pattern", "poisson"]


def test_client_cpus_take_taskset_lists() -> None:
    import argparse

    import pytest

    from benchmarks.aiperf_agreement import cpu_list

    assert cpu_list("1") == {1}
    assert cpu_list("1,4-6") == {1, 4, 5, 6}
    with pytest.raises(argparse.ArgumentTypeError, match="CPU list"):
        cpu_list("one")


def test_the_adapters_own_clock_is_read_from_its_metrics(monkeypatch) -> None:  # noqa: ANN001
    import httpx

    from benchmarks import aiperf_agreement

    # (TTFT sum, TTFT count, chat duration sum, chat duration count), before and after
    scrapes = iter([(1.0, 10.0, 5.0, 10.0), (4.0, 20.0, 14.0, 20.0)])

    def fake_get(url: str, timeout: float) -> httpx.Response:
        ttft_sum, ttft_count, duration_sum, duration_count = next(scrapes)
        ttft, duration = aiperf_agreement.SERVER_TTFT, aiperf_agreement.SERVER_DURATION
        text = (
            f"# TYPE {ttft} histogram\n"
            f'{ttft}_count{{model="m"}} {ttft_count}\n{ttft}_sum{{model="m"}} {ttft_sum}\n'
            f"# TYPE {duration} histogram\n"
            f'{duration}_count{{route="/v1/chat/completions"}} {duration_count}\n'
            f'{duration}_sum{{route="/v1/chat/completions"}} {duration_sum}\n'
            f'{duration}_count{{route="/metrics"}} 99\n{duration}_sum{{route="/metrics"}} 9\n'
        )
        return httpx.Response(200, text=text)

    monkeypatch.setattr(httpx, "get", fake_get)
    row = aiperf_agreement.with_server_clock("http://h", 16, lambda: {"ttft_mean_ms": 290.0})
    assert row["server_ttft_mean_ms"] == 300.0  # (4 - 1) s over 10 requests
    # (9 s of durations - 3 s to first tokens) over 10 requests of 15 gaps each
    assert row["server_tpot_mean_ms"] == 40.0
