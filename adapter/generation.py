"""From Triton responses to OpenAI choices, shared by the chat and completions routes.

`generate_deltas` runs one Triton request per prompt (completions may carry several
prompts), gives every choice its OpenAI index (prompt position * n + choice), maps
finish reasons, and counts usage. Closing it cancels every Triton request it runs.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, Awaitable
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import TypeVar

from fastapi import Request

from adapter.contract import GenerateInputs, TritonBackend
from adapter.errors import ClientGone, ModelError, ServiceUnavailable
from adapter.objects import Usage
from contract.outputs import TokenLogprobs
from contract.tensors import ModelResponse

logger = logging.getLogger("adapter")

# Contract finish reasons that OpenAI clients know as they are.
_OPENAI_FINISH_REASONS = {"stop", "length", "tool_calls", "content_filter"}

Result = TypeVar("Result")


@dataclass(frozen=True)
class Delta:
    """One choice's advance, with its OpenAI choice index."""

    index: int
    text: str
    finish_reason: str | None  # an OpenAI finish_reason, None while running
    logprobs: TokenLogprobs | None = None


@dataclass
class UsageTally:
    # prompt position -> prompt tokens (num_input_tokens, the last value seen)
    prompt_tokens: dict[int, int] = field(default_factory=dict)
    # OpenAI choice index -> tokens generated (num_output_tokens is cumulative)
    output_tokens: dict[int, int] = field(default_factory=dict)

    def usage(self) -> Usage:
        return Usage.of(sum(self.prompt_tokens.values()), sum(self.output_tokens.values()))


def finish_reason_for_openai(reason: str | None) -> str | None:
    if reason is None or reason in _OPENAI_FINISH_REASONS:
        return reason
    if reason == "abort":
        raise ServiceUnavailable("The model aborted the request (shutting down or out of memory)")
    logger.warning("unknown finish_reason %r from the model; reported as 'stop'", reason)
    return "stop"


async def generate_deltas(
    backend: TritonBackend,
    model: str,
    requests: list[GenerateInputs],
    num_choices: int,
    tally: UsageTally,
) -> AsyncGenerator[list[Delta], None]:
    """One list of deltas per Triton response, over all prompts' requests."""
    streams = [backend.generate(model, inputs) for inputs in requests]
    async with aclosing(_merge(streams)) as responses:
        async for position, output in responses:
            yield _deltas(position, output, num_choices, tally)


def _deltas(
    position: int, output: ModelResponse, num_choices: int, tally: UsageTally
) -> list[Delta]:
    if output.num_input_tokens is not None:
        tally.prompt_tokens[position] = output.num_input_tokens
    deltas = []
    for choice in output.choices:
        index = position * num_choices + choice.index
        if choice.num_output_tokens is not None:
            tally.output_tokens[index] = choice.num_output_tokens
        elif choice.text:  # a model without counts: one token per delta, roughly
            tally.output_tokens[index] = tally.output_tokens.get(index, 0) + 1
        deltas.append(
            Delta(
                index, choice.text, finish_reason_for_openai(choice.finish_reason), choice.logprobs
            )
        )
    return deltas


async def _merge(
    streams: list[AsyncGenerator[ModelResponse, None]],
) -> AsyncGenerator[tuple[int, ModelResponse], None]:
    """Interleave several request streams as (prompt position, response)."""
    if len(streams) == 1:  # the common case: no tasks, cancellation flows straight through
        async with aclosing(streams[0]) as stream:
            async for output in stream:
                yield 0, output
        return
    queue: asyncio.Queue[tuple[int, ModelResponse | BaseException | None]] = asyncio.Queue()

    async def pump(position: int, stream: AsyncGenerator[ModelResponse, None]) -> None:
        try:
            async with aclosing(stream):
                async for output in stream:
                    queue.put_nowait((position, output))
            queue.put_nowait((position, None))
        except Exception as error:  # handed to the consumer, which raises it
            queue.put_nowait((position, error))

    tasks = [asyncio.create_task(pump(position, s)) for position, s in enumerate(streams)]
    try:
        remaining = len(tasks)
        while remaining:
            position, item = await queue.get()
            if item is None:
                remaining -= 1
            elif isinstance(item, BaseException):
                raise item
            else:
                yield position, item
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def until_disconnect(request: Request, work: Awaitable[Result]) -> Result:
    """Await `work`, cancelling it (and so its Triton requests) if the client goes away.

    The body has been read by now, so the next ASGI message can only be
    http.disconnect: waiting for it costs nothing, unlike polling is_disconnected().
    """
    work_task = asyncio.ensure_future(work)
    watch_task = asyncio.ensure_future(_wait_for_disconnect(request))
    try:
        await asyncio.wait({work_task, watch_task}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (watch_task, work_task):
            if not task.done():
                task.cancel()
        await asyncio.gather(watch_task, return_exceptions=True)
    if work_task.done() and not work_task.cancelled():
        return work_task.result()
    await asyncio.gather(work_task, return_exceptions=True)
    raise ClientGone()


async def _wait_for_disconnect(request: Request) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


@dataclass
class CollectedChoice:
    """A whole choice of a non-streaming request."""

    text_parts: list[str] = field(default_factory=list)
    finish_reason: str | None = None
    logprobs: list[TokenLogprobs] = field(default_factory=list)

    @property
    def text(self) -> str:
        return "".join(self.text_parts)


async def collect_choices(
    deltas: AsyncGenerator[list[Delta], None], total_choices: int
) -> list[CollectedChoice]:
    """Every choice 0..total_choices-1, whole (a choice the model never sent stays empty)."""
    choices = [CollectedChoice() for _ in range(total_choices)]
    async with aclosing(deltas):
        async for step in deltas:
            for delta in step:
                if not 0 <= delta.index < total_choices:
                    raise ModelError(
                        f"contract violation: choice index {delta.index}, expected < {total_choices}"
                    )
                choice = choices[delta.index]
                choice.text_parts.append(delta.text)
                choice.finish_reason = delta.finish_reason or choice.finish_reason
                if delta.logprobs is not None:
                    choice.logprobs.append(delta.logprobs)
    for choice in choices:
        if choice.finish_reason is None:
            logger.warning("the model ended a choice without a finish_reason; reported as 'stop'")
            choice.finish_reason = "stop"
    return choices
