"""Causal paged attention over a ragged batch (prefill, chunked prefill, mixed batches).

Sequence s owns query tokens query_start_loc[s] : query_start_loc[s + 1] (query_len of
them) and has seq_len keys in the paged cache after this step; query token i sits at
position seq_len - query_len + i and attends to keys at positions <= its own.

Grid: (num_seqs, cdiv(max_query_len, TOKENS_PER_TILE), num_kv_heads). A program owns
TOKENS_PER_TILE consecutive query tokens of one sequence times the GROUP query heads
of one KV head (rows = token-major, head-minor, BLOCK_M = TOKENS_PER_TILE * GROUP_PAD),
and runs FlashAttention-2's online softmax over the key tiles it can see. Programs
past the end of a shorter sequence exit at once, so the grid needs no host sync.

Key tiles entirely below the tile's first query position need no causal mask; only
the last few tiles (the diagonal) pay for it. With a sliding window the loop starts at
the tile holding the first key the tile's first row sees, and every tile is masked.

Memory per program: Q tile once, K and V of positions < last query position once,
output once: FLOPs 4 * query_len * seq_len * head_dim per head (half of it masked
away for a square causal prefill), bytes ~ 2 * seq_len * head_dim * itemsize per
(tile, KV head), mostly L2 hits across the tiles of one sequence.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from tritium_kernels.attention_common import (
    LOG2_E,
    attend_tile,
    check_paged_attention_inputs,
    dot_precision,
    next_power_of_2,
    upcast_dot,
    window_and_softcap,
)


@triton.jit
def prefill_attention_kernel(
    query_ptr,  # [num_tokens, num_heads, head_dim]
    key_cache_ptr,  # [num_blocks, block_size, num_kv_heads, head_dim]
    value_cache_ptr,  # [num_blocks, block_size, num_kv_heads, head_dim]
    out_ptr,  # [num_tokens, num_heads, head_dim]
    query_start_loc_ptr,  # [num_seqs + 1] int32
    seq_lens_ptr,  # [num_seqs] int32
    block_tables_ptr,  # [num_seqs, max_blocks_per_seq] int32
    stride_query_token,
    stride_query_head,
    stride_out_token,
    stride_out_head,
    stride_cache_block,
    stride_cache_slot,
    stride_cache_head,
    stride_block_tables_seq,
    qk_scale,  # softmax scale * log2(e)
    window,  # sliding window (WINDOW only)
    softcap_log2,  # softcap * log2(e) (SOFTCAP only)
    GROUP: tl.constexpr,  # query heads per KV head
    GROUP_PAD: tl.constexpr,  # GROUP rounded up to a power of two
    BLOCK_M: tl.constexpr,  # query rows per program = tokens * GROUP_PAD
    BLOCK_N: tl.constexpr,  # key positions per tile
    BLOCK_SIZE: tl.constexpr,  # tokens per KV block
    HEAD_DIM: tl.constexpr,
    SKIP_DECODES: tl.constexpr,  # sequences with query_len 1 are left to the decode kernel
    WINDOW: tl.constexpr,
    SOFTCAP: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    UPCAST_DOT: tl.constexpr,
):
    seq = tl.program_id(0)
    query_tile = tl.program_id(1)
    kv_head = tl.program_id(2)
    TOKENS_PER_TILE: tl.constexpr = BLOCK_M // GROUP_PAD

    token_start = tl.load(query_start_loc_ptr + seq)
    query_len = tl.load(query_start_loc_ptr + seq + 1) - token_start
    tile_start = query_tile * TOKENS_PER_TILE  # first query token of this program, in the sequence
    skip = tile_start >= query_len
    if SKIP_DECODES:
        skip = skip | (query_len == 1)
    if skip:
        return
    seq_len = tl.load(seq_lens_ptr + seq)
    context_len = seq_len - query_len  # keys already cached before this step

    rows = tl.arange(0, BLOCK_M)
    token_in_seq = tile_start + rows // GROUP_PAD  # [BLOCK_M]
    head_in_group = rows % GROUP_PAD
    row_valid = (token_in_seq < query_len) & (head_in_group < GROUP)
    query_head = kv_head * GROUP + head_in_group
    token = (token_start + token_in_seq).to(tl.int64)
    dims = tl.arange(0, HEAD_DIM)
    q = tl.load(
        query_ptr
        + token[:, None] * stride_query_token
        + query_head[:, None] * stride_query_head
        + dims[None, :],
        mask=row_valid[:, None],
        other=0.0,
    )  # [BLOCK_M, HEAD_DIM]
    query_positions = context_len + token_in_seq

    acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
    row_max = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    row_sum = tl.zeros([BLOCK_M], dtype=tl.float32)
    key_cache_head_ptr = key_cache_ptr + kv_head * stride_cache_head
    value_cache_head_ptr = value_cache_ptr + kv_head * stride_cache_head
    block_table_ptr = block_tables_ptr + seq * stride_block_tables_seq

    first_query = context_len + tile_start  # position of the tile's first query row
    keys_end = tl.minimum(first_query + TOKENS_PER_TILE, seq_len)
    if WINDOW:
        # No row sees a key at or before first_query - window; every tile is masked.
        key_first = tl.maximum(first_query - window + 1, 0)
        unmasked_start = (key_first // BLOCK_N) * BLOCK_N
        unmasked_end = unmasked_start
    else:
        # Keys below the tile's first query position are visible to every row.
        key_first = 0
        unmasked_start = 0
        unmasked_end = (first_query // BLOCK_N) * BLOCK_N
    for key_start in range(unmasked_start, unmasked_end, BLOCK_N):
        acc, row_max, row_sum = attend_tile(
            q=q, acc=acc, row_max=row_max, row_sum=row_sum,
            key_cache_ptr=key_cache_head_ptr, value_cache_ptr=value_cache_head_ptr,
            block_table_ptr=block_table_ptr, key_start=key_start, key_first=key_first,
            key_end=seq_len,
            query_positions=None,  # below the diagonal: every row sees every key
            window=window, softcap_log2=softcap_log2,
            stride_cache_block=stride_cache_block, stride_cache_slot=stride_cache_slot,
            qk_scale=qk_scale, BLOCK_SIZE=BLOCK_SIZE, BLOCK_N=BLOCK_N, HEAD_DIM=HEAD_DIM,
            CAUSAL=False, WINDOW=False, SOFTCAP=SOFTCAP,
            DOT_PRECISION=DOT_PRECISION, UPCAST_DOT=UPCAST_DOT,
        )  # fmt: skip
    for key_start in range(unmasked_end, keys_end, BLOCK_N):
        acc, row_max, row_sum = attend_tile(
            q=q, acc=acc, row_max=row_max, row_sum=row_sum,
            key_cache_ptr=key_cache_head_ptr, value_cache_ptr=value_cache_head_ptr,
            block_table_ptr=block_table_ptr, key_start=key_start, key_first=key_first,
            key_end=seq_len,
            query_positions=query_positions,
            window=window, softcap_log2=softcap_log2,
            stride_cache_block=stride_cache_block, stride_cache_slot=stride_cache_slot,
            qk_scale=qk_scale, BLOCK_SIZE=BLOCK_SIZE, BLOCK_N=BLOCK_N, HEAD_DIM=HEAD_DIM,
            CAUSAL=True, WINDOW=WINDOW, SOFTCAP=SOFTCAP,
            DOT_PRECISION=DOT_PRECISION, UPCAST_DOT=UPCAST_DOT,
        )  # fmt: skip

    out = acc / tl.where(row_sum > 0.0, row_sum, 1.0)[:, None]
    tl.store(
        out_ptr + token[:, None] * stride_out_token + query_head[:, None] * stride_out_head + dims[None, :],
        out.to(out_ptr.dtype.element_ty),
        mask=row_valid[:, None],
    )


def prefill_attention(
    query: torch.Tensor,  # [num_tokens, num_heads, head_dim]
    key_cache: torch.Tensor,  # [num_blocks, block_size, num_kv_heads, head_dim]
    value_cache: torch.Tensor,  # [num_blocks, block_size, num_kv_heads, head_dim]
    query_start_loc: torch.Tensor,  # [num_seqs + 1] int32
    seq_lens: torch.Tensor,  # [num_seqs] int32
    block_tables: torch.Tensor,  # [num_seqs, max_blocks_per_seq] int32
    max_query_len: int,
    scale: float,
    out: torch.Tensor | None = None,  # [num_tokens, num_heads, head_dim] to write into
    skip_decodes: bool = False,  # leave query_len-1 sequences' rows unwritten
    window: int | None = None,  # sliding window: keys > position - window; None = all
    softcap: float | None = None,  # scores -> softcap * tanh(scores / softcap); None = off
) -> torch.Tensor:  # [num_tokens, num_heads, head_dim]
    """Causal attention of every sequence's new tokens over its paged context.

    The new tokens' K/V must already be in the cache (`write_kv_cache`).
    """
    masking = window_and_softcap(window, softcap)
    check_paged_attention_inputs(query, key_cache, value_cache, query_start_loc, seq_lens, block_tables)
    if out is None:
        out = torch.empty_like(query)
    elif out.shape != query.shape or out.dtype != query.dtype or out.stride(2) != 1:
        raise ValueError(f"out must be {tuple(query.shape)} {query.dtype}, contiguous along head_dim")
    num_tokens, num_heads, head_dim = query.shape
    num_seqs = seq_lens.shape[0]
    num_kv_heads = key_cache.shape[2]
    if num_tokens == 0 or num_seqs == 0 or max_query_len == 0:
        return out
    group = num_heads // num_kv_heads
    group_pad = next_power_of_2(group)
    # 64 rows x 64 keys: fits registers at head_dim 128 with 4 warps (2 at head_dim <= 64).
    block_m = max(64, group_pad)
    tokens_per_tile = block_m // group_pad
    grid = (num_seqs, triton.cdiv(max_query_len, tokens_per_tile), num_kv_heads)
    prefill_attention_kernel[grid](
        query_ptr=query, key_cache_ptr=key_cache, value_cache_ptr=value_cache, out_ptr=out,
        query_start_loc_ptr=query_start_loc, seq_lens_ptr=seq_lens, block_tables_ptr=block_tables,
        stride_query_token=query.stride(0), stride_query_head=query.stride(1),
        stride_out_token=out.stride(0), stride_out_head=out.stride(1),
        stride_cache_block=key_cache.stride(0), stride_cache_slot=key_cache.stride(1),
        stride_cache_head=key_cache.stride(2), stride_block_tables_seq=block_tables.stride(0),
        qk_scale=scale * LOG2_E,
        **masking,
        GROUP=group,
        GROUP_PAD=group_pad,
        BLOCK_M=block_m,
        BLOCK_N=64,
        BLOCK_SIZE=key_cache.shape[1],
        HEAD_DIM=head_dim,
        SKIP_DECODES=skip_decodes,
        DOT_PRECISION=dot_precision(query.dtype),
        UPCAST_DOT=upcast_dot(query.dtype),
        num_warps=4 if head_dim >= 128 else 2,
        num_stages=2,
    )  # fmt: skip
    return out
