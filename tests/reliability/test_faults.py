"""A stack of its own, with a KV cache far too small: pressure first, then backend faults.

- KV pressure: 3x the sequences the cache holds at full length all finish, without a 5xx,
  with tokens in every 10-second window, and the preemptions show in the metrics.
- The Python-backend stub killed mid-stream: the client gets an error event within 5 s,
  /health/ready turns 503, and `tritium serve` restarts Triton, after which requests work.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.stack import Stack, running_stack
from tests.stress import load

pytestmark = pytest.mark.e2e

# 16 MB of KV = 11 blocks of 16 tokens (CPU, fp32): room for ~2 sequences of 90 tokens.
SMALL_CACHE = {
    "max_model_len": "512",
    "max_num_seqs": "8",
    "max_num_batched_tokens": "128",
    "kv_cache_memory_mb": "8",
}
FULL_LENGTH_TOKENS = 64 + 32  # max_tokens + about the prompt
WINDOW_S = 10.0


@pytest.fixture(scope="module")
def small_stack(default_weights_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    work = tmp_path_factory.mktemp("small-cache")
    with running_stack(default_weights_dir, work, SMALL_CACHE) as stack:
        yield stack


async def generate_all(stack: Stack, count: int) -> list[int]:
    async with httpx.AsyncClient(timeout=600) as client:

        async def one() -> int:
            body = load.chat_body(stack.model, max_tokens=64)
            return (await client.post(stack.base_url + "/chat/completions", json=body)).status_code

        return await asyncio.gather(*(one() for _ in range(count)))


def test_kv_pressure_finishes_everything(small_stack: Stack) -> None:
    assert load.completes_normally(small_stack)  # exports the metrics
    total_blocks = small_stack.metric("tritium_kv_blocks_capacity")
    held_at_full_length = max(1, int(total_blocks * 16 // FULL_LENGTH_TOKENS))
    count = 3 * held_at_full_length
    preempted_before = small_stack.metric("tritium_requests_preempted_total", 0.0)
    samples: list[tuple[float, float]] = []
    stop = asyncio.Event()

    async def sample_tokens() -> None:
        while not stop.is_set():
            tokens = await asyncio.to_thread(small_stack.metric, "tritium_generation_tokens_total")
            samples.append((time.monotonic(), tokens))
            await asyncio.sleep(1.0)

    async def run() -> list[int]:
        sampler = asyncio.create_task(sample_tokens())
        try:
            return await generate_all(small_stack, count)
        finally:
            stop.set()
            await sampler

    statuses = asyncio.run(run())
    assert statuses == [200] * count, statuses
    assert small_stack.metric("tritium_requests_preempted_total", 0.0) > preempted_before
    # No livelock: every 10-second window saw tokens generated.
    for start_time, start_tokens in samples:
        later = [tokens for when, tokens in samples if when >= start_time + WINDOW_S]
        if later:
            assert later[0] > start_tokens, "a 10-second window without a token"


def test_killed_backend_stub_is_reported_and_recovered(small_stack: Stack) -> None:
    (stub,) = load.children_named(small_stack.serve_pid, "triton_python")
    body = load.chat_body(small_stack.model, max_tokens=120, stream=True)  # fits the cache
    killed_at = 0.0
    error_after = None
    with (
        httpx.Client(timeout=30) as client,
        client.stream("POST", small_stack.base_url + "/chat/completions", json=body) as response,
    ):
        assert response.status_code == 200, response.read()
        for line in response.iter_lines():
            if line.startswith("data:") and not killed_at:
                os.kill(stub, signal.SIGKILL)
                killed_at = time.monotonic()
            elif '"error"' in line:
                error_after = time.monotonic() - killed_at
                assert "service_unavailable" in line
    assert error_after is not None and error_after < 5.0, error_after
    assert httpx.get(small_stack.ready_url, timeout=10).status_code == 503
    deadline = time.monotonic() + 120
    while httpx.get(small_stack.ready_url, timeout=10).status_code != 200:
        assert time.monotonic() < deadline, small_stack.log_tail()
        time.sleep(1)
    assert load.completes_normally(small_stack)
    assert "restarting tritonserver: a Python backend stub died" in small_stack.log_tail(200)


def test_the_model_unloads_cleanly_after_cancellations(small_stack: Stack) -> None:
    """Last here: it stops the stack. Cancelled requests must have been released by the
    model (their final flag sent), or Triton waits on them until its exit timeout."""
    storm = asyncio.run(
        load.disconnect_storm(small_stack, num_streams=24, max_lines_before_drop=3, max_tokens=64)
    )
    assert storm.dropped == 24
    assert load.wait_engine_idle(small_stack, 0.0, 5) is not None
    triton_log = small_stack.log_path.parent / "tritonserver.log"
    stopping = time.monotonic()
    os.kill(small_stack.serve_pid, signal.SIGINT)
    deadline = stopping + 45
    while "successfully unloaded" not in triton_log.read_text(errors="replace"):
        assert "Exit timeout expired" not in triton_log.read_text(errors="replace")
        assert time.monotonic() < deadline, "the model did not unload"
        time.sleep(0.2)
    assert time.monotonic() - stopping < 10
