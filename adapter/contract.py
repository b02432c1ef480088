"""The adapter's side of the Triton tensor contract, as plain data.

Routes speak only these types; `adapter.triton_client` turns them into tensors and
back, and tests put a fake behind the same `TritonBackend` protocol.

OUTPUT CONTRACT (what every LLM model in the repository must send). The model is
decoupled: one request gets one or more responses; the last one is sent with
TRITONSERVER_RESPONSE_COMPLETE_FINAL (so Triton marks it `triton_final_response`)
and carries data (an empty flag-only final response is tolerated but not needed).

Each response holds the choices that advanced since the previous response; k >= 1
of them, in any order, each choice at most once:

    text_output        STRING [k]  new text of the choice (UTF-8, never a split
                                   character); the whole text when stream=false
    index              INT32  [k]  choice index 0..n-1 of each entry (absent = 0..k-1)
    finish_reason      STRING [k]  "" while running; then "stop" | "length" |
                                   "abort" (engine gave up: the adapter answers 503)
    num_output_tokens  INT32/INT64 [k]  tokens generated so far by that choice
                                   (cumulative, so the last value is the total)
    num_input_tokens   INT32/INT64 [1]  prompt tokens (after the chat template)
    logprobs           STRING [k]  "" unless return_logprobs; else JSON for the
                                   tokens of this delta:
        {"token_ids": [int], "tokens": [str], "logprobs": [float],
         "top_logprobs": [[{"token": str, "logprob": float}, ...], ...]}
        (top_logprobs has one list per token, [] when top_logprobs=0)

With stream=false the model sends exactly one response holding every choice with
its whole text and final finish_reason. A choice is finished when its
finish_reason is non-empty; the request is over at the final response, when every
choice has finished, or when the stream ends, whichever the adapter sees first.

ERRORS: a response with an error (pb_utils.TritonError), final. The message is
shown to the user, so it says what to change; a prefix picks the HTTP status:

    "invalid request: <field>: <what is wrong>"   400, param = <field>
    "invalid request: <what is wrong>"            400
    "context length: <what is wrong>"             400, code context_length_exceeded
    "unavailable: <why>" / "overloaded: <why>"    503
    anything else                                 500 (message logged, not shown)
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from typing import Any, Protocol

FINISH_REASONS = ("stop", "length", "tool_calls", "abort")


@dataclass(frozen=True)
class GenerateInputs:
    """One generation request, already validated by the route."""

    request_id: str
    # Exactly one of text_input / messages / input_ids is set.
    text_input: str | None = None
    # Chat messages as sent to the model: [{"role", "content": str, "name"?}].
    messages: list[dict[str, str]] | None = None
    # A prompt given as token ids (completions); sent as the INT64 [-1] tensor `input_ids`.
    input_ids: list[int] | None = None
    stream: bool = True
    # The `sampling_parameters` JSON object (only fields the user set).
    sampling_parameters: dict[str, Any] = field(default_factory=dict)
    return_logprobs: bool = False
    # The model prepends the prompt's text to each choice (exclude_input_in_output=false):
    # echo of a token-id prompt, whose text only the model's tokenizer knows.
    include_input: bool = False


@dataclass(frozen=True)
class TopLogprob:
    token: str
    logprob: float


@dataclass(frozen=True)
class TokenLogprobs:
    """Logprobs of the tokens of one delta; the lists are aligned."""

    token_ids: list[int]
    tokens: list[str]
    logprobs: list[float]
    top_logprobs: list[list[TopLogprob]]


@dataclass(frozen=True)
class ChoiceDelta:
    index: int  # choice index 0..n-1
    text: str  # new text since this choice's previous delta
    finish_reason: str | None  # None while running
    num_output_tokens: int | None  # cumulative; None if the model did not say
    logprobs: TokenLogprobs | None = None


@dataclass(frozen=True)
class GenerateOutput:
    """One Triton response."""

    choices: list[ChoiceDelta]
    num_input_tokens: int | None = None
    final: bool = False  # triton_final_response


@dataclass(frozen=True)
class ModelInfo:
    id: str
    # Context length from the model config parameter `max_model_len`, if present.
    max_model_len: int | None = None
    supports_chat: bool = True  # the model has a `messages` input
    supports_completions: bool = True  # the model has a `text_input` input
    supports_token_ids: bool = True  # the model has an `input_ids` input
    owned_by: str = "tritium"


class TritonBackend(Protocol):
    """What the routes need from Triton; `adapter.triton_client` and test fakes implement it."""

    def generate(self, model: str, inputs: GenerateInputs) -> AsyncGenerator[GenerateOutput, None]:
        """Responses of one request. Closing the iterator early cancels the request.

        Raises `adapter.errors.APIError` subclasses (mapped from Triton errors).
        """
        ...

    async def list_models(self) -> list[ModelInfo]: ...

    async def is_ready(self) -> bool: ...

    async def close(self) -> None: ...
