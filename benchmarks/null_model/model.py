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
import json
import queue
import threading
import weakref
from dataclasses import dataclass
from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils

TOKEN_TEXT = " null"  # every generated token; one word, so it round-trips as one token
DEFAULT_MAX_TOKENS = 16
KNOWN_FIELDS = {"max_tokens", "min_tokens", "temperature", "top_p", "top_k", "min_p", "seed",
                "ignore_eos", "n", "stop", "stop_token_ids", "presence_penalty",
                "frequency_penalty", "repetition_penalty", "logit_bias", "logprobs",
                "top_logprobs", "skip_special_tokens"}  # fmt: skip


class InvalidRequest(ValueError):
    """Sent back as 'invalid request: FIELD: why', the prefix the adapter maps to 400."""


@dataclass
class LiveRequest:
    sender: Any
    stream: bool
    prompt_text: str  # prepended to the first output unless exclude_input_in_output
    num_input_tokens: int
    max_tokens: int
    num_sent: int = 0
    cancelled: bool = False  # by an in-band cancel request (any thread)


class TritonPythonModel:
    @staticmethod
    def auto_complete_config(auto_complete_model_config):  # noqa: ANN001, ANN205 - Triton API
        auto_complete_model_config.set_model_transaction_policy({"decoupled": True})
        return auto_complete_model_config

    def initialize(self, args: dict[str, str]) -> None:
        model_config = json.loads(args["model_config"])
        parameters = model_config.get("parameters", {})
        value = parameters.get("tokens_per_response", {}).get("string_value", "1")
        self.tokens_per_response = int(value)
        if self.tokens_per_response < 1:
            raise pb_utils.TritonModelException(f"tokens_per_response must be >= 1, got {value}")
        self.inbox: queue.SimpleQueue[LiveRequest | None] = queue.SimpleQueue()
        # Live requests by cancellation_key (the in-band cancellation of docs/api.md).
        self.cancellable: weakref.WeakValueDictionary[str, LiveRequest] = (
            weakref.WeakValueDictionary()
        )
        self.thread = threading.Thread(target=self._run, name="null-engine", daemon=True)
        self.thread.start()

    def execute(self, requests: list[Any]) -> None:
        for request in requests:
            sender = request.get_response_sender()
            try:
                key = _string_input(request, "cancellation_key")
                if _bool_input(request, "cancel", False):
                    if not key:
                        raise InvalidRequest("cancellation_key: a cancel request names a request")
                    target = self.cancellable.pop(key, None)
                    if target is not None:
                        target.cancelled = True
                    sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
                    continue
                live = _parse(request, sender)
                if key:
                    self.cancellable[key] = live
                self.inbox.put(live)
            except InvalidRequest as error:
                message = f"invalid request: {error}"
                response = pb_utils.InferenceResponse(error=pb_utils.TritonError(message))
                sender.send(response, flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)

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
                request.sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
            return False
        step = request.max_tokens if not request.stream else self.tokens_per_response
        count = min(step, request.max_tokens - request.num_sent)
        text = TOKEN_TEXT * count
        if request.num_sent == 0 and request.prompt_text:
            text = request.prompt_text + text
        request.num_sent += count
        finished = request.num_sent >= request.max_tokens
        tensors = [
            pb_utils.Tensor("text_output", np.array([text.encode()], dtype=np.object_)),
            pb_utils.Tensor("index", np.array([0], dtype=np.int32)),
            pb_utils.Tensor(
                "num_input_tokens", np.array([request.num_input_tokens], dtype=np.int32)
            ),
            pb_utils.Tensor("num_output_tokens", np.array([request.num_sent], dtype=np.int32)),
            pb_utils.Tensor(
                "finish_reason", np.array([b"length" if finished else b""], dtype=np.object_)
            ),
        ]
        flags = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL if finished else 0
        try:
            request.sender.send(pb_utils.InferenceResponse(output_tensors=tensors), flags=flags)
        except Exception:  # the stream is gone: stop sending to it
            return False
        return not finished


def _string_input(request: Any, name: str) -> str | None:
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    if tensor is None:
        return None
    value = tensor.as_numpy().reshape(-1)[0]
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _bool_input(request: Any, name: str, default: bool) -> bool:
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    return default if tensor is None else bool(tensor.as_numpy().reshape(-1)[0])


def _parse(request: Any, sender: Any) -> LiveRequest:
    text_input, messages = _string_input(request, "text_input"), _string_input(request, "messages")
    if (text_input is None) == (messages is None):
        raise InvalidRequest("exactly one of the inputs text_input and messages is required")
    prompt = text_input if text_input is not None else _messages_text(messages or "")
    params = _sampling_parameters(_string_input(request, "sampling_parameters"))
    return LiveRequest(
        sender=sender,
        stream=_bool_input(request, "stream", False),
        prompt_text="" if _bool_input(request, "exclude_input_in_output", False) else prompt,
        num_input_tokens=len(prompt.split()),
        max_tokens=params.get("max_tokens") or DEFAULT_MAX_TOKENS,
    )


def _messages_text(messages: str) -> str:
    try:
        parsed = json.loads(messages)
        return "\n".join(str(message.get("content") or "") for message in parsed)
    except (ValueError, AttributeError, TypeError):
        raise InvalidRequest("messages: must be a JSON list of message objects") from None


def _sampling_parameters(text: str | None) -> dict[str, Any]:
    try:
        params = json.loads(text) if text else {}
    except ValueError:
        raise InvalidRequest("sampling_parameters: not valid JSON") from None
    if not isinstance(params, dict):
        raise InvalidRequest("sampling_parameters: must be a JSON object")
    unknown = sorted(set(params) - KNOWN_FIELDS)
    if unknown:
        raise InvalidRequest(f"{unknown[0]}: unknown sampling parameter")
    max_tokens = params.get("max_tokens")
    if max_tokens is not None and (not isinstance(max_tokens, int) or max_tokens < 1):
        raise InvalidRequest(f"max_tokens: must be an integer >= 1, got {max_tokens!r}")
    if (params.get("n") or 1) != 1:
        raise InvalidRequest("n: the null model streams one choice; n must be 1")
    return params
