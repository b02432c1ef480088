"""A sequence being generated: the one unit the scheduler, block manager and runner share.

A request with `n` choices becomes `n` sequences with the same `request_id` and
`index` 0..n-1. The idea that covers prefill, chunked prefill, decode, prefix caching
and preemption alike: `num_computed_tokens` (tokens whose KV is in the cache) catches
up with `num_tokens` (prompt + output so far).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from engine.sampling_params import SamplingParams


class SequenceStatus(enum.Enum):
    WAITING = "waiting"  # not admitted yet, or preempted (blocks freed; recompute)
    RUNNING = "running"  # holds KV blocks and is scheduled every step
    FINISHED_STOPPED = "stop"  # EOS, a stop token id or a stop string
    FINISHED_LENGTH = "length"  # max_tokens or the context length
    FINISHED_ABORTED = "abort"  # cancelled by the client or failed

    @property
    def finished(self) -> bool:
        return self in _FINISHED

    @property
    def finish_reason(self) -> str | None:
        """The OpenAI finish_reason ("stop" / "length" / "abort"), None while unfinished."""
        return self.value if self.finished else None


_FINISHED = {
    SequenceStatus.FINISHED_STOPPED,
    SequenceStatus.FINISHED_LENGTH,
    SequenceStatus.FINISHED_ABORTED,
}


@dataclass(eq=False)
class Sequence:
    seq_id: int  # unique in the engine
    request_id: int  # the engine's id of the request this sequence belongs to (EngineService)
    index: int  # choice index within the request, 0..n-1
    token_ids: list[int]  # prompt then output tokens; appended to, never rebuilt
    num_prompt_tokens: int
    params: SamplingParams
    max_tokens: int  # resolved: params.max_tokens capped by the context length
    arrival_time: float  # time.monotonic() at admission, for FCFS and TTFT
    status: SequenceStatus = SequenceStatus.WAITING
    num_computed_tokens: int = 0  # tokens whose KV is in the cache
    num_cached_tokens: int = 0  # of the prompt, found in the prefix cache at admission
    # KV blocks, in position order; None = freed, behind every layer's sliding window
    block_ids: list[int | None] = field(default_factory=list)
    num_preemptions: int = 0
    first_token_time: float | None = None  # time.monotonic() of the first output token

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def num_output_tokens(self) -> int:
        return len(self.token_ids) - self.num_prompt_tokens

    @property
    def prompt_token_ids(self) -> list[int]:
        return self.token_ids[: self.num_prompt_tokens]

    @property
    def output_token_ids(self) -> list[int]:
        return self.token_ids[self.num_prompt_tokens :]

    def append_token(self, token_id: int) -> None:
        self.token_ids.append(token_id)
