"""One request to a Triton model of the contract: a gRPC bidirectional stream and its lifecycle.

Both the adapter (`adapter.triton_client`) and the benchmark's Triton client
(`benchmarks.clients`) send requests through `TritonCall`, so a request is started,
read and ended one way.

States of a call, in order (`CallState`):

    OPEN        the request is sent; responses come
    ENDED       Triton ended the request: its final response, every choice finished, or
                an error response. Nothing is left to cancel; we half-close the stream
                and Triton ends the call.
    CANCELLING  the consumer left while the request ran (a client disconnect, a time
                limit). A model with in-band cancellation gets a cancel request on the
                same stream (`cancel` + the request's `cancellation_key`), then the
                half-close; the model stops the request and Triton ends the call. Other
                models get their call cancelled (Triton cancels the request and the
                model sees `is_cancelled()`).
    CLOSED      the call is over: Triton ended it (status received), or we cancelled it.

The state is the consumer's view; the reader task may still be draining the call.

Why a call is never cancelled when it need not be: in Triton 2.51, a gRPC call
cancelled while its request's final response is being written leaks the request. The
call's state and its inference request are never freed, the request holds a reference to
the model, and the model can never unload (at stop Triton waits its whole exit timeout,
"Found 1 live models", and the model's `finalize()` never runs). And grpc.aio cancels an
RPC whenever a coroutine awaiting one of its reads is cancelled, which is exactly what
happens to the task serving an HTTP request when its client disconnects (Starlette
cancels it). So a call is read by a task of its own (`_read`), the consumer awaits a
queue, and ending a call is a half-close. The call is cancelled only when the model has
no in-band cancellation, when the model refuses the cancel request, or when Triton has
not ended the call `end_of_call_timeout_s` after the half-close.
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import logging
import uuid
from collections.abc import AsyncIterator
from typing import Any

import grpc
import tritonclient.grpc.aio as grpcclient
from tritonclient.utils import InferenceServerException

from contract.errors import ContractError
from contract.tensors import ModelRequest, ModelResponse, decode_response

logger = logging.getLogger("adapter")


class CallState(enum.Enum):
    OPEN = "open"
    ENDED = "ended"
    CANCELLING = "cancelling"
    CLOSED = "closed"


class CallError(Exception):
    """The request failed. `status` is the gRPC status name (UNAVAILABLE, DEADLINE_EXCEEDED,
    ...) when the call failed, None when the model answered with an error response."""

    def __init__(self, message: str, status: str | None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


def infer_inputs(request: ModelRequest) -> list[grpcclient.InferInput]:
    """The request's tensors as tritonclient inputs."""
    inputs = []
    for spec, array in request.to_arrays():
        tensor = grpcclient.InferInput(spec.name, list(array.shape), spec.datatype)
        tensor.set_data_from_numpy(array)
        inputs.append(tensor)
    return inputs


def read_response(result: Any) -> ModelResponse:
    """A tritonclient InferResult -> ModelResponse, from the response's raw contents."""
    response = result.get_response()
    if len(response.outputs) != len(response.raw_output_contents):
        raise ContractError(
            f"contract violation: {len(response.outputs)} output tensors but"
            f" {len(response.raw_output_contents)} raw contents"
        )
    raw = {
        tensor.name: (tensor.datatype, contents)
        for tensor, contents in zip(response.outputs, response.raw_output_contents, strict=True)
    }
    final = response.parameters.get("triton_final_response")
    return decode_response(raw, final=final is not None and final.bool_param)


_OVER = object()  # the reader's mark: Triton ended the call normally


class TritonCall:
    """One request on one gRPC stream. Use it as an async context manager:

        async with TritonCall(client, model, request, ...) as call:
            async for response in call:
                ...

    Leaving the block ends the call as its state says (see the module docstring).
    """

    end_of_call_timeout_s = 5.0

    def __init__(
        self,
        client: grpcclient.InferenceServerClient,
        model: str,
        request: ModelRequest,
        *,
        request_id: str,
        cancel_in_band: bool,
        readers: set[asyncio.Task[None]],
        timeout_s: float | None = None,
    ) -> None:
        self.model = model
        self.request_id = request_id
        # Set only for models with in-band cancellation: the key of the cancel request.
        self.cancellation_key = uuid.uuid4().hex if cancel_in_band else None
        self.num_choices = int((request.sampling_parameters or {}).get("n") or 1)
        self.state = CallState.OPEN
        self._finished: set[int] = set()  # choice indexes with a finish reason
        self._outbox: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
        self._outbox.put_nowait(self._message(request))
        self._inbox: asyncio.Queue[Any] = asyncio.Queue()  # (result, error) | exception | _OVER
        self._stream = client.stream_infer(self._requests(), stream_timeout=timeout_s)
        self._reader = asyncio.get_running_loop().create_task(self._read())
        readers.add(self._reader)
        self._reader.add_done_callback(readers.discard)

    def _message(self, request: ModelRequest, suffix: str = "") -> dict[str, Any]:
        if self.cancellation_key is not None and request.cancellation_key is None:
            request = dataclasses.replace(request, cancellation_key=self.cancellation_key)
        return {
            "model_name": self.model,
            "inputs": infer_inputs(request),
            "request_id": self.request_id + suffix,
        }

    async def _requests(self) -> AsyncIterator[dict[str, Any]]:
        # The stream stays open until we put None (the half-close) or cancel the call.
        while (message := await self._outbox.get()) is not None:
            yield message

    async def _read(self) -> None:
        """The only reader of the call (see the module docstring)."""
        try:
            async for result, error in self._stream:
                if self.state is not CallState.CANCELLING:
                    self._inbox.put_nowait((result, error))
                elif error is not None:  # the model refused our cancel request: cancel the call
                    logger.warning("in-band cancel of %s failed: %s", self.request_id, error)
                    self._stream.cancel()
                    return
            self._inbox.put_nowait(_OVER)
        except (grpc.aio.AioRpcError, InferenceServerException) as error:
            self._inbox.put_nowait(error)  # the call ended with an error status
        except BaseException:
            self._stream.cancel()  # cancelled by its owner at shutdown: never left open
            raise

    def __aiter__(self) -> TritonCall:
        return self

    async def __anext__(self) -> ModelResponse:
        """The next response; raises CallError when the request failed."""
        if self.state is not CallState.OPEN:
            raise StopAsyncIteration
        item = await self._inbox.get()
        if item is _OVER:
            self.state = CallState.CLOSED  # Triton ended the call itself
            raise StopAsyncIteration
        if isinstance(item, BaseException):
            self.state = CallState.CLOSED  # deadline, unavailable, ...
            raise call_error(item) from None
        result, error = item
        if error is not None:
            self.state = CallState.ENDED  # an error response is always the final one
            raise CallError(error.message() or str(error), None)
        response = read_response(result)
        self._finished.update(c.index for c in response.choices if c.finish_reason)
        if response.final or len(self._finished) >= self.num_choices:
            self.state = CallState.ENDED
        return response

    async def __aenter__(self) -> TritonCall:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.end()

    def end(self) -> None:
        """The consumer is done with the call: end it as its state says."""
        if self.state is CallState.CLOSED or self._reader.done():
            return
        if self.state is CallState.OPEN:
            self.state = CallState.CANCELLING
            if self.cancellation_key is None:
                self.state = CallState.CLOSED
                self._stream.cancel()
                return
            cancel = ModelRequest.cancel_of(self.cancellation_key)
            self._outbox.put_nowait(self._message(cancel, suffix="-cancel"))
        self._outbox.put_nowait(None)  # the half-close
        overdue = asyncio.get_running_loop().call_later(self.end_of_call_timeout_s, self._overdue)
        self._reader.add_done_callback(lambda _: overdue.cancel())

    def _overdue(self) -> None:
        logger.warning(
            "Triton did not end the call of %s in %s s; cancelling it",
            self.request_id,
            self.end_of_call_timeout_s,
        )
        self._stream.cancel()


def call_error(error: BaseException) -> CallError:
    """A gRPC or tritonclient failure as a CallError with its status name."""
    if isinstance(error, grpc.aio.AioRpcError):
        code, message = error.code(), error.details() or ""
    elif isinstance(error, InferenceServerException):
        code, message = error.status(), error.message() or ""
    else:
        return CallError(str(error), "UNKNOWN")
    return CallError(message, str(code).rsplit(".", 1)[-1])
