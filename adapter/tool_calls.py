"""Structured outputs and tools of a request: what the model is asked to enforce, and the
tool calls read back from its text.

`structured_outputs` turns `response_format` (chat and completions) or `tools` +
`tool_choice` (chat) into the contract's `structured_outputs` sampling field; the model's
grammar engine enforces it. `ToolCallReader` splits each choice's text into content and
OpenAI tool calls (`contract.tools.ToolCallParser`, in the model's `tool_call_format`).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any

from adapter.contract import ModelInfo
from adapter.errors import InvalidRequest
from adapter.generation import Delta
from adapter.schemas import ChatCompletionRequest, CompletionRequest, NamedToolChoice
from contract.outputs import FinishReason
from contract.tools import ToolCall, ToolCallParser, structural_tag


def structured_outputs(
    body: ChatCompletionRequest | CompletionRequest, model: ModelInfo
) -> dict[str, Any] | None:
    """The contract's `structured_outputs` for what the request asks, or None."""
    response_format = body.response_format
    if response_format is not None and response_format.type == "json_object":
        return {"json_object": True}
    if response_format is not None and response_format.type == "json_schema":
        assert response_format.json_schema is not None  # checked by the schema
        return {"json": response_format.json_schema.json_schema}
    if not isinstance(body, ChatCompletionRequest) or not body.uses_tools:
        return None
    format_name = tool_call_format(model)
    tools = [tool.model_dump(exclude_none=True) for tool in body.tools or []]
    choice = body.tool_choice
    if isinstance(choice, NamedToolChoice):
        tools = [tool for tool in tools if tool["function"]["name"] == choice.function.name]
    required = choice == "required" or isinstance(choice, NamedToolChoice)
    # One call for a named function; else parallel_tool_calls (default true, as OpenAI).
    parallel = not isinstance(choice, NamedToolChoice) and body.parallel_tool_calls is not False
    tag = structural_tag(format_name, tools, required=required, parallel=parallel)
    return {"structural_tag": tag}


def tool_call_format(model: ModelInfo) -> str:
    if model.tool_call_format is None:
        raise InvalidRequest(
            f"The model '{model.id}' does not say how it writes tool calls (no"
            " tool_call_format parameter in its config.pbtxt; `tritium package` writes it)",
            param="tools",
        )
    return model.tool_call_format


@contextmanager
def constraint_errors_named(body: ChatCompletionRequest | CompletionRequest):  # noqa: ANN201
    """A constraint the model refuses (an unsupported schema) names the request's field
    (`response_format` or `tools`) rather than the contract's `structured_outputs`."""
    try:
        yield
    except InvalidRequest as error:
        if error.param == "structured_outputs" and body.structured_outputs is None:
            uses_tools = isinstance(body, ChatCompletionRequest) and body.uses_tools
            error.param = "tools" if uses_tools else "response_format"
        raise


class ToolCallReader:
    """Content and tool calls of every choice of one request, as its deltas arrive."""

    def __init__(self, format_name: str, tool_names: list[str], num_choices: int) -> None:
        self.parsers = [ToolCallParser(format_name, tool_names) for _ in range(num_choices)]
        self.num_calls = [0] * num_choices  # calls given out so far, per choice

    def read(self, delta: Delta) -> tuple[str, list[tuple[int, ToolCall]], str | None]:
        """(content, [(call index in its choice, call)], finish_reason) of one delta;
        a choice that ends with calls ends with finish_reason "tool_calls"."""
        parser = self.parsers[delta.index]
        content, calls = parser.feed(delta.text)
        finish_reason = delta.finish_reason
        if finish_reason is not None:
            rest, more = parser.finish()
            content, calls = content + rest, calls + more
            if parser.calls and finish_reason == FinishReason.STOP.value:
                finish_reason = FinishReason.TOOL_CALLS.value
        first = self.num_calls[delta.index]
        self.num_calls[delta.index] += len(calls)
        return content, list(enumerate(calls, start=first)), finish_reason
