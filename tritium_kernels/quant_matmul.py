"""Weight-only quantized matmul: out = x @ dequantize(qweight).T, int4 or int8 weights.

The engine's canonical weight format (GGUF blocks are converted to it at load time):

- int4 (bits=4): `qweight` uint8 [N, K // 2]; byte j of row n holds column 2j in its
  low nibble and column 2j + 1 in its high nibble (values 0..15), and

      w[n, k] = q[n, k] * scales[n, k // group_size] + zeros[n, k // group_size]

  (the "min" form: GGUF Q4_1 is scale d, zero m; Q4_0 is scale d, zero -8d; Q4_K is
  scale d * sc, zero -dmin * m).
- int8 (bits=8): `qweight` int8 [N, K], no zeros: w[n, k] = q[n, k] * scales[n, k // group_size]
  (group_size = K is per-channel; 32 is GGUF Q8_0).

`scales` / `zeros` are [N, K // group_size], float32 or the activation dtype. group_size
is a multiple of 16 that divides K. Activations x [M, K] are bf16, fp16 or fp32; the
output [M, N] has x's dtype; accumulation is fp32.

`quant_matmul_kernel`, grid (cdiv(M, BLOCK_M), cdiv(N, BLOCK_N)): each program owns a
BLOCK_M x BLOCK_N output tile and walks K in BLOCK_K steps. Per step it loads the packed
weight tile once ([BLOCK_K // 2, BLOCK_N] bytes for int4), splits each byte into its two
nibbles in registers, dequantizes them in fp32 with one multiply-add (scale and zero of
the column's group), rounds them to the activation dtype and feeds tl.dot (tensor cores
for 16-bit x). int4 never interleaves nibbles: the low nibbles are the tile's even
columns and the high nibbles its odd ones, so the x tile is loaded as its even and odd
columns and the step is two dots, x_even @ w_low + x_odd @ w_high. Both columns of a
byte lie in one group (group_size is even), so one scale/zero serves both nibbles.

BLOCK_K is the largest power of two <= 128 dividing group_size, so a K step lies in one
group (one [BLOCK_N] vector of scales and zeros per step) and K needs no mask. For int4
the dot needs BLOCK_K // 2 >= 16: a group_size whose largest power-of-two divisor is 16
(16, 48, 80, ...) takes BLOCK_K = 32 steps that may straddle groups, with the scales and
zeros gathered per column pair and the tile masked at K (ONE_GROUP_PER_TILE=False).

Memory traffic per call (the number the benchmark divides by time):
    weights  N * K * bits / 8, once per M tile (decode, M <= 32: once)
    scales, zeros  N * (K // group_size) * itemsize each (zeros: int4 only)
    x        M * K * itemsize, once per N tile (re-reads hit L2)
    out      M * N * itemsize written
For decode the weights dominate: int4 reads ~1/4 of the bf16 matrix's bytes (+ 1/8 for
fp32 scales and zeros at group 32, 1/16 at group 64 in bf16).
Block sizes and warp counts are first guesses, not tuned on a GPU yet.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from tritium_kernels.attention_common import dot_precision, upcast_dot

ACTIVATION_DTYPES = (torch.bfloat16, torch.float16, torch.float32)
MAX_BLOCK_K = 128


@triton.jit
def load_group_param(
    param_cols,  # [1, BLOCK_N] pointers: scales (or zeros) at group 0 of each column
    k,  # [BLOCK_K'] column index (int4: the even column of each byte) of the tile's rows
    k_start,  # first column of the tile
    mask,  # [BLOCK_K', BLOCK_N] the weight tile's mask (read when not ONE_GROUP_PER_TILE)
    col_ok,  # [BLOCK_N] column inside N
    GROUP_SIZE: tl.constexpr,
    ONE_GROUP_PER_TILE: tl.constexpr,
):
    """The scale (or zero) of each weight in the tile, fp32: [1, BLOCK_N] when the whole
    K step lies in one group, else [BLOCK_K', BLOCK_N] gathered by each row's group."""
    if ONE_GROUP_PER_TILE:
        param = tl.load(param_cols + k_start // GROUP_SIZE, mask=col_ok[None, :], other=0.0)
    else:
        param = tl.load(param_cols + (k // GROUP_SIZE)[:, None], mask=mask, other=0.0)
    return param.to(tl.float32)


@triton.jit
def dot_dequantized(
    acc,  # [BLOCK_M, BLOCK_N] float32
    x,  # [BLOCK_M, BLOCK_K'] activations
    w,  # [BLOCK_K', BLOCK_N] dequantized weights, float32
    DOT_PRECISION: tl.constexpr,
    UPCAST_DOT: tl.constexpr,  # interpreter only: its tl.dot mishandles bfloat16
):
    """acc + x @ w, the weights rounded to the activation dtype first (as the GPU's dot)."""
    w = w.to(x.dtype)
    if UPCAST_DOT:
        acc += tl.dot(x.to(tl.float32), w.to(tl.float32), input_precision="ieee")
    else:
        acc = tl.dot(x, w, acc=acc, input_precision=DOT_PRECISION)
    return acc


@triton.jit
def quant_matmul_kernel(
    x_ptr,  # [M, K] bf16 / fp16 / fp32
    qweight_ptr,  # BITS 4: [N, K // 2] uint8 (two columns a byte); BITS 8: [N, K] int8
    scales_ptr,  # [N, K // GROUP_SIZE] fp32 or x's dtype
    zeros_ptr,  # [N, K // GROUP_SIZE] fp32 or x's dtype; None unless BITS == 4
    out_ptr,  # [M, N] x's dtype
    M,
    N,
    K,
    stride_x_row,
    stride_qweight_row,
    stride_scales_row,
    stride_zeros_row,
    stride_out_row,
    BITS: tl.constexpr,  # 4 or 8
    GROUP_SIZE: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,  # columns of K per step; a power of two >= 16 (>= 32 for int4)
    ONE_GROUP_PER_TILE: tl.constexpr,  # GROUP_SIZE % BLOCK_K == 0 (then K % BLOCK_K == 0)
    DOT_PRECISION: tl.constexpr,
    UPCAST_DOT: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)  # [BLOCK_M]
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)  # [BLOCK_N]
    row_ok = rows < M
    col_ok = cols < N
    x_rows = x_ptr + rows.to(tl.int64)[:, None] * stride_x_row  # [BLOCK_M, 1]
    weight_cols = qweight_ptr + cols.to(tl.int64)[None, :] * stride_qweight_row  # [1, BLOCK_N]
    scale_cols = scales_ptr + cols.to(tl.int64)[None, :] * stride_scales_row  # [1, BLOCK_N]
    if BITS == 4:  # (zeros_ptr is None for int8)
        zero_cols = zeros_ptr + cols.to(tl.int64)[None, :] * stride_zeros_row  # [1, BLOCK_N]
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for k_start in range(0, K, BLOCK_K):
        if BITS == 4:
            k_even = k_start + 2 * tl.arange(0, BLOCK_K // 2)  # [BLOCK_K // 2] column 2j of byte j
            if ONE_GROUP_PER_TILE:  # the step lies inside K: mask the edges of M and N only
                w_mask = col_ok[None, :]
                x_mask = row_ok[:, None]
            else:
                w_mask = (k_even < K)[:, None] & col_ok[None, :]
                x_mask = row_ok[:, None] & (k_even < K)[None, :]
            packed = tl.load(weight_cols + (k_even // 2)[:, None], mask=w_mask, other=0)
            # [BLOCK_K // 2, BLOCK_N] uint8: each byte read once, both nibbles used.
            scale = load_group_param(
                param_cols=scale_cols, k=k_even, k_start=k_start, mask=w_mask, col_ok=col_ok,
                GROUP_SIZE=GROUP_SIZE, ONE_GROUP_PER_TILE=ONE_GROUP_PER_TILE,
            )  # fmt: skip
            zero = load_group_param(
                param_cols=zero_cols, k=k_even, k_start=k_start, mask=w_mask, col_ok=col_ok,
                GROUP_SIZE=GROUP_SIZE, ONE_GROUP_PER_TILE=ONE_GROUP_PER_TILE,
            )  # fmt: skip
            w_low = (packed & 0xF).to(tl.float32) * scale + zero  # columns 2j
            w_high = (packed >> 4).to(tl.float32) * scale + zero  # columns 2j + 1
            x_even = tl.load(
                x_rows + k_even[None, :], mask=x_mask, other=0.0
            )  # [BLOCK_M, BLOCK_K // 2]
            x_odd = tl.load(x_rows + (k_even + 1)[None, :], mask=x_mask, other=0.0)
            acc = dot_dequantized(acc=acc, x=x_even, w=w_low, DOT_PRECISION=DOT_PRECISION,
                                  UPCAST_DOT=UPCAST_DOT)  # fmt: skip
            acc = dot_dequantized(acc=acc, x=x_odd, w=w_high, DOT_PRECISION=DOT_PRECISION,
                                  UPCAST_DOT=UPCAST_DOT)  # fmt: skip
        else:
            k = k_start + tl.arange(0, BLOCK_K)  # [BLOCK_K]
            if ONE_GROUP_PER_TILE:
                w_mask = col_ok[None, :]
                x_mask = row_ok[:, None]
            else:
                w_mask = (k < K)[:, None] & col_ok[None, :]
                x_mask = row_ok[:, None] & (k < K)[None, :]
            q = tl.load(weight_cols + k[:, None], mask=w_mask, other=0)  # [BLOCK_K, BLOCK_N] int8
            scale = load_group_param(
                param_cols=scale_cols, k=k, k_start=k_start, mask=w_mask, col_ok=col_ok,
                GROUP_SIZE=GROUP_SIZE, ONE_GROUP_PER_TILE=ONE_GROUP_PER_TILE,
            )  # fmt: skip
            x_tile = tl.load(x_rows + k[None, :], mask=x_mask, other=0.0)  # [BLOCK_M, BLOCK_K]
            acc = dot_dequantized(acc=acc, x=x_tile, w=q.to(tl.float32) * scale,
                                  DOT_PRECISION=DOT_PRECISION, UPCAST_DOT=UPCAST_DOT)  # fmt: skip
    out_ptrs = out_ptr + rows.to(tl.int64)[:, None] * stride_out_row + cols[None, :]
    tl.store(out_ptrs, acc.to(out_ptr.dtype.element_ty), mask=row_ok[:, None] & col_ok[None, :])


def choose_blocks(num_rows: int, num_cols: int, bits: int, group_size: int,
                  device: torch.device) -> dict[str, int | bool]:  # fmt: skip
    """Tile sizes and launch options for an [num_rows, K] x [num_cols, K]^T product.

    Decode (M <= 32): BLOCK_M 16 or 32 (tl.dot's minimum is 16: a GEMV wastes the padded
    rows' compute, not bandwidth), BLOCK_N halved from 64 down to 16 until the grid
    covers the SMs about twice — without split-K, N tiles are the only parallelism.
    Prefill: 64 x 128 tiles.
    """
    largest_pow2 = group_size & -group_size
    block_k = min(largest_pow2, MAX_BLOCK_K)
    one_group_per_tile = True
    if bits == 4 and block_k < 32:  # two dots over BLOCK_K // 2 columns each need >= 16
        block_k, one_group_per_tile = 32, False
    if num_rows <= 32:
        block_m = 16 if num_rows <= 16 else 32
        if device.type == "cuda":
            num_sms = torch.cuda.get_device_properties(device).multi_processor_count
        else:
            num_sms = 4  # the interpreter: still exercise several BLOCK_N at small sizes
        block_n = 64
        while (
            block_n > 16
            and triton.cdiv(num_rows, block_m) * triton.cdiv(num_cols, block_n) < 2 * num_sms
        ):
            block_n //= 2
        num_warps, num_stages = 4, 4
    else:
        block_m, block_n, num_warps, num_stages = 64, 128, 8, 3
    return dict(BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k,
                ONE_GROUP_PER_TILE=one_group_per_tile, num_warps=num_warps, num_stages=num_stages)  # fmt: skip


def check_quantized_weight(
    qweight: torch.Tensor,
    scales: torch.Tensor,
    zeros: torch.Tensor | None,
    bits: int,
    group_size: int,
    in_features: int,
    param_dtypes: tuple[torch.dtype, ...],
) -> int:
    """Raise ValueError naming the argument that breaks the format; return N."""
    if bits not in (4, 8):
        raise ValueError(f"bits must be 4 or 8, got {bits}")
    if not isinstance(group_size, int) or group_size < 16 or group_size % 16:
        raise ValueError(f"group_size must be a multiple of 16 (>= 16), got {group_size}")
    if in_features % group_size:
        raise ValueError(f"group_size {group_size} must divide K = {in_features}")
    if bits == 4 and in_features % 2:
        raise ValueError(f"int4 needs an even K, got {in_features}")
    qweight_dtype, packed_k = (
        (torch.uint8, in_features // 2) if bits == 4 else (torch.int8, in_features)
    )
    if qweight.dim() != 2 or qweight.shape[1] != packed_k or qweight.dtype != qweight_dtype:
        raise ValueError(
            f"qweight must be [N, {packed_k}] {qweight_dtype} for bits={bits}, K={in_features}, "
            f"got {tuple(qweight.shape)} {qweight.dtype}"
        )
    num_cols = qweight.shape[0]
    groups = in_features // group_size
    params = [("scales", scales)]
    if bits == 4:
        if zeros is None:
            raise ValueError("zeros must be given for bits=4 (w = q * scale + zero)")
        params.append(("zeros", zeros))
    elif zeros is not None:
        raise ValueError("zeros must be None for bits=8 (w = q * scale)")
    for name, param in params:
        if tuple(param.shape) != (num_cols, groups) or param.dtype not in param_dtypes:
            names = " or ".join(str(dtype) for dtype in param_dtypes)
            raise ValueError(
                f"{name} must be [{num_cols}, {groups}] {names}, got {tuple(param.shape)} {param.dtype}"
            )
    for name, tensor in [("qweight", qweight), *params]:
        if tensor.stride(1) != 1 and tensor.shape[1] > 1:
            raise ValueError(f"{name} must be contiguous along its last dimension")
    return num_cols


def quant_matmul(
    x: torch.Tensor,  # [M, K] bf16 / fp16 / fp32
    qweight: torch.Tensor,  # bits 4: [N, K // 2] uint8; bits 8: [N, K] int8
    scales: torch.Tensor,  # [N, K // group_size] fp32 or x's dtype
    zeros: torch.Tensor | None,  # [N, K // group_size] (bits 4); None for bits 8
    bits: int,
    group_size: int,
) -> torch.Tensor:  # [M, N] in x's dtype
    """x @ w.T for weight-only quantized w (format in the module docstring), fp32 accumulation."""
    if x.dim() != 2 or x.dtype not in ACTIVATION_DTYPES:
        raise ValueError(f"x must be [M, K] bf16, fp16 or fp32, got {tuple(x.shape)} {x.dtype}")
    if x.stride(1) != 1 and x.shape[1] > 1:
        raise ValueError("x must be contiguous along K")
    num_rows, in_features = x.shape
    num_cols = check_quantized_weight(
        qweight=qweight, scales=scales, zeros=zeros, bits=bits, group_size=group_size,
        in_features=in_features, param_dtypes=tuple(dict.fromkeys((torch.float32, x.dtype))),
    )  # fmt: skip
    for name, tensor in (("qweight", qweight), ("scales", scales), ("zeros", zeros)):
        if tensor is not None and tensor.device != x.device:
            raise ValueError(f"{name} is on {tensor.device}, x on {x.device}")
    out = torch.empty((num_rows, num_cols), dtype=x.dtype, device=x.device)
    if num_rows == 0 or num_cols == 0:
        return out
    blocks = choose_blocks(num_rows=num_rows, num_cols=num_cols, bits=bits, group_size=group_size,
                           device=x.device)  # fmt: skip
    grid = (triton.cdiv(num_rows, blocks["BLOCK_M"]), triton.cdiv(num_cols, blocks["BLOCK_N"]))
    quant_matmul_kernel[grid](
        x_ptr=x, qweight_ptr=qweight, scales_ptr=scales, zeros_ptr=zeros, out_ptr=out,
        M=num_rows, N=num_cols, K=in_features,
        stride_x_row=x.stride(0), stride_qweight_row=qweight.stride(0),
        stride_scales_row=scales.stride(0),
        stride_zeros_row=zeros.stride(0) if zeros is not None else 0,
        stride_out_row=out.stride(0),
        BITS=bits, GROUP_SIZE=group_size,
        DOT_PRECISION=dot_precision(x.dtype), UPCAST_DOT=upcast_dot(x.dtype),
        **blocks,
    )  # fmt: skip
    return out


def pack_int4(q: torch.Tensor) -> torch.Tensor:
    """[..., K] integers in 0..15 (any integer dtype, any device) -> [..., K // 2] uint8.

    Byte j holds column 2j in its low nibble and column 2j + 1 in its high nibble, the
    layout `quant_matmul` reads. K must be even; values outside 0..15 raise ValueError.
    """
    if q.dim() < 1 or q.shape[-1] % 2 or q.is_floating_point() or q.is_complex():
        raise ValueError(
            f"q must be an integer tensor [..., K] with K even, got {tuple(q.shape)} {q.dtype}"
        )
    if q.numel() and (int(q.min()) < 0 or int(q.max()) > 15):
        raise ValueError("q values must lie in 0..15")
    q = q.to(torch.uint8)
    return q[..., 0::2] | (q[..., 1::2] << 4)


def unpack_int4(packed: torch.Tensor) -> torch.Tensor:
    """[..., K // 2] uint8 (pack_int4's layout) -> [..., K] uint8 values 0..15."""
    if packed.dtype != torch.uint8 or packed.dim() < 1:
        raise ValueError(
            f"packed must be a uint8 tensor [..., K // 2], got {tuple(packed.shape)} {packed.dtype}"
        )
    nibbles = torch.stack((packed & 0xF, packed >> 4), dim=-1)  # [..., K // 2, 2]
    return nibbles.reshape(*packed.shape[:-1], packed.shape[-1] * 2)


def dequantize_ref(
    qweight: torch.Tensor,  # bits 4: [N, K // 2] uint8; bits 8: [N, K] int8
    scales: torch.Tensor,  # [N, K // group_size]
    zeros: torch.Tensor | None,  # [N, K // group_size] (bits 4); None for bits 8
    bits: int,
    group_size: int,
) -> torch.Tensor:  # [N, K] float32
    """The weight the format stands for, in float32 (plain torch; CPU or GPU):
    int4 w = q * scale + zero, int8 w = q * scale, scale/zero of column k's group k // group_size."""
    in_features = qweight.shape[-1] * (2 if bits == 4 else 1)
    check_quantized_weight(
        qweight=qweight, scales=scales, zeros=zeros, bits=bits, group_size=group_size,
        in_features=in_features, param_dtypes=(torch.float32, torch.bfloat16, torch.float16),
    )  # fmt: skip
    q = (unpack_int4(qweight) if bits == 4 else qweight).float()
    weight = q * scales.float().repeat_interleave(group_size, dim=1)
    if zeros is not None:
        weight = weight + zeros.float().repeat_interleave(group_size, dim=1)
    return weight


def quant_matmul_ref(
    x: torch.Tensor,  # [M, K]
    qweight: torch.Tensor,
    scales: torch.Tensor,
    zeros: torch.Tensor | None,
    bits: int,
    group_size: int,
) -> torch.Tensor:  # [M, N] float32, not rounded to x's dtype
    """Reference: dequantize to float32, then an fp32 matmul.

    Traffic (unfused): reads the quantized weight, writes and reads back an fp32 [N, K]
    copy (8x the int4 bytes), then the matmul reads it again.
    """
    return x.float() @ dequantize_ref(qweight=qweight, scales=scales, zeros=zeros, bits=bits,
                                      group_size=group_size).T  # fmt: skip
