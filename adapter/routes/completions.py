"""POST /v1/completions (OpenAI's legacy text completions)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from starlette.responses import Response

from adapter.contract import GenerateInputs
from adapter.dependencies import State, find_model
from adapter.errors import InvalidRequest, request_id_of
from adapter.generation import Delta, UsageTally
from adapter.objects import (
    Completion,
    CompletionChoice,
    CompletionLogprobs,
    completion_id,
    now,
)
from adapter.routes.runner import GenerationRun
from adapter.sampling import sampling_parameters
from adapter.schemas import CompletionRequest
from adapter.tool_calls import constraint_errors_named
from contract.outputs import TokenLogprobs

router = APIRouter(tags=["completions"])


@router.post("/v1/completions", response_model=None)
async def create_completion(body: CompletionRequest, request: Request, state: State) -> Response:
    body.check_supported()
    prompts = body.prompts()
    limit = state.config.max_concurrent_requests
    if len(prompts) > limit:  # could never get its places under the limit: say so, not 429
        raise InvalidRequest(
            f"at most {limit} prompts per request (the server's concurrency limit),"
            f" got {len(prompts)}",
            param="prompt",
            code="invalid_value",
        )
    model = await find_model(state, body.model, chat=False)
    parameters = sampling_parameters(body, state.config, model)
    request_id = request_id_of(request)
    if not model.supports_token_ids and any(isinstance(p, list) for p in prompts):
        raise InvalidRequest(
            f"The model '{model.id}' takes no token-id prompts (no 'input_ids' input)",
            param="prompt",
        )
    requests = [
        GenerateInputs(
            # One Triton request per prompt; suffix the id so each stays unique in Triton's logs.
            request_id=request_id if len(prompts) == 1 else f"{request_id}-{position}",
            text_input=prompt if isinstance(prompt, str) else None,
            input_ids=prompt if isinstance(prompt, list) else None,
            stream=bool(body.stream),
            sampling_parameters=parameters,
            return_logprobs=body.logprobs is not None,
            # Only the model can turn token ids back into text: it echoes those prompts.
            include_input=bool(body.echo) and isinstance(prompt, list),
        )
        for position, prompt in enumerate(prompts)
    ]
    num_choices = body.n or 1
    run = GenerationRun(state, request, model.id, requests, num_choices)
    # Text that every choice starts with: its prompt when echo is on (text prompts only).
    prefixes = [
        _echoed(prompts[i // num_choices]) if body.echo else "" for i in range(run.total_choices)
    ]
    texts = TextOffsets(prefixes, top=bool(body.logprobs))
    identity = {"id": completion_id("cmpl"), "created": now(), "model": model.id}
    with constraint_errors_named(body):
        if body.stream:
            return await run.stream(
                lambda tally: CompletionChunks(identity, texts, body.include_usage, tally)
            )
        choices = await run.collect()
    completion = Completion(
        **identity,
        choices=[
            CompletionChoice(
                index=index,
                text=prefixes[index] + choice.text,
                logprobs=texts.merged(index, choice.logprobs)
                if body.logprobs is not None
                else None,
                finish_reason=choice.finish_reason,
            )
            for index, choice in enumerate(choices)
        ],
        usage=run.tally.usage(),
    )
    return JSONResponse(completion.model_dump(mode="json"))


def _echoed(prompt: str | list[int]) -> str:
    return prompt if isinstance(prompt, str) else ""  # the model echoes token-id prompts


class TextOffsets:
    """Per choice, how many characters of text came before: logprobs' text_offset."""

    def __init__(self, prefixes: list[str], top: bool) -> None:
        self.prefixes = prefixes
        self.lengths = [len(prefix) for prefix in prefixes]
        self.top = top  # alternatives were asked for (logprobs >= 1)

    def logprobs(self, index: int, logprobs: TokenLogprobs) -> CompletionLogprobs:
        offsets = []
        for token in logprobs.tokens:
            offsets.append(self.lengths[index])
            self.lengths[index] += len(token)
        return CompletionLogprobs(
            tokens=logprobs.tokens,
            token_logprobs=logprobs.logprobs,
            top_logprobs=[
                {top.token: top.logprob for top in alts} for alts in logprobs.top_logprobs
            ]
            if self.top
            else None,
            text_offset=offsets,
        )

    def merged(self, index: int, parts: list[TokenLogprobs]) -> CompletionLogprobs:
        merged = CompletionLogprobs(top_logprobs=[] if self.top else None)
        for part in parts:
            piece = self.logprobs(index, part)
            merged.tokens += piece.tokens
            merged.token_logprobs += piece.token_logprobs
            merged.text_offset += piece.text_offset
            if merged.top_logprobs is not None and piece.top_logprobs is not None:
                merged.top_logprobs += piece.top_logprobs
        return merged


class CompletionChunks:
    """Chunk objects of a streamed completion (see adapter.sse.ChunkRenderer)."""

    def __init__(
        self, identity: dict[str, Any], texts: TextOffsets, include_usage: bool, tally: UsageTally
    ) -> None:
        self.identity = identity
        self.texts = texts
        self.include_usage = include_usage
        self.tally = tally

    def _dump(self, chunk: Completion) -> dict[str, Any]:
        return chunk.model_dump(mode="json", exclude=None if self.include_usage else {"usage"})

    def opening(self) -> list[dict[str, Any]]:
        choices = [
            CompletionChoice(index=index, text=prefix, finish_reason=None)
            for index, prefix in enumerate(self.texts.prefixes)
            if prefix
        ]
        return [self._dump(Completion(**self.identity, choices=choices))] if choices else []

    def chunk(self, deltas: list[Delta]) -> list[dict[str, Any]]:
        choices = [
            CompletionChoice(
                index=delta.index,
                text=delta.text,
                logprobs=None
                if delta.logprobs is None
                else self.texts.logprobs(delta.index, delta.logprobs),
                finish_reason=delta.finish_reason,
            )
            for delta in deltas
            if delta.text or delta.finish_reason or delta.logprobs
        ]
        return [self._dump(Completion(**self.identity, choices=choices))] if choices else []

    def closing(self) -> list[dict[str, Any]]:
        if not self.include_usage:
            return []
        return [self._dump(Completion(**self.identity, choices=[], usage=self.tally.usage()))]
