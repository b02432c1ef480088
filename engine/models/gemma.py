"""Gemma 2 and Gemma 3 (text): a norm before and after both attention and MLP.

    x = x + post_attention_norm(attention(input_norm(x)))
    x = x + post_feedforward_norm(mlp(pre_feedforward_norm(x)))

Every RMSNorm scales by (1 + w): the checkpoint stores w, 1.0 is added as it loads, and
then it is a plain RMSNorm. Embeddings are multiplied by sqrt(hidden_size); the MLP is
GeGLU (`hidden_activation`, tanh-approximated GELU); q·k is scaled by
`query_pre_attn_scalar` ** -0.5. Layers alternate between a sliding window and the
whole context (`ModelConfig.layer_windows`). Gemma 2 soft-caps the attention scores and
the final logits (cap * tanh(x / cap)); Gemma 3 adds QK-norm and gives its sliding
layers a RoPE of their own (`ModelConfig.sliding_rope`).
"""

from __future__ import annotations

import torch
from torch import nn

from engine.attention import AttentionMetadata
from engine.config import ModelConfig
from engine.models.decoder import CausalLM, norm_slot
from engine.models.layers import Attention, GatedMLP, KVCache, WeightSlot, empty_parameter
from engine.ops import Ops

NORM_OFFSET = 1.0  # Gemma's RMSNorm scales by (1 + w)
_NORMS = {  # checkpoint name -> ours
    "input_layernorm": "input_norm_weight",
    "post_attention_layernorm": "post_attention_norm_weight",
    "pre_feedforward_layernorm": "pre_feedforward_norm_weight",
    "post_feedforward_layernorm": "post_feedforward_norm_weight",
}


class GemmaDecoderLayer(nn.Module):
    def __init__(
        self,
        config: ModelConfig,
        layer: int,
        dtype: torch.dtype,
        device: torch.device,
        qk_norm: str | None,
    ) -> None:
        super().__init__()
        self.eps = config.rms_norm_eps
        hidden = config.hidden_size
        for name in _NORMS.values():
            setattr(self, name, empty_parameter(hidden, dtype=dtype, device=device))
        self.attention = Attention(config, layer, dtype, device, qk_norm=qk_norm)
        self.mlp = GatedMLP(hidden, config.intermediate_size, config.hidden_act, dtype, device)

    def forward(
        self,
        hidden: torch.Tensor,  # [num_tokens, hidden_size]
        residual: torch.Tensor | None,  # [num_tokens, hidden_size]; None before layer 0
        metadata: AttentionMetadata,
        kv_cache: KVCache,
        cos_sin_cache: torch.Tensor,  # [max_positions, head_dim]
        ops: Ops,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        normed, residual = ops.rms_norm(hidden, self.input_norm_weight, self.eps, residual)
        attended = self.attention(normed, metadata, kv_cache, cos_sin_cache, ops)
        attended, _ = ops.rms_norm(attended, self.post_attention_norm_weight, self.eps, None)
        normed, residual = ops.rms_norm(
            attended, self.pre_feedforward_norm_weight, self.eps, residual
        )
        out, _ = ops.rms_norm(self.mlp(normed), self.post_feedforward_norm_weight, self.eps, None)
        return out, residual

    def weight_map(self, hf: str, ours: str) -> dict[str, WeightSlot]:
        hidden = self.input_norm_weight.shape[0]
        mapping = {
            f"{hf}{name}.weight": norm_slot(f"{ours}{parameter}", hidden, NORM_OFFSET)
            for name, parameter in _NORMS.items()
        }
        mapping.update(
            self.attention.weight_map(
                f"{hf}self_attn.", f"{ours}attention.", norm_offset=NORM_OFFSET
            )
        )
        mapping.update(self.mlp.weight_map(f"{hf}mlp.", f"{ours}mlp."))
        return mapping


class Gemma2ForCausalLM(CausalLM):
    scaled_embeddings = True
    norm_offset = NORM_OFFSET
    qk_norm: str | None = None

    def make_layer(
        self, config: ModelConfig, layer: int, dtype: torch.dtype, device: torch.device
    ) -> nn.Module:
        return GemmaDecoderLayer(config, layer, dtype, device, qk_norm=self.qk_norm)


class Gemma3ForCausalLM(Gemma2ForCausalLM):
    qk_norm = "head"
