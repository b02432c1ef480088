"""Triton Python-backend model: the thin shim between Triton and the engine.

`tritium package` copies this file to `<model_repository>/<name>/1/model.py`.
`contract.python_backend.ContractModel` decodes each request; `submit` hands it to
`EngineService.submit`, and the engine thread sends the responses through `TritonSink`.
`tokenize` and `detokenize` requests are answered on Triton's thread by the engine's
tokenizer (`EngineService.tokenize`, `EngineService.detokenize`); nothing is scheduled.
"""

from __future__ import annotations

import locale
import logging
import sys
import time
from pathlib import Path
from typing import Any

import triton_python_backend_utils as pb_utils

from contract.outputs import Tokenization
from contract.python_backend import ContractModel, ResponseSender
from contract.tensors import ModelRequest
from engine.api import GenerationOutput, GenerationRequest
from engine.config import EngineConfig
from engine.metrics import EngineMetrics
from engine.serving import EngineService


class TritonPythonModel(ContractModel):
    def initialize(self, args: dict[str, str]) -> None:
        _text_files_as_utf8()
        parameters = self.initialize_contract(args)
        weights_dir = Path(args["model_repository"]) / "weights"
        config = EngineConfig.from_parameters(weights_dir, parameters)
        _log_engine_to_stderr(args["model_name"])
        self.metrics = EngineMetrics(_TritonMetricSink(args["model_name"]))
        self.service = EngineService(config, metrics=self.metrics)
        self.service.start()

    def submit(self, request: ModelRequest, sender: ResponseSender) -> TritonSink:
        """Validate and queue for the engine thread; raises ContractError."""
        sink = TritonSink(sender)
        self.service.submit(GenerationRequest.from_contract(request), sink)
        return sink

    def tokenize(self, request: ModelRequest) -> Tokenization:
        """The prompt's token ids as `submit` would see them; raises ContractError."""
        return self.service.tokenize(
            GenerationRequest.from_contract(request), with_strings=bool(request.return_token_strs)
        )

    def detokenize(self, request: ModelRequest) -> str:
        return self.service.detokenize(request.input_ids or [])

    def finalize(self) -> None:
        self.service.shutdown()


def _text_files_as_utf8() -> None:
    """The stub's embedded Python starts in the C locale whatever LANG says (it never calls
    setlocale, and PYTHONUTF8 does not reach it), so `open()` without an encoding reads
    ASCII; torch's inductor opens its UTF-8 C++ templates that way when the engine compiles
    its decode step (engine/decode_graph.py). Take the environment's locale, or C.UTF-8,
    for character types only."""
    if locale.getpreferredencoding(False).lower().replace("-", "") == "utf8":
        return
    for name in ("", "C.UTF-8"):
        try:
            locale.setlocale(locale.LC_CTYPE, name)
        except locale.Error:
            continue
        if locale.getpreferredencoding(False).lower().replace("-", "") == "utf8":
            return


# Seconds between two questions to Triton whether a request's call was cancelled.
CANCEL_POLL_S = 0.5


class TritonSink:
    """Sends engine outputs of one request as Triton responses (called on the engine thread)."""

    def __init__(self, sender: ResponseSender) -> None:
        self.sender = sender
        self.cancelled = False  # set by a cancel request (any thread); read by the engine
        self._polled = -CANCEL_POLL_S  # when Triton was last asked (time.monotonic)

    def cancel(self) -> None:
        self.cancelled = True

    def is_cancelled(self) -> bool:
        """In band (a cancel request: at once) or by Triton (its gRPC call was cancelled:
        asked at most every CANCEL_POLL_S). Asking Triton is a round trip from the stub to
        the server (0.17-0.29 ms on 2 cores, `python -m benchmarks.triton_round_trips`),
        which every running request would otherwise pay every engine step; a cancelled
        request computes at most that much longer."""
        if self.cancelled:
            return True
        now = time.monotonic()
        if now - self._polled < CANCEL_POLL_S:
            return False
        self._polled = now
        return self.sender.is_cancelled()

    def close(self) -> None:
        self.sender.close()

    def send(self, output: GenerationOutput) -> None:
        if output.error is not None:
            self.sender.send_unavailable(output.error)  # always the request's last output
        else:
            self.sender.send(output.choices, output.num_input_tokens, final=output.finished)


def _log_engine_to_stderr(model_name: str) -> None:
    """The `engine` and `tritium_kernels` loggers (the latter: whether our CPU quantized kernel
    built) write to the stub's stderr, which is Triton's log, each line starting
    `tritium-engine[<model>]: ` (tritium.progress shows the loading ones)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(f"tritium-engine[{model_name}]: %(message)s"))
    for name in ("engine", "tritium_kernels"):
        logger = logging.getLogger(name)
        logger.handlers = [handler]
        logger.setLevel(logging.INFO)
        logger.propagate = False


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
