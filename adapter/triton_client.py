"""Triton over gRPC: one `TritonCall` (a bidirectional stream) per generation request.

`TritonClient` wraps `tritonclient.grpc.aio.InferenceServerClient` for one endpoint
and implements `adapter.contract.TritonBackend` (`adapter.backends.Backends` spreads
requests over several). The tensors are the `contract` package's; how a call starts,
ends and is cancelled is `adapter.triton_call`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator

import tritonclient.grpc.aio as grpcclient
from tritonclient.utils import InferenceServerException

from adapter.contract import GenerateInputs, ModelInfo
from adapter.errors import (
    APIError,
    GatewayTimeout,
    InvalidRequest,
    ModelError,
    ModelNotFound,
    ServiceUnavailable,
    TooManyRequests,
)
from adapter.triton_call import CallError, TritonCall, call_error
from contract.errors import ContractError, ErrorKind, parse_error_message
from contract.tensors import Capabilities, ModelRequest, ModelResponse, Operation
from contract.tools import FORMATS

logger = logging.getLogger("adapter")


def error_from_triton(message: str, model: str) -> APIError:
    """A Triton/model error message -> the adapter error the client sees (contract.errors)."""
    parsed = parse_error_message(message)
    if parsed.kind is ErrorKind.INVALID_REQUEST:
        return InvalidRequest(parsed.message, param=parsed.field, code="invalid_value")
    if parsed.kind is ErrorKind.CONTEXT_LENGTH:
        return InvalidRequest(parsed.message, param="messages", code="context_length_exceeded")
    if parsed.kind in (ErrorKind.UNAVAILABLE, ErrorKind.OVERLOADED):
        return ServiceUnavailable(message)
    # Triton's own messages.
    lowered = message.lower()
    if "request too large" in lowered:
        return InvalidRequest(message, param="messages", code="context_length_exceeded")
    if "unknown model" in lowered or ("model" in lowered and "is not found" in lowered):
        return ModelNotFound(model)
    if "maximum queue size" in lowered:
        return TooManyRequests(f"Triton's queue for '{model}' is full; retry later", 1)
    if "unavailable" in lowered:
        return ServiceUnavailable(message)
    if "stub process" in lowered and "not healthy" in lowered:
        # The Python backend's process died: the model cannot serve until it is restarted
        # (`tritium serve` restarts Triton), so this is 503 and retryable, not a 500.
        return ServiceUnavailable(f"The model '{model}' is restarting after a backend failure")
    return ModelError(message)


def error_from_call(error: CallError, model: str) -> APIError:
    if error.status == "UNAVAILABLE":
        return ServiceUnavailable(f"Triton is unreachable: {error.message}")
    if error.status == "DEADLINE_EXCEEDED":
        return GatewayTimeout("The request ran past the adapter's request timeout")
    if error.status == "RESOURCE_EXHAUSTED":
        return TooManyRequests(f"Triton is out of capacity: {error.message}", 1)
    return error_from_triton(error.message, model)


def model_request(inputs: GenerateInputs) -> ModelRequest:
    """The contract request for a route's inputs."""
    if inputs.operation != Operation.GENERATE:
        # Answered at once, nothing generated: no sampling, no streaming, no counts asked.
        return ModelRequest(
            text_input=inputs.text_input,
            messages=inputs.messages,
            tools=inputs.tools,
            chat_template_kwargs=inputs.chat_template_kwargs,
            input_ids=inputs.input_ids,
            operation=inputs.operation,
            add_special_tokens=inputs.add_special_tokens,
            add_generation_prompt=inputs.add_generation_prompt,
            continue_final_message=inputs.continue_final_message,
            return_token_strs=True if inputs.return_token_strs else None,
        )
    return ModelRequest(
        text_input=inputs.text_input,
        messages=inputs.messages,
        tools=inputs.tools,
        chat_template_kwargs=inputs.chat_template_kwargs,
        input_ids=inputs.input_ids,
        stream=inputs.stream,
        sampling_parameters=inputs.sampling_parameters,
        exclude_input_in_output=not inputs.include_input,
        return_finish_reason=True,
        return_num_input_tokens=True,
        return_num_output_tokens=True,
        # Only when asked: models without logprobs still serve the rest.
        return_logprobs=True if inputs.return_logprobs else None,
    )


class TritonClient:
    """One Triton endpoint."""

    def __init__(self, url: str, request_timeout_s: float | None = None) -> None:
        self.url = url
        self.request_timeout_s = request_timeout_s
        self.client = grpcclient.InferenceServerClient(url=url)
        # Models whose configuration has the in-band cancellation inputs, learnt by
        # `list_models`; others get their calls cancelled (adapter.triton_call).
        self.cancels_in_band: set[str] = set()
        self._readers: set[asyncio.Task[None]] = set()  # one per call not yet ended

    async def generate(
        self, model: str, inputs: GenerateInputs
    ) -> AsyncGenerator[ModelResponse, None]:
        call = TritonCall(
            self.client,
            model,
            model_request(inputs),
            request_id=inputs.request_id,
            cancel_in_band=model in self.cancels_in_band,
            readers=self._readers,
            timeout_s=self.request_timeout_s,
        )
        async with call:
            try:
                async for response in call:
                    yield response
            except CallError as error:
                raise error_from_call(error, model) from None
            except ContractError as error:
                raise ModelError(str(error)) from None

    async def wait_for_calls(self) -> None:
        """Until every call has ended (or been cancelled)."""
        while self._readers:
            await asyncio.gather(*self._readers, return_exceptions=True)

    async def list_models(self) -> list[ModelInfo]:
        try:
            index = await self.client.get_model_repository_index(as_json=True)
            names = [m["name"] for m in index.get("models", []) if m.get("state") == "READY"]
            configs = await asyncio.gather(*(self._model_config(name) for name in names))
        except InferenceServerException as error:
            raise error_from_call(call_error(error), "") from None
        return [info for info in configs if info is not None]

    async def _model_config(self, name: str) -> ModelInfo | None:
        config = (await self.client.get_model_config(name, as_json=True)).get("config", {})
        capabilities = Capabilities.of({tensor.get("name") for tensor in config.get("input", [])})
        if capabilities is None:
            return None  # not an LLM of the contract (a tokenizer, an embedding model, ...)
        parameters = config.get("parameters", {})
        length = parameters.get("max_model_len", {}).get("string_value")
        tool_call_format = parameters.get("tool_call_format", {}).get("string_value")
        if capabilities.cancel_in_band:
            self.cancels_in_band.add(name)
        else:
            self.cancels_in_band.discard(name)
        return ModelInfo(
            id=name,
            max_model_len=int(length) if length and length.isdigit() else None,
            supports_chat=capabilities.chat,
            supports_completions=capabilities.completions,
            supports_token_ids=capabilities.token_ids,
            supports_tokenize=capabilities.tokenize,
            tool_call_format=tool_call_format if tool_call_format in FORMATS else None,
        )

    async def is_ready(self) -> bool:
        try:
            return bool(await self.client.is_server_ready())
        except InferenceServerException:
            return False

    async def close(self) -> None:
        await self.wait_for_calls()
        await self.client.close()
