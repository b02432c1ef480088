"""Triton Python-backend model: the thin shim between Triton and the engine.

`tritium package` copies this file to `<model_repository>/<name>/1/model.py`.
Parse a request -> `EngineService.submit`; the engine thread sends the responses
through `TritonSink`. The tensor contract is in docs/api.md.
"""

from __future__ import annotations

import json
import weakref
from pathlib import Path
from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils

from engine.api import GenerationOutput, GenerationRequest, RequestError
from engine.config import EngineConfig
from engine.metrics import EngineMetrics
from engine.serving import EngineService

BOOL_INPUTS = (
    "stream",
    "exclude_input_in_output",
    "return_finish_reason",
    "return_num_input_tokens",
    "return_num_output_tokens",
    "return_logprobs",
)


class TritonPythonModel:
    @staticmethod
    def auto_complete_config(auto_complete_model_config):  # noqa: ANN001, ANN205 - Triton API
        # Continuous batching streams many responses per request: decoupled is not optional.
        auto_complete_model_config.set_model_transaction_policy({"decoupled": True})
        return auto_complete_model_config

    def initialize(self, args: dict[str, str]) -> None:
        model_config = json.loads(args["model_config"])
        if not pb_utils.using_decoupled_model_transaction_policy(model_config):
            raise pb_utils.TritonModelException("this model must be decoupled")
        parameters = {
            key: value["string_value"] for key, value in model_config.get("parameters", {}).items()
        }
        weights_dir = Path(args["model_repository"]) / "weights"
        config = EngineConfig.from_parameters(weights_dir, parameters)
        self.metrics = EngineMetrics(_TritonMetricSink(args["model_name"]))
        self.service = EngineService(config, metrics=self.metrics)
        # In-flight requests by their `cancellation_key`: an entry goes with its sink,
        # which the engine drops when the request ends.
        self.cancellable: weakref.WeakValueDictionary[str, TritonSink] = (
            weakref.WeakValueDictionary()
        )
        self.service.start()

    def execute(self, requests: list[Any]) -> None:
        for request in requests:
            sender = request.get_response_sender()
            try:
                key = _string_input(request, "cancellation_key")
                if _bool_input(request, "cancel"):
                    self._cancel(key)
                    sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
                    continue
                sink = TritonSink(sender)
                self.service.submit(_parse_request(request), sink)
                if key:
                    self.cancellable[key] = sink
            except RequestError as error:
                sender.send(
                    pb_utils.InferenceResponse(error=pb_utils.TritonError(error.triton_message)),
                    flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL,
                )
        return None

    def _cancel(self, key: str | None) -> None:
        """A cancel request (`cancel` true): stop the request sent with `cancellation_key`.

        The adapter cancels in band rather than by cancelling its gRPC call, which
        Triton 2.51 can turn into a leaked request when the call is cancelled as the
        request's final response is written (docs/reliability.md, item 8). A key that is
        not in flight is nothing to do: its request has ended. (Were a cancel ever
        executed before its own request, that request would run on, and the adapter
        would cancel its call 5 s after the half-close.)"""
        if not key:
            raise RequestError("a cancel request names the request to stop", "cancellation_key")
        sink = self.cancellable.pop(key, None)
        if sink is not None:
            sink.cancel()  # the engine thread aborts it at its next step and ends it

    def finalize(self) -> None:
        self.service.shutdown()


def _string_input(request: Any, name: str) -> str | None:
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    if tensor is None:
        return None
    value = tensor.as_numpy().reshape(-1)[0]
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _bool_input(request: Any, name: str) -> bool | None:
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    return None if tensor is None else bool(tensor.as_numpy().reshape(-1)[0])


def _parse_request(request: Any) -> GenerationRequest:
    def token_ids_input(name: str) -> list[int] | None:
        tensor = pb_utils.get_input_tensor_by_name(request, name)
        return None if tensor is None else [int(v) for v in tensor.as_numpy().reshape(-1)]

    flags = {name: _bool_input(request, name) for name in BOOL_INPUTS}
    return GenerationRequest.from_contract(
        request_id=request.request_id() or "",
        text_input=_string_input(request, "text_input"),
        messages=_string_input(request, "messages"),
        input_ids=token_ids_input("input_ids"),
        sampling_parameters=_string_input(request, "sampling_parameters"),
        flags={name: value for name, value in flags.items() if value is not None},
    )


class TritonSink:
    """Sends engine outputs of one request as Triton responses (called on the engine thread)."""

    def __init__(self, sender: Any) -> None:
        self.sender = sender
        self.cancelled = False  # set by a cancel request (any thread); read by the engine

    def cancel(self) -> None:
        self.cancelled = True

    def is_cancelled(self) -> bool:
        # In band (a cancel request) or by Triton (its gRPC call was cancelled).
        return self.cancelled or self.sender.is_cancelled()

    def close(self) -> None:
        # An empty final response: Triton frees the request (nothing reaches the client).
        self.sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)

    def send(self, output: GenerationOutput) -> None:
        flags = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL if output.finished else 0
        if output.error is not None:
            message = f"unavailable: {output.error}"
            response = pb_utils.InferenceResponse(error=pb_utils.TritonError(message))
        else:
            response = pb_utils.InferenceResponse(output_tensors=_output_tensors(output))
        self.sender.send(response, flags=flags)


def _output_tensors(output: GenerationOutput) -> list[Any]:
    choices = output.choices
    tensors = [
        pb_utils.Tensor("text_output", _strings([c.text for c in choices])),
        pb_utils.Tensor("index", np.array([c.index for c in choices], dtype=np.int32)),
        pb_utils.Tensor("num_input_tokens", np.array([output.num_input_tokens], dtype=np.int32)),
    ]
    flags = output.flags
    if flags.get("return_finish_reason", True):
        reasons = [c.finish_reason or "" for c in choices]
        tensors.append(pb_utils.Tensor("finish_reason", _strings(reasons)))
    if flags.get("return_num_output_tokens", True):
        counts = np.array([c.num_output_tokens for c in choices], dtype=np.int32)
        tensors.append(pb_utils.Tensor("num_output_tokens", counts))
    if flags.get("return_logprobs", False):
        logprobs = [json.dumps(c.logprobs) if c.logprobs else "" for c in choices]
        tensors.append(pb_utils.Tensor("logprobs", _strings(logprobs)))
    return tensors


def _strings(values: list[str]) -> np.ndarray:
    return np.array([v.encode("utf-8") for v in values], dtype=np.object_)


class _TritonMetricSink:
    """Engine metrics as Triton custom metrics (served on Triton's /metrics)."""

    def __init__(self, model_name: str) -> None:
        self.labels = {"model": model_name}
        self.families: dict[str, Any] = {}
        self.metrics: dict[str, Any] = {}

    def _metric(self, name: str, kind: str, description: str, buckets: list[float] | None) -> Any:
        if name not in self.metrics:
            family = pb_utils.MetricFamily(
                name=name, description=description, kind=getattr(pb_utils.MetricFamily, kind)
            )
            self.families[name] = family  # the family must outlive its metrics
            kwargs = {"buckets": buckets} if buckets is not None else {}
            self.metrics[name] = family.Metric(labels=self.labels, **kwargs)
        return self.metrics[name]

    def gauge(self, name: str, description: str, value: float) -> None:
        self._metric(name, "GAUGE", description, None).set(value)

    def counter(self, name: str, description: str, increment: float) -> None:
        self._metric(name, "COUNTER", description, None).increment(increment)

    def histogram(self, name: str, description: str, buckets: list[float], value: float) -> None:
        self._metric(name, "HISTOGRAM", description, buckets).observe(value)
