"""Our cos/sin cache against transformers' own rotary embeddings."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from transformers import LlamaConfig
from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

from engine.config import ConfigError, ModelConfig
from engine.rope import build_cos_sin_cache

MAX_POSITIONS = 300

ROPE_PARAMETERS: dict[str, dict[str, Any]] = {
    "default": {"rope_type": "default", "rope_theta": 10000.0},
    "linear": {"rope_type": "linear", "factor": 4.0, "rope_theta": 10000.0},
    "dynamic": {"rope_type": "dynamic", "factor": 2.0, "rope_theta": 10000.0},
    "llama3": {
        "rope_type": "llama3",
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 64,
        "rope_theta": 500000.0,
    },
    "yarn": {
        "rope_type": "yarn",
        "factor": 4.0,
        "original_max_position_embeddings": 64,
        "rope_theta": 10000.0,
    },
}


def _hf_config(rope_parameters: dict[str, Any], head_dim: int = 32) -> LlamaConfig:
    return LlamaConfig(
        hidden_size=4 * head_dim,
        num_attention_heads=4,
        num_key_value_heads=2,
        num_hidden_layers=1,
        intermediate_size=64,
        vocab_size=32,
        max_position_embeddings=MAX_POSITIONS,
        rope_parameters=dict(rope_parameters),
    )


@pytest.mark.parametrize("rope_type", sorted(ROPE_PARAMETERS))
def test_cache_matches_transformers(rope_type: str) -> None:
    hf_config = _hf_config(ROPE_PARAMETERS[rope_type])
    config = ModelConfig.from_hf_config(
        dict(hf_config.to_dict(), architectures=["LlamaForCausalLM"])
    )
    cache = build_cos_sin_cache(config, MAX_POSITIONS)  # [P, D]
    positions = torch.arange(MAX_POSITIONS)[None, :]
    cos, sin = LlamaRotaryEmbedding(hf_config)(torch.zeros(1, dtype=torch.float32), positions)
    half = config.head_dim // 2
    assert cache.shape == (MAX_POSITIONS, config.head_dim)
    torch.testing.assert_close(cache[:, :half], cos[0, :, :half], atol=1e-6, rtol=0)
    torch.testing.assert_close(cache[:, half:], sin[0, :, :half], atol=1e-6, rtol=0)
    # HF repeats the same half twice; our cache stores it once.
    torch.testing.assert_close(cos[0, :, half:], cos[0, :, :half])


def test_cache_cast_to_model_dtype() -> None:
    config = ModelConfig.from_hf_config(
        dict(_hf_config(ROPE_PARAMETERS["default"]).to_dict(), architectures=["LlamaForCausalLM"])
    )
    assert build_cos_sin_cache(config, 8, dtype=torch.bfloat16).dtype == torch.bfloat16


def test_unsupported_rope_type_is_named() -> None:
    config = ModelConfig.from_hf_config(
        dict(
            _hf_config(ROPE_PARAMETERS["default"]).to_dict(),
            architectures=["LlamaForCausalLM"],
            rope_parameters={"rope_type": "blockwise", "rope_theta": 10000.0},
        )
    )
    with pytest.raises(ConfigError, match="blockwise.*supported: default, linear"):
        build_cos_sin_cache(config, 8)


def _assert_cache_is(cache: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> None:
    half = cache.shape[1] // 2
    torch.testing.assert_close(cache[:, :half], cos[0, :, :half], atol=1e-6, rtol=0)
    torch.testing.assert_close(cache[:, half:], sin[0, :, :half], atol=1e-6, rtol=0)


@pytest.mark.parametrize("max_positions", [64, MAX_POSITIONS])
def test_longrope_matches_transformers_phi3(max_positions: int) -> None:
    """Short factors while the context fits the original 64 positions, long ones past it
    (HF decides per batch from its longest position; the whole cache spans max_positions)."""
    from transformers import Phi3Config
    from transformers.models.phi3.modeling_phi3 import Phi3RotaryEmbedding

    generator = torch.Generator().manual_seed(0)
    hf_config = Phi3Config(
        hidden_size=128,
        num_attention_heads=4,
        num_key_value_heads=2,
        num_hidden_layers=1,
        intermediate_size=64,
        vocab_size=32,
        pad_token_id=0,
        max_position_embeddings=MAX_POSITIONS,
        original_max_position_embeddings=64,
        rope_parameters={
            "rope_type": "longrope",
            "rope_theta": 10000.0,
            "short_factor": (1 + torch.rand(16, generator=generator)).tolist(),
            "long_factor": (1 + 4 * torch.rand(16, generator=generator)).tolist(),
        },
    )
    config = ModelConfig.from_hf_config(dict(hf_config.to_dict(), architectures=["Phi3ForCausalLM"]))
    assert config.rope_scaling is not None and config.rope_scaling["rope_type"] == "longrope"
    cache = build_cos_sin_cache(config, max_positions)
    positions = torch.arange(max_positions)[None, :]
    cos, sin = Phi3RotaryEmbedding(hf_config)(torch.zeros(1, dtype=torch.float32), positions)
    _assert_cache_is(cache, cos, sin)


def test_gemma3_sliding_layers_have_their_own_rope() -> None:
    from transformers import Gemma3TextConfig
    from transformers.models.gemma3.modeling_gemma3 import Gemma3RotaryEmbedding

    hf_config = Gemma3TextConfig(
        hidden_size=64,
        head_dim=16,
        num_attention_heads=4,
        num_key_value_heads=2,
        num_hidden_layers=6,
        intermediate_size=64,
        vocab_size=32,
        max_position_embeddings=MAX_POSITIONS,
        rope_scaling={"rope_type": "linear", "factor": 8.0},
    )
    config = ModelConfig.from_hf_config(dict(hf_config.to_dict(), architectures=["Gemma3ForCausalLM"]))
    rotary = Gemma3RotaryEmbedding(hf_config)
    positions = torch.arange(MAX_POSITIONS)[None, :]
    for layer_type, sliding in (("full_attention", False), ("sliding_attention", True)):
        cos, sin = rotary(torch.zeros(1), positions, layer_type)
        _assert_cache_is(build_cos_sin_cache(config, MAX_POSITIONS, sliding=sliding), cos, sin)
    assert config.layer_windows == (4096,) * 5 + (None,)
