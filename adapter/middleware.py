"""Pure ASGI middleware (no BaseHTTPMiddleware: it buffers and breaks streaming).

- `RequestContextMiddleware`: request id (X-Request-ID in and out), one JSON access
  log line per request, request metrics, and a 500 envelope for anything unhandled.
- `BodyLimitMiddleware`: 413 when Content-Length or the bytes actually received
  (chunked bodies have no Content-Length) pass the limit.
"""

from __future__ import annotations

import json
import logging
import re
import time
import uuid
from collections.abc import Callable

from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from adapter.errors import BodyTooLarge, InternalError, error_response
from adapter.metrics import AdapterMetrics

access_logger = logging.getLogger("adapter.access")
logger = logging.getLogger("adapter")

# A client-chosen id is echoed only if it is short and printable (it goes into logs).
_SAFE_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


class RequestContextMiddleware:
    def __init__(self, app: ASGIApp, metrics: Callable[[], AdapterMetrics | None]) -> None:
        self.app = app
        self.metrics = metrics  # read per request: the lifespan creates the metrics later

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        incoming = _header(scope, b"x-request-id")
        request_id = incoming if incoming and _SAFE_REQUEST_ID.match(incoming) else uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id
        status = 0

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (b"x-request-id", request_id.encode())]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except ClientDisconnect:
            status = 499  # the client hung up mid-response: nothing to answer, nothing wrong
        except Exception:
            logger.exception("unhandled error (request id %s)", request_id)
            if status == 0:  # nothing sent yet: the client still gets an envelope
                await error_response(InternalError(request_id))(scope, receive, send_with_id)
            else:
                status = 500
        finally:
            self._record(scope, status or 499, time.perf_counter() - started, request_id)

    def _record(self, scope: Scope, status: int, duration_s: float, request_id: str) -> None:
        route = scope.get("route")
        route_path = getattr(route, "path", None) or "unmatched"
        metrics = self.metrics()
        if metrics is not None:
            metrics.requests.labels(route_path, scope["method"], str(status)).inc()
            metrics.request_duration.labels(route_path).observe(duration_s)
        access_logger.info(
            json.dumps(
                {
                    "event": "access",
                    "request_id": request_id,
                    "method": scope["method"],
                    "path": scope["path"],
                    "status": status,
                    "duration_ms": round(duration_s * 1000, 2),
                    "client": (scope.get("client") or ("", 0))[0],
                }
            )
        )


class BodyLimitMiddleware:
    """Reads the body up front (it is at most `max_body_bytes`) and replays it to the app."""

    def __init__(self, app: ASGIApp, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _header(scope, b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body_bytes:
            await error_response(BodyTooLarge(self.max_body_bytes))(scope, receive, send)
            return
        chunks: list[bytes] = []
        received = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # disconnected while sending the body
                return
            chunk = message.get("body", b"")
            received += len(chunk)
            if received > self.max_body_bytes:
                await error_response(BodyTooLarge(self.max_body_bytes))(scope, receive, send)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # after the body: only http.disconnect remains

        await self.app(scope, replay, send)


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key.lower() == name:
            return value.decode("latin-1").strip()
    return None
