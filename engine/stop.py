"""When a sequence stops, and which text may be sent before it does.

Stop strings may span token boundaries, and the stop text itself is never sent, so
the trailing characters that could still grow into a stop string are held back until
the next token settles them. Everything sent concatenates to the final text exactly.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple

from engine.sampling_params import SamplingParams


class StopResult(NamedTuple):
    """Immutable; unpacks as `text, finish_reason = checker.check(...)`."""

    text: str  # text to send now; "" when everything new is held back
    finish_reason: str | None  # "stop" (EOS, stop token id, stop string), "length", or None


class StopChecker:
    """Per-sequence stop decisions; `check` is called once per output token, in order."""

    def __init__(
        self,
        params: SamplingParams,
        eos_token_ids: Iterable[int],
        max_tokens: int,
    ) -> None:
        # `max_tokens`: resolved by the caller (params.max_tokens capped by the context).
        if max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {max_tokens}")
        self.max_tokens = max_tokens
        self._min_tokens = params.min_tokens
        eos_ids = () if params.ignore_eos else tuple(eos_token_ids)
        self._stop_token_ids = frozenset(eos_ids) | frozenset(params.stop_token_ids)
        self._stop_strings = params.stop
        # Every proper prefix of a stop string: a text ending in one may still stop.
        self._stop_prefixes = frozenset(
            stop[:length] for stop in params.stop for length in range(1, len(stop))
        )
        self._max_held_chars = max((len(stop) - 1 for stop in params.stop), default=0)
        self._held_text = ""  # received, not yet sent: may be the start of a stop string
        self.num_output_tokens = 0
        self.finish_reason: str | None = None

    @property
    def num_tokens_left(self) -> int:
        """Tokens that may still come; 1 means the next one is the last (length finish)."""
        return self.max_tokens - self.num_output_tokens

    def check(self, token_id: int, text: str) -> StopResult:
        """Take the next output token and its text; say what to send and whether to stop.

        A stop token's own text (EOS, stop_token_ids) is dropped, not sent.
        """
        if self.finish_reason is not None:
            raise RuntimeError("check() called after the sequence finished")
        self.num_output_tokens += 1
        may_stop = self.num_output_tokens >= self._min_tokens
        if may_stop and token_id in self._stop_token_ids:
            return self._finish("stop", self._take_held(len(self._held_text)))
        self._held_text += text
        if may_stop and self._stop_strings:
            match_start = self._find_stop_string()
            if match_start is not None:
                # Only the text before the stop string is sent; the rest is dropped.
                return self._finish("stop", self._take_held(match_start))
        if self.num_output_tokens >= self.max_tokens:
            return self._finish("length", self._take_held(len(self._held_text)))
        num_to_send = len(self._held_text) - self._num_chars_to_hold()
        return StopResult(self._take_held(num_to_send), None)

    def flush(self) -> str:
        """Held-back text, for a finish decided elsewhere (e.g. the engine ends the sequence)."""
        return self._take_held(len(self._held_text))

    def _find_stop_string(self) -> int | None:
        """Start of the earliest stop string in the held text (earliest wins), or None."""
        starts = [self._held_text.find(stop) for stop in self._stop_strings]
        found = [start for start in starts if start >= 0]
        return min(found) if found else None

    def _num_chars_to_hold(self) -> int:
        """Length of the longest tail of the held text that begins some stop string."""
        for length in range(min(self._max_held_chars, len(self._held_text)), 0, -1):
            if self._held_text[-length:] in self._stop_prefixes:
                return length
        return 0

    def _take_held(self, num_chars: int) -> str:
        """Remove and return the first `num_chars` held characters: the text to send."""
        text = self._held_text[:num_chars]
        self._held_text = self._held_text[num_chars:]
        return text

    def _finish(self, reason: str, text: str) -> StopResult:
        self.finish_reason = reason
        self._held_text = ""  # after a stop string: the stop text, never sent
        return StopResult(text, reason)
