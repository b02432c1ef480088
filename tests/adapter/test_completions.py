"""POST /v1/completions against the fake Triton."""

from __future__ import annotations

import httpx
import pytest

from contract.outputs import TokenLogprobs, TopLogprob
from tests.adapter.conftest import assert_error, sse_payloads
from tests.adapter.fake_triton import FakeTriton, choice, out

pytestmark = pytest.mark.anyio


async def test_non_streaming_shape(client: httpx.AsyncClient, fake: FakeTriton) -> None:
    response = await client.post("/v1/completions", json={"model": "org/base", "prompt": "Once"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["id"].startswith("cmpl-")
    assert body["object"] == "text_completion"
    assert body["choices"] == [
        {"index": 0, "text": "Hello world", "logprobs": None, "finish_reason": "stop"}
    ]
    assert body["usage"] == {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}
    inputs = fake.calls[0][1]
    assert inputs.text_input == "Once" and inputs.messages is None
    assert inputs.sampling_parameters == {"max_tokens": 16}  # OpenAI's completions default


async def test_streaming_with_usage(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/v1/completions",
        json={
            "model": "org/base",
            "prompt": "Once",
            "stream": True,
            "stream_options": {"include_usage": True},
        },
    )
    payloads = sse_payloads(response.text)
    assert payloads[-1] == "[DONE]"
    chunks = payloads[:-1]
    assert all(chunk["object"] == "text_completion" for chunk in chunks)
    assert [c["choices"][0]["text"] for c in chunks[:-1]] == ["Hello", " world"]
    assert [c["choices"][0]["finish_reason"] for c in chunks[:-1]] == [None, "stop"]
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["total_tokens"] == 7


async def test_echo_prepends_the_prompt(client: httpx.AsyncClient) -> None:
    body = {"model": "org/base", "prompt": "Once", "echo": True}
    response = await client.post("/v1/completions", json=body)
    assert response.json()["choices"][0]["text"] == "OnceHello world"
    streamed = await client.post("/v1/completions", json={**body, "stream": True})
    chunks = sse_payloads(streamed.text)[:-1]
    assert "".join(c["choices"][0]["text"] for c in chunks) == "OnceHello world"


async def test_several_prompts_and_n(client: httpx.AsyncClient, fake: FakeTriton) -> None:
    fake.respond = lambda inputs: [
        out(
            *(choice(i, f"{inputs.text_input}{i}", "stop", 1) for i in range(2)),
            prompt_tokens=3,
            final=True,
        )
    ]
    response = await client.post(
        "/v1/completions", json={"model": "org/base", "prompt": ["a", "b"], "n": 2}
    )
    body = response.json()
    assert [(c["index"], c["text"]) for c in body["choices"]] == [
        (0, "a0"),
        (1, "a1"),
        (2, "b0"),
        (3, "b1"),
    ]
    assert body["usage"] == {"prompt_tokens": 6, "completion_tokens": 4, "total_tokens": 10}
    assert len({inputs.request_id for _, inputs in fake.calls}) == 2

    streamed = await client.post(
        "/v1/completions", json={"model": "org/base", "prompt": ["a", "b"], "n": 2, "stream": True}
    )
    chunks = sse_payloads(streamed.text)[:-1]
    indexes = sorted(item["index"] for chunk in chunks for item in chunk["choices"])
    assert indexes == [0, 1, 2, 3]


async def test_logprobs_and_text_offset(client: httpx.AsyncClient, fake: FakeTriton) -> None:
    first = TokenLogprobs([1], ["He"], [-0.5], [[TopLogprob("He", -0.5), TopLogprob("Hi", -1.0)]])
    second = TokenLogprobs([2], ["y"], [-0.25], [[TopLogprob("y", -0.25), TopLogprob("!", -2.0)]])
    fake.respond = lambda inputs: [
        out(choice(0, "He", None, 1, first)),
        out(choice(0, "y", "stop", 2, second), final=True),
    ]
    response = await client.post(
        "/v1/completions", json={"model": "org/base", "prompt": "x", "logprobs": 2}
    )
    logprobs = response.json()["choices"][0]["logprobs"]
    assert logprobs == {
        "tokens": ["He", "y"],
        "token_logprobs": [-0.5, -0.25],
        "top_logprobs": [{"He": -0.5, "Hi": -1.0}, {"y": -0.25, "!": -2.0}],
        "text_offset": [0, 2],
    }
    assert fake.calls[0][1].sampling_parameters["top_logprobs"] == 2


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"suffix": "end"}, "suffix"),
        ({"best_of": 3}, "best_of"),
        ({"echo": True, "logprobs": 1}, "echo"),
        ({"prompt": [[1, 2], []]}, "prompt"),
        ({"prompt": [1, -2]}, "prompt"),
        ({"logprobs": 6}, "logprobs"),
    ],
)
async def test_unsupported_or_bad_fields(
    client: httpx.AsyncClient, extra: dict[str, object], param: str
) -> None:
    response = await client.post(
        "/v1/completions", json={"model": "org/base", "prompt": "x", **extra}
    )
    assert_error(response, 400, param)


async def test_token_id_prompts_go_to_input_ids(
    client: httpx.AsyncClient, fake: FakeTriton
) -> None:
    body = {"model": "org/base", "prompt": [[1, 2], [3]], "echo": True}
    response = await client.post("/v1/completions", json=body)
    assert response.status_code == 200, response.text
    sent = [inputs for _model, inputs in fake.calls]
    assert [inputs.input_ids for inputs in sent] == [[1, 2], [3]]
    assert all(inputs.text_input is None for inputs in sent)
    # The adapter cannot detokenize: the model echoes the prompt (exclude_input_in_output=false).
    assert all(inputs.include_input for inputs in sent)
    assert [choice["text"] for choice in response.json()["choices"]] == ["Hello world"] * 2


async def test_token_id_prompts_need_an_input_ids_input(
    client: httpx.AsyncClient, fake: FakeTriton
) -> None:
    from adapter.contract import ModelInfo

    fake.models = [ModelInfo("text-only", supports_token_ids=False)]
    response = await client.post("/v1/completions", json={"model": "text-only", "prompt": [1, 2]})
    assert "input_ids" in assert_error(response, 400, "prompt")["message"]


async def test_best_of_equal_to_n_is_fine(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/v1/completions", json={"model": "org/base", "prompt": "x", "best_of": 2, "n": 2}
    )
    assert response.status_code == 200


async def test_chat_only_model_is_refused(client: httpx.AsyncClient, fake: FakeTriton) -> None:
    from adapter.contract import ModelInfo

    fake.models = [ModelInfo("chat-only", supports_completions=False)]
    response = await client.post("/v1/completions", json={"model": "chat-only", "prompt": "x"})
    assert_error(response, 400, "model")
