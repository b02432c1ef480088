"""The Llama decoder layer: pre-norm attention and MLP, each added to the residual.

Serves Llama, Mistral and Qwen2 as it is (Mistral's window and Qwen2's q/k/v bias come
from `ModelConfig`), and Qwen3 and Phi-3 through two facts of their class: `qk_norm`
and `fused_checkpoint` (engine/models/qwen3.py, phi3.py).
"""

from __future__ import annotations

import torch
from torch import nn

from engine.attention import AttentionMetadata
from engine.config import ModelConfig
from engine.models.decoder import CausalLM, norm_slot
from engine.models.layers import Attention, GatedMLP, KVCache, WeightSlot, empty_parameter
from engine.ops import Ops


class LlamaDecoderLayer(nn.Module):
    def __init__(
        self,
        config: ModelConfig,
        layer: int,
        dtype: torch.dtype,
        device: torch.device,
        qk_norm: str | None = None,
        fused_checkpoint: bool = False,
    ) -> None:
        super().__init__()
        self.eps = config.rms_norm_eps
        self.fused_checkpoint = fused_checkpoint
        hidden = config.hidden_size
        self.input_norm_weight = empty_parameter(hidden, dtype=dtype, device=device)
        self.attention = Attention(config, layer, dtype, device, qk_norm=qk_norm)
        self.post_attention_norm_weight = empty_parameter(hidden, dtype=dtype, device=device)
        self.mlp = self.make_mlp(config, layer, dtype, device)

    def make_mlp(
        self, config: ModelConfig, layer: int, dtype: torch.dtype, device: torch.device
    ) -> nn.Module:
        return GatedMLP(
            config.hidden_size, config.intermediate_size, config.hidden_act, dtype, device
        )

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
        hidden = self.attention(normed, metadata, kv_cache, cos_sin_cache, ops)
        normed, residual = ops.rms_norm(hidden, self.post_attention_norm_weight, self.eps, residual)
        return self.mlp(normed), residual

    def weight_map(self, hf: str, ours: str) -> dict[str, WeightSlot]:
        hidden = self.input_norm_weight.shape[0]
        mapping = {
            f"{hf}input_layernorm.weight": norm_slot(f"{ours}input_norm_weight", hidden),
            f"{hf}post_attention_layernorm.weight": norm_slot(
                f"{ours}post_attention_norm_weight", hidden
            ),
        }
        mapping.update(
            self.attention.weight_map(
                f"{hf}self_attn.", f"{ours}attention.", fused_qkv=self.fused_checkpoint
            )
        )
        mapping.update(self.mlp_weight_map(hf, ours))
        return mapping

    def mlp_weight_map(self, hf: str, ours: str) -> dict[str, WeightSlot]:
        return self.mlp.weight_map(f"{hf}mlp.", f"{ours}mlp.", fused=self.fused_checkpoint)


class LlamaForCausalLM(CausalLM):
    """Llama, Mistral, Qwen2 (SmolLM is a Llama)."""

    qk_norm: str | None = None  # see engine.models.layers.Attention
    fused_checkpoint = False  # the checkpoint stores qkv_proj and gate_up_proj fused

    def make_layer(
        self, config: ModelConfig, layer: int, dtype: torch.dtype, device: torch.device
    ) -> nn.Module:
        return LlamaDecoderLayer(
            config,
            layer,
            dtype,
            device,
            qk_norm=self.qk_norm,
            fused_checkpoint=self.fused_checkpoint,
        )
