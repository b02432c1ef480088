"""Incremental, UTF-8-safe detokenization: one text delta per sampled token.

Decoding a token alone is wrong in two ways: a character may be split over several
tokens (byte-fallback tokens like `<0xF0>`, byte-level BPE pieces), and SentencePiece
decoders drop the leading space ("▁") of the first token they see. So each step
decodes a small window of recent tokens twice, with and without the new ones, and
emits the difference:

    tokens:  ... | prefix_offset ....... read_offset ....... end |
    emitted text ends at read_offset; decode(window) - decode(window up to read_offset)

The window starts a few tokens back (`prefix_offset`), so the first new token is never
the first token decoded and keeps its leading space. While the decoded window ends in
U+FFFD, a character is incomplete and the text is held back. The window is short
because both offsets move forward every time text is emitted: the cost per token is
bounded, whatever the length of the output.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

# Prompt tokens kept as left context, so the first output token decodes in context.
PROMPT_CONTEXT_TOKENS = 6
# Tokens held back at most while the text ends in U+FFFD. Valid UTF-8 completes a
# character within a few tokens; a model emitting invalid bytes must not stall the stream.
MAX_PENDING_TOKENS = 16
REPLACEMENT_CHARACTER = "\ufffd"


class IncrementalDetokenizer:
    """Turns the output tokens of one sequence into text deltas, one `add` per token."""

    def __init__(
        self,
        tokenizer: Any,
        prompt_token_ids: Sequence[int],
        skip_special_tokens: bool = True,
    ) -> None:
        # `tokenizer`: a transformers tokenizer, or anything with `.hf` that is one
        # (engine.tokenizer.Tokenizer).
        self._hf = getattr(tokenizer, "hf", tokenizer)
        self._skip_special_tokens = skip_special_tokens
        # Only the tail of the prompt is kept: the window never reaches further back.
        self._token_ids: list[int] = list(prompt_token_ids[-PROMPT_CONTEXT_TOKENS:])
        # Window start; text from here to `_read_offset` has been emitted already.
        self._prefix_offset = 0
        # Tokens before this offset have been turned into emitted text.
        self._read_offset = len(self._token_ids)
        # decode(tokens[prefix_offset:read_offset]), cached while the offsets stand still.
        self._prefix_text = self._decode(self._token_ids)

    def add(self, token_id: int) -> str:
        """Append one token; return the new text, or "" while a character is incomplete."""
        self._token_ids.append(token_id)
        window_text = self._decode(self._token_ids[self._prefix_offset :])
        num_pending = len(self._token_ids) - self._read_offset
        if window_text.endswith(REPLACEMENT_CHARACTER) and num_pending < MAX_PENDING_TOKENS:
            return ""
        return self._advance(window_text)

    def flush(self) -> str:
        """Text still held back (an incomplete character) when the sequence ends."""
        if len(self._token_ids) == self._read_offset:
            return ""
        return self._advance(self._decode(self._token_ids[self._prefix_offset :]))

    def _advance(self, window_text: str) -> str:
        # Emitted text is cut by length: a decoder may rewrite the window's first
        # characters (a stripped leading space), but it does so in both decodes alike.
        delta = window_text[len(self._prefix_text) :]
        self._prefix_offset = self._read_offset
        self._read_offset = len(self._token_ids)
        self._prefix_text = self._decode(self._token_ids[self._prefix_offset : self._read_offset])
        # Keep the list as short as the window: memory stays flat on long outputs.
        del self._token_ids[: self._prefix_offset]
        self._read_offset -= self._prefix_offset
        self._prefix_offset = 0
        return delta

    def _decode(self, token_ids: list[int]) -> str:
        if not token_ids:
            return ""
        return self._hf.decode(token_ids, skip_special_tokens=self._skip_special_tokens)
