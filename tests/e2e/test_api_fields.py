"""Every request field, shown to have its effect on the real stack, through the official SDK.

Small max_tokens and greedy decoding wherever the field allows, so the whole file
runs in well under a minute on 2 CPU cores once the stack is up.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import openai
import pytest

from tests.e2e.conftest import Stack

pytestmark = pytest.mark.e2e

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]
REPEATING = "hello hello hello hello hello hello hello hello"


@pytest.fixture(scope="module")
def client(stack: Stack) -> openai.OpenAI:
    return openai.OpenAI(base_url=stack.base_url, api_key="unused", max_retries=0, timeout=120)


@lru_cache(maxsize=1)
def _tokenizer(weights_dir: Path):  # noqa: ANN202 - tokenizers.Tokenizer, imported lazily
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(weights_dir / "tokenizer.json"))


def token_ids(stack: Stack, text: str) -> list[int]:
    return _tokenizer(stack.weights_dir).encode(text).ids


def decode(stack: Stack, ids: list[int]) -> str:
    return _tokenizer(stack.weights_dir).decode(ids, skip_special_tokens=False)


def chat(client: openai.OpenAI, stack: Stack, **fields: object):  # noqa: ANN201 - ChatCompletion
    fields = {"messages": QUESTION, "max_tokens": 12, "temperature": 0, **fields}
    return client.chat.completions.create(model=stack.model, **fields)


def complete(client: openai.OpenAI, stack: Stack, **fields: object):  # noqa: ANN201 - Completion
    fields = {"prompt": "The capital of France is", "max_tokens": 8, "temperature": 0, **fields}
    return client.completions.create(model=stack.model, **fields)


def texts(response) -> list[str]:  # noqa: ANN001 - a ChatCompletion or a Completion
    return [getattr(c, "text", None) or c.message.content for c in response.choices]


# --- sampling --------------------------------------------------------------------------


def test_n_with_a_seed_gives_different_choices_and_repeats(
    client: openai.OpenAI, stack: Stack
) -> None:
    fields = {"n": 2, "seed": 1234, "temperature": 1.0, "max_tokens": 16}
    first, again = chat(client, stack, **fields), chat(client, stack, **fields)
    assert [c.index for c in first.choices] == [0, 1]
    assert texts(first)[0] != texts(first)[1]
    assert texts(first) == texts(again)
    assert first.usage.completion_tokens == sum(
        len(token_ids(stack, text)) for text in texts(first)
    ) + sum(c.finish_reason == "stop" for c in first.choices)


def test_another_seed_gives_other_text(client: openai.OpenAI, stack: Stack) -> None:
    fields = {"temperature": 1.0, "max_tokens": 16}
    assert texts(chat(client, stack, seed=1, **fields)) != texts(
        chat(client, stack, seed=2, **fields)
    )


def test_chat_logprobs_are_real_and_sorted(client: openai.OpenAI, stack: Stack) -> None:
    response = chat(client, stack, logprobs=True, top_logprobs=3)
    content = response.choices[0].logprobs.content
    # One entry per generated token; the EOS that ends a "stop" choice has one too (its
    # text, a special token, is not part of the content).
    assert len(content) == response.usage.completion_tokens
    shown = content[:-1] if response.choices[0].finish_reason == "stop" else content
    assert "".join(token.token for token in shown) == response.choices[0].message.content
    for token in content:
        alternatives = [top.logprob for top in token.top_logprobs]
        assert len(alternatives) == 3 and alternatives == sorted(alternatives, reverse=True)
        assert token.logprob <= 0 and token.logprob >= alternatives[0] - 1e-4  # greedy: the best
        assert token.top_logprobs[0].token == token.token
        assert token.bytes == list(token.token.encode())


def test_completion_logprobs_align_with_the_text(client: openai.OpenAI, stack: Stack) -> None:
    response = complete(client, stack, logprobs=2)
    logprobs, text = response.choices[0].logprobs, response.choices[0].text
    assert "".join(logprobs.tokens) == text
    assert [text[offset:] for offset in logprobs.text_offset] == [
        "".join(logprobs.tokens[i:]) for i in range(len(logprobs.tokens))
    ]
    for chosen, token, top in zip(
        logprobs.token_logprobs, logprobs.tokens, logprobs.top_logprobs, strict=True
    ):
        assert len(top) == 2 and max(top.values()) == pytest.approx(chosen, abs=1e-4)
        assert top[token] == pytest.approx(chosen, abs=1e-4)


def test_logit_bias_forces_and_bans_tokens(client: openai.OpenAI, stack: Stack) -> None:
    [cat] = token_ids(stack, " cat")
    forced = complete(client, stack, logit_bias={str(cat): 100}, max_tokens=5)
    assert texts(forced) == [" cat" * 5]
    greedy = complete(client, stack, logprobs=1, max_tokens=1)
    first = greedy.choices[0].logprobs.tokens[0]
    banned_id = token_ids(stack, first)[0]
    assert decode(stack, [banned_id]) == first
    banned = complete(client, stack, logprobs=1, max_tokens=1, logit_bias={str(banned_id): -100})
    assert banned.choices[0].logprobs.tokens[0] != first


def test_stop_list_ends_at_the_first_match(client: openai.OpenAI, stack: Stack) -> None:
    full = texts(chat(client, stack, max_tokens=16))[0]
    cut = full[len(full) // 2 : len(full) // 2 + 3]
    stopped = chat(client, stack, max_tokens=16, stop=["no such text", cut])
    assert stopped.choices[0].finish_reason == "stop"
    assert texts(stopped)[0] == full[: full.index(cut)]


@pytest.mark.parametrize(
    "penalty",
    [{"presence_penalty": 2.0}, {"frequency_penalty": 2.0}, {"repetition_penalty": 1.8}],
)
def test_penalties_change_repetitive_output(
    client: openai.OpenAI, stack: Stack, penalty: dict[str, float]
) -> None:
    fields = {"prompt": REPEATING, "max_tokens": 12}
    plain = texts(complete(client, stack, **fields))[0]
    assert plain.count("hello") >= 3  # the model repeats without a penalty
    if "repetition_penalty" in penalty:
        penalized = texts(complete(client, stack, **fields, extra_body=penalty))[0]
    else:
        penalized = texts(complete(client, stack, **fields, **penalty))[0]
    assert penalized != plain and penalized.count("hello") < plain.count("hello")


def test_top_k_one_is_greedy(client: openai.OpenAI, stack: Stack) -> None:
    greedy = texts(chat(client, stack, max_tokens=16))
    sampled = texts(
        chat(client, stack, max_tokens=16, temperature=1.5, seed=7, extra_body={"top_k": 1})
    )
    assert sampled == greedy


def test_min_p_and_top_p_near_zero_are_greedy(client: openai.OpenAI, stack: Stack) -> None:
    greedy = texts(chat(client, stack))
    assert texts(chat(client, stack, temperature=1.5, seed=3, top_p=1e-6)) == greedy
    assert texts(chat(client, stack, temperature=1.5, seed=3, extra_body={"min_p": 1.0})) == greedy


def test_min_tokens_and_ignore_eos(client: openai.OpenAI, stack: Stack) -> None:
    short = [{"role": "user", "content": "Answer with one word: is water wet?"}]
    natural = chat(client, stack, messages=short, max_tokens=16)
    assert natural.choices[0].finish_reason == "stop" and natural.usage.completion_tokens < 10
    at_least = chat(client, stack, messages=short, max_tokens=16, extra_body={"min_tokens": 10})
    assert at_least.usage.completion_tokens >= 10
    endless = chat(client, stack, messages=short, max_tokens=16, extra_body={"ignore_eos": True})
    assert endless.choices[0].finish_reason == "length" and endless.usage.completion_tokens == 16


def test_max_completion_tokens_wins_over_max_tokens(client: openai.OpenAI, stack: Stack) -> None:
    response = chat(
        client, stack, max_tokens=12, max_completion_tokens=3, extra_body={"ignore_eos": True}
    )
    assert response.usage.completion_tokens == 3 and response.choices[0].finish_reason == "length"


# --- chat messages ---------------------------------------------------------------------


def test_content_as_text_parts_equals_the_joined_string(
    client: openai.OpenAI, stack: Stack
) -> None:
    parts = [
        {"type": "text", "text": "What is the capital"},
        {"type": "text", "text": "of France?"},
    ]
    as_parts = chat(client, stack, messages=[{"role": "user", "content": parts}])
    joined = chat(
        client, stack, messages=[{"role": "user", "content": "What is the capital\nof France?"}]
    )
    assert texts(as_parts) == texts(joined)
    assert as_parts.usage.prompt_tokens == joined.usage.prompt_tokens


def test_system_and_assistant_turns_reach_the_template(client: openai.OpenAI, stack: Stack) -> None:
    plain = chat(client, stack)
    conversation = [
        {"role": "system", "content": "You answer in French."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Bonjour !"},
        *QUESTION,
    ]
    longer = chat(client, stack, messages=conversation, user="user-1234")
    from transformers import AutoTokenizer

    reference = AutoTokenizer.from_pretrained(str(stack.weights_dir))
    templated = reference.apply_chat_template(conversation, add_generation_prompt=True)
    assert longer.usage.prompt_tokens == len(templated["input_ids"])
    assert texts(longer) != texts(plain)


# --- completions prompts ---------------------------------------------------------------


def test_list_of_prompts_gives_a_choice_each(client: openai.OpenAI, stack: Stack) -> None:
    prompts = ["The capital of France is", "Two plus two equals"]
    together = complete(client, stack, prompt=prompts)
    alone = [texts(complete(client, stack, prompt=prompt))[0] for prompt in prompts]
    assert [c.index for c in together.choices] == [0, 1]
    assert texts(together) == alone
    assert together.usage.prompt_tokens == sum(len(token_ids(stack, p)) for p in prompts)


def test_token_id_prompts_equal_their_text(client: openai.OpenAI, stack: Stack) -> None:
    prompts = ["The capital of France is", "Two plus two equals"]
    ids = [token_ids(stack, prompt) for prompt in prompts]
    as_text = complete(client, stack, prompt=prompts)
    one = complete(client, stack, prompt=ids[0])
    many = complete(client, stack, prompt=ids)
    assert texts(one) == texts(as_text)[:1] and texts(many) == texts(as_text)
    assert one.usage.prompt_tokens == len(ids[0])
    echoed = complete(client, stack, prompt=ids[1], echo=True)
    assert texts(echoed)[0] == decode(stack, ids[1]) + texts(as_text)[1]
    with pytest.raises(openai.BadRequestError) as raised:
        complete(client, stack, prompt=[1, 2, 10**7])
    assert raised.value.body["param"] == "prompt" and "vocabulary" in raised.value.body["message"]


def test_streamed_token_id_echo(client: openai.OpenAI, stack: Stack) -> None:
    ids = token_ids(stack, "Two plus two equals")
    whole = texts(complete(client, stack, prompt=ids, echo=True))[0]
    stream = complete(client, stack, prompt=ids, echo=True, stream=True)
    assert "".join(chunk.choices[0].text for chunk in stream if chunk.choices) == whole


def test_echo_returns_the_prompt(client: openai.OpenAI, stack: Stack) -> None:
    prompt = "The capital of France is"
    plain, echoed = complete(client, stack), complete(client, stack, echo=True)
    assert texts(echoed) == [prompt + texts(plain)[0]]
    streamed = complete(
        client, stack, echo=True, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(streamed)
    assert "".join(c.choices[0].text for c in chunks if c.choices) == texts(echoed)[0]
    assert chunks[-1].choices == [] and chunks[-1].usage.total_tokens == echoed.usage.total_tokens


def test_best_of_equal_to_n_is_served_and_other_values_are_refused(
    client: openai.OpenAI, stack: Stack
) -> None:
    assert len(complete(client, stack, n=2, best_of=2, temperature=1.0, seed=5).choices) == 2
    with pytest.raises(openai.BadRequestError) as raised:
        complete(client, stack, best_of=3)
    assert (
        raised.value.body["param"] == "best_of"
        and raised.value.body["code"] == "unsupported_parameter"
    )


@pytest.mark.parametrize(
    ("endpoint", "fields", "param"),
    [
        ("completions", {"suffix": " and so on."}, "suffix"),
        ("chat", {"functions": [{"name": "f", "parameters": {}}]}, "functions"),
        ("chat", {"audio": {"voice": "alloy", "format": "wav"}}, "audio"),
    ],
)
def test_not_supported_yet_is_a_clear_400(
    client: openai.OpenAI, stack: Stack, endpoint: str, fields: dict[str, object], param: str
) -> None:
    create = complete if endpoint == "completions" else chat
    with pytest.raises(openai.BadRequestError) as raised:
        create(client, stack, **fields)
    assert raised.value.status_code == 400
    assert (
        raised.value.body["param"] == param and "not supported yet" in raised.value.body["message"]
    )


def test_response_format_text_and_user_are_accepted(client: openai.OpenAI, stack: Stack) -> None:
    response = chat(client, stack, response_format={"type": "text"}, user="someone")
    assert texts(response) == texts(chat(client, stack))
