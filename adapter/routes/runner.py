"""Runs one generation request for a route: limits, disconnects, metrics.

Both entry points take their concurrency places first, one per Triton request (429 if
there are not enough), and give them back however the request ends. `stream` waits for the first Triton response before
answering, so an error the model reports at once (a bad field, an unknown model,
Triton down) is a plain HTTP error rather than a 200 stream with an error event.
"""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator, Callable
from contextlib import aclosing

from fastapi import Request
from starlette.responses import Response

from adapter.contract import GenerateInputs
from adapter.dependencies import AdapterState
from adapter.errors import request_id_of
from adapter.generation import (
    CollectedChoice,
    Delta,
    UsageTally,
    collect_choices,
    generate_deltas,
    until_disconnect,
)
from adapter.sse import ChunkRenderer, SSEResponse, sse_events


class GenerationRun:
    def __init__(
        self,
        state: AdapterState,
        request: Request,
        model: str,
        requests: list[GenerateInputs],
        num_choices: int,
    ) -> None:
        self.state = state
        self.request = request
        self.model = model
        self.requests = requests
        self.num_choices = num_choices  # per prompt
        self.total_choices = num_choices * len(requests)
        self.tally = UsageTally()
        self.request_id = request_id_of(request)
        self.started = time.perf_counter()
        self.first_text_seen = False

    async def collect(self) -> list[CollectedChoice]:
        """The whole answer; the client going away cancels the Triton requests."""
        slot = self.state.limiter.acquire(len(self.requests))
        try:
            deltas = self._observed(self._deltas())
            return await until_disconnect(self.request, collect_choices(deltas, self.total_choices))
        finally:
            slot.release()
            self._count_tokens()

    async def stream(self, make_renderer: Callable[[UsageTally], ChunkRenderer]) -> Response:
        slot = self.state.limiter.acquire(len(self.requests))
        deltas = self._deltas()
        try:
            first = await until_disconnect(self.request, anext(deltas, None))
        except BaseException:
            slot.release()
            await deltas.aclose()
            raise
        if first is not None:
            self._observe(first)

        def on_close() -> None:
            slot.release()
            self._count_tokens()

        body = sse_events(
            first, deltas, make_renderer(self.tally), self.request_id, on_delta=self._observe
        )
        return SSEResponse(body, on_close=on_close)

    def _deltas(self) -> AsyncGenerator[list[Delta], None]:
        return generate_deltas(
            self.state.backend, self.model, self.requests, self.num_choices, self.tally
        )

    async def _observed(
        self, deltas: AsyncGenerator[list[Delta], None]
    ) -> AsyncGenerator[list[Delta], None]:
        async with aclosing(deltas):
            async for step in deltas:
                self._observe(step)
                yield step

    def _observe(self, deltas: list[Delta]) -> None:
        if not self.first_text_seen and any(delta.text for delta in deltas):
            self.first_text_seen = True
            self.state.metrics.time_to_first_token.labels(self.model).observe(
                time.perf_counter() - self.started
            )

    def _count_tokens(self) -> None:
        usage = self.tally.usage()
        self.state.metrics.prompt_tokens.labels(self.model).inc(usage.prompt_tokens)
        self.state.metrics.completion_tokens.labels(self.model).inc(usage.completion_tokens)
