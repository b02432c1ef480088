"""/tokenize and /detokenize on the real stack and the default model: the counts are
transformers' own for the same messages, and the prompt_tokens of a chat completion of
the same body (the official SDK's usage); tokenize -> detokenize round-trips."""

from __future__ import annotations

import httpx
import openai
import pytest

from tests.e2e.conftest import Stack

pytestmark = pytest.mark.e2e

MESSAGES = [
    {"role": "system", "content": "You answer in one word."},
    {"role": "user", "content": "What colour is the sky? ☀️"},
]
TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}


def tokenize(stack: Stack, **body: object) -> dict:
    root = stack.base_url.removesuffix("/v1")
    response = httpx.post(f"{root}/tokenize", json={"model": stack.model, **body}, timeout=60)
    assert response.status_code == 200, response.text
    return response.json()


def test_chat_counts_are_transformers_and_the_prompt_tokens_of_a_completion(stack: Stack) -> None:
    from transformers import AutoTokenizer

    reference = AutoTokenizer.from_pretrained(str(stack.weights_dir))
    client = openai.OpenAI(base_url=stack.base_url, api_key="unused", max_retries=0, timeout=120)
    answer = tokenize(stack, messages=MESSAGES, return_token_strs=True)
    expected = reference.apply_chat_template(MESSAGES, add_generation_prompt=True, tokenize=False)
    expected_ids = reference.encode(expected, add_special_tokens=False)
    assert answer["tokens"] == expected_ids and answer["count"] == len(expected_ids)
    assert answer["max_model_len"] == 2048  # tests/stack.py's ENGINE_PARAMETERS
    assert answer["token_strs"] == reference.convert_ids_to_tokens(expected_ids)
    completion = client.chat.completions.create(model=stack.model, messages=MESSAGES, max_tokens=1)
    assert completion.usage.prompt_tokens == answer["count"]
    # Tools change the prompt (the generic tool prompt for this template): counted alike.
    with_tools = tokenize(stack, messages=MESSAGES, tools=[TOOL])
    assert with_tools["count"] > answer["count"]
    completion = client.chat.completions.create(
        model=stack.model, messages=MESSAGES, tools=[TOOL], max_tokens=1
    )
    assert completion.usage.prompt_tokens == with_tools["count"]
    # Without the generation prompt, or continuing the last message: transformers' counts.
    for fields, last in (({"add_generation_prompt": False}, {}), ({"continue_final_message": True}, {"role": "assistant", "content": "Bl"})):
        messages = MESSAGES + ([last] if last else [])
        text = reference.apply_chat_template(
            messages,
            add_generation_prompt=False,
            continue_final_message=bool(fields.get("continue_final_message")),
            tokenize=False,
        )
        assert tokenize(stack, messages=messages, **fields)["tokens"] == reference.encode(text, add_special_tokens=False)


def test_prompts_round_trip_and_bad_tokens_are_named(stack: Stack) -> None:
    from transformers import AutoTokenizer

    reference = AutoTokenizer.from_pretrained(str(stack.weights_dir))
    root = stack.base_url.removesuffix("/v1")
    text = "Once upon a time, in 東京"
    answer = tokenize(stack, prompt=text)
    assert answer["tokens"] == reference.encode(text) and answer["token_strs"] is None
    chat = tokenize(stack, messages=MESSAGES)
    for ids, expected in ((answer["tokens"], text), (chat["tokens"], None)):
        response = httpx.post(f"{root}/detokenize", json={"model": stack.model, "tokens": ids}, timeout=60)
        assert response.status_code == 200, response.text
        # Special tokens kept (<|im_start|> ...), as vLLM: the chat prompt comes back whole.
        assert response.json()["prompt"] == (expected or reference.decode(ids, skip_special_tokens=False))
    assert "<|im_start|>system" in reference.decode(chat["tokens"], skip_special_tokens=False)
    response = httpx.post(
        f"{root}/detokenize", json={"model": stack.model, "tokens": [1, len(reference)]}, timeout=60
    )
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == "tokens" and "vocabulary" in error["message"]
