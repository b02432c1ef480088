from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import openai
import pytest
from fastapi import FastAPI

from adapter.app import create_app
from adapter.config import AdapterConfig
from tests.adapter.fake_triton import FakeTriton


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def fake() -> FakeTriton:
    return FakeTriton()


@pytest.fixture
def config() -> AdapterConfig:
    return AdapterConfig()


@pytest.fixture
def app(config: AdapterConfig, fake: FakeTriton) -> FastAPI:
    return create_app(config, triton_factory=lambda _config: fake)


@pytest.fixture
async def sdk(app: FastAPI) -> AsyncIterator[openai.AsyncOpenAI]:
    """The official OpenAI SDK pointed at the app in-process."""
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with app.router.lifespan_context(app), httpx.AsyncClient(transport=transport) as http:
        yield openai.AsyncOpenAI(
            base_url="http://adapter/v1", api_key="unused", http_client=http, max_retries=0
        )


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://adapter") as http,
    ):
        yield http


def sse_payloads(body: str) -> list[Any]:
    """The data of each SSE frame: JSON objects, and the string "[DONE]"."""
    frames = [frame for frame in body.split("\n\n") if frame.strip()]
    payloads: list[Any] = []
    for item in frames:
        assert item.startswith("data: "), item
        data = item[len("data: ") :]
        payloads.append(data if data == "[DONE]" else json.loads(data))
    return payloads


def assert_error(response: httpx.Response, status: int, param: str | None = None) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}, body
    assert set(body["error"]) == {"message", "type", "param", "code"}, body
    assert body["error"]["message"]
    if param is not None:
        assert body["error"]["param"] == param, body
    return body["error"]
