"""The architectures we serve, and how each one's Hugging Face config.json reads.

Torch-free: `engine.config` builds `ModelConfig` with these functions, and the scheduler
imports `engine.config`. `ARCHITECTURES` is the one table of what is supported: the class
name a checkpoint's config.json gives, our class for it in `engine.models`, and what the
engine does for it (docs/models.md shows the table).

Checkpoints spell the same setting several ways (transformers 5 writes `rope_parameters`,
older files `rope_theta` + `rope_scaling`; Gemma 3 has one RoPE per layer type; `layer_types`
is new, older files imply it). The functions here read every spelling into the few values
the model needs, so the models never look at the raw dict.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

SLIDING = "sliding_attention"


@dataclass(frozen=True)
class Architecture:
    family: str  # the models people know it as
    model: str  # our class: "<module of engine.models>.<class>"
    needs: str  # what the engine does for it beyond the Llama decoder


ARCHITECTURES: dict[str, Architecture] = {
    "LlamaForCausalLM": Architecture(
        "Llama 2/3, SmolLM",
        "llama.LlamaForCausalLM",
        "the base: RMSNorm, RoPE (any scaling), GQA, SwiGLU",
    ),
    "MistralForCausalLM": Architecture(
        "Mistral", "llama.LlamaForCausalLM", "a sliding window on every layer"
    ),
    "Qwen2ForCausalLM": Architecture(
        "Qwen2, Qwen2.5",
        "llama.LlamaForCausalLM",
        "q/k/v bias; windows on the layers `layer_types` names",
    ),
    "Qwen3ForCausalLM": Architecture(
        "Qwen3",
        "qwen3.Qwen3ForCausalLM",
        "QK-norm: each head's query and key RMS-normed before RoPE",
    ),
    "Phi3ForCausalLM": Architecture(
        "Phi-3, Phi-3.5",
        "phi3.Phi3ForCausalLM",
        "fused `qkv_proj` / `gate_up_proj` in the checkpoint; LongRoPE",
    ),
    "Olmo2ForCausalLM": Architecture(
        "OLMo 2",
        "olmo2.Olmo2ForCausalLM",
        "norms after attention and MLP, on their outputs; QK-norm over the whole projection",
    ),
    "Gemma2ForCausalLM": Architecture(
        "Gemma 2",
        "gemma.Gemma2ForCausalLM",
        "(1 + w) RMSNorm before and after attention and MLP, embeddings scaled by sqrt(hidden), "
        "GeGLU, alternating sliding-window / global layers, attention and final logit soft-capping",
    ),
    "Gemma3ForCausalLM": Architecture(
        "Gemma 3 (text)",
        "gemma.Gemma3ForCausalLM",
        "Gemma 2's layout with QK-norm, 5 sliding layers per global one, a RoPE of their own "
        "for the sliding layers",
    ),
    "MixtralForCausalLM": Architecture(
        "Mixtral",
        "moe.MixtralForCausalLM",
        "experts: softmax router, top-k renormalised, computed grouped by expert",
    ),
    "Qwen2MoeForCausalLM": Architecture(
        "Qwen1.5-MoE, Qwen2-MoE",
        "moe.Qwen2MoeForCausalLM",
        "experts (top-k as the model says) plus a sigmoid-gated shared expert",
    ),
    "Qwen3MoeForCausalLM": Architecture(
        "Qwen3-MoE", "moe.Qwen3MoeForCausalLM", "experts with Qwen3's QK-norm attention"
    ),
}
SUPPORTED_ARCHITECTURES = tuple(ARCHITECTURES)

# A GGUF header names a model type (transformers' spelling once it has read the file);
# these are the ones transformers can dequantize and we serve. Mixtral and OLMo 2 GGUFs
# are not read by transformers.
GGUF_ARCHITECTURES = {
    "llama": "LlamaForCausalLM",
    "mistral": "MistralForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "qwen3": "Qwen3ForCausalLM",
    "phi3": "Phi3ForCausalLM",
    "gemma2": "Gemma2ForCausalLM",
    "gemma3": "Gemma3ForCausalLM",
    "gemma3_text": "Gemma3ForCausalLM",
    "qwen2_moe": "Qwen2MoeForCausalLM",
    "qwen3_moe": "Qwen3MoeForCausalLM",
}


def supported_list() -> str:
    """What `tritium package` and the engine accept, for error messages."""
    return "; ".join(f"{name} ({entry.family})" for name, entry in ARCHITECTURES.items())


@dataclass(frozen=True)
class MoEConfig:
    """Mixture of experts: which layers route, and how."""

    num_experts: int
    num_experts_per_token: int  # top-k
    expert_intermediate_size: int
    # Divide the top-k routing probabilities by their sum (Mixtral always; Qwen by
    # `norm_topk_prob`), else use them as the softmax gave them.
    normalize_top_k: bool
    # A dense MLP every token goes through, scaled by sigmoid(gate(x)); 0 = none.
    shared_expert_intermediate_size: int
    # Per layer: True = experts, False = the dense MLP of `intermediate_size`.
    sparse_layers: tuple[bool, ...]


@dataclass(frozen=True)
class RopeSpec:
    theta: float
    scaling: dict[str, Any] | None  # with "rope_type"; None = plain RoPE


def rope_specs(config: dict[str, Any], architecture: str) -> tuple[RopeSpec, RopeSpec | None]:
    """(RoPE of the global layers, RoPE of the sliding layers when they have their own)."""
    parameters = config.get("rope_parameters") or {}
    if "full_attention" in parameters:  # transformers 5, one RoPE per layer type (Gemma 3)
        local = parameters.get(SLIDING)
        return (
            _rope_spec(parameters["full_attention"], config, architecture),
            _rope_spec(local, config, architecture) if local else None,
        )
    scaling = config.get("rope_scaling") or parameters
    theta = config.get("rope_theta") or parameters.get("rope_theta") or 10000.0
    spec = _rope_spec(dict(scaling, rope_theta=theta), config, architecture)
    if architecture == "Gemma3ForCausalLM":  # older Gemma 3 files: local layers' own theta
        return spec, RopeSpec(float(config.get("rope_local_base_freq") or 10000.0), None)
    return spec, None


def _rope_spec(parameters: dict[str, Any], config: dict[str, Any], architecture: str) -> RopeSpec:
    theta = float(parameters.get("rope_theta") or 10000.0)
    kind = parameters.get("rope_type") or parameters.get("type") or "default"
    if architecture == "Phi3ForCausalLM" and kind in ("su", "yarn"):
        kind = "longrope"  # what transformers' Phi3Config makes of these old names
    if kind == "default":
        return RopeSpec(theta, None)
    scaling = {k: v for k, v in parameters.items() if k not in ("rope_theta", "type")}
    if config.get("original_max_position_embeddings"):  # Phi-3 keeps it beside the dict
        scaling["original_max_position_embeddings"] = config["original_max_position_embeddings"]
    return RopeSpec(theta, dict(scaling, rope_type=kind))


def partial_rotary_factor(config: dict[str, Any]) -> float:
    parameters = config.get("rope_parameters") or {}
    return float(
        config.get("partial_rotary_factor") or parameters.get("partial_rotary_factor") or 1.0
    )


def layer_windows(
    config: dict[str, Any], architecture: str, num_layers: int
) -> tuple[int | None, ...]:
    """Per layer: its sliding window (a query at p sees keys at p - window < k <= p, as
    transformers masks them) or None for a global layer."""
    window = config.get("sliding_window")
    if not window or config.get("use_sliding_window") is False:
        return (None,) * num_layers
    types = config.get("layer_types") or _implied_layer_types(config, architecture, num_layers)
    return tuple(int(window) if kind == SLIDING else None for kind in types)


def _implied_layer_types(config: dict[str, Any], architecture: str, num_layers: int) -> list[str]:
    """What transformers' config classes derive when a file predates `layer_types`."""
    if architecture == "Gemma2ForCausalLM":
        pattern = 2
    elif architecture == "Gemma3ForCausalLM":
        pattern = int(config.get("sliding_window_pattern") or 6)
    elif architecture in ("Qwen2ForCausalLM", "Qwen3ForCausalLM"):
        first = int(config.get("max_window_layers") or 0)
        return [SLIDING if i >= first else "full_attention" for i in range(num_layers)]
    else:  # Mistral, Mixtral, Phi-3, Qwen-MoE: the window is on every layer
        return [SLIDING] * num_layers
    return [SLIDING if (i + 1) % pattern else "full_attention" for i in range(num_layers)]


def attention_bias(config: dict[str, Any], architecture: str) -> bool:
    if config.get("attention_bias") is not None:
        return bool(config["attention_bias"])
    if architecture == "Qwen2MoeForCausalLM":
        return bool(config.get("qkv_bias", True))
    return architecture == "Qwen2ForCausalLM"


def moe_config(config: dict[str, Any], architecture: str, num_layers: int) -> MoEConfig | None:
    if architecture == "MixtralForCausalLM":
        return MoEConfig(
            num_experts=int(config["num_local_experts"]),
            num_experts_per_token=int(config["num_experts_per_tok"]),
            expert_intermediate_size=int(config["intermediate_size"]),
            normalize_top_k=True,
            shared_expert_intermediate_size=0,
            sparse_layers=(True,) * num_layers,
        )
    if architecture not in ("Qwen2MoeForCausalLM", "Qwen3MoeForCausalLM"):
        return None
    # transformers 5 writes Qwen3-MoE's `num_experts` as `num_local_experts`.
    num_experts = int(config.get("num_experts") or config["num_local_experts"])
    dense = set(config.get("mlp_only_layers") or ())
    step = int(config.get("decoder_sparse_step") or 1)
    shared = architecture == "Qwen2MoeForCausalLM"
    return MoEConfig(
        num_experts=num_experts,
        num_experts_per_token=int(config["num_experts_per_tok"]),
        expert_intermediate_size=int(config["moe_intermediate_size"]),
        normalize_top_k=bool(config.get("norm_topk_prob", False)),
        shared_expert_intermediate_size=int(config["shared_expert_intermediate_size"])
        if shared
        else 0,
        sparse_layers=tuple(
            i not in dense and num_experts > 0 and (i + 1) % step == 0 for i in range(num_layers)
        ),
    )


def attention_scale(config: dict[str, Any], head_dim: int) -> float:
    """The factor on q·k: Gemma's `query_pre_attn_scalar` ** -0.5, else head_dim ** -0.5."""
    return float(config.get("query_pre_attn_scalar") or head_dim) ** -0.5


def hidden_activation(config: dict[str, Any]) -> str:
    # Gemma names it `hidden_activation` (and leaves `hidden_act` for an older meaning).
    return str(config.get("hidden_activation") or config.get("hidden_act") or "silu")


def attention_softcap(config: dict[str, Any], architecture: str) -> float | None:
    # Gemma 3's config carries the field, but transformers' Gemma 3 attention never applies it.
    if architecture == "Gemma3ForCausalLM":
        return None
    value = config.get("attn_logit_softcapping")
    return float(value) if value else None


def final_softcap(config: dict[str, Any]) -> float | None:
    value = config.get("final_logit_softcapping")
    return float(value) if value else None
