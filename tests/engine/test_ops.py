"""TorchOps against direct dense references on ragged, paged batches; both backends
against the `Ops` protocol."""

from __future__ import annotations

import importlib
import inspect
import math

import pytest
import torch

from engine.attention import build_attention_metadata
from engine.ops import Ops, TorchOps

BLOCK_SIZE = 4


def _dense_attention(
    query: torch.Tensor,  # [q, Hq, D]
    keys: torch.Tensor,  # [L, Hkv, D]
    values: torch.Tensor,  # [L, Hkv, D]
    scale: float,
) -> torch.Tensor:  # [q, Hq, D]
    """Textbook causal attention: the last q positions of an L-long sequence."""
    query_len, num_heads, _ = query.shape
    seq_len, num_kv_heads, _ = keys.shape
    group = num_heads // num_kv_heads
    keys = keys.repeat_interleave(group, dim=1)  # [L, Hq, D]
    values = values.repeat_interleave(group, dim=1)
    scores = torch.einsum("qhd,khd->hqk", query, keys) * scale  # [Hq, q, L]
    query_positions = torch.arange(seq_len - query_len, seq_len)[:, None]
    allowed = torch.arange(seq_len)[None, :] <= query_positions  # [q, L]
    scores = scores.masked_fill(~allowed, float("-inf"))
    return torch.einsum("hqk,khd->qhd", scores.softmax(-1), values)


@pytest.mark.parametrize(("num_heads", "num_kv_heads"), [(9, 3), (4, 4), (4, 1)])
def test_attention_matches_dense_reference_on_ragged_paged_batch(
    num_heads: int, num_kv_heads: int
) -> None:
    generator = torch.Generator().manual_seed(0)
    head_dim = 8
    # (context before this step, new tokens): decodes mid-block and at block edges,
    # a fresh prefill, a chunked-prefill continuation, a one-token prompt.
    layout = [(6, 1), (0, 7), (3, 1), (8, 5), (0, 1), (11, 1), (4, 4)]
    num_blocks = 40
    permutation = torch.randperm(num_blocks, generator=generator).tolist()  # shuffled block ids
    key_cache = torch.zeros(num_blocks, BLOCK_SIZE, num_kv_heads, head_dim)
    value_cache = torch.zeros_like(key_cache)
    ops = TorchOps()
    block_ids, full_keys, full_values, queries = [], [], [], []
    for start, query_len in layout:
        seq_len = start + query_len
        count = -(-seq_len // BLOCK_SIZE) + 1  # one spare block, as the scheduler may allocate
        block_ids.append([permutation.pop() for _ in range(count)])
        full_keys.append(torch.randn(seq_len, num_kv_heads, head_dim, generator=generator))
        full_values.append(torch.randn(seq_len, num_kv_heads, head_dim, generator=generator))
        queries.append(torch.randn(query_len, num_heads, head_dim, generator=generator))
    # The context from earlier steps is already in the cache.
    history = build_attention_metadata(
        [0] * len(layout), [s for s, _ in layout], block_ids, [False] * len(layout), BLOCK_SIZE
    )
    ops.write_kv(
        torch.cat([k[:s] for k, (s, _) in zip(full_keys, layout, strict=True)]),
        torch.cat([v[:s] for v, (s, _) in zip(full_values, layout, strict=True)]),
        key_cache,
        value_cache,
        history.slot_mapping,
    )
    metadata = build_attention_metadata(
        [s for s, _ in layout], [n for _, n in layout], block_ids, [True] * len(layout), BLOCK_SIZE
    )
    ops.write_kv(
        torch.cat([k[s:] for k, (s, _) in zip(full_keys, layout, strict=True)]),
        torch.cat([v[s:] for v, (s, _) in zip(full_values, layout, strict=True)]),
        key_cache,
        value_cache,
        metadata.slot_mapping,
    )
    scale = 1 / math.sqrt(head_dim)
    output = ops.attention(torch.cat(queries), key_cache, value_cache, metadata, scale)
    expected = torch.cat(
        [
            _dense_attention(q, k, v, scale)
            for q, k, v in zip(queries, full_keys, full_values, strict=True)
        ]
    )
    torch.testing.assert_close(output, expected, atol=1e-5, rtol=1e-5)


def test_metadata_fields() -> None:
    metadata = build_attention_metadata(
        starts=[5, 0],
        query_lens=[1, 6],
        block_ids=[[7, 2], [3, 9, 4]],
        sample_flags=[True, False],
        block_size=BLOCK_SIZE,
    )
    assert metadata.positions.tolist() == [5, 0, 1, 2, 3, 4, 5]
    assert metadata.slot_mapping.tolist() == [2 * 4 + 1, 12, 13, 14, 15, 36, 37]
    assert metadata.query_start_loc.tolist() == [0, 1, 7]
    assert metadata.seq_lens.tolist() == [6, 6]
    assert metadata.block_tables.tolist() == [[7, 2], [3, 9]]
    assert metadata.block_tables.dtype == torch.int32
    assert (metadata.max_query_len, metadata.max_seq_len) == (6, 6)
    assert metadata.logits_indices.tolist() == [0]


def test_rms_norm_with_and_without_residual() -> None:
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(5, 16, generator=generator)
    residual = torch.randn(5, 16, generator=generator)
    weight = torch.randn(16, generator=generator)

    def reference(hidden: torch.Tensor) -> torch.Tensor:
        return weight * hidden * torch.rsqrt(hidden.pow(2).mean(-1, keepdim=True) + 1e-6)

    out, residual_out = TorchOps().rms_norm(x, weight, 1e-6, None)
    assert residual_out is x
    torch.testing.assert_close(out, reference(x))
    out, residual_out = TorchOps().rms_norm(x, weight, 1e-6, residual)
    torch.testing.assert_close(residual_out, x + residual)
    torch.testing.assert_close(out, reference(x + residual))
    out16, _ = TorchOps().rms_norm(x.bfloat16(), weight.bfloat16(), 1e-6, residual.bfloat16())
    torch.testing.assert_close(out16.float(), reference(x + residual), atol=0.05, rtol=0.02)


def test_apply_rope_matches_rotate_half() -> None:
    generator = torch.Generator().manual_seed(2)
    head_dim = 8
    angles = torch.rand(10, head_dim // 2, generator=generator) * 6
    cache = torch.cat((angles.cos(), angles.sin()), dim=-1)  # [10, D]
    query = torch.randn(3, 4, head_dim, generator=generator)
    key = torch.randn(3, 2, head_dim, generator=generator)
    positions = torch.tensor([9, 0, 4])
    rotated_query, rotated_key = TorchOps().apply_rope(query, key, positions, cache)
    cos = torch.cat((angles.cos(), angles.cos()), -1)[positions][:, None]
    sin = torch.cat((angles.sin(), angles.sin()), -1)[positions][:, None]

    def rotate_half(x: torch.Tensor) -> torch.Tensor:
        return torch.cat((-x[..., head_dim // 2 :], x[..., : head_dim // 2]), dim=-1)

    torch.testing.assert_close(rotated_query, query * cos + rotate_half(query) * sin)
    torch.testing.assert_close(rotated_key, key * cos + rotate_half(key) * sin)


def assert_implements(cls: type, protocol: type) -> None:
    """`cls` has every method of `protocol` with the same parameters (names, kinds,
    defaults) and the same annotations, compared as written (postponed, so strings)."""
    assert issubclass(cls, protocol)  # runtime_checkable: the methods exist
    methods = [
        name
        for name, member in vars(protocol).items()
        if inspect.isfunction(member) and not name.startswith("_")
    ]
    assert methods
    for name in methods:
        expected = inspect.signature(getattr(protocol, name))
        actual = inspect.signature(getattr(cls, name))
        assert [(p.name, p.kind, p.default, p.annotation) for p in actual.parameters.values()] == [
            (p.name, p.kind, p.default, p.annotation) for p in expected.parameters.values()
        ], f"{cls.__name__}.{name}{actual} != {expected}"
        assert actual.return_annotation == expected.return_annotation, f"{cls.__name__}.{name}"


@pytest.mark.parametrize("backend", ["engine.ops.TorchOps", "engine.kernel_ops.KernelOps"])
def test_backends_implement_the_ops_protocol(backend: str) -> None:
    module_name, class_name = backend.rsplit(".", 1)
    assert_implements(getattr(importlib.import_module(module_name), class_name), Ops)


@pytest.mark.parametrize("window", [None, 6])
@pytest.mark.parametrize(
    "blocks", [[3, 4, 5, 6, 7], [9, 2, 7, 1, 0]], ids=["consecutive", "shuffled"]
)
def test_lone_decode_equals_the_same_sequence_in_a_batch(
    window: int | None, blocks: list[int]
) -> None:
    """One decoding sequence takes its own path (unmasked, keys cut to what it sees, read
    in place when its blocks are consecutive); it must agree with the masked batch path."""
    generator = torch.Generator().manual_seed(3)
    num_heads, num_kv_heads, head_dim, seq_len = 4, 2, 8, 17
    key_cache = torch.randn(12, BLOCK_SIZE, num_kv_heads, head_dim, generator=generator)
    value_cache = torch.randn(12, BLOCK_SIZE, num_kv_heads, head_dim, generator=generator)
    query = torch.randn(2, num_heads, head_dim, generator=generator)
    alone = build_attention_metadata([seq_len - 1], [1], [blocks], [True], BLOCK_SIZE)
    # The same sequence beside another decode: the padded, masked batch path.
    batch = build_attention_metadata(
        [seq_len - 1, 4], [1, 1], [blocks, [10, 11]], [True, True], BLOCK_SIZE
    )
    out_alone = TorchOps().attention(query[:1], key_cache, value_cache, alone, 0.3, window)
    out_batch = TorchOps().attention(query, key_cache, value_cache, batch, 0.3, window)
    torch.testing.assert_close(out_alone[0], out_batch[0])
    # And with a prefill in the step (the decode's token is gathered, not the whole step).
    mixed = build_attention_metadata(
        [0, seq_len - 1], [3, 1], [[10, 11], blocks], [True, True], BLOCK_SIZE
    )
    queries = torch.cat((torch.randn(3, num_heads, head_dim, generator=generator), query[:1]))
    out_mixed = TorchOps().attention(queries, key_cache, value_cache, mixed, 0.3, window)
    torch.testing.assert_close(out_mixed[3], out_alone[0])
