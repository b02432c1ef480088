"""POST /tokenize and POST /detokenize, vLLM's routes for clients that count tokens.

The adapter has no tokenizer: each route sends one request of the contract's `tokenize`
or `detokenize` operation to the model, which answers at once with one final response
and schedules nothing. The token ids are those a generation of the same body would see
(the engine tokenizes both one way), so `count` of a chat is the `usage.prompt_tokens`
of a chat completion of the same messages. Routing, limits and errors are those of the
generation routes.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from contextlib import aclosing

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from starlette.responses import Response

from adapter.contract import GenerateInputs, ModelInfo
from adapter.dependencies import AdapterState, State
from adapter.errors import InvalidRequest, ModelError, request_id_of
from adapter.generation import until_disconnect
from adapter.objects import DetokenizeResponse, TokenizeResponse
from adapter.schemas import DetokenizeRequest, TokenizeRequest
from contract.tensors import ModelResponse, Operation

router = APIRouter(tags=["tokenize"])


@router.post("/tokenize", response_model=None)
async def tokenize(body: TokenizeRequest, request: Request, state: State) -> Response:
    body.check_supported()
    chat = body.messages is not None
    model = await _model(state, body.model, Operation.TOKENIZE)
    if chat and not model.supports_chat:
        raise InvalidRequest(
            f"The model '{model.id}' has no chat template (no 'messages' input); send 'prompt'",
            param="model",
        )
    if not chat and not model.supports_completions:
        raise InvalidRequest(
            f"The model '{model.id}' takes only chat messages; send 'messages'", param="model"
        )
    tools = [tool.model_dump(exclude_none=True) for tool in body.tools or []]
    inputs = GenerateInputs(
        request_id=request_id_of(request),
        text_input=body.prompt,
        messages=body.messages_for_model(),
        tools=tools or None,
        chat_template_kwargs=body.chat_template_kwargs,
        operation=Operation.TOKENIZE.value,
        add_special_tokens=body.add_special_tokens,
        add_generation_prompt=body.generation_prompt,
        continue_final_message=body.continue_final_message,
        return_token_strs=bool(body.return_token_strs),
    )
    answer = (await _run(state, request, model, inputs)).tokenization
    if answer is None:
        raise ModelError("contract violation: a tokenize answer without prompt_token_ids")
    result = TokenizeResponse(
        count=len(answer.token_ids),
        max_model_len=answer.max_model_len,
        tokens=answer.token_ids,
        token_strs=answer.token_strs if body.return_token_strs else None,
    )
    return JSONResponse(result.model_dump(mode="json"))


@router.post("/detokenize", response_model=None)
async def detokenize(body: DetokenizeRequest, request: Request, state: State) -> Response:
    model = await _model(state, body.model, Operation.DETOKENIZE)
    if not model.supports_token_ids:
        raise InvalidRequest(
            f"The model '{model.id}' takes no token ids (no 'input_ids' input)", param="model"
        )
    inputs = GenerateInputs(
        request_id=request_id_of(request),
        input_ids=list(body.tokens),
        operation=Operation.DETOKENIZE.value,
    )
    response = await _run(state, request, model, inputs)
    if len(response.choices) != 1:
        raise ModelError("contract violation: a detokenize answer holds one text_output")
    return JSONResponse(DetokenizeResponse(prompt=response.choices[0].text).model_dump())


async def _model(state: AdapterState, model_id: str, operation: Operation) -> ModelInfo:
    model = await state.catalog.get(model_id)  # 404 for an unknown model
    if not model.supports_tokenize:
        raise InvalidRequest(
            f"The model '{model_id}' cannot {operation.value}: its configuration has no"
            " 'operation' input (a model of an older contract)",
            param="model",
        )
    return model


async def _run(
    state: AdapterState, request: Request, model: ModelInfo, inputs: GenerateInputs
) -> ModelResponse:
    """The model's one answer; the client going away cancels the request."""
    slot = state.limiter.acquire(1)
    try:
        return await until_disconnect(request, _final(state.backend.generate(model.id, inputs)))
    except InvalidRequest as error:
        if error.param != "operation":
            raise
        # The model has the input but refuses the operation (the null model: no tokenizer).
        raise InvalidRequest(f"{error.message} (model '{model.id}')", param="model") from None
    finally:
        slot.release()


async def _final(stream: AsyncGenerator[ModelResponse, None]) -> ModelResponse:
    last = None
    async with aclosing(stream):
        async for response in stream:
            last = response
    if last is None:
        raise ModelError("the model ended the request without an answer")
    return last
