"""GET /metrics: the adapter's Prometheus metrics (Triton serves the engine's on its own port).

No API key: Prometheus scrapes it like the probes (vLLM's /metrics is open too); it
holds counts and latencies, no prompt, answer or key."""

from __future__ import annotations

from fastapi import APIRouter
from starlette.responses import PlainTextResponse

from adapter.dependencies import State
from adapter.metrics import CONTENT_TYPE

router = APIRouter(tags=["metrics"])


@router.get("/metrics", response_class=PlainTextResponse)
async def metrics(state: State) -> PlainTextResponse:
    return PlainTextResponse(state.metrics.render(), media_type=CONTENT_TYPE)
