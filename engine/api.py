"""What goes into the engine and what comes out: the request and output types.

Shared by the Triton shim, the engine service and the engine loop; no torch here.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from engine.sampling_params import SamplingParams, SamplingParamsError


class RequestError(ValueError):
    """A request that cannot be served; the message names the field and says why.

    `triton_message` is what the shim sends back: its prefix tells the adapter which
    HTTP status to answer (see docs/api.md, "Errors").
    """

    def __init__(self, message: str, field: str | None = None, kind: str = "invalid request") -> None:
        super().__init__(f"{field}: {message}" if field else message)
        self.field = field
        self.kind = kind  # "invalid request" (400), "context length" (400), "unavailable" (503)

    @property
    def triton_message(self) -> str:
        return f"{self.kind}: {self}"


@dataclass(frozen=True)
class GenerationRequest:
    request_id: str  # the caller's id (for logs); the engine keys requests by its own counter
    params: SamplingParams
    prompt: str | None = None  # raw prompt (text_input)
    messages: list[dict[str, Any]] | None = None  # chat messages, templated by the model
    prompt_token_ids: list[int] | None = None  # a prompt already tokenized (input_ids)
    stream: bool = False  # send deltas every step; else one response at the end
    # Prepend the prompt text to each choice's output (Triton vLLM-backend semantics; echo).
    include_input: bool = False
    # Which optional outputs the caller asked for (return_* flags of the contract).
    flags: dict[str, bool] = field(default_factory=dict)

    @classmethod
    def from_contract(
        cls,
        request_id: str,
        text_input: str | None,
        messages: str | None,
        sampling_parameters: str | None,
        flags: dict[str, bool],
        input_ids: list[int] | None = None,
    ) -> GenerationRequest:
        """Build from the tensor contract's inputs; every error names the input or field."""
        if sum(value is not None for value in (text_input, messages, input_ids)) != 1:
            raise RequestError(
                "exactly one of the inputs text_input, messages and input_ids is required"
            )
        parsed_messages = None
        if messages is not None:
            try:
                parsed_messages = json.loads(messages)
            except json.JSONDecodeError as error:
                raise RequestError(f"not valid JSON ({error})", "messages") from None
            if not isinstance(parsed_messages, list) or not parsed_messages:
                raise RequestError("must be a non-empty JSON list of messages", "messages")
        try:
            raw = json.loads(sampling_parameters) if sampling_parameters else None
        except json.JSONDecodeError as error:
            raise RequestError(f"not valid JSON ({error})", "sampling_parameters") from None
        try:
            params = SamplingParams.from_json(raw)
        except SamplingParamsError as error:
            raise RequestError(error.reason, error.field) from None
        return cls(
            request_id=request_id,
            params=params,
            prompt=text_input,
            messages=parsed_messages,
            prompt_token_ids=input_ids,
            stream=flags.get("stream", False),
            include_input=not flags.get("exclude_input_in_output", False),
            flags=dict(flags),
        )


@dataclass
class ChoiceDelta:
    index: int  # choice index, 0..n-1
    text: str  # new text since the previous output of this choice
    num_output_tokens: int  # tokens generated so far for this choice (cumulative)
    finish_reason: str | None  # "stop" / "length" / "abort" once finished
    # When logprobs were asked for: {"token_ids", "tokens", "logprobs", "top_logprobs"},
    # lists aligned over the tokens of this delta (docs/api.md); else None.
    logprobs: dict[str, list[Any]] | None = None


@dataclass
class GenerationOutput:
    num_input_tokens: int
    choices: list[ChoiceDelta]
    finished: bool  # the last output of the request
    flags: dict[str, bool] = field(default_factory=dict)
    error: str | None = None
