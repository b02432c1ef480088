"""10x the configured concurrency: the excess gets a fast OpenAI-shaped 429 with
Retry-After, nothing else fails, and the adapter's memory stays put."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest

from tests.stack import Stack, StartAdapter
from tests.stress import load

pytestmark = pytest.mark.e2e

LIMIT = 4
MAX_REFUSAL_S = 1.0  # a refusal must not wait for capacity: it answers at once


async def burst(base_url: str, model: str, count: int) -> list[tuple[int, float, httpx.Response]]:
    limits = httpx.Limits(max_connections=count + 4, max_keepalive_connections=0)
    async with httpx.AsyncClient(limits=limits, timeout=120) as client:

        async def one() -> tuple[int, float, httpx.Response]:
            started = time.monotonic()
            body = load.chat_body(model, max_tokens=24)
            response = await client.post(base_url + "/chat/completions", json=body)
            return response.status_code, time.monotonic() - started, response

        return await asyncio.gather(*(one() for _ in range(count)))


def test_ten_times_the_concurrency(stack: Stack, start_adapter: StartAdapter) -> None:
    limited = start_adapter("--max-concurrent-requests", str(LIMIT), "--retry-after-s", "2")
    memory_before = load.resident_kib(limited.pid)
    for _round in range(3):
        results = asyncio.run(burst(limited.base_url, stack.model, 10 * LIMIT))
        statuses = sorted({status for status, _, _ in results})
        assert set(statuses) <= {200, 429}, statuses
        assert sum(status == 200 for status, _, _ in results) >= LIMIT
        for status, seconds, response in results:
            if status == 429:
                assert response.headers["Retry-After"] == "2"
                error = response.json()["error"]
                assert error["code"] == "rate_limit_exceeded" and error["message"]
                assert seconds < MAX_REFUSAL_S, f"a refusal took {seconds:.2f} s"
    growth_kib = load.resident_kib(limited.pid) - memory_before
    assert growth_kib < 64 * 1024, f"the adapter grew by {growth_kib} KiB over 120 requests"
