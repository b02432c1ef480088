"""A stack of its own: after a mix of requests (chat and completions, streamed and not,
concurrent), stopping the stack unloads the model ("successfully unloaded") instead of
Triton waiting out its exit timeout with the model still live: no call the adapter
ended leaked its request in Triton (`adapter/triton_call.py` says how that can happen).
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx
import pytest

from tests.stack import ENGINE_PARAMETERS, Stack, running_stack
from tests.stress import load

pytestmark = pytest.mark.e2e

CLIENTS = 8
REQUESTS_PER_CLIENT = 8
# A failing stop then costs 10 s, not Triton's default 30 s; a clean unload takes ~1-3 s.
EXIT_TIMEOUT = "--triton-arg=--exit-timeout-secs=10"


async def mixed_load(stack: Stack) -> dict[str, int]:
    """Every client cycles through chat/completions x streamed/not, 4-16 tokens each."""
    statuses: dict[str, int] = {}
    async with httpx.AsyncClient(timeout=120) as client:

        async def one_client(seed: int) -> None:
            for number in range(REQUESTS_PER_CLIENT):
                kind = seed + number
                stream = kind % 2 == 0
                body = load.chat_body(stack.model, max_tokens=4 + (kind * 5) % 13, stream=stream)
                path = "/chat/completions"
                if kind % 4 >= 2:
                    path = "/completions"
                    body.pop("messages")
                    body["prompt"] = "Once upon a time"
                if stream:
                    async with client.stream("POST", stack.base_url + path, json=body) as response:
                        lines = [line async for line in response.aiter_lines() if line]
                        assert lines[-1] == "data: [DONE]", lines[-3:]
                        status = response.status_code
                else:
                    response = await client.post(stack.base_url + path, json=body)
                    status = response.status_code
                statuses[str(status)] = statuses.get(str(status), 0) + 1

        await asyncio.gather(*(one_client(seed) for seed in range(CLIENTS)))
    return statuses


def test_model_unloads_at_stop_after_mixed_load(default_weights_dir: Path, tmp_path: Path) -> None:
    # The default dtype (bf16 on CPUs with native bf16): the one stack of the suite that
    # serves it, since the e2e stack pins fp32 to compare with transformers.
    parameters = {**ENGINE_PARAMETERS, "dtype": "auto"}
    with running_stack(
        default_weights_dir, tmp_path, parameters, serve_flags=(EXIT_TIMEOUT,)
    ) as stack:
        statuses = asyncio.run(mixed_load(stack))
        assert statuses == {"200": CLIENTS * REQUESTS_PER_CLIENT}
        assert load.wait_engine_idle(stack, 0.0, 10) is not None
        stop_started = time.monotonic()
    stop_took = time.monotonic() - stop_started
    triton_log = (tmp_path / "logs" / "tritonserver.log").read_text(errors="replace")
    tail = "\n".join(triton_log.splitlines()[-6:])
    assert "successfully unloaded" in triton_log, f"stop took {stop_took:.1f} s:\n{tail}"
    assert "Exit timeout expired" not in triton_log, tail
