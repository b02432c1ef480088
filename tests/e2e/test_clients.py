"""Clients other than the OpenAI SDK against the real stack: Tritium's native
Xinference-style client (sync and async) and LangChain's ChatOpenAI."""

from __future__ import annotations

import asyncio

import pytest

from tests.e2e.conftest import Stack
from tritium.client import AsyncClient, Client, ClientError

pytestmark = pytest.mark.e2e

MESSAGES = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "What is the largest animal?"},
]
GREEDY = {"max_tokens": 12, "temperature": 0}


def test_native_client_chat_and_generate(stack: Stack) -> None:
    with Client(stack.base_url.removesuffix("/v1")) as client:
        models = client.list_models()
        assert models[stack.model]["max_model_len"] == 2048
        model = client.get_model(stack.model)
        whole = model.chat(MESSAGES, generate_config=GREEDY)
        assert whole["object"] == "chat.completion"
        assert whole["usage"]["completion_tokens"] > 0
        assert whole["choices"][0]["finish_reason"] in ("stop", "length")
        chunks = list(model.chat(MESSAGES, generate_config={**GREEDY, "stream": True}))
        streamed = "".join(
            c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"]
        )
        assert streamed == whole["choices"][0]["message"]["content"]
        text = model.generate("The largest animal is", generate_config=GREEDY)
        assert text["object"] == "text_completion" and text["choices"][0]["text"]
        pieces = model.generate("The largest animal is", generate_config={**GREEDY, "stream": True})
        assert "".join(c["choices"][0]["text"] for c in pieces) == text["choices"][0]["text"]
        with pytest.raises(ClientError) as raised:
            client.get_model("no-such-model")
        assert raised.value.status_code == 404 and raised.value.code == "model_not_found"
        with pytest.raises(ClientError) as raised:
            model.chat(MESSAGES, generate_config={"temperature": 5})
        assert raised.value.status_code == 400 and raised.value.param == "temperature"


def test_async_native_client(stack: Stack) -> None:
    async def run() -> tuple[dict, str]:
        async with AsyncClient(stack.base_url) as client:
            assert stack.model in await client.list_models()
            model = await client.get_model(stack.model)
            whole = await model.chat(MESSAGES, generate_config=GREEDY)
            stream = await model.chat(MESSAGES, generate_config={**GREEDY, "stream": True})
            texts = [
                c["choices"][0]["delta"].get("content", "") async for c in stream if c["choices"]
            ]
            return whole, "".join(texts)

    whole, streamed = asyncio.run(run())
    assert streamed == whole["choices"][0]["message"]["content"]


def test_langchain_chat_openai_invoke_and_stream(stack: Stack) -> None:
    from langchain_openai import ChatOpenAI

    llm = ChatOpenAI(
        model=stack.model, base_url=stack.base_url, api_key="unused", temperature=0, max_tokens=12,
        max_retries=0,
    )  # fmt: skip
    question = "What is the capital of France?"
    answer = llm.invoke(question)
    assert answer.content and answer.usage_metadata["output_tokens"] > 0
    assert answer.response_metadata["finish_reason"] in ("stop", "length")
    streamed = "".join(chunk.content for chunk in llm.stream(question))
    assert streamed == answer.content
