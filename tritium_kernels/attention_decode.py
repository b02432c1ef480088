"""Paged decode attention with split-KV (flash-decoding).

Each decoding sequence has one new query token (at position seq_len - 1, which sees
every cached key, or with a sliding window the last `window` of them: the splits then
share out the tiles from the one holding seq_len - window). A batch of a few long sequences has too few (sequence, KV head)
pairs to fill the GPU, so each sequence's keys are cut into NUM_SPLITS ranges:

1. `decode_attention_kernel`, grid (num_seqs, num_kv_heads, NUM_SPLITS): the GROUP
   query heads of one KV head (padded to >= 16 rows for tl.dot) attend to one key
   range; writes the normalised partial output and its log2-sum-exp.
2. `combine_splits_kernel`, grid (num_seqs, num_heads): weights each split by
   exp2(lse_split - lse_total) and writes the output row.

Memory: step 1 reads each sequence's K and V once per KV head —
2 * seq_len * num_kv_heads * head_dim * itemsize bytes, the number the benchmark
divides by time — and writes num_heads * NUM_SPLITS * (head_dim + 1) floats; step 2
reads those back (small next to the cache for seq_len >> NUM_SPLITS).

Sequences whose query_len is not 1 are skipped by both kernels (their rows are left
to the prefill kernel in a mixed batch), so no host-side split of the batch is needed.
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

DECODE_BLOCK_N = 64  # keys per tile
MAX_SPLITS = 64


@triton.jit
def decode_attention_kernel(
    query_ptr,  # [num_tokens, num_heads, head_dim]
    key_cache_ptr,  # [num_blocks, block_size, num_kv_heads, head_dim]
    value_cache_ptr,  # [num_blocks, block_size, num_kv_heads, head_dim]
    partial_out_ptr,  # [num_seqs, num_heads, NUM_SPLITS, head_dim] float32
    partial_lse_ptr,  # [num_seqs, num_heads, NUM_SPLITS] float32 (log2 domain)
    query_start_loc_ptr,  # [num_seqs + 1] int32
    seq_lens_ptr,  # [num_seqs] int32
    block_tables_ptr,  # [num_seqs, max_blocks_per_seq] int32
    stride_query_token,
    stride_query_head,
    stride_cache_block,
    stride_cache_slot,
    stride_cache_head,
    stride_block_tables_seq,
    num_heads,
    qk_scale,  # softmax scale * log2(e)
    window,  # sliding window (WINDOW only)
    softcap_log2,  # softcap * log2(e) (SOFTCAP only)
    GROUP: tl.constexpr,
    BLOCK_M: tl.constexpr,  # GROUP padded to a power of two >= 16
    BLOCK_N: tl.constexpr,
    BLOCK_SIZE: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    NUM_SPLITS: tl.constexpr,
    WINDOW: tl.constexpr,
    SOFTCAP: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    UPCAST_DOT: tl.constexpr,
):
    seq = tl.program_id(0)
    kv_head = tl.program_id(1)
    split = tl.program_id(2)
    token_start = tl.load(query_start_loc_ptr + seq)
    if tl.load(query_start_loc_ptr + seq + 1) - token_start != 1:
        return
    seq_len = tl.load(seq_lens_ptr + seq)
    key_first = 0  # the first key the query sees
    if WINDOW:
        key_first = tl.maximum(seq_len - window, 0)
    # This sequence's own tiles are shared out, so short ones use few programs' worth.
    first_tile = key_first // BLOCK_N
    num_tiles = tl.cdiv(seq_len, BLOCK_N) - first_tile
    tiles_per_split = tl.cdiv(num_tiles, NUM_SPLITS)
    key_begin = (first_tile + split * tiles_per_split) * BLOCK_N
    key_end = tl.minimum(key_begin + tiles_per_split * BLOCK_N, seq_len)

    head_in_group = tl.arange(0, BLOCK_M)
    row_valid = head_in_group < GROUP
    query_head = kv_head * GROUP + head_in_group
    dims = tl.arange(0, HEAD_DIM)
    q = tl.load(
        query_ptr + token_start.to(tl.int64) * stride_query_token
        + query_head[:, None] * stride_query_head + dims[None, :],
        mask=row_valid[:, None],
        other=0.0,
    )  # [BLOCK_M, HEAD_DIM]
    acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
    row_max = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    row_sum = tl.zeros([BLOCK_M], dtype=tl.float32)
    block_table_ptr = block_tables_ptr + seq * stride_block_tables_seq
    for key_start in range(key_begin, key_end, BLOCK_N):
        acc, row_max, row_sum = attend_tile(
            q=q, acc=acc, row_max=row_max, row_sum=row_sum,
            key_cache_ptr=key_cache_ptr + kv_head * stride_cache_head,
            value_cache_ptr=value_cache_ptr + kv_head * stride_cache_head,
            block_table_ptr=block_table_ptr, key_start=key_start, key_first=key_first,
            key_end=key_end,
            query_positions=None,  # the one query sees every key in [key_first, key_end)
            window=window, softcap_log2=softcap_log2,
            stride_cache_block=stride_cache_block, stride_cache_slot=stride_cache_slot,
            qk_scale=qk_scale, BLOCK_SIZE=BLOCK_SIZE, BLOCK_N=BLOCK_N, HEAD_DIM=HEAD_DIM,
            CAUSAL=False, WINDOW=False, SOFTCAP=SOFTCAP,
            DOT_PRECISION=DOT_PRECISION, UPCAST_DOT=UPCAST_DOT,
        )  # fmt: skip
    # An empty split (past the end of a short sequence) has row_sum 0: lse -inf, weight 0.
    nonempty = row_sum > 0.0
    out = acc / tl.where(nonempty, row_sum, 1.0)[:, None]
    lse = tl.where(nonempty, row_max + tl.log2(tl.where(nonempty, row_sum, 1.0)), float("-inf"))
    partial_row = (seq * num_heads + query_head).to(tl.int64) * NUM_SPLITS + split  # [BLOCK_M]
    tl.store(partial_lse_ptr + partial_row, lse, mask=row_valid)
    tl.store(
        partial_out_ptr + partial_row[:, None] * HEAD_DIM + dims[None, :], out, mask=row_valid[:, None]
    )


@triton.jit
def combine_splits_kernel(
    partial_out_ptr,  # [num_seqs, num_heads, NUM_SPLITS, head_dim] float32
    partial_lse_ptr,  # [num_seqs, num_heads, NUM_SPLITS] float32
    out_ptr,  # [num_tokens, num_heads, head_dim]
    query_start_loc_ptr,  # [num_seqs + 1] int32
    stride_out_token,
    stride_out_head,
    num_heads,
    HEAD_DIM: tl.constexpr,
    NUM_SPLITS: tl.constexpr,
    SPLITS_PAD: tl.constexpr,
):
    seq = tl.program_id(0)
    head = tl.program_id(1)
    token = tl.load(query_start_loc_ptr + seq)
    if tl.load(query_start_loc_ptr + seq + 1) - token != 1:
        return
    splits = tl.arange(0, SPLITS_PAD)
    first_row = (seq * num_heads + head).to(tl.int64) * NUM_SPLITS
    lse = tl.load(partial_lse_ptr + first_row + splits, mask=splits < NUM_SPLITS, other=float("-inf"))
    weights = tl.exp2(lse - tl.max(lse, 0))  # [SPLITS_PAD]; split 0 is never empty
    dims = tl.arange(0, HEAD_DIM)
    partial = tl.load(
        partial_out_ptr + (first_row + splits)[:, None] * HEAD_DIM + dims[None, :],
        mask=(splits < NUM_SPLITS)[:, None],
        other=0.0,
    )  # [SPLITS_PAD, HEAD_DIM]
    out = tl.sum(partial * weights[:, None], 0) / tl.sum(weights, 0)
    tl.store(
        out_ptr + token.to(tl.int64) * stride_out_token + head * stride_out_head + dims,
        out.to(out_ptr.dtype.element_ty),
    )


def choose_num_splits(
    num_seqs: int, num_kv_heads: int, max_seq_len: int, device: torch.device
) -> int:
    """Enough splits that (seqs x KV heads x splits) covers the SMs about twice."""
    if device.type == "cuda":
        num_sms = torch.cuda.get_device_properties(device).multi_processor_count
    else:
        num_sms = 4  # the interpreter: still exercise splitting at small sizes
    wanted = triton.cdiv(2 * num_sms, max(1, num_seqs * num_kv_heads))
    most = max(1, triton.cdiv(max_seq_len, DECODE_BLOCK_N))
    # A power of two: NUM_SPLITS is a compile-time constant, so few variants get compiled.
    return min(triton.next_power_of_2(min(wanted, most)), MAX_SPLITS)


def decode_attention(
    query: torch.Tensor,  # [num_tokens, num_heads, head_dim]
    key_cache: torch.Tensor,  # [num_blocks, block_size, num_kv_heads, head_dim]
    value_cache: torch.Tensor,  # [num_blocks, block_size, num_kv_heads, head_dim]
    query_start_loc: torch.Tensor,  # [num_seqs + 1] int32
    seq_lens: torch.Tensor,  # [num_seqs] int32
    block_tables: torch.Tensor,  # [num_seqs, max_blocks_per_seq] int32
    max_seq_len: int,
    scale: float,
    out: torch.Tensor | None = None,  # [num_tokens, num_heads, head_dim] to write into
    num_splits: int | None = None,  # None = choose_num_splits
    window: int | None = None,  # sliding window: the last `window` keys; None = all
    softcap: float | None = None,  # scores -> softcap * tanh(scores / softcap); None = off
) -> torch.Tensor:  # [num_tokens, num_heads, head_dim]; rows of query_len-1 sequences
    """Attention of each query_len-1 sequence's token over its paged context."""
    check_paged_attention_inputs(query, key_cache, value_cache, query_start_loc, seq_lens, block_tables)
    masking = window_and_softcap(window, softcap)
    if out is None:
        out = torch.empty_like(query)
    elif out.shape != query.shape or out.dtype != query.dtype or out.stride(2) != 1:
        raise ValueError(f"out must be {tuple(query.shape)} {query.dtype}, contiguous along head_dim")
    num_tokens, num_heads, head_dim = query.shape
    num_seqs, num_kv_heads = seq_lens.shape[0], key_cache.shape[2]
    if num_tokens == 0 or num_seqs == 0 or max_seq_len == 0:
        return out
    if num_splits is None:
        keys_read = max_seq_len if window is None else min(max_seq_len, window + DECODE_BLOCK_N)
        num_splits = choose_num_splits(num_seqs, num_kv_heads, keys_read, query.device)
    if not 1 <= num_splits <= MAX_SPLITS:
        raise ValueError(f"num_splits must be in 1..{MAX_SPLITS}, got {num_splits}")
    group = num_heads // num_kv_heads
    partial_out = torch.empty(
        (num_seqs, num_heads, num_splits, head_dim), dtype=torch.float32, device=query.device
    )
    partial_lse = torch.empty((num_seqs, num_heads, num_splits), dtype=torch.float32, device=query.device)
    decode_attention_kernel[(num_seqs, num_kv_heads, num_splits)](
        query_ptr=query, key_cache_ptr=key_cache, value_cache_ptr=value_cache,
        partial_out_ptr=partial_out, partial_lse_ptr=partial_lse,
        query_start_loc_ptr=query_start_loc, seq_lens_ptr=seq_lens, block_tables_ptr=block_tables,
        stride_query_token=query.stride(0), stride_query_head=query.stride(1),
        stride_cache_block=key_cache.stride(0), stride_cache_slot=key_cache.stride(1),
        stride_cache_head=key_cache.stride(2), stride_block_tables_seq=block_tables.stride(0),
        num_heads=num_heads, qk_scale=scale * LOG2_E,
        **masking,
        GROUP=group,
        BLOCK_M=max(16, next_power_of_2(group)),
        BLOCK_N=DECODE_BLOCK_N,
        BLOCK_SIZE=key_cache.shape[1],
        HEAD_DIM=head_dim,
        NUM_SPLITS=num_splits,
        DOT_PRECISION=dot_precision(query.dtype),
        UPCAST_DOT=upcast_dot(query.dtype),
        num_warps=4,
        num_stages=3,
    )  # fmt: skip
    combine_splits_kernel[(num_seqs, num_heads)](
        partial_out_ptr=partial_out, partial_lse_ptr=partial_lse, out_ptr=out,
        query_start_loc_ptr=query_start_loc,
        stride_out_token=out.stride(0), stride_out_head=out.stride(1), num_heads=num_heads,
        HEAD_DIM=head_dim, NUM_SPLITS=num_splits, SPLITS_PAD=next_power_of_2(num_splits),
        num_warps=1 if head_dim <= 64 else 2,
    )  # fmt: skip
    return out
