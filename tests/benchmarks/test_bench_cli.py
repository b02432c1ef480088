"""`tritium bench` is wired into the CLI without making `tritium --help` heavier."""

from __future__ import annotations

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
