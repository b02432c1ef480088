"""Triton over gRPC: one bidirectional stream per generation request.

`TritonClient` wraps `tritonclient.grpc.aio.InferenceServerClient` for one endpoint
and implements `adapter.contract.TritonBackend` (`adapter.backends.Backends` spreads
requests over several). The tensor contract it speaks is documented in
`adapter.contract` and docs/api.md.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import struct
import uuid
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

import grpc
import numpy as np
import tritonclient.grpc.aio as grpcclient
from tritonclient.utils import InferenceServerException

from adapter.contract import (
    ChoiceDelta,
    GenerateInputs,
    GenerateOutput,
    ModelInfo,
    TokenLogprobs,
    TopLogprob,
)
from adapter.errors import (
    APIError,
    GatewayTimeout,
    InvalidRequest,
    ModelError,
    ModelNotFound,
    ServiceUnavailable,
    TooManyRequests,
)

logger = logging.getLogger("adapter")

_INVALID = re.compile(
    r"invalid request:\s*(?:(?P<field>[A-Za-z_][A-Za-z0-9_.]*):\s)?(?P<text>.*)", re.S
)


def error_from_triton(message: str, model: str) -> APIError:
    """A Triton/model error message -> the adapter error the client sees (see contract)."""
    lowered = message.lower()
    invalid = _INVALID.search(message)
    if invalid is not None:
        return InvalidRequest(invalid["text"].strip(), param=invalid["field"], code="invalid_value")
    if "context length" in lowered or "request too large" in lowered:
        text = (
            message.split(":", 1)[1].strip() if lowered.startswith("context length:") else message
        )
        return InvalidRequest(text, param="messages", code="context_length_exceeded")
    if "unknown model" in lowered or ("model" in lowered and "is not found" in lowered):
        return ModelNotFound(model)
    if "maximum queue size" in lowered:
        return TooManyRequests(f"Triton's queue for '{model}' is full; retry later", 1)
    if lowered.startswith(("unavailable:", "overloaded:")) or "unavailable" in lowered:
        return ServiceUnavailable(message)
    if "stub process" in lowered and "not healthy" in lowered:
        # The Python backend's process died: the model cannot serve until it is restarted
        # (`tritium serve` restarts Triton), so this is 503 and retryable, not a 500.
        return ServiceUnavailable(f"The model '{model}' is restarting after a backend failure")
    return ModelError(message)


def error_from_grpc(error: grpc.aio.AioRpcError | InferenceServerException, model: str) -> APIError:
    if isinstance(error, grpc.aio.AioRpcError):
        code, message = error.code(), error.details() or ""
    else:
        code, message = error.status(), error.message() or ""
    code_name = str(code).rsplit(".", 1)[-1]
    if code_name == "UNAVAILABLE":
        return ServiceUnavailable(f"Triton is unreachable: {message}")
    if code_name == "DEADLINE_EXCEEDED":
        return GatewayTimeout("The request ran past the adapter's request timeout")
    if code_name == "RESOURCE_EXHAUSTED":
        return TooManyRequests(f"Triton is out of capacity: {message}", 1)
    return error_from_triton(message, model)


def scalar_input(name: str, value: str | bool) -> grpcclient.InferInput:
    """A shape-[1] STRING (BYTES) or BOOL request tensor."""
    is_text = isinstance(value, str)
    tensor = grpcclient.InferInput(name, [1], "BYTES" if is_text else "BOOL")
    data = np.array([value.encode("utf-8")], dtype=np.object_) if is_text else np.array([value])
    tensor.set_data_from_numpy(data)
    return tensor


def build_inputs(
    inputs: GenerateInputs, cancellation_key: str | None = None
) -> list[grpcclient.InferInput]:
    """The request tensors of the contract (shape [1], but input_ids [num_tokens])."""
    tensors: list[grpcclient.InferInput] = []

    def add(name: str, value: str | bool) -> None:
        tensors.append(scalar_input(name, value))

    if inputs.messages is not None:
        add("messages", json.dumps(inputs.messages, ensure_ascii=False))
    elif inputs.input_ids is not None:
        token_ids = grpcclient.InferInput("input_ids", [len(inputs.input_ids)], "INT64")
        token_ids.set_data_from_numpy(np.array(inputs.input_ids, dtype=np.int64))
        tensors.append(token_ids)
    else:
        add("text_input", inputs.text_input or "")
    add("stream", inputs.stream)
    add("sampling_parameters", json.dumps(inputs.sampling_parameters, ensure_ascii=False))
    add("exclude_input_in_output", not inputs.include_input)
    for flag in (
        "return_finish_reason",
        "return_num_input_tokens",
        "return_num_output_tokens",
    ):
        add(flag, True)
    if inputs.return_logprobs:  # only then: models without logprobs still serve the rest
        add("return_logprobs", True)
    if cancellation_key is not None:  # only for models with in-band cancellation
        add("cancellation_key", cancellation_key)
    return tensors


def cancel_request(model: str, request_id: str, cancellation_key: str) -> dict[str, Any]:
    """The in-band cancel of the request sent with ``cancellation_key`` (a second request
    on the same stream; the model answers it with nothing but its final flag)."""
    return {
        "model_name": model,
        "inputs": [
            scalar_input("cancel", True),
            scalar_input("cancellation_key", cancellation_key),
        ],
        "request_id": f"{request_id}-cancel",
    }


_INTEGER_FORMATS = {
    "INT8": "b", "INT16": "h", "INT32": "i", "INT64": "q",
    "UINT8": "B", "UINT16": "H", "UINT32": "I", "UINT64": "Q",
}  # fmt: skip
_INTEGER_SIZES = {datatype: struct.calcsize(code) for datatype, code in _INTEGER_FORMATS.items()}
_LENGTH = struct.Struct("<I")  # the 4-byte little-endian length before each BYTES element


def parse_response(result: Any) -> GenerateOutput:
    """A tritonclient InferResult -> GenerateOutput (output names per the contract).

    Reads the response's raw output contents directly: tritonclient's `as_numpy` (a numpy
    array per tensor) costs more than this whole parse (`python -m benchmarks.parse_response`).
    """
    response = result.get_response()
    if len(response.outputs) != len(response.raw_output_contents):
        raise ModelError(
            f"contract violation: {len(response.outputs)} output tensors but"
            f" {len(response.raw_output_contents)} raw contents"
        )
    tensors = {
        tensor.name: (tensor.datatype, raw)
        for tensor, raw in zip(response.outputs, response.raw_output_contents, strict=True)
    }
    texts = _strings(tensors.get("text_output"))
    count = len(texts)
    indexes = _integers(tensors.get("index")) or list(range(count))
    reasons = _strings(tensors.get("finish_reason")) or [""] * count
    counts: list[int | None] = list(_integers(tensors.get("num_output_tokens"))) or [None] * count
    logprobs = _strings(tensors.get("logprobs")) or [""] * count
    if not (len(indexes) == len(reasons) == len(counts) == len(logprobs) == count):
        raise ModelError(
            "contract violation: text_output, index, finish_reason, num_output_tokens and"
            f" logprobs must have the same length, got {count}, {len(indexes)}, {len(reasons)},"
            f" {len(counts)}, {len(logprobs)}"
        )
    input_counts = _integers(tensors.get("num_input_tokens"))
    choices = [
        ChoiceDelta(
            index=indexes[i],
            text=texts[i],
            finish_reason=reasons[i] or None,
            num_output_tokens=counts[i],
            logprobs=parse_logprobs(logprobs[i]),
        )
        for i in range(count)
    ]
    final_flag = response.parameters.get("triton_final_response")
    return GenerateOutput(
        choices=choices,
        num_input_tokens=input_counts[0] if input_counts else None,
        final=final_flag is not None and final_flag.bool_param,
    )


def parse_logprobs(text: str) -> TokenLogprobs | None:
    if not text:
        return None
    try:
        data = json.loads(text)
        top = [
            [TopLogprob(str(item["token"]), float(item["logprob"])) for item in alternatives]
            for alternatives in data.get("top_logprobs") or [[] for _ in data["tokens"]]
        ]
        return TokenLogprobs(
            token_ids=[int(t) for t in data.get("token_ids", [])],
            tokens=[str(t) for t in data["tokens"]],
            logprobs=[float(v) for v in data["logprobs"]],
            top_logprobs=top,
        )
    except (ValueError, KeyError, TypeError) as error:
        raise ModelError(f"contract violation: bad logprobs JSON ({error}): {text[:200]}") from None


def _strings(tensor: tuple[str, bytes] | None) -> list[str]:
    """A BYTES tensor's elements (each a 4-byte length, then the bytes) as text."""
    if tensor is None:
        return []
    datatype, raw = tensor
    if datatype != "BYTES":
        raise ModelError(f"contract violation: a text output has datatype {datatype}, not BYTES")
    values, offset = [], 0
    while offset < len(raw):
        (length,) = _LENGTH.unpack_from(raw, offset)
        offset += _LENGTH.size
        values.append(raw[offset : offset + length].decode("utf-8"))
        offset += length
    if offset != len(raw):
        raise ModelError("contract violation: a BYTES output is truncated")
    return values


def _integers(tensor: tuple[str, bytes] | None) -> list[int]:
    if tensor is None:
        return []
    datatype, raw = tensor
    code = _INTEGER_FORMATS.get(datatype)
    if code is None:
        raise ModelError(
            f"contract violation: a count output has datatype {datatype}, not an integer"
        )
    count, rest = divmod(len(raw), _INTEGER_SIZES[datatype])
    if rest:
        raise ModelError(f"contract violation: a {datatype} output is truncated")
    return list(struct.unpack(f"<{count}{code}", raw))


class _Call:
    """One gRPC stream call, read by a task of its own.

    grpc.aio cancels an RPC whenever a coroutine awaiting one of its reads is cancelled,
    and the consumer of a request is exactly such a coroutine when its client
    disconnects (Starlette cancels the response task). In Triton 2.51 a call cancelled as
    its request's final response is being written leaks the request: the call's state
    and its inference request are never freed, the request keeps a reference to the
    model, and the model can never unload (at stop Triton waits its whole exit timeout,
    "Found 1 live models", and the model's finalize() never runs; docs/reliability.md,
    item 8). So only the reader task awaits the call; the consumer awaits a queue, and
    when it leaves, the call is ended by Triton after our half-close. It is cancelled
    only if Triton has not ended it in time, or if the model refused an in-band cancel."""

    def __init__(self, stream: Any, request_id: str, owner: set[asyncio.Task[None]]) -> None:
        self.stream = stream
        self.request_id = request_id
        self.inbox: asyncio.Queue[Any] = asyncio.Queue()  # (result, error) | an error | _OVER
        self.left = False  # the consumer is gone: what still comes is dropped
        self.reader = asyncio.get_running_loop().create_task(self._read())
        owner.add(self.reader)
        self.reader.add_done_callback(owner.discard)

    async def _read(self) -> None:
        try:
            async for result, error in self.stream:
                if not self.left:
                    self.inbox.put_nowait((result, error))
                elif error is not None:  # our in-band cancel was refused: Triton's way, then
                    logger.warning("in-band cancel of %s failed: %s", self.request_id, error)
                    self.stream.cancel()
                    return
            self.inbox.put_nowait(_OVER)
        except (grpc.aio.AioRpcError, InferenceServerException) as error:
            self.inbox.put_nowait(error)  # the call ended with an error status
        except BaseException:
            self.stream.cancel()  # cancelled by `TritonClient.close` or locally: never left open
            raise

    def leave(self, timeout_s: float) -> None:
        """The consumer is done: Triton must end the call within ``timeout_s``."""
        self.left = True
        if self.reader.done():
            return
        overdue = asyncio.get_running_loop().call_later(timeout_s, self._overdue, timeout_s)
        self.reader.add_done_callback(lambda _: overdue.cancel())

    def _overdue(self, timeout_s: float) -> None:
        logger.warning(
            "Triton did not end the call of %s in %s s; cancelling it", self.request_id, timeout_s
        )
        self.stream.cancel()


_OVER = object()  # the call ended normally


class TritonClient:
    """One Triton endpoint."""

    # After a request's last response, or after its in-band cancel: how long Triton may
    # take to end the call once we half-close it, before we cancel the call after all
    # (Triton needs well under a millisecond for an ended request, one engine step for
    # a cancelled one).
    end_of_call_timeout_s = 5.0

    def __init__(self, url: str, request_timeout_s: float | None = None) -> None:
        self.url = url
        self.request_timeout_s = request_timeout_s
        self.client = grpcclient.InferenceServerClient(url=url)
        # Models whose configuration has the in-band cancellation inputs (`cancel` and
        # `cancellation_key`), learnt by `list_models`; others get their calls cancelled.
        self.cancels_in_band: set[str] = set()
        self._readers: set[asyncio.Task[None]] = set()  # one per call not yet ended

    async def generate(
        self, model: str, inputs: GenerateInputs
    ) -> AsyncGenerator[GenerateOutput, None]:
        num_choices = int(inputs.sampling_parameters.get("n") or 1)
        key = uuid.uuid4().hex if model in self.cancels_in_band else None
        outbox: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
        outbox.put_nowait(
            {
                "model_name": model,
                "inputs": build_inputs(inputs, cancellation_key=key),
                "request_id": inputs.request_id,
            }
        )

        async def requests() -> AsyncIterator[dict[str, Any]]:
            # The stream stays open until we put None (half-close) or cancel the call.
            while (request := await outbox.get()) is not None:
                yield request

        stream = self.client.stream_infer(requests(), stream_timeout=self.request_timeout_s)
        call = _Call(stream, inputs.request_id, self._readers)
        finished: set[int] = set()
        # True once Triton has ended the request (its last response or an error, which
        # always comes with the final flag): from then on there is nothing to cancel.
        ended = False
        call_over = False  # the call itself has ended (status received): nothing to free
        try:
            while True:
                item = await call.inbox.get()
                if item is _OVER:
                    call_over = True  # Triton ended the call itself
                    return
                if isinstance(item, BaseException):
                    call_over = True  # deadline, unavailable, ...
                    raise error_from_grpc(item, model) from None
                result, error = item
                if error is not None:
                    ended = True
                    raise error_from_triton(error.message() or str(error), model)
                output = parse_response(result)
                finished.update(c.index for c in output.choices if c.finish_reason)
                ended = output.final or len(finished) >= num_choices
                yield output
                if ended:
                    return
        finally:
            if not call_over:
                if not ended and key is not None:
                    # The consumer left early (a client disconnect): the model stops the
                    # request when this second request on the stream reaches it.
                    outbox.put_nowait(cancel_request(model, inputs.request_id, key))
                elif not ended:
                    # A model without in-band cancellation: cancelling the call makes
                    # Triton cancel the request, and the model sees is_cancelled().
                    stream.cancel()
                outbox.put_nowait(None)  # half-close: Triton ends the call when all is done
            call.leave(self.end_of_call_timeout_s)

    async def wait_for_calls(self) -> None:
        """Until every call has ended (or been cancelled)."""
        while self._readers:
            await asyncio.gather(*self._readers, return_exceptions=True)

    async def list_models(self) -> list[ModelInfo]:
        try:
            index = await self.client.get_model_repository_index(as_json=True)
            names = [m["name"] for m in index.get("models", []) if m.get("state") == "READY"]
            configs = await asyncio.gather(*(self._model_config(name) for name in names))
        except InferenceServerException as error:
            raise error_from_grpc(error, "") from None
        return [info for info in configs if info is not None]

    async def _model_config(self, name: str) -> ModelInfo | None:
        config = (await self.client.get_model_config(name, as_json=True)).get("config", {})
        input_names = {tensor.get("name") for tensor in config.get("input", [])}
        if not input_names & {"text_input", "messages"}:
            return None  # not an LLM of the contract (a tokenizer, an embedding model, ...)
        length = config.get("parameters", {}).get("max_model_len", {}).get("string_value")
        if {"cancel", "cancellation_key"} <= input_names:
            self.cancels_in_band.add(name)
        else:
            self.cancels_in_band.discard(name)
        return ModelInfo(
            id=name,
            max_model_len=int(length) if length and length.isdigit() else None,
            supports_chat="messages" in input_names,
            supports_completions="text_input" in input_names,
            supports_token_ids="input_ids" in input_names,
        )

    async def is_ready(self) -> bool:
        try:
            return bool(await self.client.is_server_ready())
        except InferenceServerException:
            return False

    async def close(self) -> None:
        await self.wait_for_calls()
        await self.client.close()
