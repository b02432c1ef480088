"""GET /v1/models and GET /v1/models/{model_id}."""

from __future__ import annotations

from fastapi import APIRouter

from adapter.contract import ModelInfo
from adapter.dependencies import ModelCatalog, State
from adapter.objects import ModelCard, ModelList

router = APIRouter(tags=["models"])


def _card(model: ModelInfo, catalog: ModelCatalog) -> ModelCard:
    return ModelCard(
        id=model.id,
        created=catalog.first_seen.get(model.id, 0),
        owned_by=model.owned_by,
        max_model_len=model.max_model_len,
    )


@router.get("/v1/models")
async def list_models(state: State) -> ModelList:
    models = await state.catalog.all(refresh=True)  # a listing should be current, not cached
    return ModelList(data=[_card(model, state.catalog) for model in models])


# `:path` so that ids with a slash (organization/name) are one parameter.
@router.get("/v1/models/{model_id:path}")
async def retrieve_model(model_id: str, state: State) -> ModelCard:
    return _card(await state.catalog.get(model_id), state.catalog)
