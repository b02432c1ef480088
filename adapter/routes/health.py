"""Probes: GET /health (the process answers) and GET /health/ready (it can serve).

Neither needs an API key: Kubernetes probes carry none.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from adapter.dependencies import State
from adapter.errors import APIError, ServiceUnavailable

router = APIRouter(tags=["health"])


@router.get("/health")
async def health() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/health/ready")
async def ready(state: State) -> dict[str, Any]:
    """Ready = Triton answers, says it is ready, and serves at least one LLM."""
    if not await state.backend.is_ready():
        raise ServiceUnavailable("Triton is not reachable or not ready")
    try:
        models = await state.catalog.all(refresh=True)
    except APIError as error:
        raise ServiceUnavailable(
            f"Triton's model repository is unavailable: {error.message}"
        ) from None
    if not models:
        raise ServiceUnavailable("Triton serves no model with the LLM tensor contract yet")
    return {"status": "ready", "models": [model.id for model in models]}
