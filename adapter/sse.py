"""Server-sent events: `data: {json}\\n\\n` frames, an error frame, `data: [DONE]`.

`SSEResponse` makes sure the body generator is closed (which cancels the Triton
request) and its `on_close` runs however the response ends: finished, client gone,
or never started.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncGenerator, Callable
from typing import Any, Protocol

from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from adapter.errors import APIError, InternalError
from adapter.generation import Delta

logger = logging.getLogger("adapter")

DONE = "data: [DONE]\n\n"


def frame(payload: dict[str, Any]) -> str:
    return f"data: {json.dumps(payload, ensure_ascii=False, separators=(',', ':'))}\n\n"


class ChunkRenderer(Protocol):
    """Turns deltas into the endpoint's chunk objects (chat or completions)."""

    def opening(self) -> list[dict[str, Any]]: ...

    def chunk(self, deltas: list[Delta]) -> list[dict[str, Any]]: ...

    def closing(self) -> list[dict[str, Any]]: ...


async def sse_events(
    first: list[Delta] | None,
    rest: AsyncGenerator[list[Delta], None],
    renderer: ChunkRenderer,
    request_id: str,
    on_delta: Callable[[list[Delta]], None] | None = None,
) -> AsyncGenerator[str, None]:
    """The whole event stream; a failure mid-stream becomes an error frame, then [DONE]."""
    try:
        for payload in renderer.opening():
            yield frame(payload)
        pending = [first] if first is not None else []
        while True:
            deltas = pending.pop() if pending else await anext(rest, None)
            if deltas is None:
                break
            if on_delta is not None:
                on_delta(deltas)
            for payload in renderer.chunk(deltas):
                yield frame(payload)
        for payload in renderer.closing():
            yield frame(payload)
    except APIError as error:
        logger.info("stream %s ended by %s: %s", request_id, type(error).__name__, error.message)
        yield frame(_shown(error, request_id).body())
    except Exception:
        logger.exception("stream %s failed", request_id)
        yield frame(InternalError(request_id).body())
    finally:
        await rest.aclose()
    yield DONE


def _shown(error: APIError, request_id: str) -> APIError:
    # A 500's message may hold model internals: the log keeps it, the client gets an id.
    return InternalError(request_id) if error.status_code == 500 else error


class SSEResponse(StreamingResponse):
    media_type = "text/event-stream"

    def __init__(
        self, content: AsyncGenerator[str, None], on_close: Callable[[], None], **kwargs: Any
    ) -> None:
        headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}  # no proxy buffering
        super().__init__(content, headers=headers, **kwargs)
        self.generator = content
        self.on_close = on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            try:
                await self.generator.aclose()
            finally:
                self.on_close()
