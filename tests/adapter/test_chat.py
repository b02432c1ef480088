"""POST /v1/chat/completions against the fake Triton: shapes, streaming, n, usage."""

from __future__ import annotations

import httpx
import pytest

from contract.outputs import TokenLogprobs, TopLogprob
from tests.adapter.conftest import sse_payloads
from tests.adapter.fake_triton import FakeTriton, choice, out

pytestmark = pytest.mark.anyio

MESSAGES = [
    {"role": "system", "content": "Be brief."},
    {
        "role": "user",
        "content": [{"type": "text", "text": "Hi"}, {"type": "text", "text": "there"}],
    },
]


async def test_non_streaming_shape(client: httpx.AsyncClient, fake: FakeTriton) -> None:
    response = await client.post(
        "/v1/chat/completions",
        json={"model": "tiny-chat", "messages": MESSAGES, "max_tokens": 8, "temperature": 0.5},
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["id"].startswith("chatcmpl-")
    assert body["object"] == "chat.completion"
    assert body["model"] == "tiny-chat"
    assert isinstance(body["created"], int) and body["system_fingerprint"]
    assert body["choices"] == [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "Hello world", "refusal": None},
            "logprobs": None,
            "finish_reason": "stop",
        }
    ]
    assert body["usage"] == {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}
    assert response.headers["x-request-id"]
    model, inputs = fake.calls[0]
    assert model == "tiny-chat"
    assert inputs.stream is False and inputs.text_input is None
    assert inputs.messages == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi\nthere"},
    ]
    assert inputs.sampling_parameters == {"max_tokens": 8, "temperature": 0.5}
    assert inputs.request_id == response.headers["x-request-id"]


async def test_streaming_chunks_and_done(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/v1/chat/completions",
        json={"model": "tiny-chat", "messages": MESSAGES, "stream": True},
    )
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    payloads = sse_payloads(response.text)
    assert payloads[-1] == "[DONE]"
    chunks = payloads[:-1]
    assert len({chunk["id"] for chunk in chunks}) == 1
    assert all(chunk["object"] == "chat.completion.chunk" for chunk in chunks)
    assert all("usage" not in chunk for chunk in chunks)
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert [c["choices"][0]["delta"] for c in chunks[1:]] == [
        {"content": "Hello"},
        {"content": " world"},
    ]
    assert [c["choices"][0]["finish_reason"] for c in chunks] == [None, None, "stop"]


async def test_include_usage_adds_a_final_usage_chunk(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/v1/chat/completions",
        json={
            "model": "tiny-chat",
            "messages": MESSAGES,
            "stream": True,
            "stream_options": {"include_usage": True},
        },
    )
    chunks = sse_payloads(response.text)[:-1]
    assert all(chunk["usage"] is None for chunk in chunks[:-1])
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"] == {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}


async def test_n_choices_keep_their_index(client: httpx.AsyncClient, fake: FakeTriton) -> None:
    # The model interleaves choices and reports them out of order.
    fake.respond = lambda inputs: [
        out(choice(1, "B1", None, 1)),
        out(choice(0, "A1", None, 1), choice(1, "B2", "length", 2)),
        out(choice(0, "A2", "stop", 3), final=True),
    ]
    body = {"model": "tiny-chat", "messages": MESSAGES, "n": 2}
    response = await client.post("/v1/chat/completions", json=body)
    result = response.json()
    assert [
        (c["index"], c["message"]["content"], c["finish_reason"]) for c in result["choices"]
    ] == [
        (0, "A1A2", "stop"),
        (1, "B1B2", "length"),
    ]
    assert result["usage"]["completion_tokens"] == 5  # 3 + 2, the last cumulative counts
    assert fake.calls[0][1].sampling_parameters["n"] == 2

    streamed = await client.post("/v1/chat/completions", json={**body, "stream": True})
    chunks = sse_payloads(streamed.text)[:-1]
    assert [c["choices"][0]["delta"] for c in chunks[:2]] == [
        {"role": "assistant", "content": ""}
    ] * 2
    assert [c["choices"][0]["index"] for c in chunks[:2]] == [0, 1]
    texts: dict[int, str] = {0: "", 1: ""}
    for chunk in chunks[2:]:
        for item in chunk["choices"]:
            texts[item["index"]] += item["delta"].get("content", "")
    assert texts == {0: "A1A2", 1: "B1B2"}


async def test_logprobs_are_openai_shaped(client: httpx.AsyncClient, fake: FakeTriton) -> None:
    logprobs = TokenLogprobs(
        [1, 2], ["Hi", "!"], [-0.1, -0.2], [[TopLogprob("Hi", -0.1)], [TopLogprob("!", -0.2)]]
    )
    fake.respond = lambda inputs: [out(choice(0, "Hi!", "stop", 2, logprobs), final=True)]
    response = await client.post(
        "/v1/chat/completions",
        json={"model": "tiny-chat", "messages": MESSAGES, "logprobs": True, "top_logprobs": 1},
    )
    content = response.json()["choices"][0]["logprobs"]["content"]
    assert content[0] == {
        "token": "Hi",
        "logprob": -0.1,
        "bytes": [72, 105],
        "top_logprobs": [{"token": "Hi", "logprob": -0.1, "bytes": [72, 105]}],
    }
    inputs = fake.calls[0][1]
    assert inputs.return_logprobs is True
    assert inputs.sampling_parameters == {"logprobs": True, "top_logprobs": 1}


async def test_extensions_and_max_completion_tokens_are_forwarded(
    client: httpx.AsyncClient, fake: FakeTriton
) -> None:
    extensions = {
        "top_k": 5,
        "min_p": 0.1,
        "repetition_penalty": 1.1,
        "min_tokens": 2,
        "ignore_eos": True,
        "seed": 7,
        "stop": ["\n"],
        "presence_penalty": 0.5,
        "frequency_penalty": -0.5,
        "logit_bias": {"42": 3.0},
        "top_p": 0.9,
        "stop_token_ids": [2],
    }
    response = await client.post(
        "/v1/chat/completions",
        json={
            "model": "tiny-chat",
            "messages": MESSAGES,
            "max_tokens": 99,
            "max_completion_tokens": 9,
            "user": "u1",
            **extensions,
        },
    )
    assert response.status_code == 200, response.text
    assert fake.calls[0][1].sampling_parameters == {**extensions, "max_tokens": 9}


async def test_developer_role_is_system_for_the_model(
    client: httpx.AsyncClient, fake: FakeTriton
) -> None:
    messages = [
        {"role": "developer", "content": "x"},
        {"role": "user", "content": "y", "name": "ann"},
    ]
    await client.post("/v1/chat/completions", json={"model": "tiny-chat", "messages": messages})
    assert fake.calls[0][1].messages == [
        {"role": "system", "content": "x"},
        {"role": "user", "content": "y", "name": "ann"},
    ]


async def test_finish_reason_length_and_unknown(
    client: httpx.AsyncClient, fake: FakeTriton
) -> None:
    fake.respond = lambda inputs: [out(choice(0, "a", "length", 1), final=True)]
    body = {"model": "tiny-chat", "messages": MESSAGES}
    assert (await client.post("/v1/chat/completions", json=body)).json()["choices"][0][
        "finish_reason"
    ] == "length"
    fake.respond = lambda inputs: [out(choice(0, "a", "eos_token", 1), final=True)]
    assert (await client.post("/v1/chat/completions", json=body)).json()["choices"][0][
        "finish_reason"
    ] == "stop"


async def test_abort_finish_reason_is_503(client: httpx.AsyncClient, fake: FakeTriton) -> None:
    fake.respond = lambda inputs: [out(choice(0, "a", "abort", 1), final=True)]
    response = await client.post(
        "/v1/chat/completions", json={"model": "tiny-chat", "messages": MESSAGES}
    )
    assert response.status_code == 503
    assert response.json()["error"]["type"] == "server_error"


async def test_chat_template_kwargs_go_to_the_model(
    client: httpx.AsyncClient, fake: FakeTriton
) -> None:
    """vLLM's field: passed through to the model, which checks it against its template."""
    body = {
        "model": "tiny-chat",
        "messages": [{"role": "user", "content": "hi"}],
        "chat_template_kwargs": {"enable_thinking": False},
    }
    assert (await client.post("/v1/chat/completions", json=body)).status_code == 200
    assert fake.calls[-1][1].chat_template_kwargs == {"enable_thinking": False}
    plain = {"model": "tiny-chat", "messages": [{"role": "user", "content": "hi"}]}
    assert (await client.post("/v1/chat/completions", json=plain)).status_code == 200
    assert fake.calls[-1][1].chat_template_kwargs is None
