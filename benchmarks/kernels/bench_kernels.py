"""Kernel microbenchmarks on one CUDA GPU, against the card's measured ceilings.

    .venv/bin/python benchmarks/kernels/bench_kernels.py [--only decode,prefill,sampling,quant_matmul]
                     [--out benchmarks/results] [--quick]

- copy: device-to-device copy of 1 GiB, (read + write bytes) / time: the bandwidth bar.
- decode: paged split-KV decode, Llama-3-8B heads (32 q / 8 KV, head_dim 128, bf16,
  block 16); GB/s = K + V bytes read / time, for batch 1-256 x context 128-8k.
  Bar: >= 70% of copy bandwidth at batch >= 32 and context >= 1k.
- prefill: causal paged prefill, same heads; TFLOP/s (causal FLOPs only) against
  torch SDPA (is_causal, enable_gqa) on contiguous K/V. Bar: >= SDPA.
- sampling: fused sampler vs the sort-based torch path (`tritium_kernels.sampling.sample_ref`)
  at vocab 49,152 and 128,256, batch 1-256, T 0.8 + top-k 50 + top-p 0.9. Bar: >= 3x
  at batch 256.
- quant_matmul: weight-only int4 / int8 GEMM (group 32, bf16 scales and zeros, bf16
  activations) at the linear layers of Qwen2.5-0.5B, Llama-3.2-3B and Llama-3-8B
  (qkv, o, gate_up, down) for M = 1, 8, 32 tokens; GB/s = bytes read (quantized weight +
  scales + zeros + x) and written (out) / time, against torch's bf16 matmul of the
  dequantized weight. Bar at M = 1: >= 2x the bf16 matmul's speed for int4, >= 1.3x
  for int8 (they read ~3.5x and ~1.9x fewer bytes).
Timings are triton.testing.do_bench medians (ms). Prints a Markdown table per part and
writes them, with the GPU name, to <out>/kernels-<gpu>.md and .json.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable
from pathlib import Path

import torch
import triton

from tritium_kernels.attention import paged_attention
from tritium_kernels.quant_matmul import dequantize_ref, pack_int4, quant_matmul
from tritium_kernels.sampling import sample, sample_ref

NUM_HEADS, NUM_KV_HEADS, HEAD_DIM, BLOCK_SIZE = 32, 8, 128, 16
DTYPE = torch.bfloat16


def bench(fn: Callable[[], object]) -> float:
    """Median milliseconds."""
    return float(triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median"))


def copy_bandwidth_gbs() -> float:
    source = torch.empty(1 << 30, dtype=torch.uint8, device="cuda")
    target = torch.empty_like(source)
    return 2 * source.numel() / (bench(lambda: target.copy_(source)) * 1e-3) / 1e9


def paged_inputs(query_lens: list[int], seq_lens: list[int]) -> dict[str, object]:
    blocks_per_seq = [triton.cdiv(n, BLOCK_SIZE) for n in seq_lens]
    num_blocks = sum(blocks_per_seq)
    key_cache = torch.randn(num_blocks, BLOCK_SIZE, NUM_KV_HEADS, HEAD_DIM, device="cuda", dtype=DTYPE)
    tables = torch.zeros(len(seq_lens), max(blocks_per_seq), dtype=torch.int32)
    order, used = torch.randperm(num_blocks), 0  # scattered blocks, as after hours of serving
    for seq, count in enumerate(blocks_per_seq):
        tables[seq, :count] = order[used : used + count]
        used += count
    starts = torch.tensor([0, *torch.tensor(query_lens).cumsum(0).tolist()], dtype=torch.int32)
    return dict(
        query=torch.randn(sum(query_lens), NUM_HEADS, HEAD_DIM, device="cuda", dtype=DTYPE),
        key_cache=key_cache, value_cache=torch.randn_like(key_cache),
        query_start_loc=starts.cuda(), seq_lens=torch.tensor(seq_lens, dtype=torch.int32, device="cuda"),
        block_tables=tables.cuda(), max_query_len=max(query_lens), max_seq_len=max(seq_lens),
        scale=HEAD_DIM**-0.5,
    )  # fmt: skip


def bench_decode(copy_gbs: float, quick: bool) -> list[dict[str, object]]:
    rows = []
    for batch in [1, 8, 32, 64, 128, 256] if not quick else [1, 32, 256]:
        for context in [128, 512, 1024, 2048, 4096, 8192] if not quick else [128, 1024, 8192]:
            inputs = paged_inputs([1] * batch, [context] * batch)
            ms = bench(lambda inputs=inputs: paged_attention(**inputs))
            kv_bytes = 2 * batch * context * NUM_KV_HEADS * HEAD_DIM * DTYPE.itemsize
            gbs = kv_bytes / (ms * 1e-3) / 1e9
            bar = batch >= 32 and context >= 1024
            rows.append(dict(batch=batch, context=context, ms=round(ms, 4), gbs=round(gbs, 1),
                             of_copy=f"{gbs / copy_gbs:.0%}",
                             bar="pass" if gbs >= 0.7 * copy_gbs else "FAIL") if bar else
                        dict(batch=batch, context=context, ms=round(ms, 4), gbs=round(gbs, 1),
                             of_copy=f"{gbs / copy_gbs:.0%}", bar="-"))  # fmt: skip
            del inputs
    return rows


def bench_prefill(quick: bool) -> list[dict[str, object]]:
    rows = []
    for seq_len, batch in [(512, 16), (1024, 8), (2048, 4), (4096, 2), (8192, 1)][: 3 if quick else 5]:
        inputs = paged_inputs([seq_len] * batch, [seq_len] * batch)
        ours = bench(lambda inputs=inputs: paged_attention(**inputs, has_decodes=False))
        query = torch.randn(batch, NUM_HEADS, seq_len, HEAD_DIM, device="cuda", dtype=DTYPE)
        key = torch.randn(batch, NUM_KV_HEADS, seq_len, HEAD_DIM, device="cuda", dtype=DTYPE)
        value = torch.randn_like(key)
        sdpa = bench(lambda q=query, k=key, v=value: torch.nn.functional.scaled_dot_product_attention(
            q, k, v, is_causal=True, enable_gqa=True))  # fmt: skip
        flops = 4 * batch * NUM_HEADS * HEAD_DIM * seq_len * seq_len / 2  # causal half
        rows.append(dict(seq_len=seq_len, batch=batch, ours_tflops=round(flops / ours / 1e9, 1),
                         sdpa_tflops=round(flops / sdpa / 1e9, 1), ratio=round(sdpa / ours, 2),
                         bar="pass" if ours <= sdpa else "FAIL"))  # fmt: skip
        del inputs, query, key, value
    return rows


def bench_sampling(quick: bool) -> list[dict[str, object]]:
    rows = []
    for vocab_size in (49152, 128256):
        for batch in [1, 8, 32, 64, 128, 256] if not quick else [1, 256]:
            logits = torch.randn(batch, vocab_size, device="cuda") * 3
            params = (
                torch.full((batch,), 0.8, device="cuda"),
                torch.full((batch,), 50, dtype=torch.int32, device="cuda"),
                torch.full((batch,), 0.9, device="cuda"),
                torch.zeros(batch, device="cuda"),
            )
            seeds = torch.arange(batch, device="cuda")
            fused = bench(lambda x=logits, p=params, s=seeds: sample(x, *p, s, s))
            sorted_path = bench(lambda x=logits, p=params: sample_ref(x, *p))
            speedup = sorted_path / fused
            rows.append(dict(vocab=vocab_size, batch=batch, fused_us=round(fused * 1e3, 1),
                             sort_us=round(sorted_path * 1e3, 1), speedup=round(speedup, 2),
                             bar=("pass" if speedup >= 3 else "FAIL") if batch == 256 else "-"))  # fmt: skip
    return rows


# (model, hidden, intermediate, q + k + v width): the shapes of each decoder layer's linears.
QUANT_MODELS = [("qwen2.5-0.5b", 896, 4864, 1152), ("llama-3.2-3b", 3072, 8192, 5120),
                ("llama-3-8b", 4096, 14336, 6144)]  # fmt: skip
QUANT_GROUP_SIZE = 32


def quantized_weight(bits: int, num_cols: int, in_features: int) -> dict[str, object]:
    groups = in_features // QUANT_GROUP_SIZE
    scales = torch.rand(num_cols, groups, device="cuda", dtype=DTYPE) / in_features
    if bits == 4:
        q = torch.randint(0, 16, (num_cols, in_features), dtype=torch.uint8, device="cuda")
        return dict(qweight=pack_int4(q), scales=scales, zeros=-8 * scales, bits=4,
                    group_size=QUANT_GROUP_SIZE)  # fmt: skip
    q = torch.randint(-128, 128, (num_cols, in_features), dtype=torch.int8, device="cuda")
    return dict(qweight=q, scales=scales, zeros=None, bits=8, group_size=QUANT_GROUP_SIZE)


def bench_quant_matmul(copy_gbs: float, quick: bool) -> list[dict[str, object]]:
    rows = []
    models = QUANT_MODELS[::2] if quick else QUANT_MODELS
    for model, hidden, intermediate, qkv in models:
        layers = [("qkv", qkv, hidden), ("o", hidden, hidden), ("gate_up", 2 * intermediate, hidden),
                  ("down", hidden, intermediate)]  # fmt: skip
        for layer, num_cols, in_features in layers[2:] if quick else layers:
            for bits in (4, 8):
                weight = quantized_weight(bits, num_cols, in_features)
                dense = dequantize_ref(**weight).to(DTYPE)  # [N, K] bf16
                param_bytes = sum(t.numel() * t.element_size() for t in
                                  (weight["qweight"], weight["scales"], weight["zeros"]) if t is not None)  # fmt: skip
                for num_rows in (1, 8, 32):
                    x = torch.randn(num_rows, in_features, device="cuda", dtype=DTYPE)
                    ours = bench(lambda x=x, weight=weight: quant_matmul(x=x, **weight))
                    torch_ms = bench(lambda x=x, dense=dense: x @ dense.T)
                    io_bytes = (num_rows * in_features + num_rows * num_cols) * DTYPE.itemsize
                    gbs = (param_bytes + io_bytes) / (ours * 1e-3) / 1e9
                    speedup = torch_ms / ours
                    bar = "-"
                    if num_rows == 1:
                        bar = "pass" if speedup >= (2.0 if bits == 4 else 1.3) else "FAIL"
                    rows.append(dict(model=model, layer=layer, n=num_cols, k=in_features, bits=bits,
                                     m=num_rows, ms=round(ours, 4), gbs=round(gbs, 1),
                                     of_copy=f"{gbs / copy_gbs:.0%}", bf16_ms=round(torch_ms, 4),
                                     speedup=round(speedup, 2), bar=bar))  # fmt: skip
                del weight, dense
    return rows


def markdown(title: str, rows: list[dict[str, object]]) -> str:
    header = list(rows[0])
    lines = [f"### {title}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(row[key]) for key in header) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description="Tritium kernel microbenchmarks")
    parser.add_argument("--only", default="decode,prefill,sampling,quant_matmul")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--quick", action="store_true", help="a few sizes per part")
    arguments = parser.parse_args()
    if not torch.cuda.is_available():
        print("needs a CUDA GPU", file=sys.stderr)
        return 2
    gpu = torch.cuda.get_device_name()
    parts = set(arguments.only.split(","))
    copy_gbs = copy_bandwidth_gbs()
    report = [f"## Kernel benchmarks on {gpu}", "", f"Measured copy bandwidth: {copy_gbs:.0f} GB/s", ""]
    results: dict[str, object] = {"gpu": gpu, "copy_gbs": copy_gbs}
    for name, run in (("decode", lambda: bench_decode(copy_gbs, arguments.quick)),
                      ("prefill", lambda: bench_prefill(arguments.quick)),
                      ("sampling", lambda: bench_sampling(arguments.quick)),
                      ("quant_matmul", lambda: bench_quant_matmul(copy_gbs, arguments.quick))):  # fmt: skip
        if name in parts:
            results[name] = rows = run()
            report.append(markdown(name, rows))
            print(report[-1], flush=True)
    arguments.out.mkdir(parents=True, exist_ok=True)
    stem = arguments.out / f"kernels-{re.sub(r'[^A-Za-z0-9]+', '-', gpu).strip('-').lower()}"
    stem.with_suffix(".md").write_text("\n".join(report))
    stem.with_suffix(".json").write_text(json.dumps(results, indent=2))
    print(f"wrote {stem}.md and {stem}.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
