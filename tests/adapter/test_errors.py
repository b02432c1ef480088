"""Every error the adapter answers with is OpenAI's envelope, with the right status."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from adapter.app import create_app
from adapter.config import AdapterConfig
from adapter.errors import InvalidRequest, ModelError, ServiceUnavailable
from tests.adapter.conftest import assert_error, sse_payloads
from tests.adapter.fake_triton import FakeTriton, choice, out

pytestmark = pytest.mark.anyio

CHAT = {"model": "tiny-chat", "messages": [{"role": "user", "content": "hi"}]}


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({**CHAT, "temperature": 3}, "temperature"),
        ({**CHAT, "top_p": 0}, "top_p"),
        ({**CHAT, "n": 0}, "n"),
        ({**CHAT, "max_tokens": 0}, "max_tokens"),
        ({**CHAT, "top_logprobs": 21, "logprobs": True}, "top_logprobs"),
        ({**CHAT, "top_logprobs": 2}, "top_logprobs"),
        ({**CHAT, "stop": ["a"] * 17}, "stop"),
        ({**CHAT, "logit_bias": {"x": 1}}, "logit_bias"),
        ({**CHAT, "messages": []}, "messages"),
        ({**CHAT, "messages": [{"role": "robot", "content": "x"}]}, "messages.0.role"),
        ({**CHAT, "messages": [{"role": "user", "content": 5}]}, "messages.0.content"),
        ({**CHAT, "messages": [{"role": "user"}]}, "messages.0.content"),
        (
            {**CHAT, "messages": [{"role": "user", "content": "x", "colour": 1}]},
            "messages.0.colour",
        ),
        ({"messages": CHAT["messages"]}, "model"),
        ({**CHAT, "stream_options": {"include_usage": True}}, "stream_options"),
        ({**CHAT, "n": 17}, "n"),  # above the default max_n of 16
    ],
)
async def test_bad_field_is_400_naming_it(
    client: httpx.AsyncClient, body: dict[str, Any], param: str
) -> None:
    error = assert_error(await client.post("/v1/chat/completions", json=body), 400, param)
    assert error["type"] == "invalid_request_error"


async def test_unknown_field_is_400_naming_it(client: httpx.AsyncClient) -> None:
    response = await client.post("/v1/chat/completions", json={**CHAT, "temprature": 0.1})
    error = assert_error(response, 400, "temprature")
    assert error["message"] == "Unrecognized request argument supplied: temprature"


async def test_invalid_json_is_400(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/v1/chat/completions", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert assert_error(response, 400)["code"] == "invalid_json"


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"functions": [{"name": "f"}]}, "functions"),
        ({"function_call": "auto"}, "function_call"),
        ({"reasoning_effort": "low"}, "reasoning_effort"),
        ({"store": True}, "store"),
        ({"modalities": ["text", "audio"]}, "modalities"),
        ({"messages": [{"role": "function", "content": "x", "name": "f"}]}, "messages.0.role"),
        (
            {
                "messages": [
                    {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "u"}}]}
                ]
            },
            "messages.0.content.0.type",
        ),
    ],
)
async def test_unsupported_is_400_not_supported_yet(
    client: httpx.AsyncClient, extra: dict[str, Any], param: str
) -> None:
    error = assert_error(
        await client.post("/v1/chat/completions", json={**CHAT, **extra}), 400, param
    )
    assert "not supported yet" in error["message"]


async def test_harmless_openai_fields_are_accepted(client: httpx.AsyncClient) -> None:
    body = {
        **CHAT,
        "response_format": {"type": "text"},
        "tool_choice": "none",
        "store": False,
        "metadata": {"k": "v"},
        "user": "me",
        "service_tier": "auto",
        "parallel_tool_calls": False,
    }
    assert (await client.post("/v1/chat/completions", json=body)).status_code == 200


async def test_unknown_model_is_404(client: httpx.AsyncClient) -> None:
    error = assert_error(
        await client.post("/v1/chat/completions", json={**CHAT, "model": "nope"}), 404, "model"
    )
    assert error["code"] == "model_not_found"
    assert_error(await client.get("/v1/models/nope"), 404, "model")


async def test_unknown_route_is_404_envelope(client: httpx.AsyncClient) -> None:
    error = assert_error(await client.get("/v1/engines"), 404)
    assert error["code"] == "unknown_url"
    assert_error(await client.get("/v1/chat/completions"), 405)


async def test_triton_errors_map_to_status(client: httpx.AsyncClient, fake: FakeTriton) -> None:
    fake.respond = lambda inputs: [InvalidRequest("must be >= 1", param="max_tokens")]
    assert_error(await client.post("/v1/chat/completions", json=CHAT), 400, "max_tokens")
    fake.respond = lambda inputs: [ServiceUnavailable("Triton is unreachable")]
    assert_error(await client.post("/v1/chat/completions", json=CHAT), 503)
    # An error before the first token of a stream is still a plain HTTP error.
    streamed = await client.post("/v1/chat/completions", json={**CHAT, "stream": True})
    assert_error(streamed, 503)


async def test_model_error_is_500_without_details(
    client: httpx.AsyncClient, fake: FakeTriton
) -> None:
    fake.respond = lambda inputs: [ModelError("CUDA error: secret internals")]
    response = await client.post("/v1/chat/completions", json=CHAT)
    error = assert_error(response, 500)
    assert "secret" not in error["message"]
    assert response.headers["x-request-id"] in error["message"]


async def test_unexpected_exception_is_500_envelope(
    client: httpx.AsyncClient, fake: FakeTriton
) -> None:
    fake.respond = lambda inputs: [RuntimeError("boom: traceback material")]
    response = await client.post("/v1/chat/completions", json=CHAT)
    error = assert_error(response, 500)
    assert "boom" not in response.text
    assert response.headers["x-request-id"] in error["message"]


async def test_mid_stream_error_ends_with_error_event(
    client: httpx.AsyncClient, fake: FakeTriton
) -> None:
    fake.respond = lambda inputs: [out(choice(0, "Hel")), ModelError("engine died")]
    response = await client.post("/v1/chat/completions", json={**CHAT, "stream": True})
    assert response.status_code == 200
    payloads = sse_payloads(response.text)
    assert payloads[-1] == "[DONE]"
    assert payloads[-3]["choices"][0]["delta"] == {"content": "Hel"}
    error = payloads[-2]["error"]
    assert error["type"] == "server_error" and "engine died" not in error["message"]
    fake.respond = lambda inputs: [
        out(choice(0, "Hel")),
        InvalidRequest("too long", param="messages"),
    ]
    payloads = sse_payloads(
        (await client.post("/v1/chat/completions", json={**CHAT, "stream": True})).text
    )
    assert payloads[-2]["error"]["param"] == "messages"


async def test_triton_unavailable_for_models_and_ready(
    client: httpx.AsyncClient, fake: FakeTriton
) -> None:
    assert (await client.get("/health/ready")).json()["models"] == ["tiny-chat", "org/base"]
    fake.list_error = ServiceUnavailable("Triton is unreachable")
    assert_error(await client.get("/v1/models"), 503)
    assert_error(await client.get("/health/ready"), 503)
    fake.list_error = None
    fake.ready = False
    assert_error(await client.get("/health/ready"), 503)
    assert (await client.get("/health")).json() == {"status": "ok"}


async def test_over_concurrency_is_429_with_retry_after(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    limiter = app.state.adapter.limiter
    slots = [limiter.acquire() for _ in range(limiter.limit)]
    response = await client.post("/v1/chat/completions", json=CHAT)
    assert_error(response, 429)
    assert response.headers["retry-after"] == "1"
    slots[0].release()
    assert (await client.post("/v1/chat/completions", json=CHAT)).status_code == 200
    assert limiter.in_flight == limiter.limit - 1  # the request gave its slot back


@pytest.fixture
async def small_client() -> AsyncIterator[httpx.AsyncClient]:
    config = AdapterConfig(max_body_bytes=1000, api_keys=("sk-right",))
    app = create_app(config, triton_factory=lambda _config: FakeTriton())
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://adapter") as http,
    ):
        yield http


async def test_body_too_large_by_content_length(small_client: httpx.AsyncClient) -> None:
    big = {**CHAT, "messages": [{"role": "user", "content": "x" * 2000}]}
    response = await small_client.post(
        "/v1/chat/completions", json=big, headers={"Authorization": "Bearer sk-right"}
    )
    assert assert_error(response, 413)["code"] == "request_too_large"


async def test_body_too_large_when_chunked(small_client: httpx.AsyncClient) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(20):
            yield b" " * 100  # JSON whitespace; no Content-Length on a streamed body

    response = await small_client.post(
        "/v1/chat/completions", content=chunks(), headers={"Authorization": "Bearer sk-right"}
    )
    assert assert_error(response, 413)["code"] == "request_too_large"


@pytest.mark.parametrize("header", [None, "Bearer sk-wrong", "Basic sk-right", "Bearer "])
async def test_bad_or_missing_key_is_401(
    small_client: httpx.AsyncClient, header: str | None
) -> None:
    headers = {"Authorization": header} if header is not None else {}
    response = await small_client.post("/v1/chat/completions", json=CHAT, headers=headers)
    assert assert_error(response, 401)["code"] == "invalid_api_key"
    assert "sk-right" not in response.text
    assert_error(await small_client.get("/v1/models", headers=headers), 401)


async def test_right_key_passes_and_probes_need_none(small_client: httpx.AsyncClient) -> None:
    ok = await small_client.get("/v1/models", headers={"Authorization": "Bearer sk-right"})
    assert ok.status_code == 200
    assert (await small_client.get("/health")).status_code == 200
    assert (await small_client.get("/health/ready")).status_code == 200
