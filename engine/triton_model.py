"""Triton Python-backend model: the thin shim between Triton and the engine.

`tritium package` copies this file to `<model_repository>/<name>/1/model.py`.
Decode a request (`contract.tensors`) -> `EngineService.submit`; the engine thread
sends the responses through `TritonSink`. The tensor contract is the `contract` package.
"""

from __future__ import annotations

import json
import weakref
from pathlib import Path
from typing import Any

import triton_python_backend_utils as pb_utils

from contract.errors import ContractError, ErrorKind
from contract.tensors import ModelRequest, decode_backend_request, encode_response
from engine.api import GenerationOutput, GenerationRequest
from engine.config import EngineConfig
from engine.metrics import EngineMetrics
from engine.serving import EngineService


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
                inputs = decode_backend_request(request, pb_utils)
                if inputs.cancel:
                    self._cancel(inputs.cancellation_key)
                    sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
                    continue
                sink = TritonSink(sender, inputs)
                self.service.submit(GenerationRequest.from_contract(inputs), sink)
                if inputs.cancellation_key:
                    self.cancellable[inputs.cancellation_key] = sink
            except ContractError as error:
                sender.send(
                    pb_utils.InferenceResponse(error=pb_utils.TritonError(error.triton_message)),
                    flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL,
                )
        return None

    def _cancel(self, key: str) -> None:
        """A cancel request: stop the request sent with `cancellation_key` (in-band
        cancellation; `adapter.triton_call` says why the adapter cancels this way). A key
        that is not in flight is nothing to do: its request has ended."""
        sink = self.cancellable.pop(key, None)
        if sink is not None:
            sink.cancel()  # the engine thread aborts it at its next step and ends it

    def finalize(self) -> None:
        self.service.shutdown()


class TritonSink:
    """Sends engine outputs of one request as Triton responses (called on the engine thread)."""

    def __init__(self, sender: Any, request: ModelRequest) -> None:
        self.sender = sender
        self.request = request  # which outputs to send (its `return_*` inputs)
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
            message = ContractError(output.error, kind=ErrorKind.UNAVAILABLE).triton_message
            response = pb_utils.InferenceResponse(error=pb_utils.TritonError(message))
        else:
            arrays = encode_response(self.request, output.choices, output.num_input_tokens)
            tensors = [pb_utils.Tensor(name, array) for name, array in arrays]
            response = pb_utils.InferenceResponse(output_tensors=tensors)
        self.sender.send(response, flags=flags)


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
