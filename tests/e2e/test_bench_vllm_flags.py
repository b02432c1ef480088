"""`tritium bench` with `vllm bench serve`'s flags, pasted, against the real stack."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT
from tests.e2e.conftest import Stack

pytestmark = pytest.mark.e2e

# As vLLM's docs write it, with our stack's address and model put in.
VLLM_COMMAND = """\
vllm bench serve --backend vllm --base-url {base} --model {model} \
  --dataset-name random --random-input-len 32 --random-output-len 8 \
  --num-prompts 6 --max-concurrency 3 --seed 1 --ignore-eos \
  --percentile-metrics ttft,tpot,itl,e2el --metric-percentiles 50,99 \
  --save-result --result-dir {results} --disable-tqdm"""


def run_bench(arguments: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tritium", "bench", *arguments],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def test_a_pasted_vllm_bench_serve_command_runs(stack: Stack, tmp_path: Path) -> None:
    base = stack.base_url.removesuffix("/v1")
    command = VLLM_COMMAND.format(base=base, model=stack.model, results=tmp_path)
    arguments = shlex.split(command)[3:]  # what follows `vllm bench serve`
    result = run_bench(arguments)
    assert result.returncode == 0, result.stderr
    (saved,) = tmp_path.glob("*.json")
    assert saved.name.startswith("bench-infqps-concurrency3-")
    data = json.loads(saved.read_text())
    assert (data["completed"], data["num_prompts"], data["max_concurrency"]) == (6, 6, 3)
    assert data["total_output_tokens"] == 6 * 8  # --ignore-eos: exactly 8 each
    for key in ("median_ttft_ms", "p99_tpot_ms", "median_itl_ms", "p50_e2el_ms"):
        assert data[key] > 0, key
    assert data["request_throughput"] > 0 and data["output_throughput"] > 0


def test_a_sharegpt_file_is_a_workload(stack: Stack, tmp_path: Path) -> None:
    dataset = tmp_path / "sharegpt.json"
    conversations = [
        {"conversations": [
            {"from": "human", "value": f"Question {i}: what is the capital of France, and why?"},
            {"from": "gpt", "value": "Paris is the capital of France; it has been for ages."},
        ]}
        for i in range(4)
    ]  # fmt: skip
    dataset.write_text(json.dumps(conversations))
    result = run_bench(
        ["--backend", "openai-chat", "--url", stack.base_url, "--model", stack.model,
         "--dataset-name", "sharegpt", "--dataset-path", str(dataset), "--sharegpt-output-len", "6",
         "--num-prompts", "4", "--max-concurrency", "2", "--no-progress", "--warmup", "0"]
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "| bench | concurrency 2 | 4 / 0 |" in result.stdout
