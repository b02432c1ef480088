"""Our CPU kernel for weight-only quantized matmuls (`quant_matmul_cpu.cpp`): int4 and int8
weights against activations quantized per 32 columns to int8, multiplied by AVX-512 VNNI.

Why our own and not torch's `_weight_int4pack_mm_for_cpu` / `_weight_int8pack_mm`: those
convert every weight to float and multiply in float, which on the project's 2-core CPU read
the default model's weights at about a third of the memory's speed for one row, and fell
behind oneDNN's bf16 GEMM beyond ~16 rows; multiplying integers (64 products per
instruction) is what llama.cpp does for the same formats, and the numbers behind the
switch are in docs/benchmarks.md (`python -m benchmarks.quant_crossover`).

The C++ source is compiled once per machine by torch's extension builder (g++ and ninja,
cached under TORCH_EXTENSIONS_DIR, ~25 s on 2 cores) the first time a quantized layer is
built on a CPU with AVX-512 VNNI. Where it cannot run (no VNNI or no compiler, which the
log says; a layer whose K or group size is not in 32s)
`engine.quantization.QuantizedMatmul` keeps torch's kernels.

`pack` turns the engine's `QuantizedTensor` into the kernel's layout (the .cpp's header
describes it); `quant_mm` runs it, and works inside `torch.compile` graphs (a fake
implementation gives the output's shape).
"""

from __future__ import annotations

import functools
import logging
import os
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

logger = logging.getLogger(__name__)

SOURCE = Path(__file__).with_suffix(".cpp")
TILE = 16  # output rows per tile of the packed layout
BLOCK = 32  # columns per activation scale: K and the weight's group must be multiples
_lock = threading.Lock()


@dataclass(frozen=True)
class PackedWeight:
    bits: int
    group_size: int
    rows: int  # N, the output features
    columns: int  # K
    weight: torch.Tensor  # uint8 [N/16, K/8 (int4) or K/4 (int8), 64]
    scales: torch.Tensor  # float16 (or float32, `pack` says when) [N/16, K/group, 16]
    zeros: torch.Tensor  # int4: like the scales; int8: empty

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.weight, self.scales, self.zeros))


def fits(bits: int, group_size: int, columns: int) -> bool:
    """Whether the kernel takes a weight of this format: K and the group in 32s."""
    return bits in (4, 8) and group_size % BLOCK == 0 and columns % group_size == 0


@functools.cache
def available() -> bool:
    """Build and load the kernel once per process; False (with a log line saying why)
    where the CPU lacks AVX-512 VNNI or the build fails."""
    with _lock:
        flags = _cpu_flags()
        missing = [f for f in ("avx512f", "avx512bw", "avx512vl", "avx512_vnni") if f not in flags]
        if missing:
            logger.info("CPU quantized kernel: this CPU lacks %s; torch's kernels serve", ", ".join(missing))
            return False
        try:
            started = time.monotonic()
            _build()
            if not torch.ops.tritium_cpu.supported():
                logger.info("CPU quantized kernel: the CPU refused it at run time; torch's kernels serve")
                return False
        except Exception as error:  # a missing compiler, headers or ninja: serve without it
            logger.warning("CPU quantized kernel could not be built (%s); torch's kernels serve", error)
            return False
        logger.info("CPU quantized kernel (AVX-512 VNNI) ready in %.1f s", time.monotonic() - started)
        return True


def _cpu_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def _build() -> None:
    from torch.utils.cpp_extension import load

    if shutil.which("ninja") is None:  # the `ninja` wheel's binary, when the venv is not on PATH
        import ninja

        os.environ["PATH"] = f"{ninja.BIN_DIR}{os.pathsep}{os.environ.get('PATH', '')}"
    load(
        name="tritium_quant_matmul_cpu",
        sources=[str(SOURCE)],
        extra_cflags=["-O3", "-fopenmp"],
        extra_ldflags=["-fopenmp"],  # libgomp.so.1: the one torch has loaded
        is_python_module=False,
        verbose=False,
    )
    torch.library.register_fake("tritium_cpu::quant_mm")(_fake_quant_mm)


def _fake_quant_mm(x, weight, scales, zeros, bits, group_size, n):  # noqa: ANN001, ANN202
    return x.new_empty((x.shape[0], n))


def pack(values: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor | None, bits: int, group_size: int) -> PackedWeight:
    """The engine's integers [N, K] (int4: 0..15, int8: -128..127), scales and zeros
    [N, K / group] (w = q * scale + zero; int8 has no zeros) in the kernel's layout. Scales
    and zeros are stored in float16 when every one lies in its normal range (GGUF's own
    are float16, so Q4_0, Q4_1 and Q8_0 stay exact), else in float32."""
    rows, columns = values.shape
    if not fits(bits, group_size, columns):
        raise ValueError(f"the CPU kernel takes K and group size in 32s, got K {columns}, group {group_size}")
    padding = -rows % TILE
    if bits == 4:
        v = F.pad(values.to(torch.uint8), (0, 0, 0, padding)).reshape(-1, TILE, columns // 8, 2, 4)
        packed = v[:, :, :, 0, :] | (v[:, :, :, 1, :] << 4)  # columns 8c+j low, 8c+4+j high
    else:
        u = (values.to(torch.int32) + 128).to(torch.uint8)  # unsigned bytes; the kernel takes 128 off
        packed = F.pad(u, (0, 0, 0, padding)).reshape(-1, TILE, columns // 4, 4)
    weight = packed.permute(0, 2, 1, 3).reshape(-1, packed.shape[2], 64).contiguous()
    params = [scales] if zeros is None or bits == 8 else [scales, zeros]
    dtype = torch.float16 if all(_half_holds(p) for p in params) else torch.float32
    groups = columns // group_size

    def tiled(a: torch.Tensor) -> torch.Tensor:
        return F.pad(a.to(dtype), (0, 0, 0, padding)).reshape(-1, TILE, groups).permute(0, 2, 1).contiguous()

    stored_zeros = tiled(params[1]) if len(params) == 2 else torch.empty(0, dtype=dtype)
    return PackedWeight(bits, group_size, rows, columns, weight, tiled(scales), stored_zeros)


def _half_holds(values: torch.Tensor) -> bool:
    """Every value is 0 or a normal float16 (no underflow into its coarse subnormals)."""
    magnitude = values.abs().float()
    nonzero = magnitude[magnitude > 0]
    info = torch.finfo(torch.float16)
    return bool(nonzero.numel() == 0 or (nonzero.min() >= info.tiny and nonzero.max() <= info.max))


def quant_mm(x: torch.Tensor, packed: PackedWeight) -> torch.Tensor:
    """x [M, K] (bf16, fp16 or fp32) @ W^T -> [M, N] in x's dtype."""
    return torch.ops.tritium_cpu.quant_mm(
        x, packed.weight, packed.scales, packed.zeros, packed.bits, packed.group_size, packed.rows
    )
