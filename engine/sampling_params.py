"""Sampling parameters of one request, validated once at the edge.

`SamplingParams.from_json` is the only way the Triton shim builds them: it takes the
`sampling_parameters` JSON of the tensor contract, rejects unknown fields, and names
the field in every error.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Any

MAX_TOP_LOGPROBS = 20
MAX_N = 16
MAX_STOP_STRINGS = 16


class SamplingParamsError(ValueError):
    """A bad sampling field; `field` names it (as the user spelled it)."""

    def __init__(self, field_name: str, message: str) -> None:
        super().__init__(f"{field_name}: {message}")
        self.field = field_name
        self.reason = message


@dataclass(frozen=True)
class SamplingParams:
    # How many tokens to generate at most; None = up to the model's context length.
    max_tokens: int | None = None
    # Do not stop (EOS, stop ids, stop strings) before this many tokens.
    min_tokens: int = 0
    # 0 = greedy; otherwise logits are divided by it before sampling.
    temperature: float = 1.0
    # Nucleus sampling: keep the smallest set of tokens whose probability mass >= top_p.
    top_p: float = 1.0
    # Keep the k most likely tokens; 0 (or -1) = off.
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

    def __post_init__(self) -> None:
        self._check()

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    @classmethod
    def from_json(cls, data: dict[str, Any] | None) -> SamplingParams:
        """Build from the contract's JSON object; unknown fields are an error."""
        if data is None:
            return cls()
        if not isinstance(data, dict):
            raise SamplingParamsError("sampling_parameters", "must be a JSON object")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise SamplingParamsError(
                unknown[0], f"unknown sampling field; supported: {', '.join(sorted(known))}"
            )
        kwargs: dict[str, Any] = {}
        for name, value in data.items():
            if value is None:
                continue  # JSON null = the default
            kwargs[name] = _coerce(name, value)
        return cls(**kwargs)

    def _check(self) -> None:
        if self.max_tokens is not None and (
            not isinstance(self.max_tokens, int) or self.max_tokens < 1
        ):
            raise SamplingParamsError("max_tokens", f"must be an integer >= 1, got {self.max_tokens!r}")
        if self.min_tokens < 0:
            raise SamplingParamsError("min_tokens", f"must be >= 0, got {self.min_tokens}")
        if self.max_tokens is not None and self.min_tokens > self.max_tokens:
            raise SamplingParamsError(
                "min_tokens", f"{self.min_tokens} is more than max_tokens {self.max_tokens}"
            )
        if not (0.0 <= self.temperature <= 2.0) or math.isnan(self.temperature):
            raise SamplingParamsError("temperature", f"must be in [0, 2], got {self.temperature}")
        if not (0.0 < self.top_p <= 1.0):
            raise SamplingParamsError("top_p", f"must be in (0, 1], got {self.top_p}")
        if self.top_k < -1:
            raise SamplingParamsError("top_k", f"must be -1, 0 (off) or >= 1, got {self.top_k}")
        if not (0.0 <= self.min_p <= 1.0):
            raise SamplingParamsError("min_p", f"must be in [0, 1], got {self.min_p}")
        for name in ("presence_penalty", "frequency_penalty"):
            value = getattr(self, name)
            if not (-2.0 <= value <= 2.0):
                raise SamplingParamsError(name, f"must be in [-2, 2], got {value}")
        if not (0.0 < self.repetition_penalty <= 10.0):
            raise SamplingParamsError(
                "repetition_penalty", f"must be in (0, 10], got {self.repetition_penalty}"
            )
        for token_id, bias in self.logit_bias.items():
            if token_id < 0:
                raise SamplingParamsError("logit_bias", f"token id {token_id} is negative")
            if not (-100.0 <= bias <= 100.0):
                raise SamplingParamsError(
                    "logit_bias", f"bias for token {token_id} must be in [-100, 100], got {bias}"
                )
        if not (1 <= self.n <= MAX_N):
            raise SamplingParamsError("n", f"must be in [1, {MAX_N}], got {self.n}")
        if not (0 <= self.top_logprobs <= MAX_TOP_LOGPROBS):
            raise SamplingParamsError(
                "top_logprobs", f"must be in [0, {MAX_TOP_LOGPROBS}], got {self.top_logprobs}"
            )
        if self.top_logprobs and not self.logprobs:
            raise SamplingParamsError("top_logprobs", "needs logprobs=true")
        if len(self.stop) > MAX_STOP_STRINGS:
            raise SamplingParamsError("stop", f"at most {MAX_STOP_STRINGS} stop strings")
        if any(not s for s in self.stop):
            raise SamplingParamsError("stop", "stop strings must not be empty")
        if any(t < 0 for t in self.stop_token_ids):
            raise SamplingParamsError("stop_token_ids", "token ids must be >= 0")


_INT_FIELDS = {"max_tokens", "min_tokens", "top_k", "seed", "n", "top_logprobs"}
_FLOAT_FIELDS = {
    "temperature",
    "top_p",
    "min_p",
    "presence_penalty",
    "frequency_penalty",
    "repetition_penalty",
}
_BOOL_FIELDS = {"ignore_eos", "logprobs", "skip_special_tokens"}


def _coerce(name: str, value: Any) -> Any:
    """JSON value -> the field's Python type, or an error naming the field."""
    if name in _INT_FIELDS:
        if isinstance(value, bool) or not isinstance(value, int):
            raise SamplingParamsError(name, f"must be an integer, got {value!r}")
        return value
    if name in _FLOAT_FIELDS:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise SamplingParamsError(name, f"must be a number, got {value!r}")
        if not math.isfinite(value):
            raise SamplingParamsError(name, f"must be finite, got {value!r}")
        return float(value)
    if name in _BOOL_FIELDS:
        if not isinstance(value, bool):
            raise SamplingParamsError(name, f"must be true or false, got {value!r}")
        return value
    if name == "stop":
        if isinstance(value, str):
            return (value,)
        if isinstance(value, list) and all(isinstance(s, str) for s in value):
            return tuple(value)
        raise SamplingParamsError(name, "must be a string or a list of strings")
    if name == "stop_token_ids":
        if isinstance(value, list) and all(
            isinstance(t, int) and not isinstance(t, bool) for t in value
        ):
            return tuple(value)
        raise SamplingParamsError(name, "must be a list of integers")
    if name == "logit_bias":
        if not isinstance(value, dict):
            raise SamplingParamsError(name, "must be an object of token id -> bias")
        out: dict[int, float] = {}
        for key, bias in value.items():
            try:
                token_id = int(key)
            except (TypeError, ValueError):
                raise SamplingParamsError(name, f"key {key!r} is not a token id") from None
            if isinstance(bias, bool) or not isinstance(bias, (int, float)):
                raise SamplingParamsError(name, f"bias for {key!r} must be a number")
            out[token_id] = float(bias)
        return out
    raise SamplingParamsError(name, "unsupported field")  # pragma: no cover - guarded by caller
