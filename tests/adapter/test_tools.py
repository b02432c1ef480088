"""Tools and response_format through the adapter, against a fake model that writes calls in
the generic format: what the model is asked to enforce, and the calls the client gets
(the official OpenAI SDK reads them, streamed and not)."""

from __future__ import annotations

import json

import httpx
import openai
import pytest

from adapter.contract import GenerateInputs, ModelInfo
from adapter.errors import InvalidRequest
from tests.adapter.fake_triton import FakeTriton, Script, choice, out

pytestmark = pytest.mark.anyio

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather of a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}
TIME = {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object"}}}
ASK = [{"role": "user", "content": "Weather in Paris and Oslo?"}]
CALLS = (
    'Checking.<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>\n'
    '<tool_call>{"name": "get_weather", "arguments": {"city": "Oslo"}}</tool_call>'
)


def calling(inputs: GenerateInputs) -> Script:
    """The model writes CALLS, streamed a few characters at a time."""
    if not inputs.stream:
        return [out(choice(0, CALLS, "stop", 20), final=True)]
    pieces = [CALLS[i : i + 7] for i in range(0, len(CALLS), 7)]
    steps = [out(choice(0, piece, None, i + 1)) for i, piece in enumerate(pieces[:-1])]
    return [*steps, out(choice(0, pieces[-1], "stop", len(pieces)), final=True)]


@pytest.fixture
def fake() -> FakeTriton:
    models = [
        ModelInfo("tools-chat", max_model_len=2048, tool_call_format="generic"),
        ModelInfo("plain-chat", max_model_len=2048),
    ]
    return FakeTriton(models=models, respond=calling)


async def test_calls_come_back_as_tool_calls(sdk: openai.AsyncOpenAI, fake: FakeTriton) -> None:
    completion = await sdk.chat.completions.create(
        model="tools-chat", messages=ASK, tools=[WEATHER, TIME]
    )
    (answer,) = completion.choices
    assert answer.finish_reason == "tool_calls"
    assert answer.message.content == "Checking."
    calls = answer.message.tool_calls or []
    assert [(c.type, c.function.name, json.loads(c.function.arguments)) for c in calls] == [
        ("function", "get_weather", {"city": "Paris"}),
        ("function", "get_weather", {"city": "Oslo"}),
    ]
    assert all(c.id.startswith("call_") for c in calls) and calls[0].id != calls[1].id
    _, sent = fake.calls[-1]
    assert sent.tools == [WEATHER, TIME]
    tag = sent.sampling_parameters["structured_outputs"]["structural_tag"]["format"]
    assert tag["type"] == "triggered_tags" and not tag["stop_after_first"]  # auto, parallel
    assert [t["content"]["json_schema"] for t in tag["tags"]] == [
        WEATHER["function"]["parameters"],
        TIME["function"]["parameters"],
    ]


async def test_streamed_calls_are_deltas_never_markup(sdk: openai.AsyncOpenAI) -> None:
    stream = await sdk.chat.completions.create(
        model="tools-chat", messages=ASK, tools=[WEATHER], stream=True
    )
    content, calls, finish_reasons = "", {}, []
    async for chunk in stream:
        delta = chunk.choices[0].delta
        content += delta.content or ""
        for call in delta.tool_calls or []:
            entry = calls.setdefault(call.index, {"id": None, "name": None, "arguments": ""})
            if call.id:  # the first delta of a call: id and name, arguments ""
                assert entry["id"] is None and call.function.name and call.function.arguments == ""
                entry.update(id=call.id, name=call.function.name)
            else:
                assert entry["id"] is not None  # arguments come after the name
            entry["arguments"] += (call.function.arguments or "")
        finish_reasons.append(chunk.choices[0].finish_reason)
    assert content == "Checking."
    assert "<tool_call>" not in content and "tool_call" not in content
    assert [(c["name"], json.loads(c["arguments"])) for c in calls.values()] == [
        ("get_weather", {"city": "Paris"}),
        ("get_weather", {"city": "Oslo"}),
    ]
    assert [r for r in finish_reasons if r] == ["tool_calls"]


async def test_required_and_named_choices_are_enforced(client: httpx.AsyncClient, fake: FakeTriton) -> None:
    for tool_choice, names, one in (
        ("required", ["get_weather", "get_time"], False),
        ({"type": "function", "function": {"name": "get_time"}}, ["get_time"], True),
    ):
        body = {"model": "tools-chat", "messages": ASK, "tools": [WEATHER, TIME], "tool_choice": tool_choice}
        assert (await client.post("/v1/chat/completions", json=body)).status_code == 200
        tag = fake.calls[-1][1].sampling_parameters["structured_outputs"]["structural_tag"]["format"]
        assert tag["type"] == "tags_with_separator" and tag["at_least_one"]
        assert [t["begin"].split('"')[3] for t in tag["tags"]] == names
        assert tag["stop_after_first"] is one
    body = {"model": "tools-chat", "messages": ASK, "tools": [WEATHER], "parallel_tool_calls": False}
    await client.post("/v1/chat/completions", json=body)
    assert fake.calls[-1][1].sampling_parameters["structured_outputs"]["structural_tag"]["format"][
        "stop_after_first"
    ]


async def test_tool_choice_none_sends_no_tools_and_reads_no_calls(
    client: httpx.AsyncClient, fake: FakeTriton
) -> None:
    body = {"model": "tools-chat", "messages": ASK, "tools": [WEATHER], "tool_choice": "none"}
    reply = (await client.post("/v1/chat/completions", json=body)).json()
    assert reply["choices"][0]["message"]["content"] == CALLS  # text, as written
    assert "tool_calls" not in reply["choices"][0]["message"]
    sent = fake.calls[-1][1]
    assert sent.tools is None and "structured_outputs" not in sent.sampling_parameters


async def test_a_round_trip_sends_calls_and_results_to_the_model(
    client: httpx.AsyncClient, fake: FakeTriton
) -> None:
    fake.respond = lambda inputs: [out(choice(0, "It is 18 C in Paris.", "stop", 7), final=True)]
    messages = [
        *ASK,
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}
        ]},
        {"role": "tool", "tool_call_id": "call_1", "content": "18 C"},
    ]  # fmt: skip
    body = {"model": "tools-chat", "messages": messages, "tools": [WEATHER]}
    reply = (await client.post("/v1/chat/completions", json=body)).json()
    assert reply["choices"][0] == {
        "index": 0,
        "message": {"role": "assistant", "content": "It is 18 C in Paris.", "refusal": None},
        "logprobs": None,
        "finish_reason": "stop",
    }
    sent = fake.calls[-1][1].messages
    assert sent[1]["tool_calls"][0]["function"] == {"name": "get_weather", "arguments": '{"city": "Paris"}'}
    assert sent[2] == {"role": "tool", "content": "18 C", "tool_call_id": "call_1"}


async def test_response_format_becomes_the_models_constraint(client: httpx.AsyncClient, fake: FakeTriton) -> None:
    fake.respond = lambda inputs: [out(choice(0, '{"a": 1}', "stop", 4), final=True)]
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    for route, extra in (("/v1/chat/completions", {"messages": ASK}), ("/v1/completions", {"prompt": "x"})):
        for response_format, expected in (
            ({"type": "json_object"}, {"json_object": True}),
            ({"type": "json_schema", "json_schema": {"name": "a", "schema": schema, "strict": True}}, {"json": schema}),
            ({"type": "text"}, None),
        ):
            body = {"model": "tools-chat", **extra, "response_format": response_format}
            assert (await client.post(route, json=body)).status_code == 200
            assert fake.calls[-1][1].sampling_parameters.get("structured_outputs") == expected


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice"),
        ({"tool_choice": "required"}, "tool_choice"),
        ({"tools": [WEATHER, WEATHER]}, "tools"),
        ({"tools": [{"type": "function", "function": {"name": "bad name!"}}]}, "tools.0.function.name"),
        ({"tools": [WEATHER], "response_format": {"type": "json_object"}}, "response_format"),
        ({"response_format": {"type": "json_schema", "json_schema": {"name": "x"}}}, "response_format.json_schema"),
        ({"response_format": {"type": "json_object"}, "structured_outputs": {"regex": "a"}}, "response_format"),
        ({"messages": [{"role": "tool", "content": "18 C"}]}, "messages.0.tool_call_id"),
    ],
)
async def test_bad_tool_requests_name_the_field(client: httpx.AsyncClient, body: dict, param: str) -> None:
    reply = await client.post("/v1/chat/completions", json={"model": "tools-chat", "messages": ASK, **body})
    assert reply.status_code == 400, reply.text
    assert reply.json()["error"]["param"] == param


async def test_a_model_that_does_not_say_its_format_takes_no_tools(client: httpx.AsyncClient) -> None:
    body = {"model": "plain-chat", "messages": ASK, "tools": [WEATHER]}
    reply = await client.post("/v1/chat/completions", json=body)
    assert reply.status_code == 400 and reply.json()["error"]["param"] == "tools"


async def test_a_schema_the_model_refuses_names_response_format(client: httpx.AsyncClient, fake: FakeTriton) -> None:
    fake.respond = lambda inputs: [InvalidRequest("unsupported keyword 'if'", param="structured_outputs")]
    body = {"model": "tools-chat", "messages": ASK,
            "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"if": {}}}}}
    for stream in (False, True):
        reply = await client.post("/v1/chat/completions", json={**body, "stream": stream})
        assert reply.status_code == 400 and reply.json()["error"]["param"] == "response_format"
