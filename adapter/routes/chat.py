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
    completion_id,
    now,
)
from adapter.routes.runner import GenerationRun
from adapter.sampling import sampling_parameters
from adapter.schemas import ChatCompletionRequest
from contract.outputs import TokenLogprobs

router = APIRouter(tags=["chat"])


@router.post("/v1/chat/completions", response_model=None)
async def create_chat_completion(
    body: ChatCompletionRequest, request: Request, state: State
) -> Response:
    body.check_supported()
    model = await find_model(state, body.model, chat=True)
    inputs = GenerateInputs(
        request_id=request_id_of(request),
        messages=body.messages_for_model(),
        stream=bool(body.stream),
        sampling_parameters=sampling_parameters(body, state.config, model),
        return_logprobs=bool(body.logprobs),
    )
    num_choices = body.n or 1
    run = GenerationRun(state, request, model.id, [inputs], num_choices)
    identity = {"id": completion_id("chatcmpl"), "created": now(), "model": model.id}
    if body.stream:
        return await run.stream(
            lambda tally: ChatChunks(identity, num_choices, body.include_usage, tally)
        )
    choices = await run.collect()
    completion = ChatCompletion(
        **identity,
        choices=[
            _choice(index, choice, bool(body.logprobs)) for index, choice in enumerate(choices)
        ],
        usage=run.tally.usage(),
    )
    return JSONResponse(completion.model_dump(mode="json"))


def _choice(index: int, choice: CollectedChoice, with_logprobs: bool) -> ChatChoice:
    logprobs = None
    if with_logprobs:
        logprobs = ChatLogprobs(content=[t for lp in choice.logprobs for t in chat_logprobs(lp)])
    return ChatChoice(
        index=index,
        message=ChatMessageOut(content=choice.text),
        logprobs=logprobs,
        finish_reason=choice.finish_reason or "stop",
    )


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
        self, identity: dict[str, Any], num_choices: int, include_usage: bool, tally: UsageTally
    ) -> None:
        self.identity = identity
        self.num_choices = num_choices
        self.include_usage = include_usage
        self.tally = tally

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

    def chunk(self, deltas: list[Delta]) -> dict[str, Any] | None:
        choices = [
            ChatChunkChoice(
                index=delta.index,
                delta=ChatDelta(content=delta.text or None),
                logprobs=None
                if delta.logprobs is None
                else ChatLogprobs(content=chat_logprobs(delta.logprobs)),
                finish_reason=delta.finish_reason,
            )
            for delta in deltas
            if delta.text or delta.finish_reason or delta.logprobs
        ]
        if not choices:
            return None
        return self._dump(ChatCompletionChunk(**self.identity, choices=choices))

    def closing(self) -> list[dict[str, Any]]:
        if not self.include_usage:
            return []
        return [
            self._dump(ChatCompletionChunk(**self.identity, choices=[], usage=self.tally.usage()))
        ]
