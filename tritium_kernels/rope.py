"""Rotary position embedding (Hugging Face `rotate_half` convention), optionally fused
with the KV-cache write.

For a head x = (x1, x2) split in halves and a position p with cos/sin row c, s
(cos_sin_cache[p] = [c | s], each head_dim / 2 wide):

    out = (x1 * c - x2 * s,  x2 * c + x1 * s)

The scaling (default, linear, dynamic, llama3, yarn) lives entirely in the cache the
engine builds (`engine.rope.build_cos_sin_cache`); the kernel only gathers rows, so
every scaling the engine supports runs through the same kernel.

One program per token: it reads the token's cos/sin row once for all heads, and
rotates query and key in registers. `rope` reads q + k and writes q + k (2 passes over
[num_tokens, num_heads + num_kv_heads, head_dim]); `rope_and_write_kv` writes the
rotated key and the value straight into the paged cache, which saves writing the
rotated key out and reading it back for `write_kv_cache` (one pass over K).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _rotate_heads(
    in_ptr,  # first element of the token's [num_heads, head_dim] input
    stride_in_head,
    out_ptr,  # first element of the token's [num_heads, head_dim] output
    stride_out_head,
    num_heads,
    cos,  # [BLOCK_HALF] float32
    sin,  # [BLOCK_HALF] float32
    half_dim,
    BLOCK_HEADS: tl.constexpr,
    BLOCK_HALF: tl.constexpr,
):
    heads = tl.arange(0, BLOCK_HEADS)[:, None]
    columns = tl.arange(0, BLOCK_HALF)[None, :]
    mask = (heads < num_heads) & (columns < half_dim)
    first_ptrs = in_ptr + heads * stride_in_head + columns
    first = tl.load(first_ptrs, mask=mask, other=0.0).to(tl.float32)
    second = tl.load(first_ptrs + half_dim, mask=mask, other=0.0).to(tl.float32)
    cos = cos[None, :]
    sin = sin[None, :]
    out_first = first * cos - second * sin
    out_second = second * cos + first * sin
    out_ptrs = out_ptr + heads * stride_out_head + columns
    tl.store(out_ptrs, out_first.to(out_ptr.dtype.element_ty), mask=mask)
    tl.store(out_ptrs + half_dim, out_second.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def copy_heads(
    in_ptr,
    stride_in_head,
    out_ptr,
    stride_out_head,
    num_heads,
    head_dim,
    BLOCK_HEADS: tl.constexpr,
    BLOCK_DIM: tl.constexpr,
):
    heads = tl.arange(0, BLOCK_HEADS)[:, None]
    columns = tl.arange(0, BLOCK_DIM)[None, :]
    mask = (heads < num_heads) & (columns < head_dim)
    values = tl.load(in_ptr + heads * stride_in_head + columns, mask=mask)
    tl.store(out_ptr + heads * stride_out_head + columns, values, mask=mask)


@triton.jit
def rope_kernel(
    query_ptr,  # [num_tokens, num_heads, head_dim]
    key_ptr,  # [num_tokens, num_kv_heads, head_dim]
    value_ptr,  # [num_tokens, num_kv_heads, head_dim]; None unless WRITE_CACHE
    positions_ptr,  # [num_tokens] int64
    cos_sin_ptr,  # [max_positions, head_dim]: cos | sin
    query_out_ptr,  # [num_tokens, num_heads, head_dim]
    key_out_ptr,  # [num_tokens, num_kv_heads, head_dim]; None when WRITE_CACHE
    key_cache_ptr,  # [num_blocks, block_size, num_kv_heads, head_dim]; None unless WRITE_CACHE
    value_cache_ptr,  # same layout as key_cache; None unless WRITE_CACHE
    slot_mapping_ptr,  # [num_tokens] int64; None unless WRITE_CACHE
    stride_query_token,
    stride_query_head,
    stride_key_token,
    stride_key_head,
    stride_value_token,
    stride_value_head,
    stride_cos_sin_position,
    stride_query_out_token,
    stride_query_out_head,
    stride_key_out_token,
    stride_key_out_head,
    stride_cache_block,
    stride_cache_slot,
    stride_cache_head,
    num_heads,
    num_kv_heads,
    head_dim,
    BLOCK_SIZE: tl.constexpr,  # tokens per KV block
    WRITE_CACHE: tl.constexpr,
    BLOCK_HEADS_Q: tl.constexpr,
    BLOCK_HEADS_KV: tl.constexpr,
    BLOCK_HALF: tl.constexpr,
):
    token = tl.program_id(0).to(tl.int64)
    half_dim = head_dim // 2
    position = tl.load(positions_ptr + token)
    half_columns = tl.arange(0, BLOCK_HALF)
    row_ptr = cos_sin_ptr + position * stride_cos_sin_position + half_columns
    cos = tl.load(row_ptr, mask=half_columns < half_dim, other=0.0).to(tl.float32)
    sin = tl.load(row_ptr + half_dim, mask=half_columns < half_dim, other=0.0).to(tl.float32)
    _rotate_heads(
        in_ptr=query_ptr + token * stride_query_token, stride_in_head=stride_query_head,
        out_ptr=query_out_ptr + token * stride_query_out_token,
        stride_out_head=stride_query_out_head, num_heads=num_heads, cos=cos, sin=sin,
        half_dim=half_dim, BLOCK_HEADS=BLOCK_HEADS_Q, BLOCK_HALF=BLOCK_HALF,
    )  # fmt: skip
    if WRITE_CACHE:
        slot = tl.load(slot_mapping_ptr + token)
        if slot >= 0:  # a negative slot marks a padding token: nothing to store
            cache_offset = (slot // BLOCK_SIZE) * stride_cache_block + (
                slot % BLOCK_SIZE
            ) * stride_cache_slot
            _rotate_heads(
                in_ptr=key_ptr + token * stride_key_token, stride_in_head=stride_key_head,
                out_ptr=key_cache_ptr + cache_offset, stride_out_head=stride_cache_head,
                num_heads=num_kv_heads, cos=cos, sin=sin, half_dim=half_dim,
                BLOCK_HEADS=BLOCK_HEADS_KV, BLOCK_HALF=BLOCK_HALF,
            )  # fmt: skip
            copy_heads(
                in_ptr=value_ptr + token * stride_value_token, stride_in_head=stride_value_head,
                out_ptr=value_cache_ptr + cache_offset, stride_out_head=stride_cache_head,
                num_heads=num_kv_heads, head_dim=head_dim,
                BLOCK_HEADS=BLOCK_HEADS_KV, BLOCK_DIM=2 * BLOCK_HALF,
            )  # fmt: skip
    else:
        _rotate_heads(
            in_ptr=key_ptr + token * stride_key_token, stride_in_head=stride_key_head,
            out_ptr=key_out_ptr + token * stride_key_out_token, stride_out_head=stride_key_out_head,
            num_heads=num_kv_heads, cos=cos, sin=sin, half_dim=half_dim,
            BLOCK_HEADS=BLOCK_HEADS_KV, BLOCK_HALF=BLOCK_HALF,
        )  # fmt: skip


def _check_rope_inputs(
    query: torch.Tensor, key: torch.Tensor, positions: torch.Tensor, cos_sin_cache: torch.Tensor
) -> None:
    if query.dim() != 3 or key.dim() != 3:
        raise ValueError(
            f"query and key must be [num_tokens, heads, head_dim], got "
            f"{tuple(query.shape)} and {tuple(key.shape)}"
        )
    num_tokens, _, head_dim = query.shape
    if key.shape[0] != num_tokens or key.shape[2] != head_dim or key.dtype != query.dtype:
        raise ValueError(f"key {tuple(key.shape)} {key.dtype} does not match query {tuple(query.shape)}")
    if head_dim % 2:
        raise ValueError(f"head_dim must be even, got {head_dim}")
    if positions.shape != (num_tokens,) or positions.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"positions must be [{num_tokens}] int64, got {tuple(positions.shape)} {positions.dtype}")
    if cos_sin_cache.dim() != 2 or cos_sin_cache.shape[1] != head_dim:
        raise ValueError(f"cos_sin_cache must be [max_positions, {head_dim}], got {tuple(cos_sin_cache.shape)}")
    for name, tensor in (("query", query), ("key", key), ("cos_sin_cache", cos_sin_cache)):
        if tensor.stride(-1) != 1:
            raise ValueError(f"{name} must be contiguous along head_dim")


def _launch(
    query: torch.Tensor,
    key: torch.Tensor,
    positions: torch.Tensor,
    cos_sin_cache: torch.Tensor,
    query_out: torch.Tensor,
    key_out: torch.Tensor | None = None,  # `rope`: where the rotated key goes
    value: torch.Tensor | None = None,  # `rope_and_write_kv`: this and the three below
    key_cache: torch.Tensor | None = None,
    value_cache: torch.Tensor | None = None,
    slot_mapping: torch.Tensor | None = None,
) -> None:
    """One program per token; with a key_cache the rotated key and the value go there."""
    num_tokens, num_heads, head_dim = query.shape
    num_kv_heads = key.shape[1]
    if num_tokens == 0:
        return
    rope_kernel[(num_tokens,)](
        query_ptr=query, key_ptr=key, value_ptr=value, positions_ptr=positions,
        cos_sin_ptr=cos_sin_cache, query_out_ptr=query_out, key_out_ptr=key_out,
        key_cache_ptr=key_cache, value_cache_ptr=value_cache, slot_mapping_ptr=slot_mapping,
        stride_query_token=query.stride(0), stride_query_head=query.stride(1),
        stride_key_token=key.stride(0), stride_key_head=key.stride(1),
        stride_value_token=_stride(value, 0), stride_value_head=_stride(value, 1),
        stride_cos_sin_position=cos_sin_cache.stride(0),
        stride_query_out_token=query_out.stride(0), stride_query_out_head=query_out.stride(1),
        stride_key_out_token=_stride(key_out, 0), stride_key_out_head=_stride(key_out, 1),
        stride_cache_block=_stride(key_cache, 0), stride_cache_slot=_stride(key_cache, 1),
        stride_cache_head=_stride(key_cache, 2),
        num_heads=num_heads, num_kv_heads=num_kv_heads, head_dim=head_dim,
        BLOCK_SIZE=key_cache.shape[1] if key_cache is not None else 1,
        WRITE_CACHE=key_cache is not None,
        BLOCK_HEADS_Q=triton.next_power_of_2(num_heads),
        BLOCK_HEADS_KV=triton.next_power_of_2(num_kv_heads),
        BLOCK_HALF=triton.next_power_of_2(head_dim // 2),
        num_warps=4,
    )  # fmt: skip


def _stride(tensor: torch.Tensor | None, dim: int) -> int:
    """The stride of a tensor the kernel reads; 0 for one it does not get (None)."""
    return tensor.stride(dim) if tensor is not None else 0


def rope(
    query: torch.Tensor,  # [num_tokens, num_heads, head_dim]
    key: torch.Tensor,  # [num_tokens, num_kv_heads, head_dim]
    positions: torch.Tensor,  # [num_tokens] int64
    cos_sin_cache: torch.Tensor,  # [max_positions, head_dim]
) -> tuple[torch.Tensor, torch.Tensor]:  # new (query, key), same shapes and dtype
    """Rotate query and key by their positions into new tensors."""
    _check_rope_inputs(query, key, positions, cos_sin_cache)
    query_out = torch.empty(query.shape, dtype=query.dtype, device=query.device)
    key_out = torch.empty(key.shape, dtype=key.dtype, device=key.device)
    _launch(
        query=query, key=key, positions=positions, cos_sin_cache=cos_sin_cache,
        query_out=query_out, key_out=key_out,
    )  # fmt: skip
    return query_out, key_out


def rope_and_write_kv(
    query: torch.Tensor,  # [num_tokens, num_heads, head_dim]
    key: torch.Tensor,  # [num_tokens, num_kv_heads, head_dim]
    value: torch.Tensor,  # [num_tokens, num_kv_heads, head_dim]
    positions: torch.Tensor,  # [num_tokens] int64
    cos_sin_cache: torch.Tensor,  # [max_positions, head_dim]
    key_cache: torch.Tensor,  # [num_blocks, block_size, num_kv_heads, head_dim]
    value_cache: torch.Tensor,  # [num_blocks, block_size, num_kv_heads, head_dim]
    slot_mapping: torch.Tensor,  # [num_tokens] int64; < 0 = padding, not stored
) -> torch.Tensor:  # rotated query [num_tokens, num_heads, head_dim]
    """Rotate query (returned) and key, and store the rotated key and the value in the cache."""
    _check_rope_inputs(query, key, positions, cos_sin_cache)
    if value.shape != key.shape or value.dtype != key.dtype or value.stride(-1) != 1:
        raise ValueError(f"value {tuple(value.shape)} {value.dtype} must match key {tuple(key.shape)}")
    expected = (key.shape[1], key.shape[2])
    for name, cache in (("key_cache", key_cache), ("value_cache", value_cache)):
        if cache.dim() != 4 or tuple(cache.shape[2:]) != expected or cache.dtype != key.dtype:
            raise ValueError(
                f"{name} must be [num_blocks, block_size, {expected[0]}, {expected[1]}] {key.dtype}, "
                f"got {tuple(cache.shape)} {cache.dtype}"
            )
    if key_cache.stride() != value_cache.stride() or key_cache.stride(-1) != 1:
        raise ValueError("key_cache and value_cache must share strides, contiguous along head_dim")
    if slot_mapping.shape != (key.shape[0],):
        raise ValueError(f"slot_mapping must be [{key.shape[0]}], got {tuple(slot_mapping.shape)}")
    query_out = torch.empty(query.shape, dtype=query.dtype, device=query.device)
    _launch(
        query=query, key=key, positions=positions, cos_sin_cache=cos_sin_cache,
        query_out=query_out, value=value, key_cache=key_cache, value_cache=value_cache,
        slot_mapping=slot_mapping,
    )  # fmt: skip
    return query_out


def rope_ref(
    query: torch.Tensor,  # [num_tokens, num_heads, head_dim]
    key: torch.Tensor,  # [num_tokens, num_kv_heads, head_dim]
    positions: torch.Tensor,  # [num_tokens] int64
    cos_sin_cache: torch.Tensor,  # [max_positions, head_dim]
) -> tuple[torch.Tensor, torch.Tensor]:  # float64 (query, key)
    """Reference in float64: gather cos/sin rows, rotate halves (reads q, k, writes q, k)."""
    cos, sin = cos_sin_cache[positions].double().unsqueeze(1).chunk(2, dim=-1)  # [T, 1, D/2]

    def rotate(x: torch.Tensor) -> torch.Tensor:
        first, second = x.double().chunk(2, dim=-1)
        return torch.cat((first * cos - second * sin, second * cos + first * sin), dim=-1)

    return rotate(query), rotate(key)
