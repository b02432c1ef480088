"""The Triton-kernel backend: `engine.ops.TorchOps`'s operations on our kernels.

The model runner picks `KernelOps` on CUDA (`use_kernels` "auto" / "on") and
`TorchOps` on CPU. Tests run the whole engine step through `KernelOps` on CPU under
Triton's interpreter (switched on before `kernels` is first imported, see
tests/kernels/conftest.py), which is why only the kernel backend imports this module.

Beyond the shared operations (`rope_and_write_kv` here is one pass over the keys),
`sample` / `apply_penalties` / `apply_logit_bias` / `pack_token_mask` are the fused
sampler that `engine.sampler.Sampler(fused=...)` drives.
"""

from __future__ import annotations

import torch

from engine.attention import AttentionMetadata
from kernels.attention import paged_attention, write_kv_cache
from kernels.penalties import apply_logit_bias, apply_penalties
from kernels.rmsnorm import rms_norm
from kernels.rope import rope, rope_and_write_kv
from kernels.sampling import pack_allowed_mask, sample


class KernelOps:
    """Backend on Triton kernels; same contracts as `engine.ops.TorchOps`."""

    def rms_norm(
        self,
        x: torch.Tensor,  # [num_tokens, hidden_size]
        weight: torch.Tensor,  # [hidden_size]
        eps: float,
        residual: torch.Tensor | None,  # [num_tokens, hidden_size] or None
    ) -> tuple[torch.Tensor, torch.Tensor]:  # (out, residual_out)
        return rms_norm(x, weight, eps, residual)

    def apply_rope(
        self,
        query: torch.Tensor,  # [num_tokens, num_heads, head_dim]
        key: torch.Tensor,  # [num_tokens, num_kv_heads, head_dim]
        positions: torch.Tensor,  # [num_tokens] int64
        cos_sin_cache: torch.Tensor,  # [max_positions, head_dim]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return rope(query, key, positions, cos_sin_cache)

    def write_kv(
        self,
        key: torch.Tensor,  # [num_tokens, num_kv_heads, head_dim]
        value: torch.Tensor,  # [num_tokens, num_kv_heads, head_dim]
        key_cache: torch.Tensor,  # [num_blocks, block_size, num_kv_heads, head_dim]
        value_cache: torch.Tensor,  # [num_blocks, block_size, num_kv_heads, head_dim]
        slot_mapping: torch.Tensor,  # [num_tokens] int64
    ) -> None:
        write_kv_cache(key, value, key_cache, value_cache, slot_mapping)

    def rope_and_write_kv(
        self,
        query: torch.Tensor,  # [num_tokens, num_heads, head_dim]
        key: torch.Tensor,  # [num_tokens, num_kv_heads, head_dim]
        value: torch.Tensor,  # [num_tokens, num_kv_heads, head_dim]
        positions: torch.Tensor,  # [num_tokens] int64
        cos_sin_cache: torch.Tensor,  # [max_positions, head_dim]
        key_cache: torch.Tensor,  # [num_blocks, block_size, num_kv_heads, head_dim]
        value_cache: torch.Tensor,  # [num_blocks, block_size, num_kv_heads, head_dim]
        slot_mapping: torch.Tensor,  # [num_tokens] int64
    ) -> torch.Tensor:  # rotated query [num_tokens, num_heads, head_dim]
        """`apply_rope` + `write_kv` in one pass; the rotated key only lands in the cache."""
        return rope_and_write_kv(
            query, key, value, positions, cos_sin_cache, key_cache, value_cache, slot_mapping
        )

    def attention(
        self,
        query: torch.Tensor,  # [num_tokens, num_heads, head_dim]
        key_cache: torch.Tensor,  # [num_blocks, block_size, num_kv_heads, head_dim]
        value_cache: torch.Tensor,  # [num_blocks, block_size, num_kv_heads, head_dim]
        metadata: AttentionMetadata,
        scale: float,
    ) -> torch.Tensor:  # [num_tokens, num_heads, head_dim]
        return paged_attention(
            query,
            key_cache,
            value_cache,
            metadata.query_start_loc,
            metadata.seq_lens,
            metadata.block_tables,
            max_query_len=metadata.max_query_len,
            max_seq_len=metadata.max_seq_len,
            scale=scale,
            has_decodes=1 in metadata.query_lens_host,
        )

    def sample(
        self,
        logits: torch.Tensor,  # [batch, vocab_size] float32
        temperature: torch.Tensor,  # [batch] float32, 0 = greedy
        top_k: torch.Tensor,  # [batch] int32, 0 = off
        top_p: torch.Tensor,  # [batch] float32, 1 = off
        min_p: torch.Tensor,  # [batch] float32, 0 = off
        seeds: torch.Tensor,  # [batch] int64
        offsets: torch.Tensor,  # [batch] int64, e.g. the output position
        allowed_mask: torch.Tensor | None = None,  # [batch, cdiv(vocab_size, 32)] int32
    ) -> tuple[torch.Tensor, torch.Tensor]:  # token_ids [batch] int64, logprobs [batch] float32
        return sample(logits, temperature, top_k, top_p, min_p, seeds, offsets, allowed_mask)

    def apply_penalties(
        self,
        logits: torch.Tensor,  # [batch, vocab_size] float32, in place
        output_counts: torch.Tensor,  # [batch, vocab_size] int32
        prompt_mask: torch.Tensor,  # [batch, cdiv(vocab_size, 32)] int32
        repetition_penalty: torch.Tensor,  # [batch] float32
        frequency_penalty: torch.Tensor,  # [batch] float32
        presence_penalty: torch.Tensor,  # [batch] float32
    ) -> None:
        apply_penalties(
            logits,
            output_counts,
            prompt_mask,
            repetition_penalty,
            frequency_penalty,
            presence_penalty,
        )

    def apply_logit_bias(
        self,
        logits: torch.Tensor,  # [batch, vocab_size] float32, in place
        token_ids: torch.Tensor,  # [batch, max_biases] int32, -1 = none
        biases: torch.Tensor,  # [batch, max_biases] float32
    ) -> None:
        apply_logit_bias(logits, token_ids, biases)

    def pack_token_mask(
        self,
        tokens: torch.Tensor,  # [batch, vocab_size] bool
    ) -> torch.Tensor:  # [batch, cdiv(vocab_size, 32)] int32: bit j of word w = token 32 w + j
        """The bitmask layout of `apply_penalties`' prompt mask and `sample`'s allowed mask."""
        return pack_allowed_mask(tokens)
