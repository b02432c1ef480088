"""A client that goes away cancels its Triton request (streaming and not).

httpx's ASGITransport buffers whole responses, so these tests drive the ASGI app
directly: the client "disconnects" by answering receive() with http.disconnect.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from fastapi import FastAPI

from tests.adapter.fake_triton import HANG, FakeTriton, choice, out

pytestmark = pytest.mark.anyio

CHAT = {"model": "tiny-chat", "messages": [{"role": "user", "content": "hi"}]}


async def drive(
    app: FastAPI,
    body: dict[str, Any],
    disconnect: asyncio.Event,
    spec_version: str = "2.3",
    sends_before_failing: int | None = None,
) -> list[dict[str, Any]]:
    """Run one POST /v1/chat/completions; disconnect when `disconnect` is set, or (as
    servers at ASGI spec 2.4 report it) fail sends after `sends_before_failing` sends."""
    payload = json.dumps(body).encode()
    sent: list[dict[str, Any]] = []
    body_sent = False
    scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": spec_version},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/v1/chat/completions",
        "raw_path": b"/v1/chat/completions",
        "query_string": b"",
        "root_path": "",
        "headers": [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(payload)).encode()),
        ],
        "client": ("127.0.0.1", 5000),
        "server": ("adapter", 80),
    }

    async def receive() -> dict[str, Any]:
        nonlocal body_sent
        if not body_sent:
            body_sent = True
            return {"type": "http.request", "body": payload, "more_body": False}
        await disconnect.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        if sends_before_failing is not None and len(sent) >= sends_before_failing:
            raise OSError("client went away")
        sent.append(message)

    await asyncio.wait_for(app(scope, receive, send), timeout=10)
    return sent


async def test_streaming_disconnect_cancels_triton(app: FastAPI, fake: FakeTriton) -> None:
    fake.respond = lambda inputs: [out(choice(0, "Hel")), HANG]
    disconnect = asyncio.Event()
    async with app.router.lifespan_context(app):
        task = asyncio.ensure_future(drive(app, {**CHAT, "stream": True}, disconnect))
        # Wait until the first token went out, then hang up.
        for _ in range(200):
            await asyncio.sleep(0.01)
            if fake.calls:
                break
        await asyncio.sleep(0.05)
        disconnect.set()
        sent = await task
        assert fake.cancelled == 1 and fake.finished == 0
        assert app.state.adapter.limiter.in_flight == 0
    bodies = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    assert b"Hel" in bodies


async def test_non_streaming_disconnect_cancels_triton(app: FastAPI, fake: FakeTriton) -> None:
    fake.respond = lambda inputs: [out(choice(0, "Hel")), HANG]
    fake.started = asyncio.Event()
    disconnect = asyncio.Event()
    async with app.router.lifespan_context(app):
        task = asyncio.ensure_future(drive(app, CHAT, disconnect))
        await asyncio.wait_for(fake.started.wait(), timeout=5)
        disconnect.set()
        await task
        assert fake.cancelled == 1
        assert app.state.adapter.limiter.in_flight == 0


async def test_disconnect_with_asgi_2_4_server(app: FastAPI, fake: FakeTriton) -> None:
    # Servers at spec 2.4 do not report the disconnect; the next send fails instead.
    fake.respond = lambda inputs: [out(choice(0, "a")), out(choice(0, "b")), HANG]
    never = asyncio.Event()
    async with app.router.lifespan_context(app):
        # start + the role chunk go out; the first token's chunk fails.
        await drive(app, {**CHAT, "stream": True}, never, "2.4", sends_before_failing=2)
        assert fake.cancelled == 1
        assert app.state.adapter.limiter.in_flight == 0
