"""Blocks the architectures of engine/models/ share: attention and the gated MLP.

A model is built from `ModelConfig`; its weights come from `engine.weights.load_weights`,
which uses the model's `hf_weight_map` (checkpoint name -> `WeightSlot`) to place each
Hugging Face tensor. q/k/v are fused into one projection and gate/up into another at
load time: fewer, larger GEMMs, which is what CPUs (and small batches on GPUs) run
fastest. Everything but the matmuls goes through `ops`, an `engine.ops.Ops` (`TorchOps`
or the Triton `KernelOps`), so one model serves both backends.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from engine.attention import AttentionMetadata
from engine.config import ModelConfig
from engine.ops import Ops
from engine.quantization import QuantizedMatmul

# Per layer: (key_cache, value_cache), each [num_blocks, block_size, num_kv_heads, head_dim].
KVCache = tuple[torch.Tensor, torch.Tensor]


@dataclass(frozen=True)
class WeightSlot:
    """Where one checkpoint tensor goes: rows [row_start, row_start + rows) of a parameter
    (of its `expert`-th slice when the parameter stacks experts)."""

    parameter: str  # our parameter name, e.g. "layers.3.attention.qkv_proj.weight"
    row_start: int
    rows: int  # leading-dimension size the checkpoint tensor must have
    expert: int | None = None  # index into a [num_experts, ...] parameter, before the rows
    # Added to the tensor as it loads: Gemma's RMSNorm scales by (1 + w) and stores w.
    offset: float = 0.0


def empty_parameter(*shape: int, dtype: torch.dtype, device: torch.device) -> nn.Parameter:
    # Uninitialised on purpose: every parameter is overwritten by the loader, which
    # fails if one is missing; random init of a large model would cost seconds.
    return nn.Parameter(torch.empty(*shape, dtype=dtype, device=device), requires_grad=False)


class Linear(nn.Module):
    """y = x W^T (+ b): the dense weight (filled by the loader) and, once `quantize` has
    been called, a weight-only quantized copy that matmuls of up to `max_quantized_rows`
    rows use (decode steps of few sequences, bound by the bytes of weights they read);
    bigger ones keep the dense GEMM (engine/quantization.py says why both). When the
    quantized copy serves every step (`max_rows` covers the largest one), `quantize` drops
    the dense weight: the parameter stays, shape and dtype only, on the meta device."""

    def __init__(
        self,
        out_features: int,
        in_features: int,
        bias: bool,
        dtype: torch.dtype,
        device: torch.device,
        weight: nn.Parameter | None = None,  # a parameter to share (tied embeddings)
    ) -> None:
        super().__init__()
        self.weight = weight if weight is not None else empty_parameter(
            out_features, in_features, dtype=dtype, device=device
        )
        self.bias = empty_parameter(out_features, dtype=dtype, device=device) if bias else None
        self.quantized: QuantizedMatmul | None = None
        self.max_quantized_rows = 0

    def quantize(self, matmul: QuantizedMatmul, max_rows: int, drop_dense: bool = False) -> None:
        self.quantized, self.max_quantized_rows = matmul, max_rows
        if drop_dense:
            self.weight = nn.Parameter(self.weight.to("meta"), requires_grad=False)

    @property
    def dense(self) -> bool:
        """Whether the dense weight is held (False once `quantize` dropped it)."""
        return not self.weight.is_meta

    def takes_quantized(self, rows: int) -> bool:
        """Whether a matmul of `rows` rows multiplies by the quantized weight."""
        return self.quantized is not None and (rows <= self.max_quantized_rows or not self.dense)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [rows, in] -> [rows, out]
        if self.takes_quantized(x.shape[0]):
            assert self.quantized is not None
            out = self.quantized(x)
            return out if self.bias is None else out + self.bias
        return F.linear(x, self.weight, self.bias)


def activation(name: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """transformers' ACT2FN names (ModelConfig checks the name)."""
    if name == "gelu_pytorch_tanh":  # Gemma's GeGLU
        return lambda x: F.gelu(x, approximate="tanh")
    return F.gelu if name == "gelu" else F.silu


class Attention(nn.Module):
    """q/k/v projection (one fused GEMM), optional QK-norm, RoPE into the paged KV cache,
    attention over the cache (the layer's window and soft-cap), output projection.

    qk_norm: None; "head" = RMSNorm over each head's head_dim (Qwen3, Gemma 3); or
    "projection" = over the whole q (and k) projection (OLMo 2). Its norm weights load
    with `norm_offset` added (Gemma's (1 + w)).
    """

    def __init__(
        self,
        config: ModelConfig,
        layer: int,
        dtype: torch.dtype,
        device: torch.device,
        qk_norm: str | None = None,
    ) -> None:
        super().__init__()
        hidden, head_dim = config.hidden_size, config.head_dim
        self.num_heads, self.num_kv_heads, self.head_dim = (
            config.num_heads,
            config.num_kv_heads,
            head_dim,
        )
        self.eps = config.rms_norm_eps
        self.scale = config.attention_scale or head_dim**-0.5
        self.window = config.window(layer)
        self.softcap = config.attention_softcap
        # Gemma 3: sliding layers rotate with a RoPE of their own.
        self.uses_sliding_rope = self.window is not None and config.sliding_rope is not None
        self.qk_norm = qk_norm
        q_size, kv_size = config.num_heads * head_dim, config.num_kv_heads * head_dim
        qkv_rows = q_size + 2 * kv_size
        self.qkv_proj = Linear(qkv_rows, hidden, config.attention_bias, dtype, device)
        self.o_proj = Linear(hidden, q_size, False, dtype, device)
        if qk_norm is not None:
            per_head = qk_norm == "head"
            self.q_norm_weight = empty_parameter(
                head_dim if per_head else q_size, dtype=dtype, device=device
            )
            self.k_norm_weight = empty_parameter(
                head_dim if per_head else kv_size, dtype=dtype, device=device
            )

    def forward(
        self,
        hidden: torch.Tensor,  # [num_tokens, hidden_size], normed
        metadata: AttentionMetadata,
        kv_cache: KVCache,
        cos_sin_cache: torch.Tensor,  # [max_positions, head_dim]
        ops: Ops,
    ) -> torch.Tensor:  # [num_tokens, hidden_size]
        num_tokens = hidden.shape[0]
        qkv = self.qkv_proj(hidden)
        q_size, kv_size = self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
        query, key, value = qkv.split([q_size, kv_size, kv_size], dim=-1)
        if self.qk_norm == "projection":
            query, _ = ops.rms_norm(query.contiguous(), self.q_norm_weight, self.eps, None)
            key, _ = ops.rms_norm(key.contiguous(), self.k_norm_weight, self.eps, None)
        query = query.reshape(num_tokens, self.num_heads, self.head_dim)
        key = key.reshape(num_tokens, self.num_kv_heads, self.head_dim)
        value = value.reshape(num_tokens, self.num_kv_heads, self.head_dim)
        if self.qk_norm == "head":
            query = self._norm_heads(query, self.q_norm_weight, ops)
            key = self._norm_heads(key, self.k_norm_weight, ops)
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
        attended = ops.attention(
            query,
            key_cache,
            value_cache,
            metadata,
            self.scale,
            window=self.window,
            softcap=self.softcap,
        )
        return self.o_proj(attended.reshape(num_tokens, q_size))

    def _norm_heads(self, x: torch.Tensor, weight: torch.Tensor, ops: Ops) -> torch.Tensor:
        # x: [num_tokens, heads, head_dim]; one RMSNorm row per (token, head).
        normed, _ = ops.rms_norm(x.reshape(-1, self.head_dim), weight, self.eps, None)
        return normed.view(x.shape)

    def weight_map(
        self, hf: str, ours: str, fused_qkv: bool = False, norm_offset: float = 0.0
    ) -> dict[str, WeightSlot]:
        """Checkpoint names under `hf` (e.g. "model.layers.3.self_attn.") -> our parameters
        under `ours`. q, k, v stack in that order; `fused_qkv`: the checkpoint has them
        stacked already (Phi-3's `qkv_proj`)."""
        q_rows, kv_rows = self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
        qkv = f"{ours}qkv_proj."
        if fused_qkv:
            slots = {"qkv_proj": (0, q_rows + 2 * kv_rows)}
        else:
            slots = {
                "q_proj": (0, q_rows),
                "k_proj": (q_rows, kv_rows),
                "v_proj": (q_rows + kv_rows, kv_rows),
            }
        mapping = {}
        for name, (start, rows) in slots.items():
            mapping[f"{hf}{name}.weight"] = WeightSlot(f"{qkv}weight", start, rows)
            if self.qkv_proj.bias is not None:
                mapping[f"{hf}{name}.bias"] = WeightSlot(f"{qkv}bias", start, rows)
        mapping[f"{hf}o_proj.weight"] = WeightSlot(
            f"{ours}o_proj.weight", 0, self.o_proj.weight.shape[0]
        )
        if self.qk_norm is not None:
            for name in ("q_norm", "k_norm"):
                rows = getattr(self, f"{name}_weight").shape[0]
                mapping[f"{hf}{name}.weight"] = WeightSlot(
                    f"{ours}{name}_weight", 0, rows, offset=norm_offset
                )
        return mapping


class GatedMLP(nn.Module):
    """down(act(gate(x)) * up(x)), gate and up fused into one GEMM (SwiGLU, GeGLU)."""

    def __init__(
        self,
        hidden_size: int,
        intermediate_size: int,
        act: str,
        dtype: torch.dtype,
        device: torch.device,
    ) -> None:
        super().__init__()
        self.intermediate_size = intermediate_size
        self.act = activation(act)
        self.gate_up_proj = Linear(2 * intermediate_size, hidden_size, False, dtype, device)
        self.down_proj = Linear(hidden_size, intermediate_size, False, dtype, device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [num_tokens, hidden_size]
        gate, up = self.gate_up_proj(x).chunk(2, dim=-1)
        return self.down_proj(self.act(gate) * up)

    def weight_map(self, hf: str, ours: str, fused: bool = False) -> dict[str, WeightSlot]:
        """`fused`: the checkpoint stacks gate and up already (Phi-3's `gate_up_proj`)."""
        size, hidden = self.intermediate_size, self.down_proj.weight.shape[0]
        gate_up = f"{ours}gate_up_proj.weight"
        if fused:
            mapping = {f"{hf}gate_up_proj.weight": WeightSlot(gate_up, 0, 2 * size)}
        else:
            mapping = {
                f"{hf}gate_proj.weight": WeightSlot(gate_up, 0, size),
                f"{hf}up_proj.weight": WeightSlot(gate_up, size, size),
            }
        mapping[f"{hf}down_proj.weight"] = WeightSlot(f"{ours}down_proj.weight", 0, hidden)
        return mapping
