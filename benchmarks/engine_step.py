"""One engine step under the microscope: the time of a decode step at a batch size, and
where it goes (torch.profiler, by operator).

    .venv/bin/python -m benchmarks.engine_step --dtype bfloat16 --num-seqs 32 [--quantization none]
    .venv/bin/python -m benchmarks.engine_step --dtype bfloat16 --num-seqs 1 --compile-decode both
    .venv/bin/python -m benchmarks.engine_step --dtype bfloat16 --num-seqs 1 --quantized-cpu-kernel both

Prefills `--num-seqs` random 128-token prompts, then times `--steps` decode steps (all
sequences decoding, contexts of 129 and up) and profiles `--profile-steps` more. It also
prints the bytes of weights the engine holds, those a decode step reads (quantized where
the step's rows take the quantized copy) and the machine's measured memory read
bandwidth: the last two's quotient is the least time a step can take when it is bound by
memory.
The profile's summary line counts the ops of one step (torch's and our custom matmul) and
splits its self CPU time into the matmuls (the weights' share) and everything else
(per-op overhead, attention).
`--num-threads 1` gives steadier numbers on a machine shared with other work.
`--compile-decode both` times an eager and a compiled engine (engine/decode_graph.py) in
alternated rounds instead of profiling one; `--quantized-cpu-kernel both` likewise an engine
on torch's quantized kernels and one on ours (tritium_kernels/quant_matmul_cpu.py).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch.profiler import ProfilerActivity, profile

from benchmarks.engine_offline import default_weights_dir, synthetic_prompts
from engine.api import GenerationRequest
from engine.config import QUANTIZED_CPU_KERNELS, EngineConfig
from engine.llm_engine import LLMEngine, PreparedRequest
from engine.models.layers import Linear
from engine.sampling_params import SamplingParams


def weight_bytes(model: torch.nn.Module, rows: int) -> int:
    """Bytes of weights one step of `rows` tokens reads: a linear layer's quantized copy
    where it takes matmuls of that many rows, its dense weight otherwise, and every other
    parameter (a tied embedding counted once: the LM head multiplies by all of it, unless
    the head is quantized, when the embedding is only gathered a row per token)."""
    total, replaced = 0, set()
    for layer in model.modules():
        if isinstance(layer, Linear) and layer.takes_quantized(rows):
            assert layer.quantized is not None
            total += layer.quantized.nbytes()
            replaced.add(id(layer.weight))
    return total + sum(
        parameter.numel() * parameter.element_size()
        for parameter in model.parameters()
        if id(parameter) not in replaced
    )


def weights_held(model: torch.nn.Module) -> tuple[int, int]:
    """Bytes of weights the model holds (parameters, quantized copies) and, of the dense
    linear weights, those dropped (engine.weights.load_and_quantize)."""
    held = sum(p.numel() * p.element_size() for p in model.parameters() if not p.is_meta)
    dropped = sum(p.numel() * p.element_size() for p in model.parameters() if p.is_meta)
    linears = [layer for layer in model.modules() if isinstance(layer, Linear)]
    quantized = {id(layer.quantized): layer.quantized for layer in linears if layer.quantized}
    return held + sum(matmul.nbytes() for matmul in quantized.values()), dropped


def memory_read_gb_per_s(size_mib: int = 1024, repeats: int = 5) -> float:
    """Read bandwidth as a decode step sees it: torch sums a tensor far larger than the
    last-level cache with torch's threads (best of ``repeats``), so it streams from DRAM."""
    data = torch.ones(size_mib * 2**20 // 4, dtype=torch.float32)
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        data.sum()
        best = min(best, time.perf_counter() - started)
    return data.numel() * data.element_size() / best / 1e9


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16"])
    parser.add_argument("--quantization", default="auto", choices=["auto", "gguf", "none", "int4", "int8"],
                        help="the engine parameter (auto: the package's GGUF tensors)")  # fmt: skip
    parser.add_argument("--num-seqs", type=int, default=32)
    parser.add_argument("--input-len", type=int, default=128)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--profile-steps", type=int, default=10)
    parser.add_argument("--rows", type=int, default=12, help="operators listed")
    parser.add_argument("--num-threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--compile-decode", default="auto", choices=["auto", "on", "off", "both"],
                        help="the engine parameter; both: an eager and a compiled engine, their "
                        "decode steps timed in alternating rounds (--rounds), no profile")  # fmt: skip
    parser.add_argument("--quantized-cpu-kernel", default="auto", choices=[*QUANTIZED_CPU_KERNELS, "both"],
                        help="the engine parameter; both: an engine on torch's kernels and one on "
                        "ours, timed in alternating rounds (--rounds), no profile")  # fmt: skip
    parser.add_argument("--rounds", type=int, default=5, help="alternated rounds of --steps (both)")
    args = parser.parse_args(argv)
    if args.compile_decode == "both" and args.quantized_cpu_kernel == "both":
        parser.error("one of --compile-decode and --quantized-cpu-kernel can be both")
    if args.compile_decode == "both":
        compare(args, "compile_decode", {"off": "eager", "on": "compiled"})
        return
    if args.quantized_cpu_kernel == "both":
        compare(args, "quantized_cpu_kernel", {"torch": "torch's kernel", "ours": "our kernel"})
        return
    engine, prefill_s = prefilled_engine(args)
    times = timed_steps(engine, args.steps)

    dtype, layers = engine.runner.dtype, engine.runner.quantized_layers
    how = ", ".join(f"{count} {kind}" for kind, count in sorted(layers.items())) or "none"
    print(f"{args.num_seqs} sequences, {dtype}, quantized layers: {how}: prefill {prefill_s:.2f} s; decode step median "
          f"{statistics.median(times) * 1e3:.1f} ms, min {min(times) * 1e3:.1f} ms")  # fmt: skip
    weights, bandwidth = weight_bytes(engine.runner.model, args.num_seqs), memory_read_gb_per_s()
    print(f"weights read per decode step: {weights / 1e6:.0f} MB; memory read bandwidth "
          f"(sum of 1 GiB, {torch.get_num_threads()} threads): {bandwidth:.1f} GB/s; reading "
          f"the weights once takes at least {weights / bandwidth / 1e6:.1f} ms")  # fmt: skip
    with profile(activities=[ProfilerActivity.CPU]) as profiler:
        for _ in range(args.profile_steps):
            engine.step()
    averages = profiler.key_averages()
    steps = args.profile_steps
    # torch's ops and our custom ones (tritium_cpu::quant_mm: tritium_kernels/quant_matmul_cpu.py).
    ops = [event for event in averages if event.key.startswith(("aten::", "tritium_cpu::"))]
    # Self time, so nested ops count once; aten::mm (and the quantized matmuls) are the
    # weights' share, everything else the per-op overhead this profile is about.
    matmul_us = sum(e.self_cpu_time_total for e in ops if e.key in _MATMUL_OPS)
    all_us = sum(e.self_cpu_time_total for e in averages)
    print(f"per decode step (profiled): {sum(e.count for e in ops) / steps:.0f} ops "
          f"({sum(e.count for e in ops if e.key in _MATMUL_OPS) / steps:.0f} matmuls); "
          f"self CPU {all_us / steps / 1e3:.1f} ms, of it matmuls {matmul_us / steps / 1e3:.1f} ms, "
          f"the rest {(all_us - matmul_us) / steps / 1e3:.1f} ms")  # fmt: skip
    table = averages.table(sort_by="self_cpu_time_total", row_limit=args.rows)
    print(f"per {steps} decode steps:\n{table}")


def prefilled_engine(args: argparse.Namespace, **overrides: str) -> tuple[LLMEngine, float]:
    """An engine with `--num-seqs` prompts prefilled, each with room for every step the run
    times (and profiles); the prefill's seconds. `overrides`: engine parameters over the
    flags'."""
    parameters = {"max_num_seqs": str(args.num_seqs), "max_num_batched_tokens": "512",
                  "max_model_len": "2048", "kv_cache_memory_mb": "1024", "dtype": args.dtype,
                  "quantization": args.quantization, "num_threads": str(args.num_threads),
                  "compile_decode": args.compile_decode,
                  "quantized_cpu_kernel": args.quantized_cpu_kernel, **overrides}  # fmt: skip
    started = time.perf_counter()
    engine = LLMEngine(EngineConfig.from_parameters(default_weights_dir(), parameters))
    graph = engine.runner.decode_graph
    shown = ", ".join(f"{k}={parameters[k]}" for k in ("compile_decode", "quantized_cpu_kernel"))
    held, dropped = weights_held(engine.runner.model)
    print(f"{shown}: engine loaded in {time.perf_counter() - started:.1f} s"
          + (f", of it {graph.compile_seconds:.1f} s compiling" if graph is not None else "")
          + f"; weights held {held / 1e6:.0f} MB (dense linear weights dropped: {dropped / 1e6:.0f} MB)")  # fmt: skip
    decode_steps = args.steps * max(args.rounds, 1) + args.profile_steps + 1
    params = SamplingParams(temperature=0.0, max_tokens=decode_steps + 1, ignore_eos=True)
    for key, prompt in enumerate(synthetic_prompts(args.num_seqs, args.input_len, 49152)):
        request = GenerationRequest(params=params, prompt="")
        engine.add_request(key, PreparedRequest(request, prompt, "", decode_steps + 1))
    started = time.perf_counter()
    while any(
        seq.num_output_tokens == 0 for seq in engine.scheduler.running + list(engine.scheduler.waiting)
    ):
        engine.step()
    return engine, time.perf_counter() - started


def timed_steps(engine: LLMEngine, steps: int) -> list[float]:
    times = []
    for _ in range(steps):
        started = time.perf_counter()
        engine.step()
        times.append(time.perf_counter() - started)
    return times


def compare(args: argparse.Namespace, parameter: str, labels: dict[str, str]) -> None:
    """Two engines that differ in one parameter, side by side in one process, rounds
    alternated, so the machine's drift falls on both; prints each round's medians and
    their ratio (first / second)."""
    engines = {value: prefilled_engine(args, **{parameter: value})[0] for value in labels}
    (first, first_label), (second, second_label) = labels.items()
    print(f"{args.num_seqs} sequences, {engines[second].runner.dtype}, decode step median per round of {args.steps}:")
    print(f"| round | {first_label} ms | {second_label} ms | {first_label} / {second_label} |")
    print("|---|---|---|---|")
    medians: dict[str, list[float]] = {value: [] for value in labels}
    for round_ in range(1, args.rounds + 1):
        for value, engine in engines.items():
            medians[value].append(statistics.median(timed_steps(engine, args.steps)) * 1e3)
        a, b = medians[first][-1], medians[second][-1]
        print(f"| {round_} | {a:.1f} | {b:.1f} | {a / b:.2f}x |", flush=True)
    a, b = statistics.median(medians[first]), statistics.median(medians[second])
    print(f"| median | {a:.1f} | {b:.1f} | {a / b:.2f}x |")
    for value, engine in engines.items():
        graph = engine.runner.decode_graph
        if graph is not None:
            print(f"{labels[value]}: compiled graph {graph.steps} steps, {graph.misses} run eagerly")


# Operators that multiply by the weights: what a decode step must spend.
_MATMUL_OPS = {"aten::mm", "aten::addmm", "aten::bmm", "aten::_weight_int4pack_mm_for_cpu",
               "aten::_weight_int8pack_mm", "aten::_weight_int4pack_mm", "tritium_cpu::quant_mm"}  # fmt: skip


if __name__ == "__main__":
    main()
