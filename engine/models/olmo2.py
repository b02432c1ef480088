"""OLMo 2: norms after attention and after the MLP, on their outputs, before each is
added to the residual stream (no norm on a layer's input); QK-norm over the whole q and
k projections (`q_norm` of num_heads * head_dim, `k_norm` of num_kv_heads * head_dim).

    x = x + post_attention_norm(attention(x));  x = x + post_feedforward_norm(mlp(x))
"""

from __future__ import annotations

import torch
from torch import nn

from engine.attention import AttentionMetadata
from engine.config import ModelConfig
from engine.models.decoder import CausalLM, norm_slot
from engine.models.layers import Attention, GatedMLP, KVCache, WeightSlot, empty_parameter
from engine.ops import Ops


class Olmo2DecoderLayer(nn.Module):
    def __init__(
        self, config: ModelConfig, layer: int, dtype: torch.dtype, device: torch.device
    ) -> None:
        super().__init__()
        self.eps = config.rms_norm_eps
        hidden = config.hidden_size
        self.attention = Attention(config, layer, dtype, device, qk_norm="projection")
        self.post_attention_norm_weight = empty_parameter(hidden, dtype=dtype, device=device)
        self.mlp = GatedMLP(hidden, config.intermediate_size, config.hidden_act, dtype, device)
        self.post_feedforward_norm_weight = empty_parameter(hidden, dtype=dtype, device=device)

    def forward(
        self,
        hidden: torch.Tensor,  # [num_tokens, hidden_size]
        residual: torch.Tensor | None,  # [num_tokens, hidden_size]; None before layer 0
        metadata: AttentionMetadata,
        kv_cache: KVCache,
        cos_sin_cache: torch.Tensor,  # [max_positions, head_dim]
        ops: Ops,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        stream = hidden if residual is None else hidden + residual
        attended = self.attention(stream, metadata, kv_cache, cos_sin_cache, ops)
        attended, _ = ops.rms_norm(attended, self.post_attention_norm_weight, self.eps, None)
        stream = stream + attended
        out, _ = ops.rms_norm(self.mlp(stream), self.post_feedforward_norm_weight, self.eps, None)
        return out, stream

    def weight_map(self, hf: str, ours: str) -> dict[str, WeightSlot]:
        hidden = self.post_attention_norm_weight.shape[0]
        mapping = {
            f"{hf}post_attention_layernorm.weight": norm_slot(
                f"{ours}post_attention_norm_weight", hidden
            ),
            f"{hf}post_feedforward_layernorm.weight": norm_slot(
                f"{ours}post_feedforward_norm_weight", hidden
            ),
        }
        mapping.update(self.attention.weight_map(f"{hf}self_attn.", f"{ours}attention."))
        mapping.update(self.mlp.weight_map(f"{hf}mlp.", f"{ours}mlp."))
        return mapping


class Olmo2ForCausalLM(CausalLM):
    def make_layer(
        self, config: ModelConfig, layer: int, dtype: torch.dtype, device: torch.device
    ) -> nn.Module:
        return Olmo2DecoderLayer(config, layer, dtype, device)
