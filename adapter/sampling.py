"""OpenAI request fields -> the contract's `sampling_parameters` JSON object.

The sampling fields the API offers under their own name are the contract's
(`adapter.schemas.SAME_FIELDS`) and are copied as they are; `max_tokens` and the logprobs
fields are mapped from OpenAI's spellings here, and `response_format` / `tools` become
the contract's `structured_outputs` (adapter.tool_calls).
"""

from __future__ import annotations

from typing import Any

from adapter.config import AdapterConfig
from adapter.contract import ModelInfo
from adapter.errors import InvalidRequest
from adapter.schemas import SAME_FIELDS, ChatCompletionRequest, CompletionRequest, SamplingRequest
from adapter.tool_calls import structured_outputs

_PASSED_THROUGH = tuple(spec.name for spec in SAME_FIELDS)


def sampling_parameters(
    request: ChatCompletionRequest | CompletionRequest, config: AdapterConfig, model: ModelInfo
) -> dict[str, Any]:
    """Only the fields the user set (the model applies its own defaults for the rest)."""
    check_limits(request, config, model)
    parameters: dict[str, Any] = {
        name: getattr(request, name)
        for name in _PASSED_THROUGH
        if getattr(request, name) is not None
    }
    max_tokens = _max_tokens(request)
    if max_tokens is None:
        max_tokens = config.max_tokens  # the operator's cap doubles as the default
    if max_tokens is not None:
        parameters["max_tokens"] = max_tokens
    constraint = structured_outputs(request, model)  # response_format, tools
    if constraint is not None:
        parameters["structured_outputs"] = constraint
    if isinstance(request, ChatCompletionRequest):
        if request.logprobs:
            parameters["logprobs"] = True
            parameters["top_logprobs"] = request.top_logprobs or 0
    elif request.logprobs is not None:
        parameters["logprobs"] = True
        parameters["top_logprobs"] = request.logprobs
    return parameters


def check_limits(request: SamplingRequest, config: AdapterConfig, model: ModelInfo) -> None:
    """Limits the schema cannot know: the operator's and the model's."""
    if request.n is not None and request.n > config.max_n:
        raise InvalidRequest(
            f"n must be at most {config.max_n}, got {request.n}", param="n", code="invalid_value"
        )
    max_tokens = _max_tokens(request)
    param = (
        "max_completion_tokens"
        if isinstance(request, ChatCompletionRequest) and request.max_completion_tokens
        else "max_tokens"
    )
    if max_tokens is not None and config.max_tokens is not None and max_tokens > config.max_tokens:
        raise InvalidRequest(
            f"{param} must be at most {config.max_tokens} on this server, got {max_tokens}",
            param=param,
        )
    if (
        max_tokens is not None
        and model.max_model_len is not None
        and max_tokens > model.max_model_len
    ):
        raise InvalidRequest(
            f"{param} is {max_tokens}, more than the model's context length of"
            f" {model.max_model_len} tokens",
            param=param,
            code="context_length_exceeded",
        )
    if (
        request.min_tokens is not None
        and max_tokens is not None
        and request.min_tokens > max_tokens
    ):
        raise InvalidRequest(
            f"min_tokens ({request.min_tokens}) is more than {param} ({max_tokens})",
            param="min_tokens",
        )


def _max_tokens(request: SamplingRequest) -> int | None:
    if isinstance(request, ChatCompletionRequest):
        return request.completion_tokens_limit
    return request.max_tokens
