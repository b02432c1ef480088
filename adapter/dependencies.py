"""What routes receive by injection: the shared state, API-key check, limits, models.

The lifespan in `adapter.app` builds one `AdapterState` and stores it on
`app.state.adapter`; routes get it through `Depends(get_state)`, so tests swap the
Triton backend by passing a fake factory to `create_app`.
"""

from __future__ import annotations

import hmac
import time
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request

from adapter.config import AdapterConfig
from adapter.contract import ModelInfo, TritonBackend
from adapter.errors import (
    InvalidRequest,
    ModelNotFound,
    ServiceUnavailable,
    TooManyRequests,
    Unauthorized,
)
from adapter.metrics import AdapterMetrics


class ModelCatalog:
    """The backend's models, cached for a few seconds: a lookup per request is a gRPC call."""

    def __init__(self, backend: TritonBackend, ttl_s: float = 5.0) -> None:
        self.backend = backend
        self.ttl_s = ttl_s
        self.models: dict[str, ModelInfo] = {}
        self.fetched_at = float("-inf")
        # OpenAI's `created` of a model: when this adapter first saw it.
        self.first_seen: dict[str, int] = {}

    async def all(self, *, refresh: bool = False) -> list[ModelInfo]:
        if refresh or time.monotonic() - self.fetched_at > self.ttl_s:
            models = await self.backend.list_models()
            self.models = {model.id: model for model in models}
            self.fetched_at = time.monotonic()
            for model in models:
                self.first_seen.setdefault(model.id, int(time.time()))
        return list(self.models.values())

    async def get(self, model_id: str) -> ModelInfo:
        await self.all()
        if model_id not in self.models:  # loaded a moment ago? look once more before 404
            await self.all(refresh=True)
        if model_id not in self.models:
            raise ModelNotFound(model_id, sorted(self.models))
        return self.models[model_id]


class GenerationSlot:
    """Places under the concurrency limit; released once, by whoever ends the request."""

    def __init__(self, limiter: ConcurrencyLimiter, count: int) -> None:
        self.limiter = limiter
        self.count = count
        self.released = False

    def release(self) -> None:
        if not self.released:
            self.released = True
            self.limiter.in_flight -= self.count


class ConcurrencyLimiter:
    """Counts Triton generation requests in flight (one event loop: a plain int is enough).

    A completions request with several prompts runs one Triton request per prompt, so it
    takes that many places: otherwise one HTTP request could start thousands."""

    def __init__(self, limit: int, retry_after_s: int) -> None:
        self.limit = limit
        self.retry_after_s = retry_after_s
        self.in_flight = 0

    def acquire(self, count: int = 1) -> GenerationSlot:
        if self.in_flight + count > self.limit:
            raise TooManyRequests(
                f"The server is at its limit of {self.limit} concurrent requests; retry later",
                self.retry_after_s,
            )
        self.in_flight += count
        return GenerationSlot(self, count)


@dataclass
class AdapterState:
    config: AdapterConfig
    backend: TritonBackend
    catalog: ModelCatalog
    limiter: ConcurrencyLimiter
    metrics: AdapterMetrics


def get_state(request: Request) -> AdapterState:
    state = getattr(request.app.state, "adapter", None)
    if state is None:  # lifespan not run (e.g. a test without it): say so plainly
        raise ServiceUnavailable("The adapter is starting up or shutting down")
    return state


State = Annotated[AdapterState, Depends(get_state)]


def require_api_key(request: Request) -> None:
    """Bearer key check in constant time; keys are never logged or echoed."""
    config: AdapterConfig = request.app.state.config
    if not config.auth_enabled:
        return
    header = request.headers.get("authorization", "")
    scheme, _, key = header.partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        raise Unauthorized("Missing API key: send 'Authorization: Bearer <key>'")
    presented = key.strip().encode()
    # Compare against every key (no early exit), so timing does not tell which matched.
    matched = False
    for accepted in config.api_keys:
        matched |= hmac.compare_digest(presented, accepted.encode())
    if not matched:
        raise Unauthorized("Incorrect API key provided")


async def find_model(state: AdapterState, model_id: str, *, chat: bool) -> ModelInfo:
    model = await state.catalog.get(model_id)
    if chat and not model.supports_chat:
        raise InvalidRequest(
            f"The model '{model_id}' has no chat template (no 'messages' input);"
            " use /v1/completions",
            param="model",
        )
    if not chat and not model.supports_completions:
        raise InvalidRequest(
            f"The model '{model_id}' takes only chat messages; use /v1/chat/completions",
            param="model",
        )
    return model
