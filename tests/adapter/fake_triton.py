"""A scripted stand-in for the Triton backend (implements adapter.contract.TritonBackend)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass, field

from adapter.contract import GenerateInputs, ModelInfo
from contract.outputs import ChoiceDelta, Tokenization, TokenLogprobs
from contract.tensors import ModelResponse

HANG = "hang"  # a script step: wait until cancelled

Step = ModelResponse | Exception | str
Script = list[Step]


def choice(
    index: int,
    text: str,
    finish: str | None = None,
    tokens: int | None = 1,
    logprobs: TokenLogprobs | None = None,
) -> ChoiceDelta:
    return ChoiceDelta(index, text, tokens, finish, logprobs)


def out(
    *choices: ChoiceDelta, prompt_tokens: int | None = 5, final: bool = False
) -> ModelResponse:
    return ModelResponse(list(choices), prompt_tokens, final)


def fake_token_ids(text: str) -> list[int]:
    """The fake's tokenizer: a word is a token, its id the word's length."""
    return [len(word) for word in text.split()]


def tokenize_script(inputs: GenerateInputs) -> Script:
    """A tokenize or detokenize request's one answer, as the contract spells it."""
    if inputs.operation == "detokenize":
        text = " ".join(f"t{token_id}" for token_id in inputs.input_ids or [])
        return [out(choice(0, text, None, None), prompt_tokens=len(inputs.input_ids or []), final=True)]
    text = inputs.text_input or " ".join(str(m["content"]) for m in inputs.messages or [])
    ids = fake_token_ids(text)
    strings = text.split() if inputs.return_token_strs else None
    return [ModelResponse([], len(ids), True, Tokenization(ids, strings, 2048))]


def default_script(inputs: GenerateInputs) -> Script:
    """Every choice says "Hello" then " world" and stops: 2 tokens each; tokenize and
    detokenize requests get `tokenize_script`'s answer."""
    if inputs.operation != "generate":
        return tokenize_script(inputs)
    n = int(inputs.sampling_parameters.get("n", 1))
    if not inputs.stream:
        return [out(*(choice(i, "Hello world", "stop", 2) for i in range(n)), final=True)]
    return [
        out(*(choice(i, "Hello", None, 1) for i in range(n))),
        out(*(choice(i, " world", "stop", 2) for i in range(n)), final=True),
    ]


@dataclass
class FakeTriton:
    models: list[ModelInfo] = field(
        default_factory=lambda: [
            ModelInfo("tiny-chat", max_model_len=2048),
            ModelInfo("org/base", supports_chat=False),
        ]
    )
    # inputs -> the responses (or errors, or HANG) of that request
    respond: Callable[[GenerateInputs], Script] = default_script
    ready: bool = True
    list_error: Exception | None = None
    calls: list[tuple[str, GenerateInputs]] = field(default_factory=list)
    cancelled: int = 0  # requests closed before their script ended
    finished: int = 0  # requests whose script ran to its end
    started: asyncio.Event | None = None  # set when a request starts (created lazily)
    closed: bool = False

    async def generate(
        self, model: str, inputs: GenerateInputs
    ) -> AsyncGenerator[ModelResponse, None]:
        self.calls.append((model, inputs))
        if self.started is not None:
            self.started.set()
        completed = False
        try:
            for step in self.respond(inputs):
                if isinstance(step, Exception):
                    completed = True
                    raise step
                if step == HANG:
                    await asyncio.sleep(3600)
                    continue
                yield step  # type: ignore[misc]
            completed = True
        finally:
            if completed:
                self.finished += 1
            else:
                self.cancelled += 1

    async def list_models(self) -> list[ModelInfo]:
        if self.list_error is not None:
            raise self.list_error
        return list(self.models)

    async def is_ready(self) -> bool:
        return self.ready

    async def close(self) -> None:
        self.closed = True
