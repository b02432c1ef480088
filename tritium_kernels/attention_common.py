"""What prefill and decode attention share: the paged KV tile step and input checks.

KV cache layout, per layer: [num_blocks, block_size, num_kv_heads, head_dim]; token at
position p of a sequence lives in block block_table[p // block_size], slot
p % block_size. A tile of BLOCK_N key positions is gathered through the block table
one position at a time, so BLOCK_N does not have to match block_size; each position's
head_dim row is contiguous, so the loads stay coalesced along head_dim.

Grouped-query attention: the GROUP query heads that share a KV head are packed into
the rows of one query tile, so each K/V tile is read once for the whole group.
Query head h reads KV head h // GROUP (Hugging Face `repeat_kv` order).

Sliding window (`window` > 0): a query at position p sees keys p - window < k <= p, as
transformers masks them. Soft-capping (`softcap` > 0, Gemma 2): a score s becomes
softcap * tanh(s / softcap) before the mask; in the log2 domain the kernels work in, that
is the same with softcap * log2(e) in place of softcap.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

LOG2_E = 1.4426950408889634


@triton.jit
def tanh(x):
    """tanh from exp, accurate to float32 rounding at both ends (no libdevice needed)."""
    decay = tl.exp(-2.0 * tl.abs(x))  # in (0, 1]
    magnitude = (1.0 - decay) / (1.0 + decay)
    return tl.where(x < 0, -magnitude, magnitude)


@triton.jit
def attend_tile(
    q,  # [BLOCK_M, HEAD_DIM] query rows (model dtype)
    acc,  # [BLOCK_M, HEAD_DIM] float32: sum of p * v so far
    row_max,  # [BLOCK_M] float32: running max of the scores (log2 domain)
    row_sum,  # [BLOCK_M] float32: running sum of exp2(score - row_max)
    key_cache_ptr,  # key cache advanced to this KV head
    value_cache_ptr,  # value cache advanced to this KV head
    block_table_ptr,  # [max_blocks_per_seq] int32, this sequence's row
    key_start,  # first key position of the tile
    key_first,  # keys at positions < key_first are masked out (behind every row's window)
    key_end,  # keys at positions >= key_end are masked out (seq_len, or a split's end)
    query_positions,  # [BLOCK_M] int: position of each query row; None unless CAUSAL
    window,  # sliding window of each row (CAUSAL and WINDOW only)
    softcap_log2,  # softcap * log2(e) (SOFTCAP only)
    stride_cache_block,
    stride_cache_slot,
    qk_scale,  # softmax scale * log2(e)
    BLOCK_SIZE: tl.constexpr,
    BLOCK_N: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    CAUSAL: tl.constexpr,
    WINDOW: tl.constexpr,  # mask keys at or before query position - window, per row
    SOFTCAP: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    UPCAST_DOT: tl.constexpr,  # interpreter only: its tl.dot mishandles bfloat16
):
    """One online-softmax step over keys [key_start, key_start + BLOCK_N).

    Memory: reads BLOCK_N block-table entries (L1/L2-resident) and
    2 * BLOCK_N * HEAD_DIM cache elements; everything else stays in registers. Masked
    positions (out of the sequence or behind the window) are not read: their blocks may
    have been freed and reused.
    """
    key_positions = key_start + tl.arange(0, BLOCK_N)
    in_seq = (key_positions < key_end) & (key_positions >= key_first)
    block_ids = tl.load(block_table_ptr + key_positions // BLOCK_SIZE, mask=in_seq, other=0)
    slot_offsets = (
        block_ids.to(tl.int64) * stride_cache_block + (key_positions % BLOCK_SIZE) * stride_cache_slot
    )  # [BLOCK_N]
    dims = tl.arange(0, HEAD_DIM)
    key_tile = tl.load(
        key_cache_ptr + slot_offsets[None, :] + dims[:, None], mask=in_seq[None, :], other=0.0
    )  # [HEAD_DIM, BLOCK_N]
    if UPCAST_DOT:
        scores = tl.dot(q.to(tl.float32), key_tile.to(tl.float32), input_precision="ieee")
    else:
        scores = tl.dot(q, key_tile, input_precision=DOT_PRECISION)
    scores = scores * qk_scale  # [BLOCK_M, BLOCK_N], log2 domain
    if SOFTCAP:
        scores = softcap_log2 * tanh(x=scores / softcap_log2)
    visible = in_seq[None, :]
    if CAUSAL:
        visible = visible & (key_positions[None, :] <= query_positions[:, None])
        if WINDOW:
            visible = visible & (key_positions[None, :] > query_positions[:, None] - window)
    scores = tl.where(visible, scores, float("-inf"))
    new_max = tl.maximum(row_max, tl.max(scores, 1))
    # A row that has seen no visible key yet keeps max -inf; shift by 0 to avoid inf - inf.
    shift = tl.where(new_max == float("-inf"), 0.0, new_max)
    probs = tl.exp2(scores - shift[:, None])
    correction = tl.exp2(row_max - shift)
    row_sum = row_sum * correction + tl.sum(probs, 1)
    value_tile = tl.load(
        value_cache_ptr + slot_offsets[:, None] + dims[None, :], mask=in_seq[:, None], other=0.0
    )  # [BLOCK_N, HEAD_DIM]
    probs = probs.to(value_tile.dtype)  # P @ V on tensor cores, as FlashAttention
    if UPCAST_DOT:
        update = tl.dot(probs.to(tl.float32), value_tile.to(tl.float32), input_precision="ieee")
    else:
        update = tl.dot(probs, value_tile, input_precision=DOT_PRECISION)
    acc = acc * correction[:, None] + update
    return acc, new_max, row_sum


def dot_precision(dtype: torch.dtype) -> str:
    """fp32 caches get exact fp32 dots (tests, CPU-equal numerics); 16-bit use tensor cores."""
    return "ieee" if dtype == torch.float32 else "tf32"


def upcast_dot(dtype: torch.dtype) -> bool:
    """Under TRITON_INTERPRET, tl.dot multiplies bfloat16's raw bits: upcast first."""
    return dtype == torch.bfloat16 and bool(triton.knobs.runtime.interpret)


def check_paged_attention_inputs(
    query: torch.Tensor,  # [num_tokens, num_heads, head_dim]
    key_cache: torch.Tensor,  # [num_blocks, block_size, num_kv_heads, head_dim]
    value_cache: torch.Tensor,  # [num_blocks, block_size, num_kv_heads, head_dim]
    query_start_loc: torch.Tensor,  # [num_seqs + 1] int32
    seq_lens: torch.Tensor,  # [num_seqs] int32
    block_tables: torch.Tensor,  # [num_seqs, max_blocks_per_seq] int32
) -> None:
    """Raise ValueError naming the argument whose shape, dtype or stride cannot work."""
    if query.dim() != 3:
        raise ValueError(f"query must be [num_tokens, num_heads, head_dim], got {tuple(query.shape)}")
    _, num_heads, head_dim = query.shape
    if key_cache.dim() != 4:
        raise ValueError(
            f"key_cache must be [num_blocks, block_size, num_kv_heads, head_dim], got {tuple(key_cache.shape)}"
        )
    num_kv_heads = key_cache.shape[2]
    if key_cache.shape[3] != head_dim or value_cache.shape != key_cache.shape:
        raise ValueError(
            f"key_cache {tuple(key_cache.shape)} and value_cache {tuple(value_cache.shape)} "
            f"must match each other and head_dim {head_dim}"
        )
    if key_cache.dtype != query.dtype or value_cache.dtype != query.dtype:
        raise ValueError(f"caches ({key_cache.dtype}) must have the query dtype {query.dtype}")
    if head_dim not in (16, 32, 64, 128, 256):
        raise ValueError(f"head_dim must be a power of two in 16..256, got {head_dim}")
    if num_heads % num_kv_heads:
        raise ValueError(f"num_heads {num_heads} is not a multiple of num_kv_heads {num_kv_heads}")
    block_size = key_cache.shape[1]
    if block_size & (block_size - 1):
        raise ValueError(f"block_size must be a power of two, got {block_size}")
    if query.stride(2) != 1 or key_cache.stride(3) != 1 or key_cache.stride() != value_cache.stride():
        raise ValueError("query and caches must be contiguous along head_dim; caches share strides")
    num_seqs = seq_lens.shape[0]
    for name, tensor, shape in (
        ("query_start_loc", query_start_loc, (num_seqs + 1,)),
        ("seq_lens", seq_lens, (num_seqs,)),
    ):
        if tuple(tensor.shape) != shape or tensor.dtype != torch.int32:
            raise ValueError(f"{name} must be {list(shape)} int32, got {tuple(tensor.shape)} {tensor.dtype}")
    if block_tables.dim() != 2 or block_tables.shape[0] != num_seqs or block_tables.dtype != torch.int32:
        raise ValueError(
            f"block_tables must be [{num_seqs}, max_blocks_per_seq] int32, "
            f"got {tuple(block_tables.shape)} {block_tables.dtype}"
        )
    if block_tables.stride(1) != 1:
        raise ValueError("block_tables must be contiguous along max_blocks_per_seq")


def next_power_of_2(value: int) -> int:
    return triton.next_power_of_2(max(1, value))


def window_and_softcap(window: int | None, softcap: float | None) -> dict[str, object]:
    """The kernels' arguments for a layer's window and soft-cap (checked here)."""
    if window is not None and window < 1:
        raise ValueError(f"window must be >= 1 or None, got {window}")
    if softcap is not None and not softcap > 0:
        raise ValueError(f"softcap must be > 0 or None, got {softcap}")
    return {
        "window": window or 0,
        "softcap_log2": (softcap or 1.0) * LOG2_E,
        "WINDOW": window is not None,
        "SOFTCAP": softcap is not None,
    }
