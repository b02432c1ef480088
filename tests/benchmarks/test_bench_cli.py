"""`tritium bench` is wired into the CLI without making `tritium --help` heavier."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from benchmarks.bench import config_from_args, main
from tests.conftest import REPO_ROOT


def test_tritium_lists_bench_without_importing_it() -> None:
    code = (
        "import sys\nfrom tritium.cli import build_parser\n"
        "assert 'bench' in build_parser().format_help()\n"
        "assert 'benchmarks.bench' not in sys.modules and 'httpx' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, check=True)


def test_bench_help_lists_its_options(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    help_text = capsys.readouterr().out
    for option in ("--backend", "--workload", "--concurrency", "--request-rate", "--slo-ttft-ms"):
        assert option in help_text


def test_request_rates_and_slos_become_a_config() -> None:
    import argparse

    from benchmarks.bench import add_arguments

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(
        ["--request-rate", "2", "4.5", "--max-concurrency", "8", "--slo-ttft-ms", "250",
         "--workload", "random", "--input-range", "8:16"]
    )  # fmt: skip
    config = config_from_args(args)
    assert [(load.concurrency, load.request_rate) for load in config.loads] == [(8, 2.0), (8, 4.5)]
    assert config.slo is not None and config.slo.ttft_s == 0.25 and config.slo.tpot_s is None
    assert config.workload.input_range == (8, 16)
    assert "api_key" not in config.as_dict()


def test_a_triton_backend_needs_a_model() -> None:
    from benchmarks.bench import BenchConfig
    from benchmarks.runner import Load
    from benchmarks.workloads import WorkloadSpec

    with pytest.raises(ValueError, match="--model is required"):
        BenchConfig("triton-grpc", "127.0.0.1:8001", None, WorkloadSpec(), (Load(1),))


def bench_config(*argv: str):  # noqa: ANN201
    import argparse

    from benchmarks.bench import add_arguments

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return config_from_args(parser.parse_args(list(argv)))


def test_a_vllm_bench_serve_command_line_is_taken_as_given() -> None:
    config = bench_config(
        "--backend", "vllm", "--base-url", "http://10.1.2.3:9000", "--model", "m",
        "--dataset-name", "random", "--random-input-len", "100", "--random-output-len", "20",
        "--random-range-ratio", "0.1", "--num-prompts", "32", "--max-concurrency", "16",
        "--seed", "7", "--ignore-eos", "--goodput", "ttft:500", "tpot:50", "--temperature", "0",
        "--disable-tqdm",
    )  # fmt: skip
    assert (config.backend, config.url, config.model) == (
        "openai-completions",
        "http://10.1.2.3:9000/v1",
        "m",
    )
    assert config.workload.name == "random"
    assert config.workload.input_range == (90, 110) and config.workload.output_range == (18, 22)
    # --max-concurrency without --request-rate: a closed loop at 16, as vLLM means it.
    assert [(load.concurrency, load.request_rate, load.closed_loop) for load in config.loads] == [
        (16, None, True)
    ]
    assert config.slo is not None and (config.slo.ttft_s, config.slo.tpot_s) == (0.5, 0.05)
    assert config.extra_body == {"temperature": 0.0} and not config.progress


def test_vllm_endpoints_hosts_and_rates() -> None:
    chat = bench_config("--host", "h", "--port", "1234", "--endpoint", "/v1/chat/completions")
    assert (chat.backend, chat.url) == ("openai-chat", "http://h:1234/v1")
    everything_at_once = bench_config("--base-url", "http://h:1", "--request-rate", "inf")
    (load,) = everything_at_once.loads
    assert load.closed_loop and load.concurrency is None
    bursty = bench_config("--request-rate", "4", "--burstiness", "0.5", "--max-concurrency", "2")
    assert [(ld.request_rate, ld.burstiness, ld.concurrency) for ld in bursty.loads] == [
        (4.0, 0.5, 2)
    ]
    with pytest.raises(ValueError, match="not both"):
        bench_config("--url", "http://h/v1", "--base-url", "http://h")
    with pytest.raises(ValueError, match="closed loop"):
        bench_config("--max-concurrency", "16", "--concurrency", "1", "4")
    with pytest.raises(ValueError, match="does not speak"):
        bench_config(
            "--backend", "openai", "--base-url", "http://h", "--endpoint", "/v1/chat/completions"
        )


def test_save_result_writes_vllms_keys(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:  # noqa: ANN001
    import argparse

    from benchmarks.bench import add_arguments, save_vllm_results
    from benchmarks.metrics import RequestRecord, summarize
    from benchmarks.report import LevelResult, RunResult

    records = [
        RequestRecord(
            sent_at=0.0, input_tokens=8, output_tokens=5, chunk_times=[0.1, 0.2, 0.3], latency=0.5
        ),
        RequestRecord(sent_at=0.0, error="HTTP 500: boom"),
    ]
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(
        ["--backend", "vllm", "--model", "m", "--max-concurrency", "4", "--save-result",
         "--result-dir", str(tmp_path), "--percentile-metrics", "ttft,tpot,itl,e2el",
         "--metric-percentiles", "50,99.9", "--metadata", "machine=ci"]
    )  # fmt: skip
    config = config_from_args(args)
    run = RunResult(
        "bench",
        {"model": "m"},
        [LevelResult("c4", 4, None, summarize(records, 2.0, None), records)],
    )
    (path,) = save_vllm_results(run, config, args)
    assert path.name.startswith("bench-infqps-concurrency4-m-")
    result = json.loads(path.read_text())
    for key in (
        "date", "backend", "model_id", "tokenizer_id", "num_prompts", "request_rate", "burstiness",
        "max_concurrency", "duration", "completed", "total_input_tokens", "total_output_tokens",
        "request_throughput", "request_goodput", "output_throughput", "total_token_throughput",
        "input_lens", "output_lens", "ttfts", "itls", "errors",
        "mean_ttft_ms", "median_ttft_ms", "std_ttft_ms", "p50_ttft_ms", "p99.9_ttft_ms",
        "median_tpot_ms", "median_itl_ms", "median_e2el_ms",
    ):  # fmt: skip
        assert key in result, key
    assert (result["completed"], result["failed"], result["request_rate"]) == (1, 1, "inf")
    assert result["request_throughput"] == 0.5 and result["output_throughput"] == 2.5
    assert result["median_tpot_ms"] == pytest.approx(100.0)  # (0.5 - 0.1) / (5 - 1)
    assert result["median_itl_ms"] == pytest.approx(100.0) and result["machine"] == "ci"
    assert result["errors"] == ["", "HTTP 500: boom"]


def test_bad_vllm_values_are_refused_before_the_run(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--percentile-metrics", "ttft,latency"]) == 1
    assert "--percentile-metrics" in capsys.readouterr().err
    assert main(["--goodput", "speed:3"]) == 1
    assert "--goodput speed:3" in capsys.readouterr().err
