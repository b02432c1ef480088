"""RoPE kernels (plain and fused with the KV write) against the float64 reference,
with every cos/sin scaling the engine builds."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
import torch

from engine.config import ModelConfig
from engine.rope import build_cos_sin_cache
from tests.kernels.kernel_testing import TOLERANCES, assert_close, fresh_generator
from tritium_kernels.rope import rope, rope_and_write_kv, rope_ref

SCALINGS: dict[str, dict[str, Any] | None] = {
    "default": None,
    "linear": {"rope_type": "linear", "factor": 2.0},
    "llama3": {
        "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
        "original_max_position_embeddings": 64,
    },
    "yarn": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64},
    "dynamic": {"rope_type": "dynamic", "factor": 2.0},
    # Phi-3's: one rescale per frequency (the long set, since 300 positions > 64) and an
    # attention factor multiplied into cos and sin.
    "longrope": {
        "rope_type": "longrope", "original_max_position_embeddings": 64,
        "short_factor": [1.0 + i / 64 for i in range(64)], "long_factor": [1.0 + i / 8 for i in range(64)],
    },
}  # fmt: skip


def cos_sin_cache(head_dim: int, scaling: dict[str, Any] | None, max_positions: int = 300) -> torch.Tensor:
    config = ModelConfig(
        architecture="LlamaForCausalLM", vocab_size=32, hidden_size=9 * head_dim, intermediate_size=32,
        num_layers=1, num_heads=9, num_kv_heads=3, head_dim=head_dim, rms_norm_eps=1e-6,
        rope_theta=10000.0, rope_scaling=scaling, max_position_embeddings=128,
        tie_word_embeddings=False, attention_bias=False, eos_token_ids=(2,), bos_token_id=1,
        torch_dtype="float32",
    )  # fmt: skip
    if scaling is not None and "long_factor" in scaling:  # one factor per frequency
        scaling = {**scaling, "short_factor": scaling["short_factor"][: head_dim // 2],
                   "long_factor": scaling["long_factor"][: head_dim // 2]}  # fmt: skip
        config = replace(config, rope_scaling=scaling)
    return build_cos_sin_cache(config, max_positions)


@pytest.mark.parametrize("scaling", list(SCALINGS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("head_dim", [64, 128])
def test_rope_matches_reference(scaling: str, dtype: torch.dtype, head_dim: int, device: torch.device) -> None:
    generator = fresh_generator()
    num_tokens = 5
    query = torch.randn(num_tokens, 9, head_dim, generator=generator).to(device, dtype)
    key = torch.randn(num_tokens, 3, head_dim, generator=generator).to(device, dtype)
    positions = torch.randint(0, 300, (num_tokens,), generator=generator).to(device)
    cache = cos_sin_cache(head_dim, SCALINGS[scaling]).to(device)

    query_out, key_out = rope(query, key, positions, cache)
    expected_query, expected_key = rope_ref(query, key, positions, cache)

    assert query_out.dtype == dtype and key_out.shape == key.shape
    assert_close(query_out, expected_query, dtype)
    assert_close(key_out, expected_key, dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rope_and_write_kv_fills_exactly_the_slots(dtype: torch.dtype, device: torch.device) -> None:
    generator = fresh_generator()
    num_tokens, block_size, num_blocks = 7, 4, 5
    query = torch.randn(num_tokens, 9, 64, generator=generator).to(device, dtype)
    key = torch.randn(num_tokens, 3, 64, generator=generator).to(device, dtype)
    value = torch.randn(num_tokens, 3, 64, generator=generator).to(device, dtype)
    positions = torch.arange(3, 3 + num_tokens, device=device)
    slots = torch.randperm(num_blocks * block_size, generator=generator)[:num_tokens].to(device)
    slots[2] = -1  # a padding token: must not be stored
    key_cache = torch.full((num_blocks, block_size, 3, 64), float("nan"), dtype=dtype, device=device)
    value_cache = key_cache.clone()
    cache = cos_sin_cache(64, None).to(device)

    query_out = rope_and_write_kv(query, key, value, positions, cache, key_cache, value_cache, slots)

    expected_query, expected_key = rope_ref(query, key, positions, cache)
    assert_close(query_out, expected_query, dtype)
    stored = slots >= 0
    flat_keys = key_cache.view(-1, 3, 64)
    assert_close(flat_keys[slots[stored]], expected_key[stored], dtype)
    assert torch.equal(value_cache.view(-1, 3, 64)[slots[stored]], value[stored])
    untouched = torch.ones(num_blocks * block_size, dtype=torch.bool, device=device)
    untouched[slots[stored]] = False
    assert flat_keys[untouched].isnan().all() and value_cache.view(-1, 3, 64)[untouched].isnan().all()


def test_rope_matches_torch_ops_in_bf16(device: torch.device) -> None:
    """Within one bf16 rounding step of the engine's torch path (which rounds thrice)."""
    from engine.ops import TorchOps

    query = torch.randn(6, 9, 64, device=device, dtype=torch.bfloat16)
    key = torch.randn(6, 3, 64, device=device, dtype=torch.bfloat16)
    positions = torch.arange(6, device=device)
    cache = cos_sin_cache(64, None).to(device)
    expected = TorchOps().apply_rope(query, key, positions, cache)
    for actual, reference in zip(rope(query, key, positions, cache), expected, strict=True):
        atol, rtol = TOLERANCES[torch.bfloat16]
        torch.testing.assert_close(actual.float(), reference.float(), atol=2 * atol, rtol=2 * rtol)


@pytest.mark.gpu
def test_rope_real_sizes(device: torch.device) -> None:
    query = torch.randn(8192, 32, 128, device=device, dtype=torch.bfloat16)
    key = torch.randn(8192, 8, 128, device=device, dtype=torch.bfloat16)
    positions = torch.randint(0, 4096, (8192,), device=device)
    cache = cos_sin_cache(128, SCALINGS["llama3"], 4096).to(device)
    for actual, expected in zip(rope(query, key, positions, cache), rope_ref(query, key, positions, cache), strict=True):
        assert_close(actual, expected, torch.bfloat16)
