"""Rotary position embedding: the cos/sin cache the attention layers index by position.

Frequencies follow Hugging Face transformers' `ROPE_INIT_FUNCTIONS` for the scalings
we support, so a checkpoint rotates exactly as it was trained:

- default: inv_freq[i] = theta ** (-2i / head_dim)
- "linear": default / factor (position interpolation)
- "dynamic" (NTK-aware): HF grows theta once a sequence passes
  max_position_embeddings and resets it below. Our cache is fixed, so we compute it
  once for max(max_positions, max_position_embeddings). Within
  max_position_embeddings (the engine caps max_model_len there) this equals HF
  exactly; past it, it is the frequency HF would use at the longest length.
- "llama3": low frequencies divided by factor, high ones kept, a smooth ramp between.
- "yarn": interpolation / extrapolation blend by a linear ramp over the dims, and
  an attention factor (mscale) multiplied into cos and sin.
- "longrope" (Phi-3): one rescale factor per frequency, `short_factor` within
  original_max_position_embeddings, `long_factor` beyond, and an attention factor.
  HF picks the set per forward pass from the longest position in the batch (so a
  sequence's early keys were rotated with the short set, its later queries with the
  long one); a fixed cache cannot, so we pick once, from max_positions: the short set
  when the whole context fits the original length (then exactly HF), else the long set
  (vLLM's choice).

Gemma 3's sliding layers have a RoPE of their own (`ModelConfig.sliding_rope`):
`build_cos_sin_cache(..., sliding=True)`.

Layout: [max_positions, head_dim], cos in the first head_dim / 2 columns and sin in
the last head_dim / 2 (see `engine.ops`).
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

import torch

from engine.config import ConfigError, ModelConfig

SUPPORTED_ROPE_TYPES = ("default", "linear", "dynamic", "llama3", "yarn", "longrope")


def build_cos_sin_cache(
    config: ModelConfig,
    max_positions: int,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
    sliding: bool = False,
) -> torch.Tensor:  # [max_positions, head_dim]
    """cos/sin of every position < max_positions, computed in float32 then cast; with
    `sliding`, of the sliding layers' own RoPE (the global one if they have none)."""
    rope = config.sliding_rope if sliding and config.sliding_rope is not None else None
    if rope is not None:
        config = replace(config, rope_theta=rope.theta, rope_scaling=rope.scaling)
    inv_freq, attention_factor = inverse_frequencies(config, max_positions)  # [head_dim / 2]
    positions = torch.arange(max_positions, dtype=torch.float32)
    # Same float32 product as HF (position * inv_freq) so the angles match bit for bit;
    # cos/sin in float64 so the cache is the correctly rounded value whatever float32
    # vector path torch picks (we saw those differ by 1e-4 at large angles).
    angles = (positions[:, None] * inv_freq[None, :]).double()  # [max_positions, head_dim / 2]
    cache = torch.cat((angles.cos(), angles.sin()), dim=-1) * attention_factor
    return cache.to(device=device, dtype=dtype)


def inverse_frequencies(config: ModelConfig, max_positions: int) -> tuple[torch.Tensor, float]:
    """(inv_freq [head_dim / 2] float32, attention factor) for the model's rope_scaling."""
    scaling: dict[str, Any] = config.rope_scaling or {}
    rope_type = scaling.get("rope_type") or scaling.get("type") or "default"
    head_dim = config.head_dim
    theta = config.rope_theta
    if rope_type == "default":
        return _default(theta, head_dim), 1.0
    if rope_type == "linear":
        return _default(theta, head_dim) / float(_require(scaling, "factor")), 1.0
    if rope_type == "dynamic":
        factor = float(_require(scaling, "factor"))
        original = config.max_position_embeddings
        length = max(max_positions, original)
        theta = theta * ((factor * length / original) - (factor - 1)) ** (head_dim / (head_dim - 2))
        return _default(theta, head_dim), 1.0
    if rope_type == "llama3":
        return _llama3(_default(theta, head_dim), scaling), 1.0
    if rope_type == "yarn":
        return _yarn(theta, head_dim, scaling, config.max_position_embeddings)
    if rope_type == "longrope":
        return _longrope(theta, head_dim, scaling, config.max_position_embeddings, max_positions)
    raise ConfigError(
        f"unsupported rope_scaling type {rope_type!r}; supported: {', '.join(SUPPORTED_ROPE_TYPES)}"
    )


def _default(theta: float, head_dim: int) -> torch.Tensor:
    exponents = torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim
    return 1.0 / (theta**exponents)


def _require(scaling: dict[str, Any], key: str) -> Any:
    if scaling.get(key) is None:
        raise ConfigError(f"rope_scaling of type {scaling.get('rope_type')!r} needs {key!r}")
    return scaling[key]


def _llama3(inv_freq: torch.Tensor, scaling: dict[str, Any]) -> torch.Tensor:
    factor = float(_require(scaling, "factor"))
    low_freq_factor = float(_require(scaling, "low_freq_factor"))
    high_freq_factor = float(_require(scaling, "high_freq_factor"))
    old_context_len = float(_require(scaling, "original_max_position_embeddings"))
    low_freq_wavelen = old_context_len / low_freq_factor
    high_freq_wavelen = old_context_len / high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    # Long wavelengths (low frequencies) are interpolated by factor; short ones kept.
    scaled = torch.where(wavelen > low_freq_wavelen, inv_freq / factor, inv_freq)
    smooth = (old_context_len / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    is_medium = (wavelen >= high_freq_wavelen) & (wavelen <= low_freq_wavelen)
    return torch.where(is_medium, smoothed, scaled)


def _yarn(
    theta: float, head_dim: int, scaling: dict[str, Any], max_position_embeddings: int
) -> tuple[torch.Tensor, float]:
    original = int(scaling.get("original_max_position_embeddings") or max_position_embeddings)
    factor = scaling.get("factor")
    factor = float(factor) if factor is not None else max_position_embeddings / original
    attention_factor = scaling.get("attention_factor")
    if attention_factor is None:
        mscale, mscale_all_dim = scaling.get("mscale"), scaling.get("mscale_all_dim")
        if mscale and mscale_all_dim:
            attention_factor = _yarn_mscale(factor, mscale) / _yarn_mscale(factor, mscale_all_dim)
        else:
            attention_factor = _yarn_mscale(factor, 1.0)
    beta_fast = scaling.get("beta_fast") or 32
    beta_slow = scaling.get("beta_slow") or 1

    def correction_dim(num_rotations: float) -> float:
        # The dim whose wavelength fits num_rotations times into the original context.
        return (head_dim * math.log(original / (num_rotations * 2 * math.pi))) / (
            2 * math.log(theta)
        )

    low, high = correction_dim(beta_fast), correction_dim(beta_slow)
    if scaling.get("truncate", True):
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, head_dim - 1)
    if low == high:
        high += 0.001  # avoid dividing by zero in the ramp
    ramp = ((torch.arange(head_dim // 2, dtype=torch.float32) - low) / (high - low)).clamp(0, 1)
    extrapolation_weight = 1 - ramp
    base_freqs = theta ** (torch.arange(0, head_dim, 2).float() / head_dim)
    interpolation, extrapolation = 1.0 / (factor * base_freqs), 1.0 / base_freqs
    inv_freq = interpolation * (1 - extrapolation_weight) + extrapolation * extrapolation_weight
    return inv_freq, float(attention_factor)


def _yarn_mscale(scale: float, mscale: float) -> float:
    return 1.0 if scale <= 1 else 0.1 * mscale * math.log(scale) + 1.0


def _longrope(
    theta: float,
    head_dim: int,
    scaling: dict[str, Any],
    max_position_embeddings: int,
    max_positions: int,
) -> tuple[torch.Tensor, float]:
    original = int(_require(scaling, "original_max_position_embeddings"))
    factor = scaling.get("factor")
    # Phi-3 stretches max_position_embeddings and keeps the trained length apart: their
    # ratio is the factor when none is given.
    factor = float(factor) if factor is not None else max_position_embeddings / original
    attention_factor = scaling.get("attention_factor")
    if attention_factor is None:
        attention_factor = (
            1.0 if factor <= 1.0 else math.sqrt(1 + math.log(factor) / math.log(original))
        )
    key = "long_factor" if max_positions > original else "short_factor"
    rescale = torch.tensor(_require(scaling, key), dtype=torch.float32)  # [head_dim / 2]
    if rescale.shape != (head_dim // 2,):
        raise ConfigError(f"rope_scaling {key} has {rescale.numel()} values, need {head_dim // 2}")
    exponents = torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim
    return 1.0 / (rescale * theta**exponents), float(attention_factor)
