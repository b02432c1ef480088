"""The official OpenAI SDK parses what the adapter sends (pointed at the app in-process)."""

from __future__ import annotations

import openai
import pytest

pytestmark = pytest.mark.anyio


async def test_chat(sdk: openai.AsyncOpenAI) -> None:
    completion = await sdk.chat.completions.create(
        model="tiny-chat", messages=[{"role": "user", "content": "hi"}], max_tokens=4, n=2
    )
    assert [c.message.content for c in completion.choices] == ["Hello world"] * 2
    assert completion.choices[1].index == 1 and completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None and completion.usage.total_tokens == 9


async def test_chat_stream_with_usage(sdk: openai.AsyncOpenAI) -> None:
    stream = await sdk.chat.completions.create(
        model="tiny-chat",
        messages=[{"role": "user", "content": "hi"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    text, usage = "", None
    async for chunk in stream:
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
        usage = chunk.usage or usage
    assert text == "Hello world"
    assert usage is not None and usage.completion_tokens == 2


async def test_completions_and_models(sdk: openai.AsyncOpenAI) -> None:
    completion = await sdk.completions.create(model="org/base", prompt="Once", max_tokens=3)
    assert completion.choices[0].text == "Hello world"
    models = await sdk.models.list()
    assert [model.id for model in models.data] == ["tiny-chat", "org/base"]
    assert (await sdk.models.retrieve("org/base")).id == "org/base"


async def test_errors_become_sdk_exceptions(sdk: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as not_found:
        await sdk.chat.completions.create(model="nope", messages=[{"role": "user", "content": "x"}])
    assert not_found.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError) as bad:
        await sdk.chat.completions.create(
            model="tiny-chat", messages=[{"role": "user", "content": "x"}], temperature=5
        )
    assert bad.value.param == "temperature"
