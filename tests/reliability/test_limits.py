"""The concurrency limit counts Triton requests, so one HTTP request cannot bypass it
with a batch of prompts (fake Triton, no server)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from adapter.app import create_app
from adapter.config import AdapterConfig
from tests.adapter.fake_triton import FakeTriton

LIMIT = 4


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(
        AdapterConfig(max_concurrent_requests=LIMIT), triton_factory=lambda _config: FakeTriton()
    )
    transport = httpx.ASGITransport(app=app)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://adapter", timeout=10) as http,
    ):
        yield http


def completion(prompts: list[str]) -> dict[str, object]:
    return {"model": "org/base", "prompt": prompts, "max_tokens": 4}


@pytest.mark.anyio
async def test_more_prompts_than_the_limit_is_a_400(client: httpx.AsyncClient) -> None:
    response = await client.post("/v1/completions", json=completion(["a"] * (LIMIT + 1)))
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["param"] == "prompt" and f"at most {LIMIT} prompts" in error["message"]


@pytest.mark.anyio
async def test_a_batch_takes_one_place_per_prompt(client: httpx.AsyncClient) -> None:
    limiter = client._transport.app.state.adapter.limiter  # type: ignore[attr-defined]
    limiter.in_flight = LIMIT - 2  # other requests hold all but two places
    three = await client.post("/v1/completions", json=completion(["a", "b", "c"]))
    assert three.status_code == 429 and three.headers["Retry-After"] == "1"
    two = await client.post("/v1/completions", json=completion(["d", "e"]))
    assert two.status_code == 200 and len(two.json()["choices"]) == 2
    assert limiter.in_flight == LIMIT - 2  # given back, all of them
