"""The null model served by the real stack (`tritium serve` on free ports), and a
`tritium bench` smoke run through the adapter against it."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from benchmarks.null_model import write_null_repository
from benchmarks.stack import REPO_ROOT, Endpoints, tritium_stack
from tests.stress.final_hangups import one_run

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def null_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Endpoints]:
    repository = write_null_repository(
        tmp_path_factory.mktemp("null_repository"), {"null-1": 1, "null-4": 4}
    )
    with tritium_stack(
        repository, tmp_path_factory.mktemp("logs"), startup_timeout_s=120
    ) as endpoints:
        yield endpoints


def test_chat_request_has_the_right_usage(null_stack: Endpoints) -> None:
    body = {
        "model": "null-4",
        "messages": [{"role": "user", "content": "one two three"}],
        "max_tokens": 10,
    }
    reply = httpx.post(f"{null_stack.openai_url}/chat/completions", json=body, timeout=30).json()
    assert reply["choices"][0]["message"]["content"] == " null" * 10
    assert reply["choices"][0]["finish_reason"] == "length"
    assert reply["usage"] == {"prompt_tokens": 3, "completion_tokens": 10, "total_tokens": 13}


def test_streamed_responses_are_coalesced(null_stack: Endpoints) -> None:
    body = {"model": "null-4", "prompt": "a b", "max_tokens": 10, "stream": True,
            "stream_options": {"include_usage": True}}  # fmt: skip
    with httpx.stream(
        "POST", f"{null_stack.openai_url}/completions", json=body, timeout=30
    ) as response:
        events = [line[6:] for line in response.iter_lines() if line.startswith("data: ")]
    chunks = [json.loads(event) for event in events if event != "[DONE]"]
    texts = [c["choices"][0]["text"] for c in chunks if c["choices"] and c["choices"][0]["text"]]
    assert texts == [" null" * 4, " null" * 4, " null" * 2]  # 4 tokens per response
    assert chunks[-1]["usage"]["completion_tokens"] == 10


def test_unknown_sampling_field_is_a_400(null_stack: Endpoints) -> None:
    body = {"model": "null-1", "prompt": "a", "max_tokens": 2, "n": 2}
    response = httpx.post(f"{null_stack.openai_url}/completions", json=body, timeout=30)
    assert response.status_code == 400


def test_tritium_bench_through_the_adapter(null_stack: Endpoints, tmp_path: Path) -> None:
    command = [
        sys.executable, "-m", "tritium", "bench", "--backend", "openai-chat",
        "--url", null_stack.openai_url, "--model", "null-1", "--num-prompts", "8",
        "--input-len", "16", "--output-len", "12", "--concurrency", "1", "4", "--warmup", "1",
        "--slo-ttft-ms", "10000", "--label", "smoke", "--output-dir", str(tmp_path), "--no-progress",
    ]  # fmt: skip
    done = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    results = json.loads((tmp_path / "smoke.json").read_text())
    levels = results[0]["levels"]
    assert [level["concurrency"] for level in levels] == [1, 4]
    for level in levels:
        summary = level["summary"]
        assert (summary["completed"], summary["failed"]) == (8, 0)
        assert (
            summary["mean_output_tokens"] == 12 and summary["mean_input_tokens"] == 16
        )  # words, the null tokenizer
        assert summary["goodput_requests_per_s"] == pytest.approx(summary["requests_per_s"])
    assert {p.name for p in tmp_path.iterdir()} >= {"smoke.csv", "smoke.md", "smoke-throughput.png"}


def test_bench_over_triton_grpc_leaves_the_model_unloadable(tmp_path: Path) -> None:
    """The benchmark's Triton client ends its calls as the adapter does (TritonCall, which
    says why it never cancels an ended call): after a few hundred requests the stack stops
    with the model unloaded."""
    repository = write_null_repository(tmp_path / "repository", {"null-1": 1})
    with tritium_stack(repository, tmp_path / "logs", startup_timeout_s=120) as endpoints:
        command = [
            sys.executable, "-m", "tritium", "bench", "--backend", "triton-grpc",
            "--url", endpoints.triton_grpc_url, "--model", "null-1", "--num-prompts", "300",
            "--input-len", "4", "--output-len", "2", "--concurrency", "16", "--warmup", "0",
            "--label", "grpc", "--output-dir", str(tmp_path / "results"), "--no-progress",
        ]  # fmt: skip
        done = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        summary = json.loads((tmp_path / "results" / "grpc.json").read_text())[0]["levels"][0]
        assert (summary["summary"]["completed"], summary["summary"]["failed"]) == (300, 0)
    triton_log = (tmp_path / "logs" / "tritonserver.log").read_text(errors="replace")
    assert "successfully unloaded" in triton_log, triton_log[-2000:]


def test_clients_hanging_up_as_the_final_response_comes_leave_the_model_unloadable(
    tmp_path: Path,
) -> None:
    """Streams dropped right after their first event, with the final response a fraction
    of a millisecond behind it: no hang-up reaches Triton as a cancelled call
    (adapter/triton_call.py), and the model unloads (tests/stress/final_hangups.py)."""
    answered, cancellations, unloaded, _ = one_run(tmp_path, requests=400, concurrency=16)
    assert (answered, cancellations, unloaded) == (400, 0, True)
