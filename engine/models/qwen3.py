"""Qwen3: the Llama layer with QK-norm, an RMSNorm over each head's query and key
(`q_norm`, `k_norm`, one weight of head_dim shared by the heads) before RoPE."""

from __future__ import annotations

from engine.models.llama import LlamaForCausalLM


class Qwen3ForCausalLM(LlamaForCausalLM):
    qk_norm = "head"
