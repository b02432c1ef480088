"""The Triton-kernel backends: `KernelOps` (the `engine.ops.Ops` protocol) and
`KernelSampling` (the `engine.sampler.SamplingBackend` protocol) on our kernels.

The model runner picks them on CUDA (`use_kernels` "auto" / "on") and `TorchOps` /
`TorchSampling` on CPU. Tests run the whole engine step through them on CPU under
Triton's interpreter (switched on before `tritium_kernels` is first imported, see
tests/kernels/conftest.py), which is why only the kernel backend imports this module.
`rope_and_write_kv` here is one pass over the keys; `KernelSampling.choose` samples
every row, greedy or not, in one sort-free kernel call.
"""

from __future__ import annotations

import torch

from engine.attention import AttentionMetadata
from engine.request import Sequence
from engine.sampler import Penalties, choice_key, engine_generator
from tritium_kernels.attention import paged_attention, write_kv_cache
from tritium_kernels.penalties import apply_logit_bias, apply_penalties
from tritium_kernels.rmsnorm import rms_norm
from tritium_kernels.rope import rope, rope_and_write_kv
from tritium_kernels.sampling import pack_token_mask, sample


class KernelOps:
    """`engine.ops.Ops` on Triton kernels; same contracts as `engine.ops.TorchOps`."""

    def rms_norm(
        self,
        x: torch.Tensor,  # [num_tokens, hidden_size]
        weight: torch.Tensor,  # [hidden_size]
        eps: float,
        residual: torch.Tensor | None,  # [num_tokens, hidden_size] or None
    ) -> tuple[torch.Tensor, torch.Tensor]:  # (out, residual_out)
        return rms_norm(x=x, weight=weight, eps=eps, residual=residual)

    def apply_rope(
        self,
        query: torch.Tensor,  # [num_tokens, num_heads, head_dim]
        key: torch.Tensor,  # [num_tokens, num_kv_heads, head_dim]
        positions: torch.Tensor,  # [num_tokens] int64
        cos_sin_cache: torch.Tensor,  # [max_positions, head_dim]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return rope(query=query, key=key, positions=positions, cos_sin_cache=cos_sin_cache)

    def write_kv(
        self,
        key: torch.Tensor,  # [num_tokens, num_kv_heads, head_dim]
        value: torch.Tensor,  # [num_tokens, num_kv_heads, head_dim]
        key_cache: torch.Tensor,  # [num_blocks, block_size, num_kv_heads, head_dim]
        value_cache: torch.Tensor,  # [num_blocks, block_size, num_kv_heads, head_dim]
        slot_mapping: torch.Tensor,  # [num_tokens] int64
    ) -> None:
        write_kv_cache(
            key=key,
            value=value,
            key_cache=key_cache,
            value_cache=value_cache,
            slot_mapping=slot_mapping,
        )

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
            query=query,
            key=key,
            value=value,
            positions=positions,
            cos_sin_cache=cos_sin_cache,
            key_cache=key_cache,
            value_cache=value_cache,
            slot_mapping=slot_mapping,
        )

    def attention(
        self,
        query: torch.Tensor,  # [num_tokens, num_heads, head_dim]
        key_cache: torch.Tensor,  # [num_blocks, block_size, num_kv_heads, head_dim]
        value_cache: torch.Tensor,  # [num_blocks, block_size, num_kv_heads, head_dim]
        metadata: AttentionMetadata,
        scale: float,
        window: int | None = None,
        softcap: float | None = None,
    ) -> torch.Tensor:  # [num_tokens, num_heads, head_dim]
        return paged_attention(
            query=query,
            key_cache=key_cache,
            value_cache=value_cache,
            query_start_loc=metadata.query_start_loc,
            seq_lens=metadata.seq_lens,
            block_tables=metadata.block_tables,
            max_query_len=metadata.max_query_len,
            max_seq_len=metadata.max_seq_len,
            scale=scale,
            has_decodes=1 in metadata.query_lens_host,
            window=window,
            softcap=softcap,
        )


class KernelSampling:
    """`engine.sampler.SamplingBackend` on the fused kernels (`tritium_kernels.penalties`,
    `tritium_kernels.sampling`); a seeded row's Philox key comes from (seed, choice index) and
    its counter offset is the output position."""

    def __init__(self, seed: int | None = None) -> None:
        # Draws the Philox keys of unseeded rows, fresh each step; from `seed` when set.
        self._keys = engine_generator(seed, torch.device("cpu"))

    def apply_penalties(self, logits: torch.Tensor, penalties: Penalties) -> None:
        apply_penalties(
            logits=logits,
            output_counts=penalties.output_counts,
            prompt_mask=pack_token_mask(tokens=penalties.in_prompt),
            repetition_penalty=penalties.repetition,
            frequency_penalty=penalties.frequency,
            presence_penalty=penalties.presence,
        )

    def add_to_logits(
        self,
        logits: torch.Tensor,  # [num_rows, vocab_size] float32, in place
        token_ids: torch.Tensor,  # [num_rows, width] int32, -1 pads
        values: torch.Tensor,  # [num_rows, width] float32
    ) -> None:
        apply_logit_bias(logits=logits, token_ids=token_ids, biases=values)

    def choose(
        self,
        logits: torch.Tensor,  # [num_seqs, vocab_size] float32, processed
        seqs: list[Sequence],
        allowed: torch.Tensor | None = None,  # [num_seqs, cdiv(vocab_size, 32)] int32
    ) -> torch.Tensor:  # [num_seqs] int64
        """All rows, greedy or not, in one kernel call (temperature 0 = argmax there)."""
        device = logits.device
        params = [seq.params for seq in seqs]
        # Philox keys: seeded rows from (seed, choice index); unseeded random rows from
        # the engine's stream, fresh each step; greedy rows draw nothing.
        num_unseeded = sum(1 for p in params if p.seed is None and not p.greedy)
        fresh = iter(torch.randint(0, 1 << 62, (num_unseeded,), generator=self._keys).tolist())
        keys = [
            choice_key(p.seed, seq.index) if p.seed is not None else 0 if p.greedy else next(fresh)
            for p, seq in zip(params, seqs, strict=True)
        ]
        floats = torch.tensor(
            [[p.temperature for p in params], [p.top_p for p in params], [p.min_p for p in params]],
            dtype=torch.float32,
        ).to(device)  # [3, num_seqs]: temperature, top_p, min_p
        integers = torch.tensor(
            [[max(p.top_k, 0) for p in params], keys, [seq.num_output_tokens for seq in seqs]],
            dtype=torch.int64,
        ).to(device)  # [3, num_seqs]: top_k, Philox key, offset (the output position)
        return sample(
            logits=logits,
            temperature=floats[0],
            top_k=integers[0].int(),
            top_p=floats[1],
            min_p=floats[2],
            seeds=integers[1],
            offsets=integers[2],
            allowed_mask=allowed,
        )
