"""RMSNorm with the residual add fused in front.

    residual_out = x + residual            (or x when there is no residual)
    out          = weight * cast(residual_out * rsqrt(mean(residual_out ** 2) + eps))

The cast back to the input dtype before the weight follows Hugging Face Llama, so a
bf16 model normalises as it was trained. One program per token row; the row stays in
registers, so per row the kernel reads x, residual and weight once and writes out and
residual_out once: 4 * hidden_size * itemsize bytes (+ the weight, L2-resident), where
the unfused torch path makes 3 passes and materialises the fp32 upcast.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def rms_norm_kernel(
    x_ptr,  # [num_tokens, hidden_size]
    residual_ptr,  # [num_tokens, hidden_size]; None unless HAS_RESIDUAL
    weight_ptr,  # [hidden_size]
    out_ptr,  # [num_tokens, hidden_size]
    residual_out_ptr,  # [num_tokens, hidden_size]; None unless HAS_RESIDUAL
    stride_x_token,
    stride_residual_token,
    stride_out_token,
    stride_residual_out_token,
    hidden_size,
    eps,
    HAS_RESIDUAL: tl.constexpr,
    BLOCK_HIDDEN: tl.constexpr,
):
    token = tl.program_id(0).to(tl.int64)
    columns = tl.arange(0, BLOCK_HIDDEN)
    in_row = columns < hidden_size
    x = tl.load(x_ptr + token * stride_x_token + columns, mask=in_row, other=0.0)
    if HAS_RESIDUAL:
        residual = tl.load(
            residual_ptr + token * stride_residual_token + columns, mask=in_row, other=0.0
        )
        # The sum is rounded to the model dtype, exactly as `x + residual` in torch.
        x = (x.to(tl.float32) + residual.to(tl.float32)).to(x.dtype)
        tl.store(residual_out_ptr + token * stride_residual_out_token + columns, x, mask=in_row)
    hidden = x.to(tl.float32)
    variance = tl.sum(hidden * hidden, axis=0) / hidden_size
    normed = (hidden * tl.rsqrt(variance + eps)).to(x.dtype)
    weight = tl.load(weight_ptr + columns, mask=in_row, other=0.0)
    out = weight.to(tl.float32) * normed.to(tl.float32)
    tl.store(out_ptr + token * stride_out_token + columns, out.to(out_ptr.dtype.element_ty), mask=in_row)


def rms_norm(
    x: torch.Tensor,  # [num_tokens, hidden_size]
    weight: torch.Tensor,  # [hidden_size]
    eps: float,
    residual: torch.Tensor | None = None,  # [num_tokens, hidden_size]
) -> tuple[torch.Tensor, torch.Tensor]:  # (out, residual_out), both [num_tokens, hidden_size]
    """Fused (residual add +) RMSNorm. Without a residual, residual_out is `x` itself."""
    if x.dim() != 2:
        raise ValueError(f"x must be [num_tokens, hidden_size], got shape {tuple(x.shape)}")
    num_tokens, hidden_size = x.shape
    if weight.shape != (hidden_size,):
        raise ValueError(f"weight must be [{hidden_size}], got {tuple(weight.shape)}")
    if x.stride(1) != 1 or weight.stride(0) != 1:
        raise ValueError("x and weight must be contiguous along hidden_size")
    if residual is not None:
        if residual.shape != x.shape or residual.dtype != x.dtype:
            raise ValueError(
                f"residual must match x {tuple(x.shape)} {x.dtype}, "
                f"got {tuple(residual.shape)} {residual.dtype}"
            )
        if residual.stride(1) != 1:
            raise ValueError("residual must be contiguous along hidden_size")
    out_dtype = torch.promote_types(x.dtype, weight.dtype)
    out = torch.empty((num_tokens, hidden_size), dtype=out_dtype, device=x.device)
    residual_out = x if residual is None else torch.empty_like(x)
    if num_tokens == 0:
        return out, residual_out
    block_hidden = triton.next_power_of_2(hidden_size)
    rms_norm_kernel[(num_tokens,)](
        x_ptr=x,
        residual_ptr=residual,
        weight_ptr=weight,
        out_ptr=out,
        # Without a residual, residual_out is x itself: nothing to write.
        residual_out_ptr=residual_out if residual is not None else None,
        stride_x_token=x.stride(0),
        stride_residual_token=residual.stride(0) if residual is not None else 0,
        stride_out_token=out.stride(0),
        stride_residual_out_token=residual_out.stride(0) if residual is not None else 0,
        hidden_size=hidden_size,
        eps=eps,
        HAS_RESIDUAL=residual is not None,
        BLOCK_HIDDEN=block_hidden,
        num_warps=min(16, max(1, block_hidden // 256)),
    )
    return out, residual_out


def rms_norm_ref(
    x: torch.Tensor,  # [num_tokens, hidden_size]
    weight: torch.Tensor,  # [hidden_size]
    eps: float,
    residual: torch.Tensor | None = None,  # [num_tokens, hidden_size]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference: residual add in the input dtype, statistics in float64, HF's casts.

    Traffic (unfused): read x, residual; write residual_out; read it again for the
    statistics and the scaling; write out — 5 passes over [num_tokens, hidden_size].
    """
    residual_out = x if residual is None else x + residual
    hidden = residual_out.double()
    variance = hidden.pow(2).mean(-1, keepdim=True)
    normed = (hidden * torch.rsqrt(variance + eps)).to(x.dtype)
    return weight.double() * normed.double(), residual_out
