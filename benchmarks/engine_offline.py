"""Offline engine benchmark: the engine alone (no Triton, no HTTP) against Hugging Face.

    .venv/bin/python -m benchmarks.engine_offline --output benchmarks/results/engine_offline

64 requests of 128 random prompt tokens each generate 128 tokens (ignore_eos, greedy) on
the default model, with max_num_seqs 1, 8, 32 and 64, side by side in one run with
transformers `generate` one request at a time and in left-padded batches, in each dtype
(`--dtype`, float32 and bfloat16 by default: every system of a table runs in the same
one). The machine's fp32 and bf16 matmul ceilings are measured in the same run, and the
engine's achieved FLOP rate is reported as a share of the ceiling of its dtype.
Single-stream rates (HF sequential, max_num_seqs 1) are per request, so they run on the
first `--sequential-requests` prompts only.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from engine.api import GenerationRequest
from engine.config import EngineConfig
from engine.llm_engine import LLMEngine, PreparedRequest
from engine.sampling_params import SamplingParams

DEFAULT_MAX_NUM_SEQS = (1, 8, 32, 64)
DEFAULT_DTYPES = ("float32", "bfloat16")
BAR_MAX_NUM_SEQS = 32
_TORCH_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


@dataclass(frozen=True)
class Result:
    system: str  # what ran: "tritium max_num_seqs=32", "hf sequential", ...
    dtype: str  # "float32" or "bfloat16": weights and activations
    num_requests: int
    output_tokens: int
    seconds: float

    @property
    def output_tokens_per_s(self) -> float:
        return self.output_tokens / self.seconds


def synthetic_prompts(num_requests: int, input_len: int, vocab_size: int, seed: int = 0) -> list[list[int]]:
    """Random token ids (never special tokens at the low end of the vocabulary), reproducible."""
    rng = random.Random(seed)
    return [[rng.randrange(1000, vocab_size) for _ in range(input_len)] for _ in range(num_requests)]


def run_engine(
    weights_dir: Path,
    prompts: list[list[int]],
    output_len: int,
    max_num_seqs: int,
    dtype: str = "float32",
    warmup: list[list[int]] | None = None,
) -> Result:
    """`warmup` prompts run first, unmeasured (default: one short prompt, for first-call
    allocations); a whole wave of other prompts also warms oneDNN's kernels for every
    batch shape, which the first wave otherwise pays for."""
    parameters = {
        "max_num_seqs": str(max_num_seqs),
        "max_num_batched_tokens": str(max(512, max_num_seqs)),
        "max_model_len": "2048",
        "kv_cache_memory_mb": "1024",
        "dtype": dtype,
    }
    engine = LLMEngine(EngineConfig.from_parameters(weights_dir, parameters))
    params = SamplingParams(temperature=0.0, max_tokens=output_len, ignore_eos=True)
    _generate(engine, warmup or [prompts[0][:16]], params)
    start = time.perf_counter()
    output_tokens = _generate(engine, prompts, params)
    return Result(f"tritium max_num_seqs={max_num_seqs}", dtype, len(prompts), output_tokens,
                  time.perf_counter() - start)


def _generate(engine: LLMEngine, prompts: list[list[int]], params: SamplingParams) -> int:
    for key, prompt in enumerate(prompts):
        request = GenerationRequest(params=params, prompt="")
        engine.add_request(key, PreparedRequest(request, prompt, "", params.max_tokens or 1))
    output_tokens = 0
    while engine.has_unfinished():
        for _, output in engine.step():
            if output.finished:
                output_tokens += sum(choice.num_output_tokens for choice in output.choices)
    return output_tokens


def run_hf(
    weights_dir: Path,
    prompts: list[list[int]],
    output_len: int,
    batch_size: int,
    dtype: str = "float32",
) -> Result:
    """transformers generate, greedy, exactly output_len tokens, left-padded batches."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(weights_dir, dtype=_TORCH_DTYPES[dtype]).eval()
    pad = model.config.eos_token_id

    def generate(batch: list[list[int]]) -> int:
        width = max(len(p) for p in batch)
        ids = torch.tensor([[pad] * (width - len(p)) + p for p in batch])
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in batch])
        out = model.generate(
            ids, attention_mask=mask, max_new_tokens=output_len, min_new_tokens=output_len,
            do_sample=False, pad_token_id=pad,
        )
        return (out.shape[1] - width) * len(batch)

    with torch.inference_mode():
        generate([prompts[0][:16]])  # warm-up
        start = time.perf_counter()
        output_tokens = sum(
            generate(prompts[i : i + batch_size]) for i in range(0, len(prompts), batch_size)
        )
    name = "hf sequential" if batch_size == 1 else f"hf batched (batch {batch_size})"
    return Result(name, dtype, len(prompts), output_tokens, time.perf_counter() - start)


def matmul_ceiling(dtype: torch.dtype, size: int = 2048, repeats: int = 5) -> float:
    """Sustained GFLOP/s of a square matmul: the machine's practical ceiling for this dtype."""
    a = torch.randn(size, size, dtype=dtype)
    b = torch.randn(size, size, dtype=dtype)
    torch.matmul(a, b)
    start = time.perf_counter()
    for _ in range(repeats):
        torch.matmul(a, b)
    return 2 * size**3 * repeats / (time.perf_counter() - start) / 1e9


@dataclass(frozen=True)
class MatmulFlops:
    """Matmul FLOPs of the model (2 per weight): one token through the decoder layers,
    and one row of logits (lm_head)."""

    per_layer_token: float
    per_logits_row: float

    @classmethod
    def of(cls, weights_dir: Path) -> MatmulFlops:
        config = json.loads((weights_dir / "config.json").read_text())
        hidden, inter = config["hidden_size"], config["intermediate_size"]
        heads, kv_heads = config["num_attention_heads"], config["num_key_value_heads"]
        head_dim = config.get("head_dim") or hidden // heads
        attention = hidden * head_dim * (heads + 2 * kv_heads) + heads * head_dim * hidden
        mlp = 3 * hidden * inter
        layers = config["num_hidden_layers"] * (attention + mlp)
        return cls(2.0 * layers, 2.0 * hidden * config["vocab_size"])

    def of_request(self, input_len: int, output_len: int) -> float:
        # Every prompt token and every output token but the last go through the layers;
        # each output token costs one row of logits.
        return (input_len + output_len - 1) * self.per_layer_token + output_len * self.per_logits_row


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--weights-dir", type=Path, default=None,
                        help="a packaged model's weights/ (default: the default model, packaged on demand)")
    parser.add_argument("--num-requests", type=int, default=64)
    parser.add_argument("--input-len", type=int, default=128)
    parser.add_argument("--output-len", type=int, default=128)
    parser.add_argument("--max-num-seqs", type=int, nargs="+", default=list(DEFAULT_MAX_NUM_SEQS))
    parser.add_argument("--dtype", nargs="+", choices=sorted(_TORCH_DTYPES), default=list(DEFAULT_DTYPES),
                        help="run the whole table once per dtype (every system in that dtype)")
    parser.add_argument("--sequential-requests", type=int, default=8,
                        help="requests for the single-stream rows, HF sequential and max_num_seqs=1 "
                        "(their rate is per request)")
    parser.add_argument("--hf-batch-size", type=int, default=32)
    parser.add_argument("--output", type=Path, default=None, help="write <output>.json and <output>.md")
    args = parser.parse_args(argv)

    weights_dir = args.weights_dir or default_weights_dir()
    vocab_size = json.loads((weights_dir / "config.json").read_text())["vocab_size"]
    prompts = synthetic_prompts(args.num_requests, args.input_len, vocab_size)
    sequential = prompts[: args.sequential_requests]
    ceilings = {name: matmul_ceiling(dtype) for name, dtype in _TORCH_DTYPES.items()}
    print(f"matmul ceilings (GFLOP/s): {ceilings}", flush=True)
    results: list[Result] = []
    for dtype in args.dtype:
        results.append(run_hf(weights_dir, sequential, args.output_len, 1, dtype))
        print(_row(results[-1], results[-1]), flush=True)
        results.append(run_hf(weights_dir, prompts, args.output_len, args.hf_batch_size, dtype))
        print(_row(results[-1], results[-2]), flush=True)
        for max_num_seqs in args.max_num_seqs:
            batch = sequential if max_num_seqs == 1 else prompts
            results.append(run_engine(weights_dir, batch, args.output_len, max_num_seqs, dtype))
            print(_row(results[-1], _hf(results, dtype, sequential=True)), flush=True)
    report = _report(args, results, ceilings, MatmulFlops.of(weights_dir))
    print(report)
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        payload = {"machine": _machine(), "load_average": os.getloadavg(), "ceilings_gflops": ceilings,
                   "results": [dict(asdict(r), output_tokens_per_s=r.output_tokens_per_s) for r in results]}
        args.output.with_suffix(".json").write_text(json.dumps(payload, indent=1))
        args.output.with_suffix(".md").write_text(report)


def default_weights_dir() -> Path:
    """The default model's weights/, packaged into .cache/models on first use (reused after);
    every benchmark that runs the default model takes it from here."""
    from engine.package import package_model

    cache = Path(__file__).resolve().parents[1] / ".cache" / "models"
    return package_model("default", "smollm2-135m-instruct", cache, progress=False) / "weights"


def _hf(results: list[Result], dtype: str, sequential: bool) -> Result:
    name = "hf sequential" if sequential else "hf batched"
    return next(r for r in results if r.dtype == dtype and r.system.startswith(name))


def _row(result: Result, sequential: Result) -> str:
    return (f"| {result.system} | {result.dtype} | {result.num_requests} | {result.output_tokens} | "
            f"{result.seconds:.1f} | {result.output_tokens_per_s:.1f} | "
            f"{result.output_tokens_per_s / sequential.output_tokens_per_s:.1f}x |")


def _report(args: argparse.Namespace, results: list[Result], ceilings: dict[str, float],
            flops: MatmulFlops) -> str:
    lines = [
        f"Machine: {_machine()}; load average at the end {os.getloadavg()[0]:.2f}",
        f"Workload: {args.num_requests} requests, {args.input_len} prompt / {args.output_len} output "
        f"tokens, greedy, ignore_eos; single-stream rows on {args.sequential_requests} requests",
        f"Matmul ceiling (2048^3): fp32 {ceilings['float32']:.0f} GFLOP/s, "
        f"bf16 {ceilings['bfloat16']:.0f} GFLOP/s",
        "",
        "| system | dtype | requests | output tokens | seconds | output tok/s | vs HF sequential (same dtype) |",
        "|---|---|---|---|---|---|---|",
        *(_row(r, _hf(results, r.dtype, sequential=True)) for r in results),
        "",
        "Engine share of its dtype's matmul ceiling (prefill + decode + logits FLOPs / time):",
    ]
    request_flops = flops.of_request(args.input_len, args.output_len)
    for result in results:
        if result.system.startswith("tritium"):
            share = result.num_requests * request_flops / result.seconds / 1e9 / ceilings[result.dtype]
            lines.append(f"- {result.system}, {result.dtype}: {share:.0%}")
    lines += ["", f"Bars (max_num_seqs={BAR_MAX_NUM_SEQS}, against HF in the same dtype):"]
    for dtype in args.dtype:
        lines.extend(_bars(results, dtype))
    return "\n".join(lines) + "\n"


def _bars(results: list[Result], dtype: str) -> list[str]:
    rate = {r.system: r.output_tokens_per_s for r in results if r.dtype == dtype}
    sequential = _hf(results, dtype, sequential=True).output_tokens_per_s
    batched = _hf(results, dtype, sequential=False).output_tokens_per_s
    lines = []
    at_bar = rate.get(f"tritium max_num_seqs={BAR_MAX_NUM_SEQS}")
    if at_bar is not None:
        lines.append(f"- {dtype}: {at_bar / sequential:.1f}x HF sequential (bar 10x: "
                     f"{'met' if at_bar >= 10 * sequential else 'missed'}), {at_bar / batched:.2f}x "
                     f"HF batched (bar 1.5x: {'met' if at_bar >= 1.5 * batched else 'missed'})")
    single = rate.get("tritium max_num_seqs=1")
    if single is not None:
        lines.append(f"- {dtype}: single stream {single:.1f} vs HF sequential {sequential:.1f} tok/s "
                     f"({'met' if single >= sequential else 'missed'}: not slower)")
    return lines


def _machine() -> str:
    return f"{os.cpu_count()} CPU cores, torch {torch.__version__}, {torch.get_num_threads()} threads"


if __name__ == "__main__":
    main()
