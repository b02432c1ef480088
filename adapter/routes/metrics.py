"""GET /metrics: the adapter's Prometheus metrics (Triton serves the engine's on its own port)."""

from __future__ import annotations

from fastapi import APIRouter
from starlette.responses import PlainTextResponse

from adapter.dependencies import State

router = APIRouter(tags=["metrics"])


@router.get("/metrics", response_class=PlainTextResponse)
async def metrics(state: State) -> PlainTextResponse:
    return PlainTextResponse(
        state.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8"
    )
