"""One tiny random checkpoint per architecture, its own feature switched on.

Each is built from transformers' own config class (nothing downloaded): 3 layers,
hidden 64, 4 query heads over 2 KV heads of 16; windows shorter than the tests'
prompts, several experts, a `rope_scaling` of some kind. Norm weights are randomised
(Gemma's are zeros at init, which would hide the (1 + w) form) and so are biases.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import transformers

WINDOW = 6  # tokens a sliding-window layer sees; the tests' prompts are longer
COMMON: dict[str, Any] = dict(
    vocab_size=128,
    hidden_size=64,
    intermediate_size=96,
    num_hidden_layers=3,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=16,
    max_position_embeddings=256,
    initializer_range=0.2,  # peaked logits: greedy argmax is never a near-tie
    rms_norm_eps=1e-5,
    bos_token_id=1,
    eos_token_id=2,
    pad_token_id=0,
    tie_word_embeddings=False,
)
YARN = {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64}
LLAMA3 = {
    "rope_type": "llama3",
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 64,
}


def _longrope() -> dict[str, Any]:
    generator = torch.Generator().manual_seed(1)
    return {
        "rope_type": "longrope",
        "short_factor": (1 + torch.rand(8, generator=generator)).tolist(),
        "long_factor": (1 + 4 * torch.rand(8, generator=generator)).tolist(),
    }


@dataclass(frozen=True)
class TinyArchitecture:
    config_class: str  # transformers' config class
    model_class: str  # transformers' model class
    settings: dict[str, Any] = field(default_factory=dict)  # over COMMON; None removes a key
    norm_mean: float = 1.0  # Gemma stores w of (1 + w): 0
    # The engine's context: LongRoPE is exact while the context fits the original length.
    max_model_len: int = 128

    def build(self) -> torch.nn.Module:
        torch.manual_seed(0)
        settings = {**COMMON, **self.settings}
        settings = {key: value for key, value in settings.items() if value is not None}
        config = getattr(transformers, self.config_class)(**settings)
        model = getattr(transformers, self.model_class)(config).float().eval()
        with torch.no_grad():
            for name, parameter in model.named_parameters():
                if "norm" in name:
                    parameter.normal_(self.norm_mean, 0.3)
                elif name.endswith(".bias"):  # zero at init
                    parameter.normal_(0, 0.5)
        return model


ARCHITECTURES: dict[str, TinyArchitecture] = {
    "qwen3": TinyArchitecture("Qwen3Config", "Qwen3ForCausalLM", {"rope_parameters": {**YARN, "rope_theta": 1e6}}),
    "phi3": TinyArchitecture(
        "Phi3Config",
        "Phi3ForCausalLM",
        # A window on every layer: the blocks behind it are freed.
        {"head_dim": None, "sliding_window": WINDOW, "original_max_position_embeddings": 64,
         "rope_parameters": {**_longrope(), "rope_theta": 10000.0}},
        max_model_len=64,
    ),  # fmt: skip
    "olmo2": TinyArchitecture(
        "Olmo2Config", "Olmo2ForCausalLM", {"head_dim": None, "rope_parameters": {**LLAMA3, "rope_theta": 5e5}}
    ),
    "gemma2": TinyArchitecture(
        "Gemma2Config",
        "Gemma2ForCausalLM",
        {"sliding_window": WINDOW, "query_pre_attn_scalar": 24, "attn_logit_softcapping": 8.0,
         "final_logit_softcapping": 20.0, "tie_word_embeddings": True},
        norm_mean=0.0,
    ),  # fmt: skip
    "gemma3": TinyArchitecture(
        "Gemma3TextConfig",
        "Gemma3ForCausalLM",
        {"sliding_window": WINDOW, "query_pre_attn_scalar": 24, "tie_word_embeddings": True,
         "layer_types": ["sliding_attention", "full_attention", "sliding_attention"],
         "rope_parameters": {"full_attention": {"rope_type": "linear", "factor": 2.0, "rope_theta": 1e6},
                             "sliding_attention": {"rope_type": "default", "rope_theta": 1e4}}},
        norm_mean=0.0,
    ),  # fmt: skip
    "mistral": TinyArchitecture(
        "MistralConfig", "MistralForCausalLM", {"sliding_window": WINDOW, "head_dim": None}
    ),
    "mixtral": TinyArchitecture(
        "MixtralConfig",
        "MixtralForCausalLM",
        {"num_local_experts": 4, "num_experts_per_tok": 2, "sliding_window": WINDOW,
         "rope_parameters": {"rope_type": "dynamic", "factor": 2.0, "rope_theta": 1e6}},
    ),  # fmt: skip
    "qwen2_moe": TinyArchitecture(
        "Qwen2MoeConfig",
        "Qwen2MoeForCausalLM",
        {"head_dim": None, "num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 32,
         "shared_expert_intermediate_size": 48, "norm_topk_prob": False, "mlp_only_layers": [1],
         "rope_parameters": {"rope_type": "linear", "factor": 2.0, "rope_theta": 1e6}},
    ),  # fmt: skip
    "qwen3_moe": TinyArchitecture(
        "Qwen3MoeConfig",
        "Qwen3MoeForCausalLM",
        {"num_experts": 8, "num_experts_per_tok": 2, "moe_intermediate_size": 32,
         "norm_topk_prob": True, "rope_parameters": {**YARN, "rope_theta": 1e6}},
    ),  # fmt: skip
}


def save_tiny_architecture(
    name: str, directory: Path, tokenizer_from: Path | None = None
) -> torch.nn.Module:
    """Save architecture `name` (safetensors) with a tokenizer copied from
    `tokenizer_from` (any will do: the tests feed token ids); returns the HF model."""
    model = ARCHITECTURES[name].build()
    model.save_pretrained(directory, safe_serialization=True)
    if tokenizer_from is not None:
        shutil.copy(tokenizer_from / "tokenizer.json", directory)
    return model


def hf_greedy(model: torch.nn.Module, prompt: list[int], max_new_tokens: int) -> list[int]:
    """transformers' `generate`, greedy, never stopping early."""
    model.generation_config.eos_token_id = None
    with torch.no_grad():
        out = model.generate(
            torch.tensor([prompt]),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=0,
        )
    return out[0, len(prompt) :].tolist()


