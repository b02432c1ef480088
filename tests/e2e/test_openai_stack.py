"""The real stack (tritonserver + Python backend + engine + adapter) through the official OpenAI SDK."""

from __future__ import annotations

import json
import time
from functools import lru_cache

import httpx
import openai
import pytest

from tests.e2e.conftest import Stack

pytestmark = pytest.mark.e2e

PROMPTS = [
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "List three prime numbers.",
]


@pytest.fixture(scope="module")
def client(stack: Stack) -> openai.OpenAI:
    return openai.OpenAI(base_url=stack.base_url, api_key="unused", max_retries=0, timeout=120)


@lru_cache(maxsize=1)
def _hf(weights_dir: str):  # noqa: ANN202 - (tokenizer, model) of transformers, the reference
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(weights_dir)
    model = AutoModelForCausalLM.from_pretrained(weights_dir, dtype=torch.float32)
    return tokenizer, model.eval()


def _chat_prompt_ids(stack: Stack, content: str) -> list[int]:
    tokenizer, _ = _hf(str(stack.weights_dir))
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": content}], tokenize=False, add_generation_prompt=True
    )
    return tokenizer(text, add_special_tokens=False).input_ids


def test_models_lists_the_default_model(client: openai.OpenAI, stack: Stack) -> None:
    ids = [model.id for model in client.models.list().data]
    assert stack.model in ids
    assert client.models.retrieve(stack.model).id == stack.model


@pytest.mark.parametrize("content", PROMPTS)
def test_greedy_chat_equals_transformers(client: openai.OpenAI, stack: Stack, content: str) -> None:
    import torch

    tokenizer, model = _hf(str(stack.weights_dir))
    prompt_ids = _chat_prompt_ids(stack, content)
    with torch.no_grad():
        generated = model.generate(
            torch.tensor([prompt_ids]), max_new_tokens=32, do_sample=False, attention_mask=None
        )[0, len(prompt_ids) :].tolist()
    eos = tokenizer.eos_token_id
    if eos in generated:
        generated = generated[: generated.index(eos)]
    expected = tokenizer.decode(generated, skip_special_tokens=True)

    response = client.chat.completions.create(
        model=stack.model,
        messages=[{"role": "user", "content": content}],
        temperature=0,
        max_tokens=32,
    )
    choice = response.choices[0]
    assert choice.message.content == expected
    assert response.usage.prompt_tokens == len(prompt_ids)
    assert response.usage.completion_tokens == len(generated) + (choice.finish_reason == "stop")
    assert choice.finish_reason == ("length" if len(generated) == 32 else "stop")


def test_streamed_chat_concatenates_to_the_whole_text(client: openai.OpenAI, stack: Stack) -> None:
    messages = [{"role": "user", "content": "Tell me a short story about a robot."}]
    whole = client.chat.completions.create(
        model=stack.model, messages=messages, temperature=0, max_tokens=40
    )
    chunks = list(
        client.chat.completions.create(
            model=stack.model,
            messages=messages,
            temperature=0,
            max_tokens=40,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens == 40
    finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finish == ["length"]


def test_completions_stream_and_whole(client: openai.OpenAI, stack: Stack) -> None:
    prompt = "The three primary colors are"
    whole = client.completions.create(model=stack.model, prompt=prompt, temperature=0, max_tokens=16)
    assert whole.choices[0].finish_reason in ("length", "stop")
    tokenizer, _ = _hf(str(stack.weights_dir))
    assert whole.usage.prompt_tokens == len(tokenizer(prompt).input_ids)
    streamed = client.completions.create(
        model=stack.model, prompt=prompt, temperature=0, max_tokens=16, stream=True
    )
    assert "".join(c.choices[0].text for c in streamed if c.choices) == whole.choices[0].text


def test_max_tokens_gives_length_and_stop_string_gives_stop(client: openai.OpenAI, stack: Stack) -> None:
    messages = [{"role": "user", "content": "Count from 1 to 20, separated by commas."}]
    long = client.chat.completions.create(
        model=stack.model, messages=messages, temperature=0, max_tokens=24
    )
    assert long.choices[0].finish_reason == "length"
    assert long.usage.completion_tokens == 24
    text = long.choices[0].message.content
    stop = text[len(text) // 2 : len(text) // 2 + 2]  # a string the model is known to produce
    stopped = client.chat.completions.create(
        model=stack.model, messages=messages, temperature=0, max_tokens=24, stop=[stop]
    )
    assert stopped.choices[0].finish_reason == "stop"
    assert stop not in stopped.choices[0].message.content
    assert text.startswith(stopped.choices[0].message.content)


def test_error_shapes(stack: Stack) -> None:
    url = stack.base_url + "/chat/completions"
    unknown = httpx.post(url, json={"model": "nope", "messages": [{"role": "user", "content": "x"}]})
    assert unknown.status_code == 404
    assert unknown.json()["error"]["code"] == "model_not_found"
    missing = httpx.post(url, json={"model": stack.model})
    assert missing.status_code == 400
    assert missing.json()["error"]["param"] == "messages"
    hot = httpx.post(
        url,
        json={"model": stack.model, "messages": [{"role": "user", "content": "x"}], "temperature": 3},
    )
    assert hot.status_code == 400
    assert hot.json()["error"]["param"] == "temperature"
    for body in (unknown, missing, hot):
        assert set(body.json()["error"]) == {"message", "type", "param", "code"}


def test_closed_stream_is_cancelled_in_the_engine(client: openai.OpenAI, stack: Stack) -> None:
    stream = client.chat.completions.create(
        model=stack.model,
        messages=[{"role": "user", "content": "Write a very long essay about the ocean."}],
        max_tokens=1500,
        extra_body={"ignore_eos": True},
        stream=True,
    )
    for received, _chunk in enumerate(stream):
        if received == 3:
            break
    assert stack.metric("tritium_requests_running") >= 1
    stream.close()
    deadline = time.monotonic() + 5
    while stack.metric("tritium_requests_running") > 0:
        assert time.monotonic() < deadline, "the engine still runs the cancelled request"
        time.sleep(0.2)
    assert stack.metric("tritium_kv_blocks_used") == 0  # its KV blocks are back too


def test_triton_generate_endpoints(stack: Stack) -> None:
    url = f"{stack.triton_http_url}/v2/models/{stack.model}"
    body = {
        "text_input": "The capital of France is",
        "sampling_parameters": json.dumps({"max_tokens": 8, "temperature": 0}),
        "exclude_input_in_output": True,
    }
    whole = httpx.post(url + "/generate", json=body, timeout=60)
    assert whole.status_code == 200, whole.text
    text = whole.json()["text_output"]
    assert isinstance(text, str) and text
    with httpx.stream("POST", url + "/generate_stream", json={**body, "stream": True}, timeout=60) as r:
        events = [json.loads(line[5:]) for line in r.iter_lines() if line.startswith("data:")]
    assert "".join(e["text_output"] for e in events) == text
