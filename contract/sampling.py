"""The `sampling_parameters` input: one JSON object, its fields, their types and limits.

`SAMPLING_FIELDS` is the one table of these fields. The engine's `SamplingParams` has
exactly these fields (a test checks it), the adapter derives its request schema's
sampling fields from it, the null model validates with it, and docs/api.md's table of
sampling fields is generated from it. `parse_sampling_parameters` is the one validation:
unknown fields are rejected, and every error names the field.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass
from typing import Any

from contract.errors import ContractError

MAX_N = 16
MAX_TOP_LOGPROBS = 20
MAX_STOP_STRINGS = 16
MAX_LOGIT_BIAS = 100.0
# What `structured_outputs` may constrain the output to (exactly one per request):
#   json: a JSON schema (an object, or its JSON text); json_object: true, any JSON object;
#   regex: a regular expression; choice: a list of strings, the output is one of them;
#   grammar: an EBNF grammar (GBNF-style, as the grammar engine reads it);
#   structural_tag: a structural tag, as the grammar engine (xgrammar) spells it:
#     {"type": "structural_tag", "format": {...}}, formats such as const_string,
#     json_schema, sequence, or, triggered_tags (text in which tagged parts follow their
#     schemas: how tool calls are constrained); "type" may be left out. The legacy
#     {"structures": [{"begin": str, "schema": {...}, "end": str}], "triggers": [str]}
#     is taken too (each structure a tag of triggered_tags).
# Only the shape is checked here; the engine compiles the spec (engine/structured.py) and
# answers one it cannot compile with an error naming structured_outputs.
STRUCTURED_OUTPUT_KINDS = ("json", "json_object", "regex", "choice", "grammar", "structural_tag")


class Kind(enum.Enum):
    INT = "integer"
    FLOAT = "number"
    BOOL = "boolean"
    STRINGS = "string or list of strings"
    TOKEN_IDS = "list of token ids"
    BIAS = "object of token id -> bias"
    STRUCTURED = "object"


class Exposure(enum.Enum):
    """How the adapter's OpenAI API offers a field."""

    SAME = "same"  # a request field of the same name and meaning (OpenAI's, or vLLM's extension)
    MAPPED = "mapped"  # the adapter maps OpenAI's spelling onto it (max_tokens, logprobs)
    NONE = "none"  # Triton clients only


@dataclass(frozen=True)
class SamplingField:
    name: str
    kind: Kind
    default: Any  # the model's value when the field is absent or null
    doc: str  # one line for docs/api.md and the OpenAPI schema
    minimum: float | None = None
    maximum: float | None = None
    minimum_exclusive: bool = False  # minimum < value rather than minimum <= value
    exposure: Exposure = Exposure.SAME

    def limits(self) -> str:
        """The range as docs/api.md writes it ("" when unbounded)."""
        if self.minimum is None and self.maximum is None:
            return ""
        low = "" if self.minimum is None else _number(self.minimum)
        high = "" if self.maximum is None else _number(self.maximum)
        if self.maximum is None:
            return f"{'>' if self.minimum_exclusive else '≥'} {low}"
        return f"{'(' if self.minimum_exclusive else '['}{low}, {high}]"

    def check(self, value: Any) -> Any:
        """A JSON value -> the field's Python value; raises ContractError naming the field."""
        value = _COERCE[self.kind](self, value)
        if self.kind in (Kind.INT, Kind.FLOAT):
            self._check_range(value)
        return value

    def _check_range(self, value: float) -> None:
        too_low = self.minimum is not None and (
            value <= self.minimum if self.minimum_exclusive else value < self.minimum
        )
        too_high = self.maximum is not None and value > self.maximum
        if too_low or too_high:
            raise ContractError(f"must be in {self.limits()}, got {value!r}", self.name)


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


SAMPLING_FIELDS: tuple[SamplingField, ...] = (
    SamplingField("max_tokens", Kind.INT, None, "most tokens to generate; absent: up to the context length", minimum=1, exposure=Exposure.MAPPED),
    SamplingField("min_tokens", Kind.INT, 0, "no stop (EOS, stop ids, stop strings) before this many tokens", minimum=0),
    SamplingField("temperature", Kind.FLOAT, 1.0, "0 = greedy; else the logits are divided by it", minimum=0, maximum=2),
    SamplingField("top_p", Kind.FLOAT, 1.0, "nucleus: keep the most likely tokens whose probability adds up to top_p", minimum=0, maximum=1, minimum_exclusive=True),
    SamplingField("top_k", Kind.INT, 0, "keep the tokens whose logit is at least the k-th largest; -1 or 0 = off", minimum=-1),
    SamplingField("min_p", Kind.FLOAT, 0.0, "drop tokens less likely than min_p times the most likely one", minimum=0, maximum=1),
    SamplingField("seed", Kind.INT, None, "the same seed gives the same tokens whatever else is batched"),
    SamplingField("stop", Kind.STRINGS, (), f"up to {MAX_STOP_STRINGS} non-empty strings; the text ends before the first one, which is not returned"),
    SamplingField("stop_token_ids", Kind.TOKEN_IDS, (), "token ids that end generation (besides EOS)"),
    SamplingField("ignore_eos", Kind.BOOL, False, "keep generating past EOS"),
    SamplingField("presence_penalty", Kind.FLOAT, 0.0, "subtracted from the logit of every token already generated", minimum=-2, maximum=2),
    SamplingField("frequency_penalty", Kind.FLOAT, 0.0, "times its count, subtracted from the logit of each token already generated", minimum=-2, maximum=2),
    SamplingField("repetition_penalty", Kind.FLOAT, 1.0, "divides positive (multiplies negative) logits of tokens in the prompt or output; 1 = off", minimum=0, maximum=10, minimum_exclusive=True),
    SamplingField("logit_bias", Kind.BIAS, {}, f"`{{\"<token id>\": bias}}`, bias in [-{MAX_LOGIT_BIAS:g}, {MAX_LOGIT_BIAS:g}], added to the logit"),
    SamplingField("n", Kind.INT, 1, "choices generated for the prompt", minimum=1, maximum=MAX_N),
    SamplingField("logprobs", Kind.BOOL, False, "return each chosen token's logprob (of the raw model logits)", exposure=Exposure.MAPPED),
    SamplingField("top_logprobs", Kind.INT, 0, "and this many most likely alternatives; needs logprobs", minimum=0, maximum=MAX_TOP_LOGPROBS, exposure=Exposure.MAPPED),
    SamplingField("skip_special_tokens", Kind.BOOL, True, "leave special tokens out of the text", exposure=Exposure.NONE),
    SamplingField("structured_outputs", Kind.STRUCTURED, None, "constrain the output: `{\"<kind>\": spec}` with one kind of " + ", ".join(f"`{k}`" for k in STRUCTURED_OUTPUT_KINDS) + " (vLLM's spelling)"),
    SamplingField("truncate_prompt_tokens", Kind.INT, None, "keep only the prompt's last k tokens (after the chat template); -1 = the model's context length", minimum=-1),
)  # fmt: skip

FIELDS_BY_NAME = {f.name: f for f in SAMPLING_FIELDS}


def parse_sampling_parameters(data: Any) -> dict[str, Any]:
    """The JSON object -> {field: value} for the fields given (null = absent).

    Checks each field's type and range; cross-field rules (min_tokens <= max_tokens,
    top_logprobs needs logprobs) are the engine's `SamplingParams`.
    """
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ContractError("must be a JSON object", "sampling_parameters")
    unknown = sorted(set(data) - set(FIELDS_BY_NAME))
    if unknown:
        raise ContractError(
            f"unknown sampling field; supported: {', '.join(sorted(FIELDS_BY_NAME))}", unknown[0]
        )
    return {
        name: FIELDS_BY_NAME[name].check(value) for name, value in data.items() if value is not None
    }


def _int(spec: SamplingField, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ContractError(f"must be an integer, got {value!r}", spec.name)
    return value


def _float(spec: SamplingField, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ContractError(f"must be a number, got {value!r}", spec.name)
    if not math.isfinite(value):
        raise ContractError(f"must be finite, got {value!r}", spec.name)
    return float(value)


def _bool(spec: SamplingField, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ContractError(f"must be true or false, got {value!r}", spec.name)
    return value


def _strings(spec: SamplingField, value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, (list, tuple)) or not all(isinstance(s, str) for s in value):
        raise ContractError("must be a string or a list of strings", spec.name)
    if len(value) > MAX_STOP_STRINGS:
        raise ContractError(f"at most {MAX_STOP_STRINGS} stop strings", spec.name)
    if any(not s for s in value):
        raise ContractError("stop strings must not be empty", spec.name)
    return tuple(value)


def _token_ids(spec: SamplingField, value: Any) -> tuple[int, ...]:
    if not isinstance(value, (list, tuple)) or not all(
        isinstance(t, int) and not isinstance(t, bool) for t in value
    ):
        raise ContractError("must be a list of integers", spec.name)
    if any(t < 0 for t in value):
        raise ContractError("token ids must be >= 0", spec.name)
    return tuple(value)


def _bias(spec: SamplingField, value: Any) -> dict[int, float]:
    if not isinstance(value, dict):
        raise ContractError("must be an object of token id -> bias", spec.name)
    out: dict[int, float] = {}
    for key, bias in value.items():
        text = str(key)
        if not text.isdigit():
            raise ContractError(
                f"keys must be token ids (non-negative integers), got {key!r}", spec.name
            )
        if isinstance(bias, bool) or not isinstance(bias, (int, float)) or not math.isfinite(bias):
            raise ContractError(f"bias for {key!r} must be a number", spec.name)
        if not -MAX_LOGIT_BIAS <= bias <= MAX_LOGIT_BIAS:
            raise ContractError(
                f"bias for token {key} must be in [-{MAX_LOGIT_BIAS:g}, {MAX_LOGIT_BIAS:g}],"
                f" got {bias}",
                spec.name,
            )
        out[int(text)] = float(bias)
    return out


def _structured(spec: SamplingField, value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ContractError(
            f"must be an object with one of {', '.join(STRUCTURED_OUTPUT_KINDS)}", spec.name
        )
    unknown = sorted(set(value) - set(STRUCTURED_OUTPUT_KINDS))
    if unknown:
        raise ContractError(
            f"unknown key {unknown[0]!r}; one of {', '.join(STRUCTURED_OUTPUT_KINDS)}", spec.name
        )
    given = {key: item for key, item in value.items() if item is not None}
    if len(given) != 1:
        raise ContractError(
            f"exactly one of {', '.join(STRUCTURED_OUTPUT_KINDS)} is required, got {sorted(given)}",
            spec.name,
        )
    ((kind, item),) = given.items()
    valid = {
        "json": isinstance(item, (dict, str)) and bool(item),
        "json_object": item is True,
        "regex": isinstance(item, str) and bool(item),
        "choice": isinstance(item, list) and bool(item) and all(isinstance(c, str) for c in item),
        "grammar": isinstance(item, str) and bool(item.strip()),
        "structural_tag": isinstance(item, dict) and bool(item),
    }[kind]
    if not valid:
        what = {
            "json": "a JSON schema (an object or its text)",
            "json_object": "true",
            "regex": "a non-empty string",
            "choice": "a non-empty list of strings",
            "grammar": "a non-empty EBNF grammar",
            "structural_tag": "an object",
        }[kind]
        raise ContractError(f"{kind} must be {what}", spec.name)
    return {kind: item}


_COERCE = {
    Kind.INT: _int,
    Kind.FLOAT: _float,
    Kind.BOOL: _bool,
    Kind.STRINGS: _strings,
    Kind.TOKEN_IDS: _token_ids,
    Kind.BIAS: _bias,
    Kind.STRUCTURED: _structured,
}
