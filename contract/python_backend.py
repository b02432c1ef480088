"""The Python-backend side of the contract, shared by the engine's shim and the null model.

`ContractModel` is a decoupled Triton Python-backend model that decodes each request
(`contract.tensors`), answers a bad one with its contract error, handles in-band cancel
requests, answers `tokenize` and `detokenize` requests at once with what its `tokenize`
and `detokenize` return (by default a refusal naming `operation`: a model without a
tokenizer), and hands every other request to `submit`, which the model implements.

`triton_python_backend_utils` exists only inside Triton's Python backend, so it is imported
when a model is initialized, not when this module is.
"""

from __future__ import annotations

import functools
import json
import weakref
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np

from contract.errors import ContractError, ErrorKind
from contract.outputs import ChoiceDelta, Tokenization
from contract.tensors import (
    ModelRequest,
    Operation,
    decode_request,
    encode_response,
    encode_text,
    encode_tokenization,
)


class Cancellable(Protocol):
    def cancel(self) -> None:
        """Stop the request: no more responses but its final flag (any thread)."""


class ResponseSender:
    """One request's responses, as the contract spells them (used on the model's thread)."""

    def __init__(self, sender: Any, request: ModelRequest, pb_utils: Any) -> None:
        self.sender = sender
        self.request = request  # which outputs to send: its `return_*` inputs
        self.pb_utils = pb_utils

    def send(self, choices: Sequence[ChoiceDelta], num_input_tokens: int, final: bool) -> None:
        pb = self.pb_utils
        arrays = encode_response(self.request, choices, num_input_tokens)
        tensors = [pb.Tensor(name, array) for name, array in arrays]
        flags = pb.TRITONSERVER_RESPONSE_COMPLETE_FINAL if final else 0
        self.sender.send(pb.InferenceResponse(output_tensors=tensors), flags=flags)

    def send_final(self, arrays: list[tuple[str, np.ndarray]]) -> None:
        """The one response of a request answered at once (tokenize, detokenize)."""
        pb = self.pb_utils
        tensors = [pb.Tensor(name, array) for name, array in arrays]
        self.sender.send(
            pb.InferenceResponse(output_tensors=tensors),
            flags=pb.TRITONSERVER_RESPONSE_COMPLETE_FINAL,
        )

    def send_error(self, error: ContractError) -> None:
        """An error response, which is the request's final one."""
        pb = self.pb_utils
        response = pb.InferenceResponse(error=pb.TritonError(error.triton_message))
        self.sender.send(response, flags=pb.TRITONSERVER_RESPONSE_COMPLETE_FINAL)

    def send_unavailable(self, reason: str) -> None:
        self.send_error(ContractError(reason, kind=ErrorKind.UNAVAILABLE))

    def close(self) -> None:
        """A flag-only final response: Triton frees the request (nothing reaches the client)."""
        self.sender.send(flags=self.pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)

    def is_cancelled(self) -> bool:
        """Triton cancelled the request (its gRPC call was cancelled)."""
        return bool(self.sender.is_cancelled())


class ContractModel:
    """Base of a decoupled Python-backend model of the contract; see the module docstring."""

    @staticmethod
    def auto_complete_config(auto_complete_model_config):  # noqa: ANN001, ANN205 - Triton API
        # A request streams many responses: decoupled is not optional.
        auto_complete_model_config.set_model_transaction_policy({"decoupled": True})
        return auto_complete_model_config

    def initialize_contract(self, args: dict[str, str]) -> dict[str, str]:
        """Call first in `initialize`; returns the model config's parameters."""
        import triton_python_backend_utils as pb_utils

        self.pb_utils = pb_utils
        model_config = json.loads(args["model_config"])
        if not pb_utils.using_decoupled_model_transaction_policy(model_config):
            raise pb_utils.TritonModelException("this model must be decoupled")
        # In-flight requests by their `cancellation_key`; an entry goes with its request.
        self.cancellable: weakref.WeakValueDictionary[str, Cancellable] = (
            weakref.WeakValueDictionary()
        )
        return {
            key: value["string_value"] for key, value in model_config.get("parameters", {}).items()
        }

    def submit(self, request: ModelRequest, sender: ResponseSender) -> Cancellable:
        """Start a request; raise ContractError to refuse it. Returns what a cancel stops."""
        raise NotImplementedError

    def tokenize(self, request: ModelRequest) -> Tokenization:
        """The prompt of a `tokenize` request as token ids, as `submit` would see it;
        raise ContractError to refuse it. Runs on Triton's thread: schedule nothing."""
        raise ContractError("this model has no tokenizer: it cannot tokenize", "operation")

    def detokenize(self, request: ModelRequest) -> str:
        """The text of a `detokenize` request's `input_ids`; raise ContractError to refuse."""
        raise ContractError("this model has no tokenizer: it cannot detokenize", "operation")

    def _answer(self, inputs: ModelRequest, responses: ResponseSender) -> None:
        """A tokenize or detokenize request: one final response, now."""
        try:
            if inputs.operation == Operation.TOKENIZE:
                arrays = encode_tokenization(inputs, self.tokenize(inputs))
            else:
                arrays = encode_text(self.detokenize(inputs), len(inputs.input_ids or []))
        except ContractError as error:
            responses.send_error(error)
            return
        responses.send_final(arrays)

    def execute(self, requests: list[Any]) -> None:
        for request in requests:
            sender = request.get_response_sender()
            try:
                inputs = decode_request(functools.partial(_input_array, request, self.pb_utils))
            except ContractError as error:
                ResponseSender(sender, ModelRequest(), self.pb_utils).send_error(error)
                continue
            responses = ResponseSender(sender, inputs, self.pb_utils)
            if inputs.cancel:
                self._cancel(inputs.cancellation_key or "")
                responses.close()
                continue
            if inputs.operation != Operation.GENERATE:
                self._answer(inputs, responses)
                continue
            try:
                started = self.submit(inputs, responses)
            except ContractError as error:
                responses.send_error(error)
                continue
            if inputs.cancellation_key:
                self.cancellable[inputs.cancellation_key] = started

    def _cancel(self, key: str) -> None:
        """A cancel request: stop the request sent with `cancellation_key` (why clients
        cancel this way: `adapter/triton_call.py`). A key that is not in flight is nothing
        to do: its request has ended."""
        started = self.cancellable.pop(key, None)
        if started is not None:
            started.cancel()


def _input_array(request: Any, pb_utils: Any, name: str) -> np.ndarray | None:
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    return None if tensor is None else tensor.as_numpy()
