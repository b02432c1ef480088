"""Does `torch.compile` of a decoder block pay on CPU? One token through the default model's
first layer's MLP block, eager against compiled, alternated in one process.

    .venv/bin/python -m benchmarks.compile_block [--calls 2000]

The block is what follows attention in a Llama layer: the residual add, RMSNorm (HF's
rounding), the fused gate/up matmul, SiLU(gate) * up and the down matmul, with the int4
weights the default package serves on torch's kernel (`_weight_int4pack_mm_for_cpu`, an
extern call for inductor; `quantized_cpu_kernel: torch`, as when this was measured). Eager is the engine's own code (`TorchOps.rms_norm`, `GatedMLP`); compiled is
the same arithmetic as one function under `torch.compile` (inductor, C++ on CPU, static
shapes). Prints the compile time and the microseconds per call of each, alternated `--runs` times.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from benchmarks.engine_offline import default_weights_dir
from engine.config import EngineConfig
from engine.model_runner import ModelRunner


def mlp_block(
    attended: torch.Tensor,  # [1, hidden]: the attention's output
    residual: torch.Tensor,  # [1, hidden]
    norm_weight: torch.Tensor,
    gate_up: torch.Tensor,  # int4-packed, with its scales and zeros
    gate_up_scales: torch.Tensor,
    down: torch.Tensor,
    down_scales: torch.Tensor,
    eps: float,
    group_size: int,
    intermediate: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    stream = attended + residual
    normed = norm_weight * F.rms_norm(stream, norm_weight.shape, None, eps)
    both = torch.ops.aten._weight_int4pack_mm_for_cpu(normed, gate_up, group_size, gate_up_scales)
    hidden = F.silu(both[:, :intermediate]) * both[:, intermediate : 2 * intermediate]
    return torch.ops.aten._weight_int4pack_mm_for_cpu(hidden, down, group_size, down_scales), stream


def per_call_us(call: Callable[[], object], calls: int) -> float:
    for _ in range(50):
        call()
    started = time.perf_counter()
    for _ in range(calls):
        call()
    return (time.perf_counter() - started) / calls * 1e6


def first_mlp_block() -> tuple[tuple, Callable[[], tuple[torch.Tensor, torch.Tensor]]]:
    """`mlp_block`'s arguments for the default model's first layer, one random token, and the
    engine's own eager code for the same block."""
    parameters = {"dtype": "bfloat16", "quantization": "gguf", "kv_num_blocks": "4",
                  "max_model_len": "64", "quantized_cpu_kernel": "torch"}  # fmt: skip
    runner = ModelRunner(EngineConfig.from_parameters(default_weights_dir(), parameters))
    layer, ops = runner.model.layers[0], runner.ops
    gate_up, down = layer.mlp.gate_up_proj.quantized, layer.mlp.down_proj.quantized
    if gate_up is None or down is None or gate_up.planes != 1 or down.planes != 1:
        raise RuntimeError("the first layer's MLP is not int4 in this package")
    hidden_size = layer.post_attention_norm_weight.shape[0]
    attended = torch.randn(1, hidden_size, dtype=torch.bfloat16)
    residual = torch.randn(1, hidden_size, dtype=torch.bfloat16)
    inputs = (attended, residual, layer.post_attention_norm_weight, gate_up.int4_weight,
              gate_up.int4_scales_and_zeros, down.int4_weight, down.int4_scales_and_zeros,
              layer.eps, gate_up.group_size, layer.mlp.intermediate_size)  # fmt: skip

    def eager() -> tuple[torch.Tensor, torch.Tensor]:
        normed, stream = ops.rms_norm(attended, layer.post_attention_norm_weight, layer.eps, residual)
        return layer.mlp(normed), stream

    return inputs, eager


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.compile_block", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--calls", type=int, default=3000)
    parser.add_argument("--runs", type=int, default=4, help="alternated eager/compiled pairs")
    args = parser.parse_args(argv)
    inputs, eager = first_mlp_block()
    with torch.inference_mode():
        started = time.perf_counter()
        compiled = torch.compile(mlp_block, dynamic=False)
        out = compiled(*inputs)
        compile_s = time.perf_counter() - started
        difference = (out[0].float() - eager()[0].float()).abs().max().item()
        print(f"compile {compile_s:.1f} s; largest difference from eager {difference:.3g} "
              f"(outputs up to {eager()[0].abs().max().item():.3g}, bf16)")  # fmt: skip
        print("| run | eager µs per call | compiled µs per call |")
        print("|---|---|---|")
        for run in range(1, args.runs + 1):
            eager_us = per_call_us(eager, args.calls)
            compiled_us = per_call_us(lambda: compiled(*inputs), args.calls)
            print(f"| {run} | {eager_us:.1f} | {compiled_us:.1f} |", flush=True)


if __name__ == "__main__":
    main()
