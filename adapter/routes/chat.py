"""POST /v1/chat/completions."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from starlette.responses import Response

from adapter.contract import GenerateInputs
from adapter.dependencies import State, find_model
from adapter.errors import request_id_of
from adapter.generation import CollectedChoice, Delta, UsageTally
from adapter.objects import (
    ChatChoice,
    ChatChunkChoice,
    ChatCompletion,
    ChatCompletionChunk,
    ChatDelta,
    ChatLogprobs,
    ChatMessageOut,
    ChatTokenLogprob,
    ChatTopLogprob,
    FunctionCallDelta,
    FunctionCallOut,
    ToolCallDelta,
    ToolCallOut,
    completion_id,
    now,
)
from adapter.routes.runner import GenerationRun
from adapter.sampling import sampling_parameters
from adapter.schemas import ChatCompletionRequest
from adapter.tool_calls import ToolCallReader, constraint_errors_named, tool_call_format
from contract.outputs import TokenLogprobs
from contract.tools import ToolCall

router = APIRouter(tags=["chat"])


@router.post("/v1/chat/completions", response_model=None)
async def create_chat_completion(
    body: ChatCompletionRequest, request: Request, state: State
) -> Response:
    body.check_supported()
    model = await find_model(state, body.model, chat=True)
    tools = [tool.model_dump(exclude_none=True) for tool in body.tools or []]
    inputs = GenerateInputs(
        request_id=request_id_of(request),
        messages=body.messages_for_model(),
        tools=tools if body.uses_tools else None,
        chat_template_kwargs=body.chat_template_kwargs,
        stream=bool(body.stream),
        sampling_parameters=sampling_parameters(body, state.config, model),
        return_logprobs=bool(body.logprobs),
    )
    num_choices = body.n or 1
    run = GenerationRun(state, request, model.id, [inputs], num_choices)
    identity = {"id": completion_id("chatcmpl"), "created": now(), "model": model.id}

    def tool_call_reader() -> ToolCallReader | None:
        if not body.uses_tools:
            return None
        names = [tool["function"]["name"] for tool in tools]
        return ToolCallReader(tool_call_format(model), names, num_choices)

    with constraint_errors_named(body):
        if body.stream:
            return await run.stream(
                lambda tally: ChatChunks(
                    identity, num_choices, body.include_usage, tally, tool_call_reader()
                )
            )
        choices = await run.collect()
    reader = tool_call_reader()
    completion = ChatCompletion(
        **identity,
        choices=[
            _choice(index, choice, bool(body.logprobs), reader)
            for index, choice in enumerate(choices)
        ],
        usage=run.tally.usage(),
    )
    return JSONResponse(completion.model_dump(mode="json"))


def _choice(
    index: int, choice: CollectedChoice, with_logprobs: bool, reader: ToolCallReader | None
) -> ChatChoice:
    logprobs = None
    if with_logprobs:
        logprobs = ChatLogprobs(content=[t for lp in choice.logprobs for t in chat_logprobs(lp)])
    content, calls, finish_reason = choice.text, [], choice.finish_reason or "stop"
    if reader is not None:
        content, calls, finish_reason = reader.read(Delta(index, content, finish_reason))
    message = ChatMessageOut(
        # Only calls, no text: content is null, as OpenAI sends it.
        content=None if calls and not content.strip() else content,
        tool_calls=[_tool_call(call) for _, call in calls] or None,
    )
    return ChatChoice(
        index=index, message=message, logprobs=logprobs, finish_reason=finish_reason or "stop"
    )


def _tool_call(call: ToolCall) -> ToolCallOut:
    return ToolCallOut(id=call.id, function=FunctionCallOut(name=call.name, arguments=call.arguments))


def chat_logprobs(logprobs: TokenLogprobs) -> list[ChatTokenLogprob]:
    return [
        ChatTokenLogprob(
            token=token,
            logprob=logprob,
            bytes=list(token.encode("utf-8")),
            top_logprobs=[
                ChatTopLogprob(token=top.token, logprob=top.logprob, bytes=list(top.token.encode()))
                for top in alternatives
            ],
        )
        for token, logprob, alternatives in zip(
            logprobs.tokens, logprobs.logprobs, logprobs.top_logprobs, strict=False
        )
    ]


class ChatChunks:
    """Chunk objects of a streamed chat completion (see adapter.sse.ChunkRenderer)."""

    def __init__(
        self,
        identity: dict[str, Any],
        num_choices: int,
        include_usage: bool,
        tally: UsageTally,
        tool_calls: ToolCallReader | None = None,
    ) -> None:
        self.identity = identity
        self.num_choices = num_choices
        self.include_usage = include_usage
        self.tally = tally
        self.tool_calls = tool_calls  # when the request has tools: reads calls out of the text

    def _dump(self, chunk: ChatCompletionChunk) -> dict[str, Any]:
        # With include_usage every chunk carries "usage": null until the last one (as OpenAI).
        return chunk.model_dump(mode="json", exclude=None if self.include_usage else {"usage"})

    def opening(self) -> list[dict[str, Any]]:
        return [
            self._dump(
                ChatCompletionChunk(
                    **self.identity,
                    choices=[
                        ChatChunkChoice(index=i, delta=ChatDelta(role="assistant", content=""))
                    ],
                )
            )
            for i in range(self.num_choices)
        ]

    def chunk(self, deltas: list[Delta]) -> list[dict[str, Any]]:
        choices, arguments = [], []
        for delta in deltas:
            content, finish_reason, calls = delta.text, delta.finish_reason, []
            if self.tool_calls is not None:
                content, calls, finish_reason = self.tool_calls.read(delta)
            if not (content or finish_reason or delta.logprobs or calls):
                continue
            logprobs = None if delta.logprobs is None else chat_logprobs(delta.logprobs)
            starts = [
                ToolCallDelta(
                    index=index,
                    id=call.id,
                    type="function",
                    function=FunctionCallDelta(name=call.name, arguments=""),
                )
                for index, call in calls
            ]
            choices.append(
                ChatChunkChoice(
                    index=delta.index,
                    delta=ChatDelta(content=content or None, tool_calls=starts or None),
                    logprobs=None if logprobs is None else ChatLogprobs(content=logprobs),
                    # With calls, the finish reason follows their arguments (next chunk).
                    finish_reason=None if calls else finish_reason,
                )
            )
            if calls:  # the arguments of each call, then the choice's finish reason
                arguments.append(
                    ChatChunkChoice(
                        index=delta.index,
                        delta=ChatDelta(
                            tool_calls=[
                                ToolCallDelta(
                                    index=index, function=FunctionCallDelta(arguments=call.arguments)
                                )
                                for index, call in calls
                            ]
                        ),
                        finish_reason=finish_reason,
                    )
                )
        return [
            self._dump(ChatCompletionChunk(**self.identity, choices=group))
            for group in (choices, arguments)
            if group
        ]

    def closing(self) -> list[dict[str, Any]]:
        if not self.include_usage:
            return []
        return [
            self._dump(ChatCompletionChunk(**self.identity, choices=[], usage=self.tally.usage()))
        ]
