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

from dataclasses import dataclass, field
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
        # (positions, {id(cos_sin_cache): (cache, its _RopeTables)}) of the current step:
        # every layer rotates by the same positions, so cos/sin are gathered once a step.
        self._rope: tuple[torch.Tensor, dict[int, tuple[torch.Tensor, _RopeTables]]] | None = None

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
            return F.rms_norm(residual_out, weight.shape, weight, eps), residual_out
        # Without a weight, torch's rms_norm of a bf16/fp16 input computes in float32 and
        # rounds once: HF's (x.float() * rsqrt(mean(x^2) + eps)).to(dtype), bit for bit,
        # in one call. The weight then multiplies in the model dtype, as in HF.
        return weight * F.rms_norm(residual_out, weight.shape, None, eps), residual_out

    def apply_rope(
        self,
        query: torch.Tensor,  # [num_tokens, num_heads, head_dim]
        key: torch.Tensor,  # [num_tokens, num_kv_heads, head_dim]
        positions: torch.Tensor,  # [num_tokens] int64
        cos_sin_cache: torch.Tensor,  # [max_positions, head_dim]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Rotate query and key by their positions; returns new (query, key), same shapes."""
        tables = self._rope_tables(positions, cos_sin_cache, query.dtype)
        num_heads = query.shape[1]
        both = _adjacent_heads(query, key)
        if both is not None:  # q and k side by side in one projection: one pass for both
            rotated = tables.rotate(both)
            return rotated[:, :num_heads], rotated[:, num_heads:]
        return tables.rotate(query), tables.rotate(key)

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
        num_tokens, num_heads, head_dim = query.shape
        group = num_heads // key_cache.shape[2]
        decode = plan.decode
        if decode is not None and decode.token_index is None:  # a pure decode step
            out = _decode_attention(query, key_cache, value_cache, decode, group, scale, softcap)
            return out.reshape(num_tokens, num_heads, head_dim)
        output = torch.empty_like(query)
        if decode is not None:
            out = _decode_attention(query, key_cache, value_cache, decode, group, scale, softcap)
            output[decode.token_index] = out.reshape(-1, num_heads, head_dim)
        for prefill in plan.prefills:
            _prefill_attention(
                query, key_cache, value_cache, prefill, group, scale, softcap, output
            )
        return output

    def _rope_tables(
        self, positions: torch.Tensor, cos_sin_cache: torch.Tensor, dtype: torch.dtype
    ) -> _RopeTables:
        # Every layer of a step passes the same positions tensor: gather once per cache.
        if self._rope is None or self._rope[0] is not positions:
            self._rope = (positions, {})
        tables = self._rope[1]
        entry = tables.get(id(cos_sin_cache))
        if entry is None or entry[1].cos.dtype != dtype:
            entry = (cos_sin_cache, _RopeTables.build(cos_sin_cache, positions, dtype))
            tables[id(cos_sin_cache)] = entry
        return entry[1]

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
    """Sequences with one new token, batched; context padded to the longest, in blocks.

    One sequence alone (single-stream decoding) needs neither padding nor a mask: its keys
    are cut to exactly what its query sees, read in place when its blocks are consecutive.
    """

    # [B] int64: flat token of each decode; None when the decodes are all the step's
    # tokens, in order (a pure decode step): the query and output need no gather / scatter
    token_index: torch.Tensor | None
    # [B * max_blocks] int64: KV blocks of each sequence, in order, from the first its
    # window sees (the first block without a window); None: the keys are `key_range` of
    # the flat [num_blocks * block_size] slots, in place
    block_index: torch.Tensor | None
    # One sequence: the [start, stop) of its keys along the gathered context (or of the
    # flat slots when block_index is None); None with several sequences
    key_range: tuple[int, int] | None
    # [B, 1, 1, max_blocks * block_size] bool: False past a seq_len, or before the window;
    # None for one sequence (its keys are cut to the visible ones)
    visible: torch.Tensor | None
    # The additive (0 / -inf) form of `visible` per dtype, made by the first layer that
    # needs it: SDPA would otherwise convert the bool mask in every layer.
    additive: dict[torch.dtype, torch.Tensor] = field(default_factory=dict, compare=False)

    def mask(self, dtype: torch.dtype, softcap: float | None) -> torch.Tensor | None:
        if self.visible is None or softcap is not None:
            return self.visible
        if dtype not in self.additive:
            zero = torch.zeros((), dtype=dtype, device=self.visible.device)
            self.additive[dtype] = zero.masked_fill(~self.visible, float("-inf"))
        return self.additive[dtype]


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
        if len(decodes) == 1:
            decode = _single_decode_plan(
                metadata, decodes[0], first_blocks[decodes[0]], window, token_starts
            )
        elif decodes:
            seq_index = torch.tensor(decodes, device=device)
            first = torch.tensor([first_blocks[i] for i in decodes], device=device)[:, None]
            num_blocks = max(-(-seq_lens_host[i] // block_size) - first_blocks[i] for i in decodes)
            columns = (first + torch.arange(num_blocks, device=device)).clamp(
                max=tables.shape[1] - 1
            )
            key_positions = first * block_size + torch.arange(
                num_blocks * block_size, device=device
            )
            seq_lens = metadata.seq_lens[seq_index].unsqueeze(1)  # [B, 1]
            visible = key_positions < seq_lens  # [B, L]
            if window is not None:  # the query sits at seq_len - 1
                visible &= key_positions >= seq_lens - window
            all_tokens = len(decodes) == len(query_lens_host)  # then token i is decode i
            decode = _DecodePlan(
                token_index=None
                if all_tokens
                else torch.tensor([token_starts[i] for i in decodes], device=device),
                block_index=tables[seq_index].gather(1, columns).reshape(-1),
                key_range=None,
                visible=visible[:, None, None, :],
            )
        prefills = []
        for seq, (query_len, seq_len) in enumerate(
            zip(query_lens_host, seq_lens_host, strict=True)
        ):
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


def _single_decode_plan(
    metadata: AttentionMetadata,
    seq: int,
    first_block: int,
    window: int | None,
    token_starts: list[int],
) -> _DecodePlan:
    """The one decoding sequence `seq`: its keys are positions [start, seq_len), exactly what
    its query (at seq_len - 1) sees, so SDPA runs unmasked over them."""
    block_size, seq_len = metadata.block_size, metadata.seq_lens_host[seq]
    start = 0 if window is None else max(seq_len - window, 0)
    last_block = (seq_len - 1) // block_size
    token_index = (
        None
        if len(metadata.query_lens_host) == 1
        else torch.tensor([token_starts[seq]], device=metadata.block_tables.device)
    )
    row = metadata.block_tables[seq]
    if row.device.type == "cpu":  # on the host, reading the block ids costs no sync
        blocks = row[first_block : last_block + 1].tolist()
        if all(b == a + 1 for a, b in zip(blocks, blocks[1:], strict=False)):
            # Consecutive blocks (a fresh sequence's usually are): the keys are one slice.
            slot = blocks[0] * block_size + start - first_block * block_size
            return _DecodePlan(token_index, None, (slot, slot + seq_len - start), None)
    offset = first_block * block_size
    return _DecodePlan(
        token_index,
        row[first_block : last_block + 1].long(),
        (start - offset, seq_len - offset),
        None,
    )


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


@dataclass(frozen=True)
class _RopeTables:
    """One step's cos and sin at its tokens' positions, full head width, in the model dtype."""

    cos: torch.Tensor  # [T, 1, D]: cat(cos, cos)
    sin: torch.Tensor  # [T, 1, D]: cat(-sin, sin), rotate_half's sign folded in

    @classmethod
    def build(
        cls, cos_sin_cache: torch.Tensor, positions: torch.Tensor, dtype: torch.dtype
    ) -> _RopeTables:
        cos, sin = cos_sin_cache[positions].to(dtype).unsqueeze(1).chunk(2, dim=-1)
        return cls(torch.cat((cos, cos), dim=-1), torch.cat((-sin, sin), dim=-1))

    def rotate(self, x: torch.Tensor) -> torch.Tensor:  # [T, H, D] -> new [T, H, D]
        """HF's x * cos + rotate_half(x) * sin, with its roundings: each product, then the sum,
        rounded to the model dtype (rotate_half's negation is exact)."""
        num_tokens, num_heads, head_dim = x.shape
        # [first, second] -> [second, first]; the table's sign makes it [-second, first].
        swapped = x.unflatten(-1, (2, head_dim // 2)).flip(-2).view(num_tokens, num_heads, head_dim)
        out = x * self.cos
        return out.add_(swapped.mul_(self.sin))


def _adjacent_heads(query: torch.Tensor, key: torch.Tensor) -> torch.Tensor | None:
    """[T, Hq + Hkv, D] view of query and key when key's heads follow query's in memory
    with the same layout (the fused qkv projection's output), else None."""
    num_tokens, num_heads, head_dim = query.shape
    if (
        query.dtype != key.dtype
        or query.stride()[1:] != (head_dim, 1)
        or key.stride()[1:] != (head_dim, 1)
        or (num_tokens > 1 and query.stride(0) != key.stride(0))
        or key.storage_offset() != query.storage_offset() + num_heads * head_dim
        or query.untyped_storage().data_ptr() != key.untyped_storage().data_ptr()
    ):
        return None
    row = query.stride(0) if num_tokens > 1 else (num_heads + key.shape[1]) * head_dim
    return query.as_strided((num_tokens, num_heads + key.shape[1], head_dim), (row, head_dim, 1))


def _attend(
    query: torch.Tensor,  # [..., q, D]
    keys: torch.Tensor,  # [..., L, D], broadcast against query's leading dims
    values: torch.Tensor,  # [..., L, D]
    # [..., q, L], broadcast: bool (True = seen), or additive in the query dtype when not
    # capped; None: every key is seen
    visible: torch.Tensor | None,
    scale: float,
    softcap: float | None,
) -> torch.Tensor:  # [..., q, D]
    """softmax(mask(cap(q·k * scale))) · v; SDPA's fused kernel when nothing is capped.
    The capped form is transformers' eager one: scores, tanh cap, mask, softmax in fp32."""
    if softcap is None:
        return F.scaled_dot_product_attention(query, keys, values, attn_mask=visible, scale=scale)
    scores = torch.matmul(query, keys.transpose(-1, -2)) * scale
    scores = torch.tanh(scores / softcap) * softcap
    if visible is not None:
        scores = scores.masked_fill(~visible, float("-inf"))
    return torch.matmul(scores.softmax(-1, dtype=torch.float32).to(query.dtype), values)


def _decode_attention(
    query: torch.Tensor,  # [T, Hq, D]
    key_cache: torch.Tensor,  # [num_blocks, block_size, Hkv, D]
    value_cache: torch.Tensor,  # [num_blocks, block_size, Hkv, D]
    plan: _DecodePlan,
    group: int,
    scale: float,
    softcap: float | None,
) -> torch.Tensor:  # [B, Hkv, group, D]
    num_kv_heads, head_dim = key_cache.shape[2], key_cache.shape[3]
    if plan.token_index is None:
        batch = query.shape[0]
        decoding = query
    else:
        batch = plan.token_index.shape[0]
        decoding = query[plan.token_index]
    if plan.block_index is None:
        assert plan.key_range is not None
        start, stop = plan.key_range
        keys = key_cache.view(-1, num_kv_heads, head_dim)[start:stop].unsqueeze(0).transpose(1, 2)
        values = (
            value_cache.view(-1, num_kv_heads, head_dim)[start:stop].unsqueeze(0).transpose(1, 2)
        )
    else:
        keys = _gather_context(key_cache, plan.block_index, batch)  # [B, Hkv, L, D]
        values = _gather_context(value_cache, plan.block_index, batch)
        if plan.key_range is not None:
            keys = keys[:, :, plan.key_range[0] : plan.key_range[1]]
            values = values[:, :, plan.key_range[0] : plan.key_range[1]]
    # The query heads sharing a KV head become its "query rows": no KV repeat.
    grouped = decoding.view(batch, num_kv_heads, group, head_dim)
    return _attend(grouped, keys, values, plan.mask(query.dtype, softcap), scale, softcap)


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
