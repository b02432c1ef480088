"""Compile every kernel for a CUDA target on a machine without a GPU.

The interpreter runs kernels as numpy, so it accepts code the real compiler rejects
(loop-carried type changes, unsupported ops, too much shared memory). This script
calls each launcher at representative shapes with `JITFunction.run` replaced by a
recorder, then compiles every recorded (kernel, signature, constants, options) with
`triton.compile` for the target down to a cubin (Triton's bundled ptxas).

    .venv/bin/python tests/kernels/compile_for_cuda.py [--arch 90] [--arch 80] [--full]

Must run without TRITON_INTERPRET. Prints one line per compiled kernel.
"""

from __future__ import annotations

import argparse
import inspect
import os
import sys
import time
from typing import Any

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from triton.runtime.jit import JITFunction

TYPE_NAMES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16",
              torch.int32: "i32", torch.int64: "i64", torch.uint8: "u8", torch.int8: "i8"}  # fmt: skip
SHARED_MEMORY_LIMIT = {80: 163 * 1024, 90: 227 * 1024}
Recorded = tuple[JITFunction, tuple[Any, ...], dict[str, Any]]


def record_launches(full: bool) -> list[Recorded]:
    records: list[Recorded] = []

    def record(self: JITFunction, *args: Any, grid: Any, warmup: bool, **kwargs: Any) -> None:
        records.append((self, args, kwargs))

    JITFunction.run = record  # type: ignore[method-assign]
    from tritium_kernels.attention import paged_attention, write_kv_cache
    from tritium_kernels.penalties import apply_logit_bias, apply_penalties
    from tritium_kernels.quant_matmul import quant_matmul
    from tritium_kernels.rmsnorm import rms_norm
    from tritium_kernels.rope import rope, rope_and_write_kv
    from tritium_kernels.sampling import sample

    for dtype in (torch.bfloat16, torch.float32):
        x = torch.zeros(4, 576, dtype=dtype)
        rms_norm(x, torch.ones(576, dtype=dtype), 1e-5, x)
        rms_norm(x, torch.ones(576, dtype=dtype), 1e-5)
    shapes = [(torch.bfloat16, 9, 3, 64), (torch.bfloat16, 32, 8, 128)]
    if full:  # fp32 attention (exact "ieee" dots) takes ~20 s to compile
        shapes += [(torch.float16, 32, 8, 128), (torch.float32, 9, 3, 64)]
    for dtype, num_heads, num_kv_heads, head_dim in shapes:
        query = torch.zeros(6, num_heads, head_dim, dtype=dtype)
        key = torch.zeros(6, num_kv_heads, head_dim, dtype=dtype)
        positions = torch.arange(6)
        cos_sin = torch.zeros(64, head_dim)
        cache = torch.zeros(8, 16, num_kv_heads, head_dim, dtype=dtype)
        rope(query, key, positions, cos_sin)
        rope_and_write_kv(query, key, key, positions, cos_sin, cache, cache, positions)
        write_kv_cache(key, key, cache, cache, positions)
        starts = torch.tensor([0, 4, 5, 6], dtype=torch.int32)
        seq_lens = torch.tensor([10, 20, 30], dtype=torch.int32)
        tables = torch.zeros(3, 2, dtype=torch.int32)
        paged_attention(query, cache, cache, starts, seq_lens, tables, 4, 30, 0.1)
        # Gemma 2's layers: a sliding window and soft-capped scores.
        paged_attention(query, cache, cache, starts, seq_lens, tables, 4, 30, 0.1, window=8, softcap=50.0)
    for mask in (None, torch.zeros(2, 4008, dtype=torch.int32)):
        logits = torch.zeros(2, 128256)
        rows = torch.zeros(2)
        sample(logits, rows, rows.int(), rows, rows, rows.long(), rows.long(), mask)
    logits = torch.zeros(2, 49152)
    apply_penalties(logits, logits.int(), torch.zeros(2, 1536, dtype=torch.int32), rows, rows, rows)
    apply_logit_bias(logits, torch.zeros(2, 3, dtype=torch.int32), torch.zeros(2, 3))
    # Weight-only quantized matmul: decode (M 1, 32) and prefill (M 300) tiles; int4 with
    # one group per K step (32, 128) and with steps straddling groups (48); int8 Q8_0 and
    # per-channel; scales in fp32 and in the activation dtype.
    quant_dtypes = (torch.bfloat16, torch.float16, torch.float32) if full else (torch.bfloat16,)
    for dtype in quant_dtypes:
        for bits, group_size, param_dtype in ((4, 32, torch.float32), (4, 128, dtype), (4, 48, dtype),
                                              (8, 32, dtype), (8, 768, torch.float32)):  # fmt: skip
            in_features = 768
            groups = in_features // group_size
            # N 512 at M 1 takes BLOCK_N 64; N 64 at M 32 takes BLOCK_N 16 (the recorder's 4 "SMs").
            for num_rows, num_cols in ((1, 512), (32, 64), (300, 64)):
                qweight = torch.zeros(num_cols, in_features // 2 if bits == 4 else in_features,
                                      dtype=torch.uint8 if bits == 4 else torch.int8)  # fmt: skip
                scales = torch.zeros(num_cols, groups, dtype=param_dtype)
                zeros = scales if bits == 4 else None
                quant_matmul(torch.zeros(num_rows, in_features, dtype=dtype), qweight, scales, zeros,
                             bits, group_size)  # fmt: skip
    return records


def signature_of(fn: JITFunction, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[dict, dict, dict]:
    options = {name: kwargs.pop(name) for name in ("num_warps", "num_stages") if name in kwargs}
    bound = inspect.signature(fn.fn).bind(*args, **kwargs)
    signature: dict[str, str] = {}
    constants: dict[str, Any] = {}
    for param in fn.params:
        value = bound.arguments[param.name]
        if param.is_constexpr or value is None:  # a None argument is a constexpr to Triton
            signature[param.name] = "constexpr"
            constants[param.name] = value
        elif isinstance(value, torch.Tensor):
            signature[param.name] = "*" + TYPE_NAMES[value.dtype]
        elif isinstance(value, bool):
            signature[param.name] = "i1"
        elif isinstance(value, int):
            signature[param.name] = "i32" if -(2**31) <= value < 2**31 else "i64"
        elif isinstance(value, float):
            signature[param.name] = "fp32"
        else:
            raise TypeError(f"{fn.__name__}.{param.name}: cannot type {value!r}")
    return signature, constants, options


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", type=int, action="append", help="compute capability, e.g. 90")
    parser.add_argument("--full", action="store_true", help="also float16 and float32 attention")
    arguments = parser.parse_args()
    archs = arguments.arch or [90]
    if os.environ.get("TRITON_INTERPRET") == "1":
        print("unset TRITON_INTERPRET: this compiles for a real GPU", file=sys.stderr)
        return 2
    seen: set[str] = set()
    failures = 0
    for fn, args, kwargs in record_launches(arguments.full):
        signature, constants, options = signature_of(fn, args, dict(kwargs))
        key = repr((fn.__name__, sorted(signature.items()), sorted(constants.items()), sorted(options.items())))
        if key in seen:
            continue
        seen.add(key)
        for arch in archs:
            started = time.perf_counter()
            try:
                compiled = triton.compile(ASTSource(fn, signature, constants),
                                          target=GPUTarget("cuda", arch, 32), options=options)  # fmt: skip
            except Exception as error:  # noqa: BLE001 - report every kernel, then fail
                failures += 1
                print(f"FAIL sm_{arch} {fn.__name__} {constants}: {error}")
                continue
            shared = compiled.metadata.shared
            too_big = shared > SHARED_MEMORY_LIMIT.get(arch, 99 * 1024)
            failures += too_big
            print(f"{'FAIL' if too_big else 'ok  '} sm_{arch} {fn.__name__:26s} shared={shared:6d}B "
                  f"{time.perf_counter() - started:5.1f}s {constants}")  # fmt: skip
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
