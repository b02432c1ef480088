"""The null model: a decoupled Triton Python-backend model that computes nothing.

Same tensor contract as engine/triton_model.py, no torch. For each request it streams
`max_tokens` tokens of fixed text, `tokens_per_response` (a config.pbtxt parameter)
coalesced per response, so a benchmark measures what Triton, the Python backend and
the adapter cost per response. Like the engine, one thread owns every live request and
sends one response per request per round; execute() only queues.

Tokens are counted as the engine would report them: num_input_tokens is the number of
whitespace-separated words of the prompt (the null model's tokenizer), num_output_tokens
is cumulative, finish_reason is "length" on the last response.
"""

from __future__ import annotations

import contextlib
import queue
import threading
from dataclasses import dataclass

from contract.errors import ContractError
from contract.outputs import ChoiceDelta, FinishReason
from contract.python_backend import ContractModel, ResponseSender
from contract.tensors import ModelRequest

TOKEN_TEXT = " null"  # every generated token; one word, so it round-trips as one token
DEFAULT_MAX_TOKENS = 16


@dataclass(eq=False)
class LiveRequest:
    sender: ResponseSender
    stream: bool
    prompt_text: str  # prepended to the first output unless exclude_input_in_output
    num_input_tokens: int
    max_tokens: int
    num_sent: int = 0
    cancelled: bool = False  # by an in-band cancel request (any thread)

    def cancel(self) -> None:
        self.cancelled = True


class TritonPythonModel(ContractModel):
    def initialize(self, args: dict[str, str]) -> None:
        value = self.initialize_contract(args).get("tokens_per_response", "1")
        self.tokens_per_response = int(value)
        if self.tokens_per_response < 1:
            raise ValueError(f"tokens_per_response must be >= 1, got {value}")
        self.inbox: queue.SimpleQueue[LiveRequest | None] = queue.SimpleQueue()
        self.thread = threading.Thread(target=self._run, name="null-engine", daemon=True)
        self.thread.start()

    def submit(self, request: ModelRequest, sender: ResponseSender) -> LiveRequest:
        live = _live_request(request, sender)
        self.inbox.put(live)
        return live

    def finalize(self) -> None:
        self.inbox.put(None)
        self.thread.join(10)

    def _run(self) -> None:
        live: list[LiveRequest] = []
        while True:
            if not self._admit(live, block=not live):
                return
            # One "step": every live request advances by one response.
            live = [request for request in live if self._advance(request)]

    def _admit(self, live: list[LiveRequest], block: bool) -> bool:
        while True:
            try:
                item = self.inbox.get(block=block)
            except queue.Empty:
                return True
            if item is None:
                return False
            live.append(item)
            block = False

    def _advance(self, request: LiveRequest) -> bool:
        """Send the request's next response; False once it is finished or cancelled."""
        if request.cancelled or request.sender.is_cancelled():
            # No more responses, but the final flag: Triton keeps a request until it comes.
            with contextlib.suppress(Exception):
                request.sender.close()
            return False
        step = request.max_tokens if not request.stream else self.tokens_per_response
        count = min(step, request.max_tokens - request.num_sent)
        text = TOKEN_TEXT * count
        if request.num_sent == 0 and request.prompt_text:
            text = request.prompt_text + text
        request.num_sent += count
        finished = request.num_sent >= request.max_tokens
        reason = FinishReason.LENGTH.value if finished else None
        choice = ChoiceDelta(0, text, request.num_sent, reason)
        try:
            request.sender.send([choice], request.num_input_tokens, final=finished)
        except Exception:  # the stream is gone: stop sending to it
            return False
        return not finished


def _live_request(inputs: ModelRequest, sender: ResponseSender) -> LiveRequest:
    if inputs.messages is not None:
        prompt = "\n".join(str(m.get("content") or "") for m in inputs.messages if isinstance(m, dict))
        num_input_tokens = len(prompt.split())
    elif inputs.input_ids is not None:
        prompt, num_input_tokens = "", len(inputs.input_ids)
    else:
        prompt = inputs.text_input or ""
        num_input_tokens = len(prompt.split())
    params = inputs.sampling_parameters or {}
    if params.get("n", 1) != 1:
        raise ContractError("the null model streams one choice; n must be 1", "n")
    if params.get("structured_outputs") is not None:
        raise ContractError("the null model's fixed text follows no grammar", "structured_outputs")
    return LiveRequest(
        sender=sender,
        stream=bool(inputs.stream),
        prompt_text="" if inputs.exclude_input_in_output else prompt,
        num_input_tokens=num_input_tokens,
        max_tokens=params.get("max_tokens") or DEFAULT_MAX_TOKENS,
    )
