"""Paged attention entry points: the KV-cache write, the batch dispatcher, references.

- `write_kv_cache`: store the new tokens' K and V at their slots (one program per token;
  reads K, V once and writes them once: 4 * num_tokens * num_kv_heads * head_dim *
  itemsize bytes). `tritium_kernels.rope.rope_and_write_kv` fuses this with RoPE.
- `paged_attention`: one engine step's attention. A pure decode step (max_query_len 1)
  runs the split-KV decode kernel; a step with longer chunks runs the prefill kernel
  for those and, in the same step, the decode kernel for its query_len-1 sequences
  (each kernel skips the other's sequences on the device, so no host sync).
- `paged_attention_ref`, `write_kv_cache_ref`: float64 / torch references.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from tritium_kernels.attention_decode import decode_attention
from tritium_kernels.attention_prefill import prefill_attention
from tritium_kernels.rope import copy_heads


@triton.jit
def write_kv_cache_kernel(
    key_ptr,  # [num_tokens, num_kv_heads, head_dim]
    value_ptr,  # [num_tokens, num_kv_heads, head_dim]
    key_cache_ptr,  # [num_blocks, block_size, num_kv_heads, head_dim]
    value_cache_ptr,  # [num_blocks, block_size, num_kv_heads, head_dim]
    slot_mapping_ptr,  # [num_tokens] int64
    stride_key_token,
    stride_key_head,
    stride_value_token,
    stride_value_head,
    stride_cache_block,
    stride_cache_slot,
    stride_cache_head,
    num_kv_heads,
    head_dim,
    BLOCK_SIZE: tl.constexpr,
    BLOCK_HEADS: tl.constexpr,
    BLOCK_DIM: tl.constexpr,
):
    token = tl.program_id(0).to(tl.int64)
    slot = tl.load(slot_mapping_ptr + token)
    if slot < 0:  # padding token
        return
    cache_offset = (slot // BLOCK_SIZE) * stride_cache_block + (slot % BLOCK_SIZE) * stride_cache_slot
    copy_heads(
        in_ptr=key_ptr + token * stride_key_token, stride_in_head=stride_key_head,
        out_ptr=key_cache_ptr + cache_offset, stride_out_head=stride_cache_head,
        num_heads=num_kv_heads, head_dim=head_dim, BLOCK_HEADS=BLOCK_HEADS, BLOCK_DIM=BLOCK_DIM,
    )  # fmt: skip
    copy_heads(
        in_ptr=value_ptr + token * stride_value_token, stride_in_head=stride_value_head,
        out_ptr=value_cache_ptr + cache_offset, stride_out_head=stride_cache_head,
        num_heads=num_kv_heads, head_dim=head_dim, BLOCK_HEADS=BLOCK_HEADS, BLOCK_DIM=BLOCK_DIM,
    )  # fmt: skip


def write_kv_cache(
    key: torch.Tensor,  # [num_tokens, num_kv_heads, head_dim]
    value: torch.Tensor,  # [num_tokens, num_kv_heads, head_dim]
    key_cache: torch.Tensor,  # [num_blocks, block_size, num_kv_heads, head_dim]
    value_cache: torch.Tensor,  # [num_blocks, block_size, num_kv_heads, head_dim]
    slot_mapping: torch.Tensor,  # [num_tokens] int64; < 0 = padding, not stored
) -> None:
    """Store each new token's key and value at its cache slot, in place."""
    if key.dim() != 3 or value.shape != key.shape or value.dtype != key.dtype:
        raise ValueError(
            f"key and value must be the same [num_tokens, num_kv_heads, head_dim], got "
            f"{tuple(key.shape)} {key.dtype} and {tuple(value.shape)} {value.dtype}"
        )
    num_tokens, num_kv_heads, head_dim = key.shape
    for name, cache in (("key_cache", key_cache), ("value_cache", value_cache)):
        if cache.dim() != 4 or tuple(cache.shape[2:]) != (num_kv_heads, head_dim) or cache.dtype != key.dtype:
            raise ValueError(
                f"{name} must be [num_blocks, block_size, {num_kv_heads}, {head_dim}] {key.dtype}, "
                f"got {tuple(cache.shape)} {cache.dtype}"
            )
    if key_cache.stride() != value_cache.stride() or key_cache.stride(3) != 1:
        raise ValueError("key_cache and value_cache must share strides, contiguous along head_dim")
    if key.stride(2) != 1 or value.stride(2) != 1:
        raise ValueError("key and value must be contiguous along head_dim")
    if slot_mapping.shape != (num_tokens,) or slot_mapping.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"slot_mapping must be [{num_tokens}] int64, got {tuple(slot_mapping.shape)}")
    if num_tokens == 0:
        return
    write_kv_cache_kernel[(num_tokens,)](
        key_ptr=key, value_ptr=value, key_cache_ptr=key_cache, value_cache_ptr=value_cache,
        slot_mapping_ptr=slot_mapping,
        stride_key_token=key.stride(0), stride_key_head=key.stride(1),
        stride_value_token=value.stride(0), stride_value_head=value.stride(1),
        stride_cache_block=key_cache.stride(0), stride_cache_slot=key_cache.stride(1),
        stride_cache_head=key_cache.stride(2),
        num_kv_heads=num_kv_heads, head_dim=head_dim,
        BLOCK_SIZE=key_cache.shape[1],
        BLOCK_HEADS=triton.next_power_of_2(num_kv_heads),
        BLOCK_DIM=triton.next_power_of_2(head_dim),
        num_warps=2,
    )  # fmt: skip


def paged_attention(
    query: torch.Tensor,  # [num_tokens, num_heads, head_dim]
    key_cache: torch.Tensor,  # [num_blocks, block_size, num_kv_heads, head_dim]
    value_cache: torch.Tensor,  # [num_blocks, block_size, num_kv_heads, head_dim]
    query_start_loc: torch.Tensor,  # [num_seqs + 1] int32
    seq_lens: torch.Tensor,  # [num_seqs] int32, context length after this step
    block_tables: torch.Tensor,  # [num_seqs, max_blocks_per_seq] int32
    max_query_len: int,
    max_seq_len: int,
    scale: float,
    has_decodes: bool = True,  # False when no sequence has query_len 1 (skips a launch)
    num_splits: int | None = None,  # decode split-KV count; None = by occupancy
    window: int | None = None,  # sliding window: keys > position - window; None = all
    softcap: float | None = None,  # scores -> softcap * tanh(scores / softcap); None = off
) -> torch.Tensor:  # [num_tokens, num_heads, head_dim]
    """Causal attention of one engine step's new tokens over their paged contexts."""
    out = torch.empty_like(query)
    if max_query_len > 1:
        prefill_attention(
            query=query, key_cache=key_cache, value_cache=value_cache,
            query_start_loc=query_start_loc, seq_lens=seq_lens, block_tables=block_tables,
            max_query_len=max_query_len, scale=scale, out=out, skip_decodes=has_decodes,
            window=window, softcap=softcap,
        )  # fmt: skip
        if not has_decodes:
            return out
    decode_attention(
        query=query, key_cache=key_cache, value_cache=value_cache,
        query_start_loc=query_start_loc, seq_lens=seq_lens, block_tables=block_tables,
        max_seq_len=max_seq_len, scale=scale, out=out, num_splits=num_splits,
        window=window, softcap=softcap,
    )  # fmt: skip
    return out


def write_kv_cache_ref(
    key: torch.Tensor,
    value: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
) -> None:
    """Reference: index_copy into the flattened [num_slots, num_kv_heads, head_dim] view."""
    keep = slot_mapping >= 0
    num_kv_heads, head_dim = key_cache.shape[2], key_cache.shape[3]
    key_cache.view(-1, num_kv_heads, head_dim)[slot_mapping[keep]] = key[keep]
    value_cache.view(-1, num_kv_heads, head_dim)[slot_mapping[keep]] = value[keep]


def paged_attention_ref(
    query: torch.Tensor,  # [num_tokens, num_heads, head_dim]
    key_cache: torch.Tensor,  # [num_blocks, block_size, num_kv_heads, head_dim]
    value_cache: torch.Tensor,
    query_start_loc: torch.Tensor,  # [num_seqs + 1]
    seq_lens: torch.Tensor,  # [num_seqs]
    block_tables: torch.Tensor,  # [num_seqs, max_blocks_per_seq]
    scale: float,
    window: int | None = None,  # keys > position - window; None = all
    softcap: float | None = None,  # scores -> softcap * tanh(scores / softcap)
) -> torch.Tensor:  # [num_tokens, num_heads, head_dim] float64
    """Reference in float64, one sequence at a time: gather the context through the block
    table (reads 2 * seq_len * num_kv_heads * head_dim per sequence), repeat KV heads,
    soft-cap, masked softmax (materialises [num_heads, query_len, seq_len] scores)."""
    num_tokens, num_heads, head_dim = query.shape
    block_size, num_kv_heads = key_cache.shape[1], key_cache.shape[2]
    group = num_heads // num_kv_heads
    out = torch.zeros((num_tokens, num_heads, head_dim), dtype=torch.float64, device=query.device)
    starts = query_start_loc.tolist()
    for seq, seq_len in enumerate(seq_lens.tolist()):
        token_start, token_end = starts[seq], starts[seq + 1]
        query_len = token_end - token_start
        if query_len == 0:
            continue
        # Keys behind the first query's window are never read (their blocks may be freed).
        key_first = 0 if window is None else max(seq_len - query_len - window + 1, 0)
        positions = torch.arange(key_first, seq_len, device=query.device)
        slots = block_tables[seq, positions // block_size].long() * block_size + positions % block_size
        keys = key_cache.reshape(-1, num_kv_heads, head_dim)[slots].double()  # [L, Hkv, D]
        values = value_cache.reshape(-1, num_kv_heads, head_dim)[slots].double()
        keys = keys.repeat_interleave(group, dim=1).transpose(0, 1)  # [Hq, L, D]
        values = values.repeat_interleave(group, dim=1).transpose(0, 1)
        queries = query[token_start:token_end].double().transpose(0, 1)  # [Hq, q, D]
        scores = queries @ keys.transpose(1, 2) * scale  # [Hq, q, L]
        if softcap is not None:
            scores = torch.tanh(scores / softcap) * softcap
        query_positions = torch.arange(seq_len - query_len, seq_len, device=query.device)
        visible = positions[None, :] <= query_positions[:, None]  # [q, L]
        if window is not None:
            visible &= positions[None, :] > query_positions[:, None] - window
        scores = scores.masked_fill(~visible, float("-inf"))
        out[token_start:token_end] = (scores.softmax(-1) @ values).transpose(0, 1)
    return out
