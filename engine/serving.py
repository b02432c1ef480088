"""The engine as a service: one engine thread owns all engine state.

Triton's `execute` (any thread) calls `EngineService.submit`, which validates and
tokenizes the request, and compiles its grammar if it has one, on the caller's thread
(so bad input fails at once, and a compile never stalls the running batch) and
queues it. The engine thread drains the queue, checks cancellations, runs one
engine step and sends each request's coalesced output through its sink.

`tokenize` and `detokenize` answer on the caller's thread too, with the tokenizer
only: nothing is queued or scheduled, and a generation of the same request would
see exactly the token ids `tokenize` returns (`LLMEngine.tokenize`, shared with
`submit`).
"""

from __future__ import annotations

import itertools
import logging
import queue
import threading
import time
from typing import Any, Protocol

from contract.errors import ContractError, ErrorKind
from contract.outputs import Tokenization
from engine.api import GenerationOutput, GenerationRequest
from engine.config import EngineConfig
from engine.llm_engine import LLMEngine
from engine.metrics import EngineMetrics

logger = logging.getLogger(__name__)


class OutputSink(Protocol):
    def send(self, output: GenerationOutput) -> None: ...

    def is_cancelled(self) -> bool: ...

    def close(self) -> None:
        """End a request that will get no more outputs (cancelled, or its send failed).

        Triton releases a decoupled request only at its final flag: without this, every
        cancelled request stays alive in the server, its memory grows, and the model can
        never unload."""


_STOP = object()


class EngineService:
    def __init__(self, config: EngineConfig, metrics: EngineMetrics | None = None) -> None:
        self._config = config
        self._metrics = metrics
        self.engine: LLMEngine  # built by `start`, on the engine thread
        self._built = threading.Event()
        self._build_error: BaseException | None = None
        self._inbox: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._sinks: dict[int, OutputSink] = {}  # engine thread only
        self._keys = itertools.count()
        self._thread = threading.Thread(target=self._run, name="tritium-engine", daemon=True)
        self._stopped = threading.Event()
        # Why the service stopped taking requests (shutdown or an engine failure).
        self._stop_reason = "the model is shutting down"
        # Orders "check stopped, then queue" in `submit` against "stop, then drain the
        # inbox" on the engine thread, so no request is queued after the last drain.
        self._admission = threading.Lock()

    def start(self) -> None:
        """Start the engine thread; it builds the engine (weights, KV cache), then serves.
        Returns once the engine is built, raising what building it raised.

        The engine is built on the thread that runs it because torch's OpenMP runtime
        gives every thread that runs a parallel op a team of worker threads of its own:
        loading on Triton's thread and stepping on this one left two teams on the CPU's
        cores, and every engine step was 20-35% slower (docs/benchmarks.md)."""
        model, started = self._config.model, time.monotonic()
        logger.info(
            "loading %s (%d layers, hidden %d), dtype %s, device %s, max_model_len %d",
            model.architecture,
            model.num_layers,
            model.hidden_size,
            self._config.dtype,
            self._config.device,
            self._config.scheduler.max_model_len,
        )
        self._thread.start()
        self._built.wait()
        if self._build_error is not None:
            raise self._build_error
        cache = self.engine.config.cache
        logger.info(
            "ready in %.1f s: KV cache of %d blocks of %d tokens, up to %d sequences",
            time.monotonic() - started,
            cache.num_blocks,
            cache.block_size,
            self._config.scheduler.max_num_seqs,
        )

    def submit(self, request: GenerationRequest, sink: OutputSink) -> None:
        """Validate, tokenize and compile any grammar now (raises ContractError), then queue
        for the engine thread."""
        prepared = self.engine.prepare(request)
        with self._admission:
            if self._stopped.is_set():
                raise ContractError(self._stop_reason, kind=ErrorKind.UNAVAILABLE)
            self._inbox.put((next(self._keys), prepared, sink))

    def tokenize(self, request: GenerationRequest, with_strings: bool = False) -> Tokenization:
        """The request's prompt as token ids, as `submit` would tokenize it, and the context
        length; each id's vocabulary entry too when `with_strings`. Raises ContractError."""
        token_ids, _ = self.engine.tokenize(request)
        strings = self.engine.tokenizer.token_strings(token_ids) if with_strings else None
        return Tokenization(token_ids, strings, self.engine.config.scheduler.max_model_len)

    def detokenize(self, token_ids: list[int]) -> str:
        """Token ids as text, special tokens kept; raises ContractError naming `tokens`."""
        return self.engine.detokenize(token_ids)

    def shutdown(self, timeout_s: float = 30.0) -> None:
        with self._admission:
            self._stopped.set()
        self._inbox.put(_STOP)
        self._thread.join(timeout_s)
        if self._built.is_set() and self._build_error is None:
            self.engine.grammar_compiler.shutdown()  # its idle compile threads end

    def _run(self) -> None:
        try:
            self.engine = LLMEngine(self._config, metrics=self._metrics)
        except BaseException as error:  # start() raises it on the caller's thread
            self._build_error = error
            return
        finally:
            self._built.set()
        try:
            while self._drain_inbox(block=not self.engine.has_unfinished()):
                self._abort_cancelled()
                for key, output in self.engine.step():
                    self._send(key, output)
        except Exception as error:  # the engine is broken: fail every request, loudly
            logger.exception("engine thread failed")
            # Later requests fail at submit too: queued, they would wait for a dead thread.
            self._stop_taking_requests(f"engine failure: {error}")
            self._fail_all(self._stop_reason)
            raise
        self._fail_all("the model is shutting down")

    def _stop_taking_requests(self, reason: str) -> None:
        with self._admission:
            self._stop_reason = reason
            self._stopped.set()

    def _drain_inbox(self, block: bool) -> bool:
        """Admit queued requests; False when shutdown was asked."""
        while True:
            try:
                item = self._inbox.get(block=block)
            except queue.Empty:
                return True
            if item is _STOP:
                return False
            key, prepared, sink = item
            self._sinks[key] = sink
            self.engine.add_request(key, prepared)
            block = False

    def _abort_cancelled(self) -> None:
        for key, sink in list(self._sinks.items()):
            if sink.is_cancelled():
                self.engine.abort(key)
                del self._sinks[key]  # a cancelled request gets no more responses...
                self._close(sink)  # ...but its final flag, so Triton can release it

    @staticmethod
    def _close(sink: OutputSink) -> None:
        try:
            sink.close()
        except Exception:  # the stream is already gone on Triton's side: nothing to release
            logger.debug("closing a request failed", exc_info=True)

    def _send(self, key: int, output: GenerationOutput) -> None:
        sink = self._sinks.get(key)
        if sink is None:
            return
        if output.finished:
            del self._sinks[key]
        try:
            sink.send(output)
        except Exception:  # the client is gone (stream closed): stop computing for it
            logger.warning("sending a response failed; aborting the request", exc_info=True)
            self.engine.abort(key)
            self._sinks.pop(key, None)
            if not output.finished:
                self._close(sink)

    def _fail_all(self, message: str) -> None:
        while True:  # requests still queued get the error too
            try:
                item = self._inbox.get_nowait()
            except queue.Empty:
                break
            if item is not _STOP:
                self._sinks[item[0]] = item[2]
        for key, sink in list(self._sinks.items()):
            self.engine.abort(key)
            try:
                sink.send(GenerationOutput(0, [], finished=True, error=message))
            except Exception:
                logger.warning("could not send the failure to a request", exc_info=True)
        self._sinks.clear()
