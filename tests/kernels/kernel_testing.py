"""Helpers shared by the kernel tests: tolerances, poisoning, random paged batches."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import triton

# Set by conftest (in-process knob) when there is no CUDA, or by TRITON_INTERPRET=1.
INTERPRETED = bool(triton.knobs.runtime.interpret)

# dtype -> (atol, rtol) of a kernel output against its float64 / float32 reference.
TOLERANCES: dict[torch.dtype, tuple[float, float]] = {
    torch.float32: (2e-5, 2e-5),
    torch.float16: (2e-3, 2e-3),
    torch.bfloat16: (1.6e-2, 1.6e-2),
}
# Attention accumulates over the context and rounds probabilities to the cache dtype
# before P @ V (as FlashAttention does); its budget is looser.
ATTENTION_TOLERANCES: dict[torch.dtype, tuple[float, float]] = {
    torch.float32: (1e-4, 1e-4),
    torch.float16: (4e-3, 4e-3),
    torch.bfloat16: (3e-2, 3e-2),
}


def poisoned(tensor: torch.Tensor) -> torch.Tensor:
    """Fill freshly allocated memory with a value no kernel writes on purpose."""
    if tensor.is_floating_point():
        return tensor.fill_(float("nan"))
    if tensor.dtype in (torch.int32, torch.int64, torch.int16):
        return tensor.fill_(-(2**15) + 7)
    return tensor


def assert_close(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype,
                 table: dict[torch.dtype, tuple[float, float]] = TOLERANCES) -> None:  # fmt: skip
    atol, rtol = table[dtype]
    torch.testing.assert_close(actual.double().cpu(), expected.double().cpu(), atol=atol, rtol=rtol)


@dataclass(frozen=True)
class PagedBatch:
    """A random ragged batch whose KV already sits in a shuffled paged cache."""

    query: torch.Tensor  # [num_tokens, num_heads, head_dim]
    key_cache: torch.Tensor  # [num_blocks, block_size, num_kv_heads, head_dim]
    value_cache: torch.Tensor
    query_start_loc: torch.Tensor  # [num_seqs + 1] int32
    seq_lens: torch.Tensor  # [num_seqs] int32
    block_tables: torch.Tensor  # [num_seqs, max_blocks_per_seq] int32, padded with 0
    max_query_len: int
    max_seq_len: int


def make_paged_batch(
    query_lens: list[int],
    seq_lens: list[int],
    num_heads: int,
    num_kv_heads: int,
    head_dim: int,
    block_size: int,
    dtype: torch.dtype,
    device: torch.device,
    generator: torch.Generator,
) -> PagedBatch:
    blocks_per_seq = [-(-seq_len // block_size) for seq_len in seq_lens]
    num_blocks = sum(blocks_per_seq) + 2  # spare blocks hold garbage nobody may read

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=generator).to(dtype=dtype, device=device)

    key_cache = randn(num_blocks, block_size, num_kv_heads, head_dim)
    value_cache = randn(num_blocks, block_size, num_kv_heads, head_dim)
    order = torch.randperm(num_blocks, generator=generator).tolist()
    block_tables = torch.zeros(len(seq_lens), max(blocks_per_seq) + 1, dtype=torch.int32)
    used = 0
    for seq, count in enumerate(blocks_per_seq):
        block_tables[seq, :count] = torch.tensor(order[used : used + count], dtype=torch.int32)
        used += count
    starts = [0]
    for query_len in query_lens:
        starts.append(starts[-1] + query_len)
    return PagedBatch(
        query=randn(starts[-1], num_heads, head_dim),
        key_cache=key_cache,
        value_cache=value_cache,
        query_start_loc=torch.tensor(starts, dtype=torch.int32, device=device),
        seq_lens=torch.tensor(seq_lens, dtype=torch.int32, device=device),
        block_tables=block_tables.to(device),
        max_query_len=max(query_lens),
        max_seq_len=max(seq_lens),
    )


def fresh_generator() -> torch.Generator:
    """Fresh random inputs each run; the seed is printed so a failure can be replayed."""
    seed = int(os.environ.get("KERNEL_TEST_SEED") or int.from_bytes(os.urandom(4), "little"))
    print(f"kernel test seed: {seed} (replay with KERNEL_TEST_SEED={seed})")
    return torch.Generator().manual_seed(seed)
