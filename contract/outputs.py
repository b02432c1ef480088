"""What a model's response says about each choice, or about a tokenized prompt.

One response holds the k >= 1 choices that advanced since the previous response, each
at most once; `ChoiceDelta` is one of them. The engine builds these, the shim and the
null model encode them (`contract.tensors.encode_response`), the adapter and the
benchmark client decode them (`contract.tensors.decode_response`).
"""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass, field
from typing import Any


class FinishReason(str, enum.Enum):
    STOP = "stop"  # EOS, a stop token id or a stop string
    LENGTH = "length"  # max_tokens or the context length
    TOOL_CALLS = "tool_calls"  # the choice ended with tool calls
    ABORT = "abort"  # the engine gave up on the request (the adapter answers 503)


@dataclass(frozen=True)
class TopLogprob:
    token: str
    logprob: float


@dataclass
class TokenLogprobs:
    """Logprobs of the tokens of one delta; the lists are aligned, one entry per token."""

    token_ids: list[int] = field(default_factory=list)
    tokens: list[str] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    # The top alternatives of each token, highest first ([] when top_logprobs is 0).
    top_logprobs: list[list[TopLogprob]] = field(default_factory=list)

    def extend(self, other: TokenLogprobs) -> None:
        self.token_ids += other.token_ids
        self.tokens += other.tokens
        self.logprobs += other.logprobs
        self.top_logprobs += other.top_logprobs

    def to_json(self) -> str:
        return json.dumps(
            {
                "token_ids": self.token_ids,
                "tokens": self.tokens,
                "logprobs": self.logprobs,
                "top_logprobs": [
                    [{"token": t.token, "logprob": t.logprob} for t in alternatives]
                    for alternatives in self.top_logprobs
                ],
            },
            ensure_ascii=False,
        )

    @classmethod
    def from_json(cls, text: str) -> TokenLogprobs:
        """Raises ValueError (with what is wrong) on a malformed object."""
        try:
            data: dict[str, Any] = json.loads(text)
            tokens = [str(t) for t in data["tokens"]]
            top = data.get("top_logprobs") or [[] for _ in tokens]
            result = cls(
                token_ids=[int(t) for t in data.get("token_ids", [])],
                tokens=tokens,
                logprobs=[float(v) for v in data["logprobs"]],
                top_logprobs=[
                    [TopLogprob(str(item["token"]), float(item["logprob"])) for item in alts]
                    for alts in top
                ],
            )
        except (ValueError, KeyError, TypeError, AttributeError) as error:
            raise ValueError(f"bad logprobs JSON ({error!r}): {text[:200]}") from None
        if not len(result.tokens) == len(result.logprobs) == len(result.top_logprobs):
            raise ValueError(f"logprobs lists of different lengths: {text[:200]}")
        return result


@dataclass
class ChoiceDelta:
    """One choice's part of a response."""

    index: int  # choice index 0..n-1
    text: str  # new text since this choice's previous delta (the whole text when stream=false)
    # Tokens generated so far by the choice (cumulative, so the last value is the total);
    # None when a model does not say.
    num_output_tokens: int | None
    finish_reason: str | None = None  # a FinishReason value once finished; None while running
    logprobs: TokenLogprobs | None = None  # when logprobs were asked for


@dataclass
class Tokenization:
    """The answer to a `tokenize` request (`contract.tensors.Operation`)."""

    token_ids: list[int]  # the prompt as a generation of the same inputs would see it
    token_strs: list[str] | None  # each id's entry in the vocabulary, when asked for
    max_model_len: int  # the model's context length (prompt + output tokens)
