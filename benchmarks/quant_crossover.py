"""Where quantized weights stop paying on this CPU: the default model's linear layers, dense
bf16 against their quantized copies under both CPU kernels, at each number of rows a step can
have.

    .venv/bin/python -m benchmarks.quant_crossover [--rows 1 2 4 8 16 32 64 512] [--repeats 20]

Builds the engine's runner on the default package (`quantization: gguf`, bf16) twice, once
per `quantized_cpu_kernel` (ours, tritium_kernels/quant_matmul_cpu.py, and torch's), and times, per
row count, one step's worth of matmuls: every `Linear` of the model (30 layers' qkv, o,
gate_up and down, and the LM head) with its dense weight (`F.linear`, oneDNN) and with its
quantized one (`QuantizedMatmul`: Q4_1 and the Q8_0 head; torch's kernel runs the head as
two int4 planes). The layers' weights are distinct tensors, so they stream from memory as
in a decode step. Medians over `--repeats`. `engine.quantization.DEFAULT_MAX_ROWS` (torch's
kernel) and `OURS_MAX_ROWS` are set from where the quantized columns stop winning.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from engine.config import EngineConfig
from engine.model_runner import ModelRunner
from engine.models.layers import Linear


def _median_ms(call, repeats: int) -> float:  # noqa: ANN001
    call()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1e3


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32, 64, 512])
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args(argv)

    from benchmarks.engine_offline import default_weights_dir

    parameters = {"dtype": "bfloat16", "quantization": "gguf", "kv_num_blocks": "4", "max_model_len": "64"}
    runners = {
        kernel: ModelRunner(
            EngineConfig.from_parameters(default_weights_dir(), {**parameters, "quantized_cpu_kernel": kernel})
        )
        for kernel in ("ours", "torch")
    }
    split = {kernel: _layers(runner) for kernel, runner in runners.items()}
    body, head = split["ours"]
    print(f"{len(body)} quantized layers and the LM head; torch threads {torch.get_num_threads()}")
    print("| rows | layers dense ms | layers ours ms | layers torch's ms "
          "| LM head dense ms | LM head ours ms | LM head torch's ms |")  # fmt: skip
    print("|---|---|---|---|---|---|---|")
    with torch.inference_mode():
        for rows in args.rows:
            inputs = {i: torch.randn(rows, layer.weight.shape[1], dtype=torch.bfloat16) for i, layer in enumerate(body)}
            head_input = {0: torch.randn(rows, head.weight.shape[1], dtype=torch.bfloat16)}
            cells = []
            for part, x in ((0, inputs), (1, head_input)):
                groups = [split["ours"][part], split["ours"][part], split["torch"][part]]
                for run, group in zip((_dense, _quantized, _quantized), groups, strict=True):
                    layers = group if part == 0 else [group]
                    cells.append(_median_ms(lambda f=run, g=layers, x=x: f(g, x), args.repeats))
            print(f"| {rows} | " + " | ".join(f"{c:.2f}" for c in cells) + " |", flush=True)


def _layers(runner: ModelRunner) -> tuple[list[Linear], Linear]:
    layers = [m for m in runner.model.modules() if isinstance(m, Linear) and m.quantized is not None]
    head = runner.model.lm_head
    return [layer for layer in layers if layer is not head], head


def _dense(group: list[Linear], inputs: dict[int, torch.Tensor]) -> None:
    for i, layer in enumerate(group):
        F.linear(inputs[i], layer.weight)


def _quantized(group: list[Linear], inputs: dict[int, torch.Tensor]) -> None:
    for i, layer in enumerate(group):
        layer.quantized(inputs[i])  # type: ignore[misc]

if __name__ == "__main__":
    main()
