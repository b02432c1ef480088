"""The adapter served by uvicorn on a free loopback port in front of a fake Triton backend
that paces its answers: for the browser tests and the terminal client's tests."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncGenerator, Callable, Iterator
from contextlib import aclosing, contextmanager
from dataclasses import dataclass
from typing import Any

from adapter.app import create_app
from adapter.config import AdapterConfig
from adapter.contract import GenerateInputs
from tests.adapter.fake_triton import FakeTriton, choice, out
from tests.stack import free_port


@dataclass
class PacedFakeTriton(FakeTriton):
    """The adapter's fake backend, waiting `pause_s` after each response it sends, so a
    client sees the answer arrive piece by piece."""

    pause_s: float = 0.0

    async def generate(
        self, model: str, inputs: GenerateInputs
    ) -> AsyncGenerator[Any, None]:  # the fake's responses, as they are
        async with aclosing(super().generate(model, inputs)) as outputs:
            async for output in outputs:
                yield output
                await asyncio.sleep(self.pause_s)


def pieces_script(pieces: list[str], finish: str = "stop") -> Callable[[GenerateInputs], list]:
    """A streamed answer of these text pieces, one token each, then `finish`."""

    def script(inputs: GenerateInputs) -> list:
        steps = [out(choice(0, piece, None, position + 1)) for position, piece in enumerate(pieces)]
        steps.append(out(choice(0, "", finish, len(pieces)), final=True))
        return steps

    return script


@dataclass(frozen=True)
class Site:
    url: str  # e.g. http://127.0.0.1:PORT (the page is at url + "/")
    fake: PacedFakeTriton


@contextmanager
def serve_adapter(config: AdapterConfig, fake: FakeTriton) -> Iterator[str]:
    """`create_app(config)` on the fake, served by uvicorn in a thread; yields its URL."""
    import uvicorn

    port = free_port()
    app = create_app(config, triton_factory=lambda _config: fake)
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    )
    thread = threading.Thread(target=server.run, name=f"adapter-{port}", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the adapter did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
