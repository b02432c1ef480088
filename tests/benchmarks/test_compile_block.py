"""benchmarks/compile_block.py: the function it compiles is the engine's own MLP block."""

from __future__ import annotations

import torch

from benchmarks.compile_block import first_mlp_block, mlp_block


def test_the_compiled_function_computes_what_the_engine_computes() -> None:
    inputs, eager = first_mlp_block()
    with torch.inference_mode():
        out, stream = mlp_block(*inputs)
        expected_out, expected_stream = eager()
    assert torch.equal(stream, expected_stream)
    assert torch.equal(out, expected_out)  # the same ops in the same order: bit for bit
