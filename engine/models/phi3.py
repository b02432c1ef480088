"""Phi-3: the Llama layer; its checkpoint stores q/k/v as one `qkv_proj` and gate/up as
one `gate_up_proj` (the layout we fuse to anyway). LongRoPE is in engine/rope.py; a
window on every layer (Phi-3-mini's 2047) comes from `ModelConfig`."""

from __future__ import annotations

from engine.models.llama import LlamaForCausalLM


class Phi3ForCausalLM(LlamaForCausalLM):
    fused_checkpoint = True
