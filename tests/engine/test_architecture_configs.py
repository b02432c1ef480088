"""engine/architectures.py: every spelling of config.json that checkpoints in use have."""

from __future__ import annotations

from typing import Any

import pytest

from engine.config import ConfigError, ModelConfig

BASE: dict[str, Any] = dict(
    vocab_size=32, hidden_size=64, intermediate_size=96, num_hidden_layers=4,
    num_attention_heads=4, num_key_value_heads=2,
)  # fmt: skip


def read(architecture: str, **fields: Any) -> ModelConfig:
    return ModelConfig.from_hf_config({**BASE, "architectures": [architecture], **fields})


def test_windows_follow_layer_types_or_what_older_files_imply() -> None:
    # Qwen2 files carry a window they do not use.
    assert read("Qwen2ForCausalLM", sliding_window=32768, use_sliding_window=False).layer_windows == (None,) * 4
    qwen = read("Qwen2ForCausalLM", sliding_window=8, use_sliding_window=True, max_window_layers=2)
    assert qwen.layer_windows == (None, None, 8, 8) and qwen.kv_window is None
    # Gemma 2 before `layer_types`: even layers slide.
    assert read("Gemma2ForCausalLM", sliding_window=16).layer_windows == (16, None, 16, None)
    gemma3 = read("Gemma3ForCausalLM", sliding_window=16, sliding_window_pattern=3)
    assert gemma3.layer_windows == (16, 16, None, 16)
    mistral = read("MistralForCausalLM", sliding_window=16)
    assert mistral.layer_windows == (16,) * 4 and mistral.kv_window == 16
    assert read("MistralForCausalLM", sliding_window=None).kv_window is None
    explicit = read("Qwen3ForCausalLM", sliding_window=5, layer_types=["sliding_attention", "full_attention"] * 2)
    assert explicit.layer_windows == (5, None, 5, None)


def test_older_gemma3_files_give_the_sliding_layers_their_own_theta() -> None:
    config = read("Gemma3ForCausalLM", rope_theta=1e6, rope_local_base_freq=1e4,
                  rope_scaling={"rope_type": "linear", "factor": 8.0})  # fmt: skip
    assert (config.rope_theta, config.rope_scaling) == (1e6, {"rope_type": "linear", "factor": 8.0})
    assert config.sliding_rope is not None and config.sliding_rope.theta == 1e4
    assert config.sliding_rope.scaling is None


def test_phi3_old_rope_names_and_its_original_length() -> None:
    factors = [1.0] * 8
    config = read("Phi3ForCausalLM", original_max_position_embeddings=4096,
                  rope_scaling={"type": "su", "short_factor": factors, "long_factor": factors})  # fmt: skip
    assert config.rope_scaling is not None
    assert config.rope_scaling["rope_type"] == "longrope"
    assert config.rope_scaling["original_max_position_embeddings"] == 4096


def test_experts_read_from_each_spelling() -> None:
    mixtral = read("MixtralForCausalLM", num_local_experts=8, num_experts_per_tok=2)
    assert mixtral.moe is not None and mixtral.moe.normalize_top_k and mixtral.moe.expert_intermediate_size == 96
    qwen3 = read("Qwen3MoeForCausalLM", num_local_experts=8, num_experts_per_tok=2, moe_intermediate_size=16,
                 norm_topk_prob=True)  # fmt: skip  # transformers 5 writes num_experts so
    assert qwen3.moe is not None and qwen3.moe.num_experts == 8 and qwen3.moe.shared_expert_intermediate_size == 0
    qwen2 = read("Qwen2MoeForCausalLM", num_experts=4, num_experts_per_tok=2, moe_intermediate_size=16,
                 shared_expert_intermediate_size=32, decoder_sparse_step=2, mlp_only_layers=[3])  # fmt: skip
    assert qwen2.moe is not None and qwen2.moe.sparse_layers == (False, True, False, False)
    assert qwen2.attention_bias and not qwen2.moe.normalize_top_k


def test_what_is_not_supported_is_named() -> None:
    with pytest.raises(ConfigError, match="partial_rotary_factor 0.75"):
        read("Phi3ForCausalLM", partial_rotary_factor=0.75)
    with pytest.raises(ConfigError, match="unsupported activation 'relu2'"):
        read("LlamaForCausalLM", hidden_act="relu2")
    with pytest.raises(ConfigError, match=r"unsupported architecture 'GPT2LMHeadModel'.*Gemma3ForCausalLM"):
        read("GPT2LMHeadModel")
