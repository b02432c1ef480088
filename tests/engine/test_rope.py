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
            rope_parameters={"rope_type": "longrope", "rope_theta": 10000.0},
        )
    )
    with pytest.raises(ConfigError, match="longrope"):
        build_cos_sin_cache(config, 8)
