"""The adapter's side of the Triton tensor contract, as plain data.

Routes speak only these types and those of the `contract` package (`ModelResponse`,
`ChoiceDelta`, `TokenLogprobs`); `adapter.triton_client` turns them into tensors and
back, and tests put a fake behind the same `TritonBackend` protocol.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from typing import Any, Protocol

from contract.tensors import ModelResponse


@dataclass(frozen=True)
class GenerateInputs:
    """One generation request, already validated by the route."""

    request_id: str
    # Exactly one of text_input / messages / input_ids is set.
    text_input: str | None = None
    # Chat messages as sent to the model: [{"role", "content", "name"?, "tool_calls"?, ...}].
    messages: list[dict[str, Any]] | None = None
    # OpenAI function tools, with messages (rendered by the model's chat template).
    tools: list[dict[str, Any]] | None = None
    # Extra chat template variables (e.g. enable_thinking), with messages.
    chat_template_kwargs: dict[str, Any] | None = None
    # A prompt given as token ids (completions); sent as the INT64 [-1] tensor `input_ids`.
    input_ids: list[int] | None = None
    stream: bool = True
    # The `sampling_parameters` JSON object (only fields the user set).
    sampling_parameters: dict[str, Any] = field(default_factory=dict)
    return_logprobs: bool = False
    # The model prepends the prompt's text to each choice (exclude_input_in_output=false):
    # echo of a token-id prompt, whose text only the model's tokenizer knows.
    include_input: bool = False
    # contract.tensors.Operation: "generate", or "tokenize" / "detokenize", which the model
    # answers at once with one final response (/tokenize, /detokenize).
    operation: str = "generate"
    # Prompt rendering, as the contract's inputs of the same names (None: the model's default).
    add_special_tokens: bool | None = None
    add_generation_prompt: bool | None = None
    continue_final_message: bool | None = None
    return_token_strs: bool = False  # tokenize: each token's vocabulary entry too


@dataclass(frozen=True)
class ModelInfo:
    id: str
    # Context length from the model config parameter `max_model_len`, if present.
    max_model_len: int | None = None
    supports_chat: bool = True  # the model has a `messages` input
    supports_completions: bool = True  # the model has a `text_input` input
    supports_token_ids: bool = True  # the model has an `input_ids` input
    supports_tokenize: bool = True  # the model has an `operation` input (tokenize, detokenize)
    # How the model writes tool calls (config parameter `tool_call_format`, one of
    # contract.tools.FORMATS); None: the model does not say, so it takes no tools.
    tool_call_format: str | None = None
    owned_by: str = "tritium"


class TritonBackend(Protocol):
    """What the routes need from Triton; `adapter.triton_client` and test fakes implement it."""

    def generate(self, model: str, inputs: GenerateInputs) -> AsyncGenerator[ModelResponse, None]:
        """Responses of one request. Closing the iterator early cancels the request.

        Raises `adapter.errors.APIError` subclasses (mapped from Triton errors).
        """
        ...

    async def list_models(self) -> list[ModelInfo]: ...

    async def is_ready(self) -> bool: ...

    async def close(self) -> None: ...
