"""The seam between the model and the compute backend: the `Ops` protocol.

The models (engine/models/) call only `rms_norm`, `rope_and_write_kv` (RoPE, then the
rotated key and the value into the paged cache) and `attention` for everything that
is not a plain matmul; `apply_rope` and `write_kv` are its two halves. `TorchOps`
(here) is the CPU / reference backend written with torch; `engine.kernel_ops.KernelOps`
implements the same methods with Triton kernels on CUDA. Both must agree on these
contracts:

- KV cache, per layer: `key_cache` and `value_cache`, each
  [num_blocks, block_size, num_kv_heads, head_dim], in the model dtype. Token slot
  `s` lives at block `s // block_size`, offset `s % block_size`.
- Grouped-query attention: query head `h` reads KV head `h // (num_heads //
  num_kv_heads)` (the Hugging Face `repeat_kv` order).
- RoPE cache: [max_positions, head_dim]; row p holds cos(p * inv_freq) in its first
  head_dim / 2 columns and sin(p * inv_freq) in its last head_dim / 2 (any attention
  scaling factor already multiplied in). Rotation follows HF's `rotate_half`: the
  two halves of a head are the (real, imaginary) parts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch
import torch.nn.functional as F

from engine.attention import AttentionMetadata


@runtime_checkable
class Ops(Protocol):
    """What the model asks of a backend; `TorchOps` below documents each method."""

    def rms_norm(
        self,
        x: torch.Tensor,  # [num_tokens, hidden_size]
        weight: torch.Tensor,  # [hidden_size]
        eps: float,
        residual: torch.Tensor | None,  # [num_tokens, hidden_size] or None
    ) -> tuple[torch.Tensor, torch.Tensor]:  # (out, residual_out)
        ...

    def apply_rope(
        self,
        query: torch.Tensor,  # [num_tokens, num_heads, head_dim]
        key: torch.Tensor,  # [num_tokens, num_kv_heads, head_dim]
        positions: torch.Tensor,  # [num_tokens] int64
        cos_sin_cache: torch.Tensor,  # [max_positions, head_dim]
    ) -> tuple[torch.Tensor, torch.Tensor]:  # rotated (query, key)
        ...

    def write_kv(
        self,
        key: torch.Tensor,  # [num_tokens, num_kv_heads, head_dim]
        value: torch.Tensor,  # [num_tokens, num_kv_heads, head_dim]
        key_cache: torch.Tensor,  # [num_blocks, block_size, num_kv_heads, head_dim]
        value_cache: torch.Tensor,  # [num_blocks, block_size, num_kv_heads, head_dim]
        slot_mapping: torch.Tensor,  # [num_tokens] int64
    ) -> None: ...

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
        ...

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
        ...


class TorchOps:
    """Reference backend in torch: exact, and vectorised enough for CPU serving."""

    def __init__(self) -> None:
        # (metadata, its index plan per window) of the current step, shared by all layers.
        self._planned: tuple[AttentionMetadata, dict[int | None, _AttentionPlan]] | None = None

    def rms_norm(
        self,
        x: torch.Tensor,  # [num_tokens, hidden_size]
        weight: torch.Tensor,  # [hidden_size]
        eps: float,
        residual: torch.Tensor | None,  # [num_tokens, hidden_size] or None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """RMSNorm with the residual add fused in front.

        With a residual: residual_out = x + residual, out = rmsnorm(residual_out) * weight.
        Without: residual_out = x, out = rmsnorm(x) * weight. Both [num_tokens, hidden_size].
        Statistics in float32, then cast back before the weight, as HF Llama does.
        """
        residual_out = x if residual is None else x + residual
        if residual_out.dtype == torch.float32:
            # Same formula as below; the fused op saves two passes over memory.
            return F.rms_norm(residual_out, weight.shape, weight, eps), residual_out
        hidden = residual_out.float()
        variance = hidden.pow(2).mean(-1, keepdim=True)
        normed = (hidden * torch.rsqrt(variance + eps)).to(x.dtype)
        return weight * normed, residual_out

    def apply_rope(
        self,
        query: torch.Tensor,  # [num_tokens, num_heads, head_dim]
        key: torch.Tensor,  # [num_tokens, num_kv_heads, head_dim]
        positions: torch.Tensor,  # [num_tokens] int64
        cos_sin_cache: torch.Tensor,  # [max_positions, head_dim]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Rotate query and key by their positions; returns new (query, key), same shapes."""
        cos, sin = cos_sin_cache[positions].unsqueeze(1).chunk(2, dim=-1)  # [T, 1, D/2] each
        return _rotate(query, cos, sin), _rotate(key, cos, sin)

    def write_kv(
        self,
        key: torch.Tensor,  # [num_tokens, num_kv_heads, head_dim]
        value: torch.Tensor,  # [num_tokens, num_kv_heads, head_dim]
        key_cache: torch.Tensor,  # [num_blocks, block_size, num_kv_heads, head_dim]
        value_cache: torch.Tensor,  # [num_blocks, block_size, num_kv_heads, head_dim]
        slot_mapping: torch.Tensor,  # [num_tokens] int64
    ) -> None:
        """Store the new tokens' key and value at their slots, in place."""
        num_kv_heads, head_dim = key_cache.shape[2], key_cache.shape[3]
        key_cache.view(-1, num_kv_heads, head_dim).index_copy_(0, slot_mapping, key)
        value_cache.view(-1, num_kv_heads, head_dim).index_copy_(0, slot_mapping, value)

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
        """`apply_rope`, then `write_kv` of the rotated key; what the model calls.

        KernelOps does both in one pass over the keys; here it is simply the two steps.
        """
        query, key = self.apply_rope(query, key, positions, cos_sin_cache)
        self.write_kv(key, value, key_cache, value_cache, slot_mapping)
        return query

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
        """Causal attention of each sequence's new queries over its paged context.

        New token i of a sequence with query_len new tokens and seq_len context sits at
        position p = seq_len - query_len + i and attends to keys at positions <= p, and
        with a `window` only to those > p - window (the layer's sliding window, as
        transformers masks it). `softcap`: scores become softcap * tanh(scores / softcap)
        before the mask (Gemma 2). The new tokens' KV must already be written
        (`rope_and_write_kv`).

        Decodes (query_len 1) run as one padded batch; longer chunks (prefill)
        run one SDPA call per sequence, so padding never grows with a long prompt.
        """
        plan = self._plan_for(metadata, window)
        output = torch.empty_like(query)
        group = query.shape[1] // key_cache.shape[2]
        if plan.decode is not None:
            _decode_attention(query, key_cache, value_cache, plan.decode, group, scale, softcap, output)
        for prefill in plan.prefills:
            _prefill_attention(query, key_cache, value_cache, prefill, group, scale, softcap, output)
        return output

    def _plan_for(self, metadata: AttentionMetadata, window: int | None) -> _AttentionPlan:
        # Every layer of a step gets the same metadata: index it once per window, not per layer.
        if self._planned is None or self._planned[0] is not metadata:
            self._planned = (metadata, {})
        plans = self._planned[1]
        if window not in plans:
            plans[window] = _AttentionPlan.build(metadata, window)
        return plans[window]


@dataclass(frozen=True)
class _DecodePlan:
    """Sequences with one new token, batched; context padded to the longest, in blocks."""

    token_index: torch.Tensor  # [B] int64: flat token of each decode
    # [B * max_blocks] int64: KV blocks of each sequence, in order, from the first its
    # window sees (the first block without a window)
    block_index: torch.Tensor
    # [B, 1, 1, max_blocks * block_size] bool: False past a seq_len, or before the window
    visible: torch.Tensor


@dataclass(frozen=True)
class _PrefillPlan:
    """One sequence with several new tokens."""

    token_start: int  # first flat token of the sequence
    query_len: int
    num_keys: int  # keys read: from the first block any of its queries sees to seq_len
    block_index: torch.Tensor  # [cdiv(num_keys, block_size)] int64: those KV blocks, in order
    # [q, num_keys] bool: query i (at seq_len - q + i = p) sees the keys (the j-th at
    # seq_len - num_keys + j) at positions <= p, and > p - window
    causal: torch.Tensor


@dataclass(frozen=True)
class _AttentionPlan:
    decode: _DecodePlan | None
    prefills: tuple[_PrefillPlan, ...]

    @classmethod
    def build(cls, metadata: AttentionMetadata, window: int | None = None) -> _AttentionPlan:
        device = metadata.block_tables.device
        block_size = metadata.block_size
        tables = metadata.block_tables.long()  # [num_seqs, max_blocks]
        token_starts = _cumulative(metadata.query_lens_host)  # host ints: no device sync
        seq_lens_host, query_lens_host = metadata.seq_lens_host, metadata.query_lens_host
        # With a window, each sequence's context starts at the block of the first key its
        # first query sees: blocks before it are neither read nor (maybe) still its own.
        first_blocks = [
            0 if window is None else max(seq_len - query_len - window + 1, 0) // block_size
            for seq_len, query_len in zip(seq_lens_host, query_lens_host, strict=True)
        ]
        decodes = [i for i, n in enumerate(query_lens_host) if n == 1]
        decode = None
        if decodes:
            seq_index = torch.tensor(decodes, device=device)
            first = torch.tensor([first_blocks[i] for i in decodes], device=device)[:, None]
            num_blocks = max(-(-seq_lens_host[i] // block_size) - first_blocks[i] for i in decodes)
            columns = (first + torch.arange(num_blocks, device=device)).clamp(max=tables.shape[1] - 1)
            key_positions = first * block_size + torch.arange(num_blocks * block_size, device=device)
            seq_lens = metadata.seq_lens[seq_index].unsqueeze(1)  # [B, 1]
            visible = key_positions < seq_lens  # [B, L]
            if window is not None:  # the query sits at seq_len - 1
                visible &= key_positions >= seq_lens - window
            decode = _DecodePlan(
                token_index=torch.tensor([token_starts[i] for i in decodes], device=device),
                block_index=tables[seq_index].gather(1, columns).reshape(-1),
                visible=visible[:, None, None, :],
            )
        prefills = []
        for seq, (query_len, seq_len) in enumerate(zip(query_lens_host, seq_lens_host, strict=True)):
            if query_len > 1:
                key_start = first_blocks[seq] * block_size
                positions = torch.arange(key_start, seq_len, device=device)
                query_positions = torch.arange(seq_len - query_len, seq_len, device=device)
                causal = positions[None, :] <= query_positions[:, None]  # [q, L]
                if window is not None:
                    causal &= positions[None, :] > query_positions[:, None] - window
                prefills.append(
                    _PrefillPlan(
                        token_start=token_starts[seq],
                        query_len=query_len,
                        num_keys=seq_len - key_start,
                        block_index=tables[seq, first_blocks[seq] : -(-seq_len // block_size)],
                        causal=causal,
                    )
                )
        return cls(decode, tuple(prefills))


def _cumulative(counts: tuple[int, ...]) -> list[int]:
    starts = [0]
    for count in counts:
        starts.append(starts[-1] + count)
    return starts


def _gather_context(
    cache: torch.Tensor,  # [num_blocks, block_size, Hkv, D]
    block_index: torch.Tensor,  # [S * nb] int64
    num_seqs: int,
) -> torch.Tensor:  # [S, Hkv, nb * block_size, D], a transposed view of one copy
    """Each sequence's context, read a whole KV block at a time: `index_select` of blocks
    is one contiguous copy per block, several times faster on CPU than gathering token
    slots with advanced indexing (docs/benchmarks.md)."""
    num_kv_heads, head_dim = cache.shape[2], cache.shape[3]
    blocks = cache.index_select(0, block_index)  # [S * nb, block_size, Hkv, D]
    return blocks.view(num_seqs, -1, num_kv_heads, head_dim).transpose(1, 2)


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    # x: [T, H, D]; cos, sin: [T, 1, D/2]. HF: x * cat(cos, cos) + rotate_half(x) * cat(sin, sin).
    first, second = x.chunk(2, dim=-1)
    cos = cos.to(x.dtype)
    sin = sin.to(x.dtype)
    return torch.cat((first * cos - second * sin, second * cos + first * sin), dim=-1)


def _attend(
    query: torch.Tensor,  # [..., q, D]
    keys: torch.Tensor,  # [..., L, D], broadcast against query's leading dims
    values: torch.Tensor,  # [..., L, D]
    visible: torch.Tensor,  # [..., q, L] bool, broadcast
    scale: float,
    softcap: float | None,
) -> torch.Tensor:  # [..., q, D]
    """softmax(mask(cap(q·k * scale))) · v; SDPA's fused kernel when nothing is capped.
    The capped form is transformers' eager one: scores, tanh cap, mask, softmax in fp32."""
    if softcap is None:
        return F.scaled_dot_product_attention(query, keys, values, attn_mask=visible, scale=scale)
    scores = torch.matmul(query, keys.transpose(-1, -2)) * scale
    scores = (torch.tanh(scores / softcap) * softcap).masked_fill(~visible, float("-inf"))
    return torch.matmul(scores.softmax(-1, dtype=torch.float32).to(query.dtype), values)


def _decode_attention(
    query: torch.Tensor,  # [T, Hq, D]
    key_cache: torch.Tensor,  # [num_blocks, block_size, Hkv, D]
    value_cache: torch.Tensor,  # [num_blocks, block_size, Hkv, D]
    plan: _DecodePlan,
    group: int,
    scale: float,
    softcap: float | None,
    output: torch.Tensor,  # [T, Hq, D], written at the decode tokens
) -> None:
    batch = plan.token_index.shape[0]
    num_kv_heads, head_dim = key_cache.shape[2], key_cache.shape[3]
    keys = _gather_context(key_cache, plan.block_index, batch)  # [B, Hkv, L, D]
    values = _gather_context(value_cache, plan.block_index, batch)
    # The query heads sharing a KV head become its "query rows": no KV repeat.
    grouped = query[plan.token_index].view(batch, num_kv_heads, group, head_dim)
    out = _attend(grouped, keys, values, plan.visible, scale, softcap)  # [B, Hkv, group, D]
    output[plan.token_index] = out.reshape(batch, num_kv_heads * group, head_dim)


def _prefill_attention(
    query: torch.Tensor,  # [T, Hq, D]
    key_cache: torch.Tensor,  # [num_blocks, block_size, Hkv, D]
    value_cache: torch.Tensor,  # [num_blocks, block_size, Hkv, D]
    plan: _PrefillPlan,
    group: int,
    scale: float,
    softcap: float | None,
    output: torch.Tensor,  # [T, Hq, D], written at this sequence's tokens
) -> None:
    query_len, token_end = plan.query_len, plan.token_start + plan.query_len
    num_kv_heads, head_dim = key_cache.shape[2], key_cache.shape[3]
    # [1, Hkv, L, D] -> [Hkv, 1, L, D]: broadcast over the group's query heads.
    keys = _gather_context(key_cache, plan.block_index, 1)[0, :, None, : plan.num_keys]
    values = _gather_context(value_cache, plan.block_index, 1)[0, :, None, : plan.num_keys]
    # [q, Hq, D] -> [Hkv, group, q, D]: the group's heads share the KV head.
    grouped = query[plan.token_start : token_end].view(query_len, num_kv_heads, group, head_dim)
    out = _attend(
        grouped.permute(1, 2, 0, 3), keys, values, plan.causal, scale, softcap
    )  # [Hkv, group, q, D]
    output[plan.token_start : token_end] = out.permute(2, 0, 1, 3).reshape(
        query_len, num_kv_heads * group, head_dim
    )
