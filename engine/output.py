"""Per-sequence output: sampled token ids in, text deltas and a finish reason out.

The one object the engine loop calls per sampled token; it joins the incremental
detokenizer and the stop checker so that the loop stays three lines:

    text, finish_reason = tracker.on_token(token_id)
    send(text)  # may be "": held back (incomplete character, possible stop string)
    if finish_reason is not None: finish(sequence, finish_reason)
"""

from __future__ import annotations

from collections.abc import Sequence

from engine.detokenizer import IncrementalDetokenizer
from engine.sampling_params import SamplingParams
from engine.stop import StopChecker, StopResult
from engine.tokenizer import Tokenizer


class SequenceOutputTracker:
    """Text and stop state of one sequence; lives as long as the sequence, preemption included."""

    def __init__(
        self,
        tokenizer: Tokenizer,
        prompt_token_ids: Sequence[int],
        params: SamplingParams,
        max_tokens: int,
    ) -> None:
        # `max_tokens`: Sequence.max_tokens, already capped by the context length.
        self._detokenizer = IncrementalDetokenizer(
            tokenizer, prompt_token_ids, params.skip_special_tokens
        )
        self._stop_checker = StopChecker(params, tokenizer.eos_token_ids, max_tokens)

    @property
    def finish_reason(self) -> str | None:
        return self._stop_checker.finish_reason

    @property
    def num_output_tokens(self) -> int:
        return self._stop_checker.num_output_tokens

    def on_token(self, token_id: int) -> StopResult:
        """Take one sampled token; return the text to send now and the finish reason, if any."""
        text = self._detokenizer.add(token_id)
        if self._stop_checker.num_tokens_left == 1:
            # The last token: a character still incomplete will never be completed.
            text += self._detokenizer.flush()
        return self._stop_checker.check(token_id, text)

    def flush(self) -> str:
        """Text still held when the engine ends the sequence itself; "" after a finish here."""
        if self.finish_reason is not None:
            return ""
        return self._stop_checker.flush() + self._detokenizer.flush()
