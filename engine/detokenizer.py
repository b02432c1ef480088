"""Incremental, UTF-8-safe detokenization: one text delta per sampled token.

Decoding a token alone is wrong in two ways: a character may be split over several
tokens (byte-fallback tokens like `<0xF0>`, byte-level BPE pieces), and SentencePiece
decoders drop the leading space ("▁") of the first token they see. The tokenizers
library's `DecodeStream` handles both in Rust: it is seeded with the tail of the prompt
(so the first output token decodes in context and keeps its space) and returns text only
once the tokens so far end on a whole character.

What it leaves to us: a model that emits invalid bytes would hold text back forever, so
after `MAX_PENDING_TOKENS` without text, or at the end of the sequence (`flush`), the
held-back tokens are decoded as they are (U+FFFD for what is not UTF-8).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from tokenizers.decoders import DecodeStream

# Prompt tokens kept as left context, so the first output token decodes in context.
PROMPT_CONTEXT_TOKENS = 6
# Tokens held back at most while no whole character came. Valid UTF-8 completes a
# character within a few tokens; a model emitting invalid bytes must not stall the stream.
MAX_PENDING_TOKENS = 16


class IncrementalDetokenizer:
    """Turns the output tokens of one sequence into text deltas, one `add` per token."""

    def __init__(
        self,
        tokenizer: Any,
        prompt_token_ids: Sequence[int],
        skip_special_tokens: bool = True,
    ) -> None:
        # `tokenizer`: a transformers fast tokenizer, or anything with `.hf` that is one
        # (engine.tokenizer.Tokenizer); DecodeStream steps its Rust tokenizer.
        self._hf = getattr(tokenizer, "hf", tokenizer)
        self._backend = self._hf.backend_tokenizer
        self._skip_special_tokens = skip_special_tokens
        self._stream = self._new_stream(list(prompt_token_ids))
        # Tokens since the last text: what flush() decodes if no character completes.
        self._pending: list[int] = []

    def add(self, token_id: int) -> str:
        """Append one token; return the new text, or "" while a character is incomplete."""
        text = self._stream.step(self._backend, token_id)
        if text is not None:
            self._pending.clear()
            return text
        self._pending.append(token_id)
        return self.flush() if len(self._pending) >= MAX_PENDING_TOKENS else ""

    def flush(self) -> str:
        """Text still held back (an incomplete character), decoded as it is."""
        if not self._pending:
            return ""
        text = self._hf.decode(self._pending, skip_special_tokens=self._skip_special_tokens)
        self._stream = self._new_stream(self._pending)
        self._pending = []
        return text

    def _new_stream(self, context_ids: list[int]) -> DecodeStream:
        return DecodeStream(
            ids=context_ids[-PROMPT_CONTEXT_TOKENS:] or None,
            skip_special_tokens=self._skip_special_tokens,
        )
