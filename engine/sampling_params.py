"""Sampling parameters of one request, validated once at the edge.

The fields, their types, defaults and limits are the contract's (`contract.sampling`):
`SamplingParams` has exactly those fields (tests/engine/test_config.py checks it), each
range-checked through the contract's table; the rules that tie fields together are here.
`SamplingParams.from_json` is how the Triton shim builds them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from contract.errors import ContractError
from contract.sampling import FIELDS_BY_NAME, parse_sampling_parameters


@dataclass(frozen=True)
class SamplingParams:
    # How many tokens to generate at most; None = up to the model's context length.
    max_tokens: int | None = None
    # Do not stop (EOS, stop ids, stop strings) before this many tokens.
    min_tokens: int = 0
    # 0 = greedy; otherwise logits are divided by it before sampling.
    temperature: float = 1.0
    # Nucleus sampling: keep the most likely tokens whose mass reaches top_p (ties kept).
    top_p: float = 1.0
    # Keep the tokens whose logit is at least the k-th largest (ties kept); 0 (or -1) = off.
    top_k: int = 0
    # Drop tokens whose probability is below min_p * (probability of the top token).
    min_p: float = 0.0
    # Per-request seed; the same seed gives the same tokens whatever else is batched.
    seed: int | None = None
    # Stop strings: generation ends before the first occurrence; the text is not emitted.
    stop: tuple[str, ...] = ()
    # Token ids that end generation (in addition to EOS unless ignore_eos).
    stop_token_ids: tuple[int, ...] = ()
    ignore_eos: bool = False
    # OpenAI penalties on tokens already generated (not the prompt).
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    # Multiplicative penalty (CTRL) on tokens in the prompt or the output; 1.0 = off.
    repetition_penalty: float = 1.0
    # token id -> bias added to the logit (OpenAI: -100..100).
    logit_bias: dict[int, float] = field(default_factory=dict)
    # Number of sequences to generate for the prompt.
    n: int = 1
    # Return the chosen token's logprob, and this many top alternatives.
    logprobs: bool = False
    top_logprobs: int = 0
    skip_special_tokens: bool = True
    # Constrain the output ({kind: spec}, one of contract.sampling.STRUCTURED_OUTPUT_KINDS).
    structured_outputs: dict[str, Any] | None = None
    # Keep only the prompt's last k tokens; -1 = the context length; None = all of them.
    truncate_prompt_tokens: int | None = None

    def __post_init__(self) -> None:
        for name, spec in FIELDS_BY_NAME.items():
            value = getattr(self, name)
            if value is not None:
                spec.check(value)
        if self.max_tokens is not None and self.min_tokens > self.max_tokens:
            raise ContractError(
                f"{self.min_tokens} is more than max_tokens {self.max_tokens}", "min_tokens"
            )
        if self.top_logprobs and not self.logprobs:
            raise ContractError("needs logprobs=true", "top_logprobs")
        if self.truncate_prompt_tokens == 0:
            raise ContractError("must be -1 or >= 1 (0 would keep no prompt)", "truncate_prompt_tokens")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    @classmethod
    def from_json(cls, data: dict[str, Any] | None) -> SamplingParams:
        """Build from the contract's JSON object; unknown fields are an error."""
        return cls(**parse_sampling_parameters(data))
