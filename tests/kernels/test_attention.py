"""Paged attention kernels (prefill, split-KV decode, mixed dispatcher) and the KV write,
against the float64 reference."""

from __future__ import annotations

import pytest
import torch

from tests.kernels.kernel_testing import (
    ATTENTION_TOLERANCES,
    assert_close,
    fresh_generator,
    make_paged_batch,
)
from tritium_kernels.attention import (
    paged_attention,
    paged_attention_ref,
    write_kv_cache,
    write_kv_cache_ref,
)
from tritium_kernels.attention_decode import decode_attention
from tritium_kernels.attention_prefill import prefill_attention

# (query_lens, seq_lens): chunks that end mid-block, a 1-token prompt, decodes, a chunk
# continuing a cached context, a sequence shorter than one tile.
MIXED_BATCH = ([5, 1, 17, 1, 3], [5, 40, 30, 1, 19])


def run_and_check(
    batch, scale: float, dtype: torch.dtype, window: int | None = None,  # noqa: ANN001
    softcap: float | None = None, **kwargs: object,
) -> None:  # fmt: skip
    out = paged_attention(
        batch.query, batch.key_cache, batch.value_cache, batch.query_start_loc, batch.seq_lens,
        batch.block_tables, batch.max_query_len, batch.max_seq_len, scale, window=window,
        softcap=softcap, **kwargs,
    )  # fmt: skip
    expected = paged_attention_ref(
        batch.query, batch.key_cache, batch.value_cache, batch.query_start_loc, batch.seq_lens,
        batch.block_tables, scale, window=window, softcap=softcap,
    )  # fmt: skip
    assert out.dtype == dtype and out.shape == batch.query.shape
    assert_close(out, expected, dtype, ATTENTION_TOLERANCES)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("head_dim", [64, 128])
@pytest.mark.parametrize("block_size", [8, 16])
def test_mixed_batch_matches_reference(dtype: torch.dtype, head_dim: int, block_size: int, device: torch.device) -> None:
    batch = make_paged_batch(*MIXED_BATCH, 9, 3, head_dim, block_size, dtype, device, fresh_generator())
    run_and_check(batch, head_dim**-0.5, dtype)


@pytest.mark.parametrize(("num_heads", "num_kv_heads"), [(4, 4), (8, 1), (6, 2)])
def test_prefill_head_groupings(num_heads: int, num_kv_heads: int, device: torch.device) -> None:
    batch = make_paged_batch([7, 20], [7, 33], num_heads, num_kv_heads, 64, 16, torch.float32, device,
                             fresh_generator())  # fmt: skip
    run_and_check(batch, 0.1, torch.float32, has_decodes=False)


def test_prefill_alone_leaves_decode_rows_to_the_decode_kernel(device: torch.device) -> None:
    batch = make_paged_batch([4, 1], [9, 12], 9, 3, 64, 16, torch.float32, device, fresh_generator())
    out = torch.full_like(batch.query, 7.0)
    prefill_attention(batch.query, batch.key_cache, batch.value_cache, batch.query_start_loc,
                      batch.seq_lens, batch.block_tables, batch.max_query_len, 0.125,
                      out=out, skip_decodes=True)  # fmt: skip
    assert (out[4] == 7.0).all()  # the decode row is untouched
    expected = paged_attention_ref(batch.query, batch.key_cache, batch.value_cache, batch.query_start_loc,
                                   batch.seq_lens, batch.block_tables, 0.125)  # fmt: skip
    assert_close(out[:4], expected[:4], torch.float32, ATTENTION_TOLERANCES)


@pytest.mark.parametrize("num_splits", [1, 3, 8, None])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_decode_one_long_sequence_split_kv(num_splits: int | None, dtype: torch.dtype, device: torch.device) -> None:
    """Batch of 1: the split-KV path; 8 splits of a 129-key context leaves empty splits."""
    batch = make_paged_batch([1], [129], 9, 3, 64, 16, dtype, device, fresh_generator())
    run_and_check(batch, 0.125, dtype, num_splits=num_splits)


def test_decode_batch_of_varied_lengths(device: torch.device) -> None:
    batch = make_paged_batch([1, 1, 1, 1], [1, 16, 17, 70], 9, 3, 128, 16, torch.bfloat16, device,
                             fresh_generator())  # fmt: skip
    run_and_check(batch, 128**-0.5, torch.bfloat16)


def test_decode_kernel_rejects_bad_split_count(device: torch.device) -> None:
    batch = make_paged_batch([1], [10], 2, 1, 64, 16, torch.float32, device, fresh_generator())
    with pytest.raises(ValueError, match="num_splits"):
        decode_attention(batch.query, batch.key_cache, batch.value_cache, batch.query_start_loc,
                         batch.seq_lens, batch.block_tables, 10, 1.0, num_splits=0)  # fmt: skip


def test_launchers_name_the_bad_argument(device: torch.device) -> None:
    batch = make_paged_batch([2], [2], 9, 3, 64, 16, torch.float32, device, fresh_generator())
    with pytest.raises(ValueError, match="head_dim"):
        paged_attention(batch.query[..., :48], batch.key_cache[..., :48], batch.value_cache[..., :48],
                        batch.query_start_loc, batch.seq_lens, batch.block_tables, 2, 2, 1.0)  # fmt: skip
    with pytest.raises(ValueError, match="block_tables"):
        paged_attention(batch.query, batch.key_cache, batch.value_cache, batch.query_start_loc,
                        batch.seq_lens, batch.block_tables.long(), 2, 2, 1.0)  # fmt: skip
    with pytest.raises(ValueError, match="multiple"):
        paged_attention(batch.query[:, :8], batch.key_cache, batch.value_cache, batch.query_start_loc,
                        batch.seq_lens, batch.block_tables, 2, 2, 1.0)  # fmt: skip


def poison_behind_windows(batch, window: int) -> None:  # noqa: ANN001
    """Point every block wholly behind a sequence's window at a NaN block, as the engine
    does for blocks it freed (their ids are reused): a kernel that read one would return NaN."""
    block_size = batch.key_cache.shape[1]
    used = {
        int(block)
        for seq, seq_len in enumerate(batch.seq_lens.tolist())
        for block in batch.block_tables[seq, : -(-seq_len // block_size)].tolist()
    }
    poison = min(set(range(batch.key_cache.shape[0])) - used)  # a spare block
    batch.key_cache[poison] = float("nan")
    batch.value_cache[poison] = float("nan")
    starts = batch.query_start_loc.tolist()
    for seq, seq_len in enumerate(batch.seq_lens.tolist()):
        first_query = seq_len - (starts[seq + 1] - starts[seq])
        behind = max(first_query - window + 1, 0) // block_size
        batch.block_tables[seq, :behind] = poison


# Windows shorter than a key tile and longer than one; caps that bite (scores ~ N(0, 8)).
@pytest.mark.parametrize(("window", "softcap"), [(5, None), (70, None), (None, 2.0), (9, 3.0)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_windows_and_softcap_match_reference(
    window: int | None, softcap: float | None, dtype: torch.dtype, device: torch.device
) -> None:
    # Chunks continuing long contexts (blocks behind the window), decodes, a short prompt.
    batch = make_paged_batch([5, 1, 17, 1, 3], [5, 140, 100, 9, 75], 9, 3, 64, 8, dtype, device,
                             fresh_generator())  # fmt: skip
    if window is not None:
        poison_behind_windows(batch, window)
    run_and_check(batch, 1.0, dtype, window=window, softcap=softcap)


@pytest.mark.parametrize("num_splits", [1, 3, None])
def test_windowed_decode_splits_only_the_window(num_splits: int | None, device: torch.device) -> None:
    batch = make_paged_batch([1, 1], [200, 31], 4, 2, 32, 16, torch.float32, device, fresh_generator())
    poison_behind_windows(batch, 40)
    run_and_check(batch, 0.2, torch.float32, window=40, softcap=5.0, num_splits=num_splits)


def test_window_and_softcap_are_checked(device: torch.device) -> None:
    batch = make_paged_batch([2], [2], 2, 1, 16, 16, torch.float32, device, fresh_generator())
    arguments = (batch.query, batch.key_cache, batch.value_cache, batch.query_start_loc,
                 batch.seq_lens, batch.block_tables, 2, 2, 1.0)  # fmt: skip
    with pytest.raises(ValueError, match="window"):
        paged_attention(*arguments, window=0)
    with pytest.raises(ValueError, match="softcap"):
        paged_attention(*arguments, softcap=-1.0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_write_kv_cache_stores_exactly_the_slots(dtype: torch.dtype, device: torch.device) -> None:
    generator = fresh_generator()
    key = torch.randn(6, 3, 64, generator=generator).to(device, dtype)
    value = torch.randn(6, 3, 64, generator=generator).to(device, dtype)
    slots = torch.randperm(5 * 4, generator=generator)[:6].to(device)
    slots[4] = -1  # padding
    key_cache = torch.full((5, 4, 3, 64), float("nan"), dtype=dtype, device=device)
    value_cache = key_cache.clone()
    expected_keys, expected_values = key_cache.clone(), value_cache.clone()

    write_kv_cache(key, value, key_cache, value_cache, slots)
    write_kv_cache_ref(key, value, expected_keys, expected_values, slots)

    assert torch.equal(key_cache.nan_to_num(123.0), expected_keys.nan_to_num(123.0))
    assert torch.equal(value_cache.nan_to_num(123.0), expected_values.nan_to_num(123.0))


def test_matches_the_engine_torch_path(device: torch.device) -> None:
    """Same metadata object, same cache: KernelOps.attention == TorchOps.attention."""
    from engine.attention import build_attention_metadata
    from engine.kernel_ops import KernelOps
    from engine.ops import TorchOps

    block_size, num_blocks = 8, 16
    generator = fresh_generator()
    order = torch.randperm(num_blocks, generator=generator).tolist()
    metadata = build_attention_metadata(
        starts=[0, 12, 30], query_lens=[9, 1, 6], block_ids=[order[0:2], order[2:4], order[4:9]],
        sample_flags=[True, True, False], block_size=block_size, device=device,
    )  # fmt: skip
    key_cache = torch.randn(num_blocks, block_size, 3, 64, generator=generator).to(device)
    value_cache = torch.randn(num_blocks, block_size, 3, 64, generator=generator).to(device)
    query = torch.randn(metadata.num_tokens, 9, 64, generator=generator).to(device)
    for window, softcap in ((None, None), (7, None), (None, 1.5), (5, 4.0)):
        expected = TorchOps().attention(query, key_cache, value_cache, metadata, 0.125, window, softcap)
        actual = KernelOps().attention(query, key_cache, value_cache, metadata, 0.125, window, softcap)
        assert_close(actual, expected, torch.float32, ATTENTION_TOLERANCES)


@pytest.mark.gpu
@pytest.mark.parametrize("head_dim", [64, 128])
def test_real_sizes(head_dim: int, device: torch.device) -> None:
    generator = torch.Generator().manual_seed(0)
    prefill = make_paged_batch([1000, 37, 1, 513], [1000, 2085, 4000, 513], 32, 8, head_dim, 16,
                               torch.bfloat16, device, generator)  # fmt: skip
    run_and_check(prefill, head_dim**-0.5, torch.bfloat16)
    decode = make_paged_batch([1] * 64, [4096 - 3 * i for i in range(64)], 32, 8, head_dim, 16,
                              torch.bfloat16, device, generator)  # fmt: skip
    run_and_check(decode, head_dim**-0.5, torch.bfloat16)
