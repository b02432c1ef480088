"""What goes into the engine and what comes out: the request and output types.

Shared by the Triton shim, the engine service and the engine loop; no torch here. The
per-choice output (`ChoiceDelta`) and the errors (`ContractError`) are the tensor
contract's own types (`contract`), so what the engine produces is what the shim sends.
"""

from __future__ import annotations

from dataclasses import dataclass

from contract.outputs import ChoiceDelta
from contract.tensors import ModelRequest
from engine.sampling_params import SamplingParams


@dataclass(frozen=True)
class GenerationRequest:
    params: SamplingParams
    prompt: str | None = None  # raw prompt (text_input)
    messages: list[dict] | None = None  # chat messages, templated by the model
    tools: list[dict] | None = None  # OpenAI function tools, for the chat template
    chat_template_kwargs: dict | None = None  # extra chat template variables (enable_thinking)
    prompt_token_ids: list[int] | None = None  # a prompt already tokenized (input_ids)
    # The tokenizer's special tokens (BOS) added to the prompt; None: yes for a raw
    # prompt, no for messages (the chat template writes them).
    add_special_tokens: bool | None = None
    add_generation_prompt: bool = True  # messages: open an assistant turn at the end
    continue_final_message: bool = False  # messages: leave the last message open
    stream: bool = False  # send deltas every step; else one response at the end
    # Prepend the prompt text to each choice's output (Triton vLLM-backend semantics; echo).
    include_input: bool = False
    # The request as it came, for the outputs it asks for (`return_*` inputs).
    contract: ModelRequest = ModelRequest()

    @classmethod
    def from_contract(cls, request: ModelRequest) -> GenerationRequest:
        """From a decoded contract request; raises ContractError naming the field."""
        return cls(
            params=SamplingParams.from_json(request.sampling_parameters),
            prompt=request.text_input,
            messages=request.messages,
            tools=request.tools,
            chat_template_kwargs=request.chat_template_kwargs,
            prompt_token_ids=request.input_ids,
            add_special_tokens=request.add_special_tokens,
            add_generation_prompt=bool(request.add_generation_prompt),
            continue_final_message=bool(request.continue_final_message),
            stream=bool(request.stream),
            include_input=not request.exclude_input_in_output,
            contract=request,
        )


@dataclass
class GenerationOutput:
    num_input_tokens: int
    choices: list[ChoiceDelta]
    finished: bool  # the last output of the request
    error: str | None = None
