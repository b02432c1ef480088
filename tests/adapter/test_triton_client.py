"""The gRPC client and its calls (adapter/triton_call.py) without a Triton: tensors built, responses parsed, errors mapped;
when the consumer stops early, an in-band cancel for models that take one (else the
call is cancelled), and no cancellation once the request has ended (Triton ends the
call after our half-close)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import grpc
import numpy as np
import pytest
from tritonclient.grpc import InferResult, service_pb2
from tritonclient.utils import InferenceServerException, np_to_triton_dtype, serialize_byte_tensor

from adapter.backends import Backends
from adapter.contract import GenerateInputs, ModelInfo
from adapter.errors import (
    InvalidRequest,
    ModelError,
    ModelNotFound,
    ServiceUnavailable,
    TooManyRequests,
)
from adapter.triton_call import TritonCall, infer_inputs, read_response
from adapter.triton_client import TritonClient, error_from_triton, model_request
from contract.errors import ContractError

pytestmark = pytest.mark.anyio


def strings(*values: str) -> np.ndarray:
    return np.array([v.encode() for v in values], dtype=np.object_)


def infer_result(outputs: dict[str, np.ndarray], final: bool = False) -> InferResult:
    response = service_pb2.ModelInferResponse(model_name="m", id="r")
    for name, array in outputs.items():
        tensor = response.outputs.add()
        tensor.name = name
        tensor.datatype = np_to_triton_dtype(array.dtype)
        tensor.shape.extend(array.shape)
        is_bytes = array.dtype == np.object_
        raw = serialize_byte_tensor(array).item() if is_bytes else array.tobytes()
        response.raw_output_contents.append(raw)
    response.parameters["triton_final_response"].bool_param = final
    return InferResult(response)


def test_build_inputs_follows_the_contract() -> None:
    inputs = GenerateInputs(
        request_id="r1",
        messages=[{"role": "user", "content": "hé"}],
        stream=False,
        sampling_parameters={"n": 2, "temperature": 0.0},
        return_logprobs=True,
    )
    tensors = {tensor.name(): tensor for tensor in infer_inputs(model_request(inputs))}
    assert set(tensors) == {
        "messages",
        "stream",
        "sampling_parameters",
        "exclude_input_in_output",
        "return_finish_reason",
        "return_num_input_tokens",
        "return_num_output_tokens",
        "return_logprobs",
    }
    assert tensors["messages"].datatype() == "BYTES" and tensors["messages"].shape() == [1]
    assert tensors["stream"].datatype() == "BOOL"
    sent = tensors["sampling_parameters"]._get_content()
    assert json.loads(sent[4:].decode()) == {"n": 2, "temperature": 0.0}  # 4-byte length prefix
    text_only = {t.name() for t in infer_inputs(model_request(GenerateInputs("r2", text_input="x")))}
    assert "text_input" in text_only and "messages" not in text_only
    assert "return_logprobs" not in text_only


def test_parse_response_with_every_output() -> None:
    logprobs = json.dumps(
        {
            "token_ids": [5],
            "tokens": ["lo"],
            "logprobs": [-0.5],
            "top_logprobs": [[{"token": "lo", "logprob": -0.5}]],
        }
    )
    result = infer_result(
        {
            "text_output": strings("lo", "B"),
            "index": np.array([1, 0], dtype=np.int32),
            "finish_reason": strings("", "length"),
            "num_output_tokens": np.array([3, 7], dtype=np.int64),
            "num_input_tokens": np.array([11], dtype=np.int32),
            "logprobs": strings(logprobs, ""),
        },
        final=True,
    )
    output = read_response(result)
    assert output.final and output.num_input_tokens == 11
    first, second = output.choices
    assert (first.index, first.text, first.finish_reason, first.num_output_tokens) == (
        1,
        "lo",
        None,
        3,
    )
    assert (second.index, second.text, second.finish_reason) == (0, "B", "length")
    assert first.logprobs is not None and first.logprobs.top_logprobs[0][0].token == "lo"
    assert second.logprobs is None


def test_parse_response_with_only_text_output() -> None:
    # A model like Triton's vLLM backend: no index, no counts.
    output = read_response(infer_result({"text_output": strings("hi")}))
    assert [(c.index, c.text, c.finish_reason, c.num_output_tokens) for c in output.choices] == [
        (0, "hi", None, None)
    ]
    assert not output.final


def test_parse_response_rejects_misaligned_outputs() -> None:
    with pytest.raises(ContractError):
        read_response(
            infer_result({"text_output": strings("a", "b"), "index": np.array([0], dtype=np.int32)})
        )


def test_parse_response_names_a_malformed_tensor() -> None:
    text_as_float = infer_result({"text_output": np.array([1.0], dtype=np.float32)})
    with pytest.raises(ContractError, match="text output has datatype FP32"):
        read_response(text_as_float)
    count_as_text = infer_result({"text_output": strings("a"), "index": strings("0")})
    with pytest.raises(ContractError, match="count output has datatype BYTES"):
        read_response(count_as_text)
    truncated = infer_result({"text_output": strings("abc")})
    response = truncated.get_response()
    response.raw_output_contents[0] = response.raw_output_contents[0][:-1]
    with pytest.raises(ContractError, match="BYTES output is truncated"):
        read_response(InferResult(response))
    short_count = infer_result({"text_output": strings("a"), "index": np.array([0], np.int32)})
    response = short_count.get_response()
    response.raw_output_contents[1] = b"\x00\x00"
    with pytest.raises(ContractError, match="INT32 output is truncated"):
        read_response(InferResult(response))


@pytest.mark.parametrize(
    ("message", "kind", "param"),
    [
        ("invalid request: temperature: must be in [0, 2], got 3.0", InvalidRequest, "temperature"),
        ("invalid request: messages must not be empty", InvalidRequest, None),
        (
            "context length: prompt has 5000 tokens, the model takes 2048",
            InvalidRequest,
            "messages",
        ),
        ("Request for unknown model: 'x' is not found", ModelNotFound, "model"),
        ("Exceeds maximum queue size", TooManyRequests, None),
        ("unavailable: the engine is shutting down", ServiceUnavailable, None),
        ("Stub process 'm_0_0' is not healthy.", ServiceUnavailable, None),
        ("CUDA out of memory at engine/model_runner.py:88", ModelError, None),
    ],
)
def test_error_from_triton(message: str, kind: type, param: str | None) -> None:
    error = error_from_triton(message, "m")
    assert type(error) is kind
    assert error.param == param


NEXT_REQUEST = object()  # in FakeStream's items: wait for one more request first


class FakeStream:
    """What tritonclient's stream_infer returns: async (result, error) pairs + cancel().

    Like Triton, it ends the call (StopAsyncIteration) when its responses are out and the
    client has half-closed the call (the requests iterator ended); `ends_call=False` is a
    server that never does."""

    def __init__(
        self, requests: AsyncIterator[dict[str, Any]], items: list[Any], ends_call: bool = True
    ) -> None:
        self.requests = requests
        self.items = items
        self.ends_call = ends_call
        self.cancelled = False
        self.half_closed = False
        self.cancel_event = asyncio.Event()
        self.sent: list[dict[str, Any]] = []

    def __aiter__(self) -> FakeStream:
        return self

    async def __anext__(self) -> Any:
        try:
            return await self._next()
        except asyncio.CancelledError:
            self.cancelled = True  # like grpc.aio: a read whose awaiter is cancelled cancels the call
            raise

    async def _next(self) -> Any:
        if not self.sent:
            self.sent.append(await anext(self.requests))
        if not self.items:
            async for request in self.requests:  # until the client half-closes
                self.sent.append(request)
            self.half_closed = True
            if not self.ends_call:
                await self.cancel_event.wait()
                raise asyncio.CancelledError  # what grpc.aio raises in a read it cancelled
            raise StopAsyncIteration
        item = self.items.pop(0)
        if item is NEXT_REQUEST:  # what follows answers the client's next request
            self.sent.append(await anext(self.requests))
            return await self._next()
        if isinstance(item, BaseException):
            raise item
        return item

    def cancel(self) -> bool:
        self.cancelled = True
        self.cancel_event.set()
        return True


class FakeGrpcClient:
    def __init__(self, items: list[Any], ends_call: bool = True) -> None:
        self.items = items
        self.ends_call = ends_call
        self.streams: list[FakeStream] = []

    def stream_infer(
        self, requests: AsyncIterator[dict[str, Any]], stream_timeout: Any = None
    ) -> FakeStream:
        stream = FakeStream(requests, self.items, self.ends_call)
        self.streams.append(stream)
        return stream

    async def close(self) -> None:
        pass


def running(text: str, index: int = 0) -> InferResult:
    return infer_result(
        {
            "text_output": strings(text),
            "index": np.array([index], dtype=np.int32),
            "finish_reason": strings(""),
        }
    )


def done(text: str, index: int = 0, final: bool = True) -> InferResult:
    return infer_result(
        {
            "text_output": strings(text),
            "index": np.array([index], dtype=np.int32),
            "finish_reason": strings("stop"),
        },
        final=final,
    )


async def test_generate_stops_at_the_final_response() -> None:
    client = TritonClient("127.0.0.1:1")
    client.client = FakeGrpcClient(
        [(running("a"), None), (done("b"), None), (running("never"), None)]
    )
    outputs = [o async for o in client.generate("m", GenerateInputs("r", text_input="x"))]
    assert [o.choices[0].text for o in outputs] == ["a", "b"]
    await client.wait_for_calls()
    stream = client.client.streams[0]
    assert stream.sent[0]["model_name"] == "m" and stream.sent[0]["request_id"] == "r"
    # The request ended: half-closed and left for Triton to end, never cancelled (why:
    # adapter/triton_call.py).
    assert stream.half_closed and not stream.cancelled


async def test_closing_at_the_final_response_does_not_cancel() -> None:
    client = TritonClient("127.0.0.1:1")
    client.client = FakeGrpcClient([(running("a"), None), (done("b"), None)])
    generator = client.generate("m", GenerateInputs("r", text_input="x"))
    await anext(generator)
    assert (await anext(generator)).final
    await generator.aclose()  # the consumer stops at the last output, without iterating on
    await client.wait_for_calls()
    assert client.client.streams[0].half_closed and not client.client.streams[0].cancelled


async def test_a_call_triton_does_not_end_is_cancelled_after_the_timeout(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(TritonCall, "end_of_call_timeout_s", 0.05)
    client = TritonClient("127.0.0.1:1")
    client.client = FakeGrpcClient([(done("a"), None)], ends_call=False)
    outputs = [o async for o in client.generate("m", GenerateInputs("r", text_input="x"))]
    assert len(outputs) == 1
    await client.wait_for_calls()
    assert client.client.streams[0].half_closed and client.client.streams[0].cancelled


async def test_generate_stops_when_every_choice_finished() -> None:
    # No triton_final_response (e.g. the model sent a flag-only final response).
    client = TritonClient("127.0.0.1:1")
    client.client = FakeGrpcClient(
        [(done("a", 0, final=False), None), (done("b", 1, final=False), None), (running("x"), None)]
    )
    inputs = GenerateInputs("r", text_input="x", sampling_parameters={"n": 2})
    outputs = [o async for o in client.generate("m", inputs)]
    assert len(outputs) == 2


async def test_closing_early_cancels_the_grpc_stream_of_a_model_without_in_band_cancel() -> None:
    client = TritonClient("127.0.0.1:1")
    client.client = FakeGrpcClient([(running("a"), None), (running("b"), None)])
    generator = client.generate("m", GenerateInputs("r", text_input="x"))
    assert (await anext(generator)).choices[0].text == "a"
    await generator.aclose()
    stream = client.client.streams[0]
    assert stream.cancelled
    assert not any(t.name() == "cancellation_key" for t in stream.sent[0]["inputs"])


def scalar(request: dict[str, Any], name: str) -> Any:
    tensor = next(t for t in request["inputs"] if t.name() == name)
    raw = tensor._get_content()
    return raw[4:].decode() if tensor.datatype() == "BYTES" else bool(raw[0])


async def test_closing_early_cancels_in_band_and_never_cancels_the_call() -> None:
    client = TritonClient("127.0.0.1:1")
    client.cancels_in_band.add("m")
    client.client = FakeGrpcClient([(running("a"), None), (running("b"), None)])
    generator = client.generate("m", GenerateInputs("r", text_input="x"))
    assert (await anext(generator)).choices[0].text == "a"
    await generator.aclose()
    await client.wait_for_calls()
    stream = client.client.streams[0]
    request, cancel = stream.sent
    key = scalar(request, "cancellation_key")
    assert len(key) == 32  # a uuid4: no client can name another client's request
    assert scalar(cancel, "cancel") is True and scalar(cancel, "cancellation_key") == key
    assert cancel["request_id"] == "r-cancel" and cancel["model_name"] == "m"
    assert stream.half_closed and not stream.cancelled


async def test_a_consumer_cancelled_again_and_again_still_ends_the_call_in_band() -> None:
    # Starlette/anyio cancel a disconnected client's task at every await of its cleanup:
    # the call must be ended by a task of its own, not cancelled with the consumer.
    client = TritonClient("127.0.0.1:1")
    client.cancels_in_band.add("m")
    # After "a" the server says nothing until the cancel request: the consumer is
    # cancelled while it waits for the next response, which must not cancel the call.
    client.client = FakeGrpcClient([(running("a"), None), NEXT_REQUEST, (running("b"), None)])
    got_one = asyncio.Event()

    async def consumer() -> None:
        generator = client.generate("m", GenerateInputs("r", text_input="x"))
        try:
            await anext(generator)
            got_one.set()
            await anext(generator)
        finally:
            await generator.aclose()

    task = asyncio.create_task(consumer())
    await got_one.wait()
    for _ in range(3):
        task.cancel()
        await asyncio.sleep(0)
    with pytest.raises(asyncio.CancelledError):
        await task
    await client.wait_for_calls()
    stream = client.client.streams[0]
    assert len(stream.sent) == 2 and stream.half_closed and not stream.cancelled


async def test_a_refused_in_band_cancel_falls_back_to_cancelling_the_call() -> None:
    client = TritonClient("127.0.0.1:1")
    client.cancels_in_band.add("m")
    refused = InferenceServerException(msg="unexpected inference input 'cancel'")
    client.client = FakeGrpcClient(
        [(running("a"), None), NEXT_REQUEST, (None, refused)], ends_call=False
    )
    generator = client.generate("m", GenerateInputs("r", text_input="x"))
    await anext(generator)
    await generator.aclose()
    await client.wait_for_calls()
    assert client.client.streams[0].cancelled


async def test_models_with_the_cancel_inputs_are_cancelled_in_band() -> None:
    client = TritonClient("127.0.0.1:1")

    class Configs:
        async def get_model_config(self, name: str, as_json: bool) -> dict[str, Any]:
            names = (
                ["text_input", "cancellation_key", "cancel"] if name == "ours" else ["text_input"]
            )
            return {"config": {"input": [{"name": n} for n in names]}}

    client.client = Configs()
    assert await client._model_config("ours") is not None
    assert await client._model_config("vllm") is not None
    assert client.cancels_in_band == {"ours"}


async def test_stream_errors_are_mapped() -> None:
    client = TritonClient("127.0.0.1:1")
    error = InferenceServerException(msg="invalid request: top_k: must be >= -1")
    client.client = FakeGrpcClient([(None, error)])
    with pytest.raises(InvalidRequest) as raised:
        [o async for o in client.generate("m", GenerateInputs("r", text_input="x"))]
    assert raised.value.param == "top_k"
    await client.wait_for_calls()
    # An error response is the request's final one: Triton ends the call, no cancel.
    assert client.client.streams[0].half_closed and not client.client.streams[0].cancelled


async def test_a_call_that_failed_is_neither_cancelled_nor_waited_for() -> None:
    client = TritonClient("127.0.0.1:1")
    error = grpc.aio.AioRpcError(
        grpc.StatusCode.UNAVAILABLE, grpc.aio.Metadata(), grpc.aio.Metadata(), "gone"
    )
    client.client = FakeGrpcClient([(running("a"), None), error], ends_call=False)
    with pytest.raises(ServiceUnavailable):
        [o async for o in client.generate("m", GenerateInputs("r", text_input="x"))]
    assert not client.client.streams[0].cancelled


async def test_backends_pick_the_least_loaded() -> None:
    from tests.adapter.fake_triton import HANG, FakeTriton, choice, out

    first, second = FakeTriton(), FakeTriton()
    for fake in (first, second):
        fake.respond = lambda inputs: [out(choice(0, "a")), HANG]
    backends = Backends([first, second])
    one = backends.generate("m", GenerateInputs("1", text_input="x"))
    two = backends.generate("m", GenerateInputs("2", text_input="x"))
    await anext(one)
    await anext(two)
    assert len(first.calls) == 1 and len(second.calls) == 1
    assert backends.in_flight == [1, 1]
    await one.aclose()
    await two.aclose()
    assert backends.in_flight == [0, 0] and first.cancelled == 1 == second.cancelled
    assert await backends.list_models() == first.models
    assert isinstance((await backends.list_models())[0], ModelInfo)


def test_chat_template_kwargs_travel_as_a_json_tensor() -> None:
    from contract.tensors import decode_request

    inputs = GenerateInputs(
        "r3",
        messages=[{"role": "user", "content": "x"}],
        chat_template_kwargs={"enable_thinking": False},
    )
    tensors = {tensor.name(): tensor for tensor in infer_inputs(model_request(inputs))}
    sent = tensors["chat_template_kwargs"]._get_content()
    assert json.loads(sent[4:].decode()) == {"enable_thinking": False}
    assert "chat_template_kwargs" not in {
        t.name() for t in infer_inputs(model_request(GenerateInputs("r4", text_input="x")))
    }
    # What the model decodes from those tensors.
    arrays = {spec.name: array for spec, array in model_request(inputs).to_arrays()}
    assert decode_request(arrays.get).chat_template_kwargs == {"enable_thinking": False}


async def test_an_unreachable_triton_when_listing_models_is_a_503() -> None:
    client = TritonClient("127.0.0.1:1")

    class Down:
        async def get_model_repository_index(self, as_json: bool) -> dict[str, Any]:
            raise InferenceServerException(
                msg="failed to connect to all addresses", status="StatusCode.UNAVAILABLE"
            )

    client.client = Down()
    with pytest.raises(ServiceUnavailable, match="Triton is unreachable"):
        await client.list_models()
