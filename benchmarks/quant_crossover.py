"""Where quantized weights stop paying on this CPU: the default model's linear layers, dense
bf16 against their quantized copies, at each number of rows a step can have.

    .venv/bin/python -m benchmarks.quant_crossover [--rows 1 2 4 8 16 32] [--repeats 20]

Builds the engine's runner on the default package (`quantization: gguf`, bf16) and times,
per row count, one step's worth of matmuls: every `Linear` of the model (30 layers' qkv,
o, gate_up and down, and the LM head) with its dense weight (`F.linear`, oneDNN) and with
its quantized one (`QuantizedMatmul`: torch's int4 kernel for Q4_1, two int4 planes for the
Q8_0 head). The layers' weights are distinct tensors, so they stream from memory as in a
decode step. Medians over `--repeats`. `engine.quantization.DEFAULT_MAX_ROWS` is set from
where the quantized column stops winning.
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
    parser.add_argument("--rows", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32])
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args(argv)

    from benchmarks.engine_offline import default_weights_dir

    parameters = {"dtype": "bfloat16", "quantization": "gguf", "kv_num_blocks": "4", "max_model_len": "64"}
    runner = ModelRunner(EngineConfig.from_parameters(default_weights_dir(), parameters))
    layers = [m for m in runner.model.modules() if isinstance(m, Linear) and m.quantized is not None]
    head = runner.model.lm_head
    body = [layer for layer in layers if layer is not head]
    print(f"{len(body)} quantized layers and the LM head; torch threads {torch.get_num_threads()}")
    print("| rows | layers dense ms | layers quantized ms | LM head dense ms | LM head quantized ms |")
    print("|---|---|---|---|---|")
    with torch.inference_mode():
        for rows in args.rows:
            inputs = {id(layer): torch.randn(rows, layer.weight.shape[1], dtype=torch.bfloat16) for layer in layers}
            cells = [_median_ms(lambda f=f, g=g, x=inputs: f(g, x), args.repeats)
                     for g in (body, [head]) for f in (_dense, _quantized)]  # fmt: skip
            print(f"| {rows} | " + " | ".join(f"{c:.2f}" for c in cells) + " |", flush=True)


def _dense(group: list[Linear], inputs: dict[int, torch.Tensor]) -> None:
    for layer in group:
        F.linear(inputs[id(layer)], layer.weight)


def _quantized(group: list[Linear], inputs: dict[int, torch.Tensor]) -> None:
    for layer in group:
        layer.quantized(inputs[id(layer)])  # type: ignore[misc]

if __name__ == "__main__":
    main()
