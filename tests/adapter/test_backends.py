"""Several Triton endpoints: least-outstanding routing among the healthy ones that serve
the model, failover before the first response, the model union."""

from __future__ import annotations

import numpy as np
import pytest

from adapter.backends import Backends
from adapter.contract import GenerateInputs, ModelInfo
from adapter.errors import ServiceUnavailable
from adapter.triton_call import infer_inputs
from adapter.triton_client import model_request
from tests.adapter.fake_triton import HANG, FakeTriton, choice, out

pytestmark = pytest.mark.anyio


def hanging(models: list[ModelInfo]) -> FakeTriton:
    fake = FakeTriton(models=models)
    fake.respond = lambda inputs: [out(choice(0, "a")), HANG]
    return fake


def inputs(request_id: str) -> GenerateInputs:
    return GenerateInputs(request_id, text_input="x")


async def test_models_are_the_union_with_the_shortest_context() -> None:
    first = FakeTriton(models=[ModelInfo("a", max_model_len=4096), ModelInfo("b")])
    second = FakeTriton(models=[ModelInfo("a", max_model_len=2048), ModelInfo("c", 512)])
    backends = Backends([first, second])
    models = {model.id: model for model in await backends.list_models()}
    assert sorted(models) == ["a", "b", "c"]
    assert models["a"].max_model_len == 2048 and models["c"].max_model_len == 512


async def test_a_failing_endpoint_is_left_out_of_the_union() -> None:
    down = FakeTriton(list_error=ServiceUnavailable("Triton is unreachable"))
    backends = Backends([down, FakeTriton(models=[ModelInfo("a")])], ["down:1", "up:2"])
    assert [model.id for model in await backends.list_models()] == ["a"]
    assert [stats.healthy for stats in backends.endpoint_stats()] == [False, True]
    with pytest.raises(ServiceUnavailable):
        await Backends([down]).list_models()


async def test_least_outstanding_among_those_serving_the_model() -> None:
    serves_a, serves_both = hanging([ModelInfo("a")]), hanging([ModelInfo("a"), ModelInfo("b")])
    backends = Backends([serves_a, serves_both])
    await backends.list_models()
    streams = [backends.generate("b", inputs("b1")), backends.generate("a", inputs("a1"))]
    streams.append(backends.generate("a", inputs("a2")))
    for stream in streams:
        await anext(stream)
    # b can only go to the second; then a goes to the idle first; then a tie goes first.
    assert [model for model, _ in serves_a.calls] == ["a", "a"]
    assert [model for model, _ in serves_both.calls] == ["b"]
    assert backends.in_flight == [2, 1]
    for stream in streams:
        await stream.aclose()
    assert backends.in_flight == [0, 0]
    assert [stats.requests for stats in backends.endpoint_stats()] == [2, 1]


async def test_unavailable_endpoint_fails_over_before_the_first_response() -> None:
    down = FakeTriton()
    down.respond = lambda inputs: [ServiceUnavailable("Triton is unreachable")]
    up = FakeTriton()
    backends = Backends([down, up])
    outputs = [output async for output in backends.generate("tiny-chat", inputs("r"))]
    assert outputs and len(down.calls) == 1 and len(up.calls) == 1
    assert backends.healthy == [False, True]
    # The next request goes straight to the healthy one.
    [output async for output in backends.generate("tiny-chat", inputs("s"))]
    assert len(down.calls) == 1 and len(up.calls) == 2


async def test_unavailable_everywhere_is_a_503() -> None:
    downs = [FakeTriton(), FakeTriton()]
    for fake in downs:
        fake.respond = lambda inputs: [ServiceUnavailable("Triton is unreachable")]
    with pytest.raises(ServiceUnavailable):
        [output async for output in Backends(downs).generate("m", inputs("r"))]
    assert all(len(fake.calls) == 1 for fake in downs)


def test_token_ids_are_an_int64_tensor_and_echo_is_asked_of_the_model() -> None:
    request = GenerateInputs("r", input_ids=[5, 7, 11], include_input=True)
    tensors = {tensor.name(): tensor for tensor in infer_inputs(model_request(request))}
    assert "text_input" not in tensors and "messages" not in tensors
    assert tensors["input_ids"].datatype() == "INT64" and tensors["input_ids"].shape() == [3]
    sent = np.frombuffer(tensors["input_ids"]._get_content(), dtype=np.int64)
    assert sent.tolist() == [5, 7, 11]
    echo_asked = np.frombuffer(tensors["exclude_input_in_output"]._get_content(), dtype=np.bool_)
    assert echo_asked.tolist() == [False]
