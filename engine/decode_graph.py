"""A decode step compiled whole: the model's forward for steps where every sequence feeds
one token, as a few C++ kernels (torch.compile, inductor) instead of thousands of eager ops.

On CPU the eager forward of a small model spends more time dispatching ops than reading
weights: the default model's single-stream step is ~4,500 aten ops, two thirds of its
time outside the matmuls (docs/benchmarks.md). Compiling the whole forward fuses each
layer's norms, RoPE, KV write, attention and gating into a handful of loops around the
quantized matmuls (extern calls), and the step runs as one Python call.

What is compiled is the model's own `forward`, unchanged, with `GraphOps`: the `Ops`
backend written for a graph (tensor-only attention over the block table, no host-side
plan, no per-step Python state). A few graphs serve every decode step of 1 to `max_rows`
sequences at any context length: one for a lone sequence (the block-table width dynamic)
and one per band of batch sizes (the batch dynamic too), each compiled once at load by a
warm-up step on a scratch KV block the block manager never hands out. The bands split
where a quantized layer changes path (`Linear.max_quantized_rows`: with torch's int4
kernel its quantized weight up to 16 rows, its dense one beyond), since a graph traces one
path: then 2-16 rows and 17 to max_num_seqs + 1; with our CPU kernel, which takes every
row count, one band 2 to max_num_seqs + 1. Sizes of 1 would be
graphs of their own, so a one-block table gets a padding row into the scratch block; a
step the graphs do not cover (a prefill, a mixed step) runs eagerly. Guards on the
model's weights are dropped (they never change after load), so a call checks only the
step's own tensors.

Inductor writes C++ and needs a compiler (g++ here); its compiled kernels are cached on
disk (`TORCHINDUCTOR_CACHE_DIR`, /tmp/torchinductor_<user> by default), so a restart
compiles in a fraction of the first time. Why the whole forward and not a layer at a time:
a compiled function's call costs about what fusing saves in one layer, so a compiled
piece of a layer runs no faster than eager code (`python -m benchmarks.compile_block`,
docs/benchmarks.md "The decode step compiled"); one graph pays the call once a step.
"""

from __future__ import annotations

import itertools
import logging
import shutil
import time
import types
from collections.abc import Callable
from collections.abc import Sequence as SequenceOf
from typing import Any

import torch

from engine.attention import AttentionMetadata, build_attention_metadata
from engine.models.layers import KVCache
from engine.ops import TorchOps

logger = logging.getLogger(__name__)


class GraphMiss(RuntimeError):
    """A step the compiled graph does not cover (it would recompile): run it eagerly."""


class GraphOps(TorchOps):
    """`engine.ops.Ops` for a compiled decode step: one new token per sequence, every
    shape a function of the inputs, nothing kept between calls. Same contracts as
    `TorchOps` (its `rms_norm` and `rope_and_write_kv` are reused, the latter over the
    methods here); attention reads each sequence's whole block table, masked to its length
    (and window)."""

    def apply_rope(
        self,
        query: torch.Tensor,  # [num_tokens, num_heads, head_dim]
        key: torch.Tensor,  # [num_tokens, num_kv_heads, head_dim]
        positions: torch.Tensor,  # [num_tokens] int64
        cos_sin_cache: torch.Tensor,  # [max_positions, head_dim]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        cos, sin = cos_sin_cache[positions].unsqueeze(1).chunk(2, dim=-1)  # [T, 1, D / 2]
        return _rotate(query, cos, sin), _rotate(key, cos, sin)

    def write_kv(
        self,
        key: torch.Tensor,  # [num_tokens, num_kv_heads, head_dim]
        value: torch.Tensor,  # [num_tokens, num_kv_heads, head_dim]
        key_cache: torch.Tensor,  # [num_blocks, block_size, num_kv_heads, head_dim]
        value_cache: torch.Tensor,  # [num_blocks, block_size, num_kv_heads, head_dim]
        slot_mapping: torch.Tensor,  # [num_tokens] int64
    ) -> None:
        # Indexing the cache itself (not a view of it): inductor then writes the rows in
        # place, where a mutated view would be copied back whole.
        block_size = key_cache.shape[1]
        blocks, offsets = slot_mapping // block_size, slot_mapping % block_size
        key_cache.index_put_((blocks, offsets), key.to(key_cache.dtype))
        value_cache.index_put_((blocks, offsets), value.to(value_cache.dtype))

    def attention(
        self,
        query: torch.Tensor,  # [B, num_heads, head_dim]: one token per sequence
        key_cache: torch.Tensor,  # [num_blocks, block_size, num_kv_heads, head_dim]
        value_cache: torch.Tensor,
        metadata: AttentionMetadata,
        scale: float,
        window: int | None = None,
        softcap: float | None = None,
    ) -> torch.Tensor:  # [B, num_heads, head_dim]
        """Each sequence's query (at seq_len - 1) over the keys of its block table, in
        float32: scores as a product and sum (inductor fuses the gather through the block
        table into that loop; a batched matmul would copy the keys out first), masked
        past seq_len and before the window, softmax, the weighted sum of the values."""
        batch, num_heads, head_dim = query.shape
        block_size, num_kv_heads = key_cache.shape[1], key_cache.shape[2]
        group = num_heads // num_kv_heads
        tables = metadata.block_tables.long()  # [B, nb]
        length = tables.shape[1] * block_size
        keys = key_cache[tables].view(batch, length, num_kv_heads, 1, head_dim).float()
        values = value_cache[tables].view(batch, length, num_kv_heads, 1, head_dim).float()
        grouped = query.view(batch, 1, num_kv_heads, group, head_dim).float()
        scores = (grouped * keys).sum(-1) * scale  # [B, L, Hkv, group]
        if softcap is not None:
            scores = torch.tanh(scores / softcap) * softcap
        key_positions = torch.arange(length, device=query.device)[None, :]
        seq_lens = metadata.seq_lens.long()[:, None]
        visible = key_positions < seq_lens
        if window is not None:
            visible = visible & (key_positions >= seq_lens - window)
        scores = scores.masked_fill(~visible[:, :, None, None], float("-inf"))
        weights = scores.softmax(dim=1)
        out = (weights.unsqueeze(-1) * values).sum(1)  # [B, Hkv, group, D]
        return out.to(query.dtype).view(batch, num_heads, head_dim)


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """HF's x * cos + rotate_half(x) * sin, the halves of each head as (real, imaginary)."""
    half = x.shape[-1] // 2
    first, second = x[..., :half], x[..., half:]
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    return torch.cat((first * cos - second * sin, second * cos + first * sin), dim=-1)


def can_compile(model: torch.nn.Module, device: torch.device) -> str | None:
    """None when `DecodeGraph` serves this model here, else why not (for the log)."""
    if device.type != "cpu":
        return f"the compiled decode step is built for CPU, not {device.type}"
    if model.config.moe is not None:
        return "mixture-of-experts routing has data-dependent shapes"
    if shutil.which("g++") is None and shutil.which("c++") is None:
        return "no C++ compiler (g++) for inductor on PATH"
    return None


def _weights_unguarded(entries: list[Any]) -> list[bool]:
    """guard_filter_fn: keep every guard but those on the graph object (the model, its
    weights and KV caches, which never change after load); the step's own tensors, their
    shapes and torch's global state stay guarded."""
    return [
        entry.name != "graph" and not entry.name.startswith(("graph.", "graph["))
        for entry in entries
    ]


def _decode_forward(
    graph: DecodeGraph, input_ids: torch.Tensor, metadata: AttentionMetadata
) -> torch.Tensor:
    return graph.model(input_ids, metadata, graph.kv_caches, graph.ops)


def _own_copy(function: Callable[..., Any]) -> Callable[..., Any]:
    """`function` with a code object of its own. torch.compile keeps its graphs per code
    object and, with the graph object's guards dropped, could not tell two models apart:
    each DecodeGraph compiles its own copy."""
    code = function.__code__.replace(co_name=f"{function.__name__}_{next(_copies)}")
    return types.FunctionType(code, function.__globals__, code.co_name)


_copies = itertools.count()


class DecodeGraph:
    """The model's forward for pure decode steps of up to `max_rows` rows, compiled: one
    graph for a lone sequence and one per band of batch sizes, band k taking
    row_limits[k - 1] + 1 to row_limits[k] rows (the first from 2).

    `compile()` builds it (once, at load: a warm-up step on `scratch_block`); `fit`
    says whether a step may use it and what rows to add to it; calling it
    runs the forward, returning the final-normed hidden states like the model's own
    forward. A step the compiled graph would have to recompile for raises `GraphMiss`
    instead of stalling the engine on a compile: the caller then runs it eagerly.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        kv_caches: list[KVCache],
        block_size: int,
        row_limits: SequenceOf[int],
        scratch_block: int,
    ) -> None:
        if not row_limits or row_limits[0] < 2 or list(row_limits) != sorted(set(row_limits)):
            raise ValueError(f"row limits must rise from 2 or more, got {list(row_limits)}")
        self.model = model
        self.kv_caches = kv_caches
        self.block_size = block_size
        self.max_rows = row_limits[-1]
        # The batch sizes of each multi-row graph, (fewest, most) rows.
        lows = [2, *(limit + 1 for limit in row_limits[:-1])]
        self.bands = list(zip(lows, row_limits, strict=True))
        self.scratch_block = scratch_block
        self.ops = GraphOps()
        self.compile_seconds: float | None = None
        self._padding_row = (block_size, [scratch_block, scratch_block])
        self.steps = 0  # steps the compiled graph ran
        self.misses = 0  # steps `fit` took that would have recompiled, run eagerly instead
        # A graph for one sequence alone (a padding row would double the rows the single
        # stream's matmuls take) and one per band of batch sizes (row_limits).
        self._one, *self._bands = (
            torch.compile(
                _own_copy(_decode_forward),
                dynamic=None,
                options={"guard_filter_fn": _weights_unguarded},
            )
            for _ in range(1 + len(self.bands))
        )

    def fit(
        self, starts: SequenceOf[int], query_lens: SequenceOf[int]
    ) -> list[tuple[int, list[int]]] | None:
        """None when the step is not for the graph (not a pure decode, or too many rows);
        else the rows to add to it, each as (start, block ids). The graph takes at least
        two rows of at least two blocks each (sizes of 1 would be graphs of their own): a
        step short of either gets one row more, whose token goes into the scratch block,
        whose keys are read from it and which samples nothing."""
        if self.compile_seconds is None or not query_lens or any(n != 1 for n in query_lens):
            return None
        width = max(-(-(start + 1) // self.block_size) for start in starts)
        padding = [] if width >= 2 else [self._padding_row]
        return padding if len(starts) + len(padding) <= self.max_rows else None

    def __call__(self, input_ids: torch.Tensor, metadata: AttentionMetadata) -> torch.Tensor:
        """The forward of a step `fit` took, with its padding; raises
        `GraphMiss` when the graph would have to recompile for it."""
        with torch.compiler.set_stance("fail_on_recompile"):
            try:
                compiled = self._graph(input_ids.shape[0])
                hidden = compiled(self, input_ids, metadata)
            except RuntimeError as error:
                if "Detected recompile" not in str(error):
                    raise
                self.misses += 1
                if self.misses == 1:
                    logger.warning("a decode step the compiled graph does not cover runs eagerly "
                                   "(logged once): %s", error)  # fmt: skip
                raise GraphMiss(str(error)) from None
        self.steps += 1
        return hidden

    def _graph(self, rows: int) -> Callable[..., torch.Tensor]:
        if rows == 1:
            return self._one
        return next(graph for (_, most), graph in zip(self.bands, self._bands, strict=True) if rows <= most)

    @torch.inference_mode()
    def compile(self) -> float:
        """Compile every graph with a warm-up step, every token in the scratch block: per
        band, its fewest rows of two blocks each, the batch (unless the band is one size)
        and the block-table width marked dynamic; one sequence of two blocks, the width
        dynamic. Returns the seconds it took."""
        started = time.perf_counter()
        for (fewest, most), graph in zip(self.bands, self._bands, strict=True):
            input_ids, metadata = self._scratch_step(fewest, 2)
            if fewest < most:  # a band of one size is that size (marking it would fail)
                for tensor in (input_ids, metadata.positions, metadata.slot_mapping,
                               metadata.seq_lens, metadata.logits_indices, metadata.block_tables):  # fmt: skip
                    torch._dynamo.mark_dynamic(tensor, 0)
            torch._dynamo.mark_dynamic(metadata.block_tables, 1)
            graph(self, input_ids, metadata)
        input_ids, metadata = self._scratch_step(1, 2)
        torch._dynamo.mark_dynamic(metadata.block_tables, 1)
        self._one(self, input_ids, metadata)
        self.compile_seconds = time.perf_counter() - started
        for _, most in self.bands:  # each band's largest batch: no new graph
            self(*self._scratch_step(most, 3))
        self(*self._scratch_step(1, 3))
        return self.compile_seconds

    def _scratch_step(self, rows: int, blocks: int) -> tuple[torch.Tensor, AttentionMetadata]:
        """A decode step of `rows` sequences whose `blocks`-block tables all point at the
        scratch block, each writing its one token there."""
        scratch = self.scratch_block
        # Lengths of exactly `blocks` blocks (the last one partly filled); any position maps
        # into the scratch block, since every entry of the table is it.
        lengths = [blocks * self.block_size - row % self.block_size for row in range(rows)]
        metadata = build_attention_metadata(
            starts=[length - 1 for length in lengths],
            query_lens=[1] * rows,
            block_ids=[[scratch] * blocks] * rows,
            sample_flags=[True] * rows,
            block_size=self.block_size,
        )
        return torch.zeros(rows, dtype=torch.int64), metadata
