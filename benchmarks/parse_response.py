"""The adapter's per-response parse against tritonclient's `as_numpy`, on one typical
streamed response of the contract (one choice, one token of text, counts).

    .venv/bin/python -m benchmarks.parse_response
"""

from __future__ import annotations

import time

import numpy as np
from tritonclient.grpc import InferResult, service_pb2
from tritonclient.utils import np_to_triton_dtype, serialize_byte_tensor

from adapter.triton_call import read_response

OUTPUTS = {
    "text_output": np.array([b" null"], dtype=np.object_),
    "index": np.array([0], dtype=np.int32),
    "num_input_tokens": np.array([16], dtype=np.int32),
    "finish_reason": np.array([b""], dtype=np.object_),
    "num_output_tokens": np.array([5], dtype=np.int32),
}


def typical_response() -> InferResult:
    response = service_pb2.ModelInferResponse(model_name="m", id="r")
    for name, array in OUTPUTS.items():
        tensor = response.outputs.add()
        tensor.name, tensor.datatype = name, np_to_triton_dtype(array.dtype)
        tensor.shape.extend(array.shape)
        is_bytes = array.dtype == np.object_
        response.raw_output_contents.append(
            serialize_byte_tensor(array).item() if is_bytes else array.tobytes()
        )
    return InferResult(response)


def microseconds(work: object, result: InferResult, repeats: int) -> float:
    started = time.perf_counter()
    for _ in range(repeats):
        work(result)  # type: ignore[operator]
    return (time.perf_counter() - started) / repeats * 1e6


def main(repeats: int = 20_000) -> None:
    result = typical_response()

    def with_as_numpy(result: InferResult) -> None:  # tritonclient's own way
        for name in (*OUTPUTS, "logprobs"):
            result.as_numpy(name)

    print(f"read_response: {microseconds(read_response, result, repeats):.1f} us per response")
    print(f"as_numpy of each output alone: {microseconds(with_as_numpy, result, repeats):.1f} us")


if __name__ == "__main__":
    main()
