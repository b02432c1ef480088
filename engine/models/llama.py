"""Llama-family decoder (Llama, Mistral, Qwen2, SmolLM) over a paged KV cache.

Built from `ModelConfig`; the weights come from `engine.weights.load_weights`, which
uses `hf_weight_map` to place each Hugging Face tensor. q/k/v are fused into one
projection and gate/up into another at load time: fewer, larger GEMMs, which is
what CPUs (and small batches on GPUs) run fastest.

Everything but the matmuls goes through `ops`, an `engine.ops.Ops` (`TorchOps` or the
Triton `KernelOps`), so one model serves both backends.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from engine.attention import AttentionMetadata
from engine.config import ModelConfig
from engine.ops import Ops
from engine.rope import build_cos_sin_cache

# Per layer: (key_cache, value_cache), each [num_blocks, block_size, num_kv_heads, head_dim].
KVCache = tuple[torch.Tensor, torch.Tensor]


@dataclass(frozen=True)
class WeightSlot:
    """Where one checkpoint tensor goes: rows [row_start, row_start + rows) of a parameter."""

    parameter: str  # our parameter name, e.g. "layers.3.qkv_proj_weight"
    row_start: int
    rows: int  # leading-dimension size the checkpoint tensor must have


def _empty(*shape: int, dtype: torch.dtype, device: torch.device) -> nn.Parameter:
    # Uninitialised on purpose: every parameter is overwritten by the loader, which
    # fails if one is missing; random init of a large model would cost seconds.
    return nn.Parameter(torch.empty(*shape, dtype=dtype, device=device), requires_grad=False)


class LlamaDecoderLayer(nn.Module):
    def __init__(self, config: ModelConfig, dtype: torch.dtype, device: torch.device) -> None:
        super().__init__()
        hidden, head_dim = config.hidden_size, config.head_dim
        self.num_heads = config.num_heads
        self.num_kv_heads = config.num_kv_heads
        self.head_dim = head_dim
        self.eps = config.rms_norm_eps
        self.scale = head_dim**-0.5
        qkv_rows = (config.num_heads + 2 * config.num_kv_heads) * head_dim
        self.input_norm_weight = _empty(hidden, dtype=dtype, device=device)
        self.qkv_proj_weight = _empty(qkv_rows, hidden, dtype=dtype, device=device)
        self.qkv_proj_bias = (
            _empty(qkv_rows, dtype=dtype, device=device) if config.attention_bias else None
        )
        self.o_proj_weight = _empty(hidden, config.num_heads * head_dim, dtype=dtype, device=device)
        self.post_attention_norm_weight = _empty(hidden, dtype=dtype, device=device)
        self.gate_up_proj_weight = _empty(
            2 * config.intermediate_size, hidden, dtype=dtype, device=device
        )
        self.down_proj_weight = _empty(hidden, config.intermediate_size, dtype=dtype, device=device)

    def forward(
        self,
        hidden: torch.Tensor,  # [num_tokens, hidden_size]
        residual: torch.Tensor | None,  # [num_tokens, hidden_size]; None before layer 0
        metadata: AttentionMetadata,
        kv_cache: KVCache,
        cos_sin_cache: torch.Tensor,  # [max_positions, head_dim]
        ops: Ops,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        num_tokens = hidden.shape[0]
        normed, residual = ops.rms_norm(hidden, self.input_norm_weight, self.eps, residual)
        qkv = F.linear(normed, self.qkv_proj_weight, self.qkv_proj_bias)
        q_size, kv_size = self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
        query, key, value = qkv.split([q_size, kv_size, kv_size], dim=-1)
        query = query.view(num_tokens, self.num_heads, self.head_dim)
        key = key.view(num_tokens, self.num_kv_heads, self.head_dim)
        value = value.view(num_tokens, self.num_kv_heads, self.head_dim)
        key_cache, value_cache = kv_cache
        # The rotated key goes straight into the cache: the kernel backend never writes it out.
        query = ops.rope_and_write_kv(
            query,
            key,
            value,
            metadata.positions,
            cos_sin_cache,
            key_cache,
            value_cache,
            metadata.slot_mapping,
        )
        attended = ops.attention(query, key_cache, value_cache, metadata, self.scale)
        hidden = F.linear(attended.reshape(num_tokens, q_size), self.o_proj_weight)

        normed, residual = ops.rms_norm(hidden, self.post_attention_norm_weight, self.eps, residual)
        gate, up = F.linear(normed, self.gate_up_proj_weight).chunk(2, dim=-1)
        return F.linear(F.silu(gate) * up, self.down_proj_weight), residual


class LlamaForCausalLM(nn.Module):
    def __init__(
        self,
        config: ModelConfig,
        dtype: torch.dtype,
        device: torch.device,
        max_positions: int,
    ) -> None:
        super().__init__()
        self.config = config
        self.embed_weight = _empty(
            config.vocab_size, config.hidden_size, dtype=dtype, device=device
        )
        self.layers = nn.ModuleList(
            LlamaDecoderLayer(config, dtype, device) for _ in range(config.num_layers)
        )
        self.norm_weight = _empty(config.hidden_size, dtype=dtype, device=device)
        # Tied: the output projection is the embedding matrix itself (one tensor).
        self.lm_head_weight = (
            self.embed_weight
            if config.tie_word_embeddings
            else _empty(config.vocab_size, config.hidden_size, dtype=dtype, device=device)
        )
        # [max_positions, head_dim]: not a parameter, never loaded.
        self.cos_sin_cache = build_cos_sin_cache(config, max_positions, dtype, device)

    def forward(
        self,
        input_ids: torch.Tensor,  # [num_tokens] int64
        metadata: AttentionMetadata,
        kv_caches: list[KVCache],  # one per layer
        ops: Ops,
    ) -> torch.Tensor:  # [num_tokens, hidden_size], final-normed
        hidden = F.embedding(input_ids, self.embed_weight)
        residual: torch.Tensor | None = None
        for layer, kv_cache in zip(self.layers, kv_caches, strict=True):
            hidden, residual = layer(hidden, residual, metadata, kv_cache, self.cos_sin_cache, ops)
        hidden, _ = ops.rms_norm(hidden, self.norm_weight, self.config.rms_norm_eps, residual)
        return hidden

    def compute_logits(
        self,
        hidden: torch.Tensor,  # [num_sampled, hidden_size], the rows to sample from
    ) -> torch.Tensor:  # [num_sampled, vocab_size] float32
        return F.linear(hidden, self.lm_head_weight).float()

    def hf_weight_map(self) -> dict[str, WeightSlot]:
        """Hugging Face checkpoint name -> where it goes in this model.

        q, k, v stack (in that order) into qkv_proj; gate then up into gate_up_proj.
        lm_head is absent when the embeddings are tied.
        """
        config = self.config
        q_rows = config.num_heads * config.head_dim
        kv_rows = config.num_kv_heads * config.head_dim
        mapping = {
            "model.embed_tokens.weight": WeightSlot("embed_weight", 0, config.vocab_size),
            "model.norm.weight": WeightSlot("norm_weight", 0, config.hidden_size),
        }
        if not config.tie_word_embeddings:
            mapping["lm_head.weight"] = WeightSlot("lm_head_weight", 0, config.vocab_size)
        for index in range(config.num_layers):
            hf, ours = f"model.layers.{index}.", f"layers.{index}."
            stacked = {
                "self_attn.q_proj": ("qkv_proj", 0, q_rows),
                "self_attn.k_proj": ("qkv_proj", q_rows, kv_rows),
                "self_attn.v_proj": ("qkv_proj", q_rows + kv_rows, kv_rows),
                "mlp.gate_proj": ("gate_up_proj", 0, config.intermediate_size),
                "mlp.up_proj": ("gate_up_proj", config.intermediate_size, config.intermediate_size),
            }
            for hf_name, (name, row_start, rows) in stacked.items():
                mapping[f"{hf}{hf_name}.weight"] = WeightSlot(
                    f"{ours}{name}_weight", row_start, rows
                )
                if config.attention_bias and name == "qkv_proj":
                    mapping[f"{hf}{hf_name}.bias"] = WeightSlot(
                        f"{ours}{name}_bias", row_start, rows
                    )
            plain = {
                "input_layernorm.weight": ("input_norm_weight", config.hidden_size),
                "post_attention_layernorm.weight": (
                    "post_attention_norm_weight",
                    config.hidden_size,
                ),
                "self_attn.o_proj.weight": ("o_proj_weight", config.hidden_size),
                "mlp.down_proj.weight": ("down_proj_weight", config.hidden_size),
            }
            for hf_name, (name, rows) in plain.items():
                mapping[f"{hf}{hf_name}"] = WeightSlot(f"{ours}{name}", 0, rows)
        return mapping
