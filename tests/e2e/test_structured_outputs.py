"""Structured outputs and tools on the real stack (the default 135M model, whose chat
template takes no tools: the generic tool prompt), through the official OpenAI SDK,
LangChain and LlamaIndex. Answers are sampled at temperature 1 and still follow their
schema: the grammar engine enforces it, whatever the model would have written."""

from __future__ import annotations

import json
from typing import Literal

import jsonschema
import openai
import pytest
from pydantic import BaseModel, Field

from tests.e2e.conftest import Stack

pytestmark = pytest.mark.e2e

WEATHER_SCHEMA = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 12},
        "temperature": {"type": "integer", "minimum": -40, "maximum": 50},
        "sky": {"enum": ["sunny", "cloudy", "rainy"]},
    },
    "required": ["city", "temperature", "sky"],
    "additionalProperties": False,
}
GET_WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The current weather of a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "maxLength": 16}},
            "required": ["city"],
            "additionalProperties": False,
        },
    },
}
ADD = {
    "type": "function",
    "function": {
        "name": "add",
        "description": "The sum of two integers",
        "parameters": {
            "type": "object",
            "properties": {
                "a": {"type": "integer", "minimum": 0, "maximum": 999},
                "b": {"type": "integer", "minimum": 0, "maximum": 999},
            },
            "required": ["a", "b"],
            "additionalProperties": False,
        },
    },
}
ASK_WEATHER = [{"role": "user", "content": "What is the weather like in Paris today?"}]
SAMPLED = {"temperature": 1.0, "max_tokens": 96}


@pytest.fixture(scope="module")
def client(stack: Stack) -> openai.OpenAI:
    return openai.OpenAI(base_url=stack.base_url, api_key="unused", max_retries=0, timeout=300)


def streamed_text(stream: openai.Stream) -> tuple[str, str | None]:
    text, finish_reason = "", None
    for chunk in stream:
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
            finish_reason = chunk.choices[0].finish_reason or finish_reason
    return text, finish_reason


@pytest.mark.parametrize("stream", [False, True])
def test_json_schema_answers_follow_their_schema_for_every_seed(
    client: openai.OpenAI, stack: Stack, stream: bool
) -> None:
    response_format = {
        "type": "json_schema",
        "json_schema": {"name": "weather", "schema": WEATHER_SCHEMA, "strict": True},
    }
    for seed in (1, 2, 3):
        reply = client.chat.completions.create(
            model=stack.model, messages=ASK_WEATHER, response_format=response_format,
            seed=seed, stream=stream, **SAMPLED,
        )  # fmt: skip
        if stream:
            text, finish_reason = streamed_text(reply)
        else:
            text, finish_reason = reply.choices[0].message.content, reply.choices[0].finish_reason
        assert finish_reason == "stop", text
        jsonschema.validate(json.loads(text), WEATHER_SCHEMA)


def test_parse_with_a_pydantic_model(client: openai.OpenAI, stack: Stack) -> None:
    class Weather(BaseModel):
        city: str = Field(max_length=12)
        sky: Literal["sunny", "cloudy", "rainy"]

    completion = client.chat.completions.parse(
        model=stack.model, messages=ASK_WEATHER, response_format=Weather, seed=5, **SAMPLED
    )
    parsed = completion.choices[0].message.parsed
    assert isinstance(parsed, Weather) and parsed.sky in ("sunny", "cloudy", "rainy")


def test_json_object_and_vllm_extensions(client: openai.OpenAI, stack: Stack) -> None:
    reply = client.chat.completions.create(
        model=stack.model, messages=ASK_WEATHER, response_format={"type": "json_object"},
        seed=7, **SAMPLED,
    )  # fmt: skip
    if reply.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(reply.choices[0].message.content), dict)
    else:  # cut by max_tokens: still the beginning of an object
        assert reply.choices[0].message.content.lstrip().startswith("{")
    choice = client.completions.create(
        model=stack.model, prompt="Is the sky blue? Answer:", max_tokens=8, temperature=1.0,
        extra_body={"structured_outputs": {"choice": ["yes", "no", "maybe"]}},
    )  # fmt: skip
    assert choice.choices[0].text in ("yes", "no", "maybe")
    regex = client.completions.create(
        model=stack.model, prompt="A date:", max_tokens=16, temperature=1.0,
        extra_body={"structured_outputs": {"regex": r"20[0-9]{2}-(0[1-9]|1[0-2])-[0-2][0-9]"}},
    )  # fmt: skip
    assert regex.choices[0].finish_reason == "stop"
    assert len(regex.choices[0].text) == 10 and regex.choices[0].text.startswith("20")


def test_a_schema_the_grammar_engine_cannot_take_is_a_400(client: openai.OpenAI, stack: Stack) -> None:
    broken = {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "no-such-type"}}}
    with pytest.raises(openai.BadRequestError) as raised:
        client.chat.completions.create(
            model=stack.model, messages=ASK_WEATHER, response_format=broken, max_tokens=8
        )
    assert raised.value.status_code == 400
    assert raised.value.body["param"] == "response_format"


def arguments_of(call: object, tool: dict) -> dict:
    arguments = json.loads(call.function.arguments)  # type: ignore[attr-defined]
    jsonschema.validate(arguments, tool["function"]["parameters"])
    return arguments


@pytest.mark.parametrize("stream", [False, True])
def test_required_and_named_tool_calls_follow_the_function(
    client: openai.OpenAI, stack: Stack, stream: bool
) -> None:
    for tool_choice, names in (
        ("required", {"get_weather", "add"}),
        ({"type": "function", "function": {"name": "add"}}, {"add"}),
    ):
        # One call each (parallel_tool_calls false): a 135M model given the choice of more
        # calls rarely stops writing them before max_tokens.
        reply = client.chat.completions.create(
            model=stack.model, messages=ASK_WEATHER, tools=[GET_WEATHER, ADD],
            tool_choice=tool_choice, parallel_tool_calls=False, seed=11, stream=stream, **SAMPLED,
        )  # fmt: skip
        if stream:
            calls: dict[int, dict] = {}
            finish_reason = None
            for chunk in reply:
                delta = chunk.choices[0].delta
                assert not delta.content or "<tool_call>" not in delta.content
                for call in delta.tool_calls or []:
                    entry = calls.setdefault(call.index, {"name": "", "arguments": ""})
                    entry["name"] += call.function.name or ""
                    entry["arguments"] += call.function.arguments or ""
                finish_reason = chunk.choices[0].finish_reason or finish_reason
            assert finish_reason == "tool_calls" and calls
            for entry in calls.values():
                tool = next(t for t in (GET_WEATHER, ADD) if t["function"]["name"] == entry["name"])
                jsonschema.validate(json.loads(entry["arguments"]), tool["function"]["parameters"])
                assert entry["name"] in names
        else:
            message = reply.choices[0].message
            assert reply.choices[0].finish_reason == "tool_calls" and message.tool_calls
            for call in message.tool_calls:
                assert call.function.name in names and call.id.startswith("call_")
                tool = next(t for t in (GET_WEATHER, ADD) if t["function"]["name"] == call.function.name)
                arguments_of(call, tool)
            assert len(message.tool_calls) == 1


def test_auto_tool_choice_answers_or_calls_and_a_round_trip_ends_in_text(
    client: openai.OpenAI, stack: Stack
) -> None:
    asked = client.chat.completions.create(
        model=stack.model, messages=ASK_WEATHER, tools=[GET_WEATHER], tool_choice="required",
        parallel_tool_calls=False, seed=3, **SAMPLED,
    )  # fmt: skip
    call = asked.choices[0].message.tool_calls[0]
    conversation = [
        *ASK_WEATHER,
        asked.choices[0].message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": '{"temperature": 18, "sky": "sunny"}'},
    ]
    answer = client.chat.completions.create(
        model=stack.model, messages=conversation, tools=[GET_WEATHER], tool_choice="none",
        temperature=0, max_tokens=40,
    )  # fmt: skip
    assert answer.choices[0].message.content and not answer.choices[0].message.tool_calls
    auto = client.chat.completions.create(
        model=stack.model, messages=ASK_WEATHER, tools=[GET_WEATHER], seed=4, **SAMPLED
    )
    choice = auto.choices[0]
    if choice.message.tool_calls:  # the model chose to call: the call follows the schema
        assert choice.finish_reason == "tool_calls"
        arguments_of(choice.message.tool_calls[0], GET_WEATHER)
    elif choice.finish_reason == "stop":  # an answer in text, with no call markup left in it
        assert choice.message.content and "<tool_call>" not in choice.message.content


def test_langchain_structured_output_and_bound_tools(stack: Stack) -> None:
    from langchain_openai import ChatOpenAI

    class Weather(BaseModel):
        """The weather of a city."""

        city: str = Field(max_length=12)
        sky: Literal["sunny", "cloudy", "rainy"]

    llm = ChatOpenAI(
        model=stack.model, base_url=stack.base_url, api_key="unused", temperature=1.0,
        max_tokens=96, max_retries=0, seed=2,
    )  # fmt: skip
    weather = llm.with_structured_output(Weather).invoke("What is the weather in Paris?")
    assert isinstance(weather, Weather)
    bound = llm.bind_tools([GET_WEATHER], tool_choice="get_weather")
    message = bound.invoke("What is the weather in Paris?")
    (call,) = message.tool_calls
    assert call["name"] == "get_weather"
    jsonschema.validate(call["args"], GET_WEATHER["function"]["parameters"])


def test_llamaindex_openai_like_calls_a_tool(stack: Stack) -> None:
    from llama_index.core.tools import FunctionTool
    from llama_index.llms.openai_like import OpenAILike

    def add(a: int, b: int) -> int:
        """The sum of two integers."""
        return a + b

    llm = OpenAILike(
        model=stack.model, api_base=stack.base_url, api_key="unused", is_chat_model=True,
        is_function_calling_model=True, context_window=2048, max_tokens=96, temperature=1.0,
        max_retries=0,
    )  # fmt: skip
    tool = FunctionTool.from_defaults(fn=add)
    response = llm.chat_with_tools([tool], user_msg="What is 2 plus 3?", tool_required=True)
    (call,) = llm.get_tool_calls_from_response(response, error_on_no_tool_call=True)[:1]
    assert call.tool_name == "add"
    assert set(call.tool_kwargs) == {"a", "b"} and all(isinstance(v, int) for v in call.tool_kwargs.values())
