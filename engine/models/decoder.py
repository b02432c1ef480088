"""`CausalLM`: what every decoder-only architecture shares around its layers.

Embeddings (scaled by sqrt(hidden_size) for Gemma), the layers, the final RMSNorm, the
output projection (tied to the embeddings or not) and the optional final logit
soft-cap. An architecture subclasses it with `make_layer`; its layers take and return
`(hidden, residual)`, the residual stream kept apart so that `ops.rms_norm` fuses the
residual add into the next norm. The stream after a layer is `hidden + residual`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from engine.attention import AttentionMetadata
from engine.config import ModelConfig
from engine.models.layers import KVCache, Linear, WeightSlot, empty_parameter
from engine.ops import Ops
from engine.rope import build_cos_sin_cache


class CausalLM(nn.Module):
    # Facts of the architecture, the same for every checkpoint of it:
    scaled_embeddings = False  # Gemma: embeddings times sqrt(hidden_size)
    norm_offset = 0.0  # Gemma: RMSNorm scales by (1 + w); 1.0 is added to w at load

    def __init__(
        self,
        config: ModelConfig,
        dtype: torch.dtype,
        device: torch.device,
        max_positions: int,
    ) -> None:
        super().__init__()
        self.config = config
        hidden = config.hidden_size
        self.embed_weight = empty_parameter(config.vocab_size, hidden, dtype=dtype, device=device)
        self.layers = nn.ModuleList(
            self.make_layer(config, layer, dtype, device) for layer in range(config.num_layers)
        )
        self.norm_weight = empty_parameter(hidden, dtype=dtype, device=device)
        # Tied: the output projection is the embedding matrix itself (one tensor).
        tied = self.embed_weight if config.tie_word_embeddings else None
        self.lm_head = Linear(config.vocab_size, hidden, False, dtype, device, weight=tied)
        # [max_positions, head_dim]: not parameters, never loaded. Gemma 3's sliding
        # layers have a RoPE of their own.
        self.cos_sin_cache = build_cos_sin_cache(config, max_positions, dtype, device)
        self.sliding_cos_sin_cache = (
            build_cos_sin_cache(config, max_positions, dtype, device, sliding=True)
            if config.sliding_rope is not None
            else self.cos_sin_cache
        )

    def make_layer(
        self, config: ModelConfig, layer: int, dtype: torch.dtype, device: torch.device
    ) -> nn.Module:
        raise NotImplementedError

    def forward(
        self,
        input_ids: torch.Tensor,  # [num_tokens] int64
        metadata: AttentionMetadata,
        kv_caches: list[KVCache],  # one per layer
        ops: Ops,
    ) -> torch.Tensor:  # [num_tokens, hidden_size], final-normed
        hidden = F.embedding(input_ids, self.embed_weight)
        if self.scaled_embeddings:
            # transformers rounds the factor to the model dtype before multiplying.
            hidden = hidden * torch.tensor(self.config.hidden_size**0.5, dtype=hidden.dtype)
        residual: torch.Tensor | None = None
        for layer, kv_cache in zip(self.layers, kv_caches, strict=True):
            cos_sin_cache = (
                self.sliding_cos_sin_cache
                if layer.attention.uses_sliding_rope
                else self.cos_sin_cache
            )
            hidden, residual = layer(hidden, residual, metadata, kv_cache, cos_sin_cache, ops)
        hidden, _ = ops.rms_norm(hidden, self.norm_weight, self.config.rms_norm_eps, residual)
        return hidden

    def compute_logits(
        self,
        hidden: torch.Tensor,  # [num_sampled, hidden_size], the rows to sample from
    ) -> torch.Tensor:  # [num_sampled, vocab_size] float32
        logits = self.lm_head(hidden).float()
        cap = self.config.final_softcap
        if cap is not None:  # Gemma 2: cap * tanh(logits / cap)
            logits = torch.tanh(logits / cap) * cap
        return logits

    def hf_weight_map(self) -> dict[str, WeightSlot]:
        """Hugging Face checkpoint name -> where it goes in this model. lm_head is absent
        when the embeddings are tied."""
        config = self.config
        mapping = {
            "model.embed_tokens.weight": WeightSlot("embed_weight", 0, config.vocab_size),
            "model.norm.weight": WeightSlot(
                "norm_weight", 0, config.hidden_size, offset=self.norm_offset
            ),
        }
        if not config.tie_word_embeddings:
            mapping["lm_head.weight"] = WeightSlot("lm_head.weight", 0, config.vocab_size)
        for index, layer in enumerate(self.layers):
            mapping.update(layer.weight_map(f"model.layers.{index}.", f"layers.{index}."))
        return mapping


def norm_slot(parameter: str, size: int, offset: float = 0.0) -> WeightSlot:
    return WeightSlot(parameter, 0, size, offset=offset)
