"""POST /tokenize and POST /detokenize against the fake Triton: vLLM's shapes, the
contract request each sends, and the 400s that name the field."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from adapter.app import create_app
from adapter.backends import Backends
from adapter.config import AdapterConfig
from adapter.contract import ModelInfo
from adapter.errors import ServiceUnavailable
from adapter.triton_client import error_from_triton
from tests.adapter.conftest import assert_error
from tests.adapter.fake_triton import FakeTriton

pytestmark = pytest.mark.anyio


async def test_a_prompt_is_counted_by_the_model(client: httpx.AsyncClient, fake: FakeTriton) -> None:
    response = await client.post("/tokenize", json={"model": "org/base", "prompt": "Count these words"})
    assert response.status_code == 200, response.text
    assert response.json() == {"count": 3, "max_model_len": 2048, "tokens": [5, 5, 5], "token_strs": None}
    model, inputs = fake.calls[0]
    assert model == "org/base" and inputs.operation == "tokenize"
    assert inputs.text_input == "Count these words" and inputs.messages is None
    assert inputs.add_special_tokens is None and not inputs.return_token_strs  # the model's defaults
    with_strings = await client.post(
        "/tokenize",
        json={"model": "org/base", "prompt": "a bc", "add_special_tokens": False, "return_token_strs": True},
    )
    assert with_strings.json() == {"count": 2, "max_model_len": 2048, "tokens": [1, 2], "token_strs": ["a", "bc"]}
    assert fake.calls[1][1].add_special_tokens is False and fake.calls[1][1].return_token_strs


async def test_messages_go_to_the_model_as_a_chat_completion_sends_them(
    client: httpx.AsyncClient, fake: FakeTriton
) -> None:
    tool = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
    body = {
        "model": "tiny-chat",
        "messages": [{"role": "developer", "content": "Be brief"}, {"role": "assistant", "content": "Sure"}],
        "continue_final_message": True,
        "tools": [tool],
        "chat_template_kwargs": {"enable_thinking": False},
    }
    response = await client.post("/tokenize", json=body)
    assert response.status_code == 200, response.text
    assert response.json()["count"] == 3
    inputs = fake.calls[0][1]
    assert inputs.messages == [
        {"role": "system", "content": "Be brief"},
        {"role": "assistant", "content": "Sure"},
    ]
    assert inputs.tools == [tool] and inputs.chat_template_kwargs == {"enable_thinking": False}
    # Continuing the last message: no generation prompt unless asked (which is a 400).
    assert (inputs.continue_final_message, inputs.add_generation_prompt) == (True, False)
    await client.post("/tokenize", json={"model": "tiny-chat", "messages": body["messages"]})
    assert (fake.calls[1][1].add_generation_prompt, fake.calls[1][1].continue_final_message) == (None, None)


async def test_detokenize_answers_the_models_text(client: httpx.AsyncClient, fake: FakeTriton) -> None:
    response = await client.post("/detokenize", json={"model": "tiny-chat", "tokens": [1, 22, 0]})
    assert response.status_code == 200, response.text
    assert response.json() == {"prompt": "t1 t22 t0"}
    inputs = fake.calls[0][1]
    assert inputs.operation == "detokenize" and inputs.input_ids == [1, 22, 0]


@pytest.mark.parametrize(
    ("route", "body", "param"),
    [
        ("/tokenize", {"model": "tiny-chat"}, "prompt"),
        ("/tokenize", {"model": "tiny-chat", "prompt": "a", "messages": [{"role": "user", "content": "b"}]}, "messages"),
        ("/tokenize", {"model": "tiny-chat", "messages": []}, "messages"),
        ("/tokenize", {"model": "tiny-chat", "prompt": "a", "add_generation_prompt": False}, "add_generation_prompt"),
        ("/tokenize", {"model": "tiny-chat", "prompt": "a", "tools": []}, "tools"),
        (
            "/tokenize",
            {
                "model": "tiny-chat",
                "messages": [{"role": "user", "content": "b"}],
                "add_generation_prompt": True,
                "continue_final_message": True,
            },
            "continue_final_message",
        ),
        ("/tokenize", {"model": "tiny-chat", "messages": [{"role": "user", "content": "b"}], "chat_template": "{{x}}"}, "chat_template"),
        ("/tokenize", {"model": "tiny-chat", "prompt": "a", "suffix": "b"}, "suffix"),
        ("/tokenize", {"model": "org/base", "messages": [{"role": "user", "content": "b"}]}, "model"),
        ("/detokenize", {"model": "tiny-chat", "tokens": []}, "tokens"),
        ("/detokenize", {"model": "tiny-chat", "tokens": [4, -1]}, "tokens.1"),
        ("/detokenize", {"model": "tiny-chat"}, "tokens"),
        ("/detokenize", {"model": "tiny-chat", "tokens": "abc"}, "tokens"),
    ],
)
async def test_bad_bodies_are_400s_naming_the_field(
    client: httpx.AsyncClient, fake: FakeTriton, route: str, body: dict, param: str
) -> None:
    assert_error(await client.post(route, json=body), 400, param)
    assert fake.calls == []  # refused before the model is asked


async def test_unknown_models_are_404_and_old_models_a_400_naming_model(client: httpx.AsyncClient, fake: FakeTriton) -> None:
    for route, body in (("/tokenize", {"prompt": "a"}), ("/detokenize", {"tokens": [1]})):
        error = assert_error(await client.post(route, json={"model": "nope", **body}), 404, "model")
        assert error["code"] == "model_not_found"
    # A model of an older contract (no `operation` input) is never sent such a request.
    fake.models.append(ModelInfo("old", supports_tokenize=False))
    for route, body in (("/tokenize", {"prompt": "a"}), ("/detokenize", {"tokens": [1]})):
        error = assert_error(await client.post(route, json={"model": "old", **body}), 400, "model")
        assert "no 'operation' input" in error["message"]
    assert fake.calls == []


async def test_the_models_refusals_name_the_field(client: httpx.AsyncClient, fake: FakeTriton) -> None:
    refusals = {
        "vocabulary": "invalid request: tokens: token id 99999 is not in [0, 49152) (the vocabulary)",
        # The null model has the input but no tokenizer: the API names the model.
        "no tokenizer": "invalid request: operation: this model has no tokenizer: it cannot detokenize",
    }
    for expected, message in refusals.items():
        fake.respond = lambda inputs, message=message: [error_from_triton(message, "tiny-chat")]
        response = await client.post("/detokenize", json={"model": "tiny-chat", "tokens": [99999]})
        error = assert_error(response, 400, "tokens" if expected == "vocabulary" else "model")
        assert expected in error["message"]
    fake.respond = lambda inputs: [ServiceUnavailable("Triton is unreachable")]
    assert_error(await client.post("/tokenize", json={"model": "tiny-chat", "prompt": "a"}), 503)


async def test_api_keys_guard_both_routes(fake: FakeTriton) -> None:
    app = create_app(AdapterConfig(api_keys=("sk-right",)), triton_factory=lambda _config: fake)
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with app.router.lifespan_context(app), httpx.AsyncClient(transport=transport, base_url="http://a") as http:
        for route, body in (("/tokenize", {"prompt": "a"}), ("/detokenize", {"tokens": [1]})):
            assert_error(await http.post(route, json={"model": "tiny-chat", **body}), 401)
            ok = await http.post(route, json={"model": "tiny-chat", **body}, headers={"Authorization": "Bearer sk-right"})
            assert ok.status_code == 200, ok.text


@pytest.fixture
async def two_endpoints() -> AsyncIterator[tuple[httpx.AsyncClient, FakeTriton, FakeTriton]]:
    first = FakeTriton(models=[ModelInfo("a")])
    second = FakeTriton(models=[ModelInfo("b")])
    app = create_app(AdapterConfig(), triton_factory=lambda _config: Backends([first, second]))
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with app.router.lifespan_context(app), httpx.AsyncClient(transport=transport, base_url="http://a") as http:
        yield http, first, second


async def test_requests_go_to_an_endpoint_that_serves_the_model(two_endpoints) -> None:  # noqa: ANN001
    http, first, second = two_endpoints
    assert (await http.post("/tokenize", json={"model": "b", "prompt": "x y"})).json()["count"] == 2
    assert (await http.post("/detokenize", json={"model": "a", "tokens": [3]})).json() == {"prompt": "t3"}
    assert [model for model, _ in first.calls] == ["a"] and [model for model, _ in second.calls] == ["b"]
