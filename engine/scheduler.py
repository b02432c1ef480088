"""Continuous-batching scheduler: which tokens of which sequences are computed each step.

Pure Python (no torch). The one idea: each sequence's `num_computed_tokens` catches up
with its `num_tokens`. A step gives a sequence a chunk of positions [start, end); prefill,
chunked prefill, decode, prefix hits (start > 0 at admission) and recompute after
preemption are all that. The engine's step, and the only order the calls may come in:

    output = scheduler.schedule()   # sets seq.num_computed_tokens = chunk.end (optimistic)
    runner.run(output.chunks)       # writes every chunk's KV; logits where chunk.sample
    scheduler.step_done(output)     # KV written: cache full blocks, admit n > 1 siblings
    append sampled tokens; scheduler.finish(seq, status) on a stop; scheduler.abort(...)

`finish` / `abort` belong between `step_done` and the next `schedule` (if the runner
fails: abort the affected requests, then `step_done(output)` to close the step).

Per step: running decodes, then running chunked prefills (each oldest first), then
waiting sequences FCFS without overtaking, while the token budget, max_num_seqs and free
blocks allow (none in a step that preempted). A running sequence that cannot grow
preempts the newest running ones not yet scheduled this step; when none are left, a
prefill chunk shrinks to what fits, else the sequence preempts itself. Preemption is by
recompute: blocks freed (full computed ones stay in the prefix cache), WAITING,
num_computed_tokens 0, front of the queue; its prompt + outputs are recomputed like a
prompt, and `sample` is set only on the chunk reaching num_tokens, so no token is sampled
twice. Progress: admission rejects what alone would not fit the whole cache, and a
sequence only yields to older ones or to decodes scheduled ahead of it (which end within
max_tokens), so the oldest sequence always completes.

n > 1: the siblings of a request (same request_id) are held back until the first one's
prompt KV is in the prefix cache, then admitted to share those blocks (ref counts, no
copies), recomputing at most the last partial block. Without prefix caching they are
scheduled like any other sequences.
"""

from __future__ import annotations

import bisect
from collections import deque
from dataclasses import dataclass, field

from engine.block_manager import BlockManager
from engine.config import CacheConfig, ConfigError, SchedulerConfig
from engine.request import Sequence, SequenceStatus


class RequestTooLargeError(ValueError):
    """A request that could never run: over the context length or the whole KV cache."""


@dataclass(frozen=True)
class ScheduledChunk:
    seq: Sequence  # the sequence this chunk computes
    start: int  # seq.num_computed_tokens before this step: the first position computed
    num_new_tokens: int  # positions start .. start + num_new_tokens - 1 are computed
    # True when the chunk reaches the last token: the runner returns logits for the last
    # position and a token is sampled. Fixed at construction (seq.num_tokens grows when
    # the sampled token is appended).
    sample: bool = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "sample", self.end == self.seq.num_tokens)

    @property
    def end(self) -> int:
        """One past the last position computed."""
        return self.start + self.num_new_tokens

    @property
    def token_ids(self) -> list[int]:
        """The input tokens of this chunk: seq.token_ids[start:end]."""
        return self.seq.token_ids[self.start : self.end]


@dataclass(frozen=True)
class SchedulerOutput:
    chunks: list[ScheduledChunk]  # what to compute this step, in the order the runner uses
    preempted: list[Sequence]  # sequences preempted this step (now WAITING, no blocks)
    num_batched_tokens: int  # sum of chunk.num_new_tokens, <= max_num_batched_tokens

    @property
    def is_empty(self) -> bool:
        return not self.chunks


def _arrival(seq: Sequence) -> tuple[float, int]:
    return (seq.arrival_time, seq.seq_id)


class Scheduler:
    def __init__(self, scheduler_config: SchedulerConfig, cache_config: CacheConfig) -> None:
        if cache_config.num_blocks is None:
            raise ConfigError(
                "the scheduler needs CacheConfig.num_blocks; set it with dataclasses.replace "
                "once the model runner has sized the KV cache"
            )
        self.config = scheduler_config
        self.block_size = cache_config.block_size
        self.enable_prefix_caching = cache_config.enable_prefix_caching
        self.sliding_window = cache_config.sliding_window
        self.block_manager = BlockManager(
            cache_config.num_blocks, cache_config.block_size, cache_config.enable_prefix_caching
        )
        self.waiting: deque[Sequence] = deque()  # FCFS; preempted sequences go to the front
        self.running: list[Sequence] = []  # oldest first (by _arrival); hold blocks
        self._requests: dict[int, list[Sequence]] = {}  # unfinished sequences per request id
        # request id -> its first sequence, until that one's prompt KV is in the prefix cache.
        self._prompt_leaders: dict[int, Sequence] = {}
        self._held: dict[int, list[Sequence]] = {}  # siblings waiting for their leader's prompt
        self._in_flight: SchedulerOutput | None = None  # scheduled, step_done not called yet
        self.num_preemptions = 0  # total since start

    # ----- admission -----

    def check_fits(self, num_prompt_tokens: int, max_tokens: int) -> None:
        """Raise RequestTooLargeError if such a request could never run (ValueError if empty)."""
        context_length = self.config.max_model_len
        if num_prompt_tokens < 1:
            raise ValueError("the prompt is empty: at least one token is needed")
        if num_prompt_tokens >= context_length:
            raise RequestTooLargeError(
                f"prompt ({num_prompt_tokens} tokens) leaves no room to generate in the context "
                f"length {context_length}: at most {context_length - 1} prompt tokens"
            )
        if max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {max_tokens}")
        total = num_prompt_tokens + max_tokens
        head = f"prompt ({num_prompt_tokens} tokens) + max_tokens ({max_tokens}) = {total}"
        if total > context_length:
            raise RequestTooLargeError(f"{head} is over the context length {context_length}")
        num_blocks = self.block_manager.num_blocks
        num_blocks_needed = -(-total // self.block_size)
        if self.sliding_window is not None:
            # At most: a chunk, the window behind its first token, a partial block each side.
            chunk = min(total, self.config.max_num_batched_tokens)
            held = -(-(chunk + self.sliding_window - 1) // self.block_size) + 1
            num_blocks_needed = min(num_blocks_needed, held)
        if num_blocks_needed > num_blocks:
            raise RequestTooLargeError(
                f"{head} tokens need {num_blocks_needed} KV blocks of {self.block_size} tokens, "
                f"but the whole KV cache has {num_blocks} blocks ({num_blocks * self.block_size} "
                "tokens); lower max_tokens or give the cache more memory"
            )

    def add(self, seq: Sequence) -> None:
        """Queue a new sequence (FCFS). The n sequences of a request are added together."""
        self.check_fits(seq.num_prompt_tokens, seq.max_tokens)
        if seq.status is not SequenceStatus.WAITING or seq.block_ids or seq.num_computed_tokens:
            raise ValueError(f"sequence {seq.seq_id} is not new")
        request_id = seq.request_id
        siblings = self._requests.setdefault(request_id, [])
        if request_id in self._prompt_leaders:
            self._held.setdefault(request_id, []).append(seq)
        else:
            self.waiting.append(seq)
            # Holding siblings only pays when the prompt has a full block to share.
            if (
                not siblings
                and self.enable_prefix_caching
                and seq.num_prompt_tokens > self.block_size
            ):
                self._prompt_leaders[request_id] = seq
        siblings.append(seq)

    # ----- one step -----

    def schedule(self) -> SchedulerOutput:
        """Choose this step's chunks; sets seq.num_computed_tokens = chunk.end (optimistic)."""
        if self._in_flight is not None:
            raise RuntimeError("call step_done(output) for the previous step before schedule()")
        budget = self.config.max_num_batched_tokens
        chunks: list[ScheduledChunk] = []
        preempted: list[Sequence] = []
        scheduled: set[int] = set()
        for seq in self.running:
            if seq.num_computed_tokens >= seq.num_tokens:
                raise RuntimeError(
                    f"sequence {seq.seq_id} sampled a token but none was appended: append it "
                    "or finish the sequence before the next schedule()"
                )
        decodes = [seq for seq in self.running if seq.num_tokens - seq.num_computed_tokens == 1]
        prefills = [seq for seq in self.running if seq.num_tokens - seq.num_computed_tokens > 1]
        for seq in decodes + prefills:
            if budget == 0:
                break
            if seq.status is not SequenceStatus.RUNNING:
                continue  # preempted earlier in this step for an older sequence
            if self.sliding_window is not None:  # blocks no layer will read again
                self.block_manager.free_out_of_window(seq, self.sliding_window)
            wanted = min(seq.num_tokens - seq.num_computed_tokens, budget)
            num_new_tokens = self._reserve_slots(seq, wanted, scheduled, preempted)
            if num_new_tokens:
                chunks.append(self._advance(seq, num_new_tokens))
                scheduled.add(seq.seq_id)
                budget -= num_new_tokens
        # After a preemption newcomers would take the blocks back (or readmit the victim).
        if not preempted:
            budget = self._admit_waiting(budget, chunks)
        output = SchedulerOutput(chunks, preempted, self.config.max_num_batched_tokens - budget)
        self._in_flight = output if chunks else None
        return output

    def step_done(self, output: SchedulerOutput) -> None:
        """The runner has written the KV of `output`: cache newly full blocks, and admit
        the siblings of requests whose first sequence finished its prompt."""
        if output.chunks and output is not self._in_flight:
            raise RuntimeError("step_done got an output that is not the last schedule()'s")
        self._in_flight = None
        for chunk in output.chunks:
            seq = chunk.seq
            if seq.status is not SequenceStatus.RUNNING:
                continue  # finished or aborted since
            self.block_manager.cache_full_blocks(seq)
            leader = self._prompt_leaders.get(seq.request_id)
            if leader is seq and seq.num_computed_tokens >= seq.num_prompt_tokens:
                self._release_siblings(seq.request_id)

    # ----- leaving -----

    def finish(self, seq: Sequence, status: SequenceStatus) -> None:
        """End seq with a finished status wherever it is; frees its blocks. Idempotent."""
        if not status.finished:
            raise ValueError(f"finish needs a finished status, got {status}")
        if seq.status.finished:
            return
        request_id = seq.request_id
        if self._prompt_leaders.get(request_id) is seq:
            self._release_siblings(request_id)  # nobody else will cache the prompt for them
        held = self._held.get(request_id, [])
        if seq in held:
            held.remove(seq)
        elif seq.status is SequenceStatus.RUNNING:
            self.running.remove(seq)
        elif seq in self.waiting:
            self.waiting.remove(seq)
        if self._in_flight is None:  # KV up to num_computed_tokens is really written
            self.block_manager.cache_full_blocks(seq)
        self.block_manager.free(seq)
        seq.status = status
        siblings = self._requests.get(request_id, [])
        if seq in siblings:
            siblings.remove(seq)
        if not siblings:
            self._requests.pop(request_id, None)
            self._held.pop(request_id, None)

    def abort(self, request_id: int) -> list[Sequence]:
        """Finish every unfinished sequence of the request as FINISHED_ABORTED; [] if unknown."""
        sequences = list(self._requests.get(request_id, ()))
        for seq in sequences:
            self.finish(seq, SequenceStatus.FINISHED_ABORTED)
        return sequences

    # ----- stats -----

    def has_unfinished(self) -> bool:
        return bool(self._requests)

    @property
    def num_running(self) -> int:
        return len(self.running)

    @property
    def num_waiting(self) -> int:
        """Queued sequences, held n > 1 siblings included."""
        return len(self.waiting) + sum(len(held) for held in self._held.values())

    @property
    def num_used_blocks(self) -> int:
        return self.block_manager.num_used_blocks

    @property
    def num_total_blocks(self) -> int:
        return self.block_manager.num_blocks

    @property
    def prefix_cache_queries(self) -> int:
        """Tokens looked up in the prefix cache at admission (resumes included)."""
        return self.block_manager.prefix_cache_queries

    @property
    def prefix_cache_hits(self) -> int:
        return self.block_manager.prefix_cache_hits

    # ----- helpers -----

    def _reserve_slots(
        self, seq: Sequence, wanted: int, scheduled: set[int], preempted: list[Sequence]
    ) -> int:
        """Get slots for up to `wanted` new tokens of a running seq; return how many it got
        (0 = seq itself was preempted). Preempts newer unscheduled sequences first, then
        shrinks a prefill chunk to what fits."""
        while not self.block_manager.append_slots(seq, wanted):
            victim = self._newest_unscheduled_after(seq, scheduled)
            if victim is None:
                # The rest is held by older or already scheduled sequences: shrink the
                # chunk to what fits, or step aside if nothing does.
                wanted = min(wanted, self.block_manager.num_appendable_tokens(seq))
                if wanted > 0:
                    continue
                victim = seq
            self._preempt(victim)
            preempted.append(victim)
            if victim is seq:
                return 0
        return wanted

    def _newest_unscheduled_after(self, seq: Sequence, scheduled: set[int]) -> Sequence | None:
        for candidate in reversed(self.running):
            if candidate is seq:
                return None  # only older ones are left: they have priority
            if candidate.seq_id not in scheduled:
                return candidate
        return None

    def _preempt(self, seq: Sequence) -> None:
        self.block_manager.cache_full_blocks(seq)  # keep computed blocks for the recompute
        self.block_manager.free(seq)
        self.running.remove(seq)
        seq.status = SequenceStatus.WAITING
        seq.num_computed_tokens = 0
        seq.num_preemptions += 1
        self.num_preemptions += 1
        self.waiting.appendleft(seq)

    def _admit_waiting(self, budget: int, chunks: list[ScheduledChunk]) -> int:
        """Admit waiting sequences FCFS; the head waits if blocks are short (no overtaking)."""
        while self.waiting and budget > 0 and len(self.running) < self.config.max_num_seqs:
            seq = self.waiting[0]
            hits = self.block_manager.get_computed_blocks(seq)
            num_cached_tokens = len(hits) * self.block_size
            # Hits wholly behind the first new token's window are not taken (not held).
            behind = 0
            if self.sliding_window is not None:
                behind = max(num_cached_tokens - self.sliding_window + 1, 0) // self.block_size
            computed_block_ids: list[int | None] = [None] * behind + list(hits[behind:])
            num_new_tokens = min(seq.num_tokens - num_cached_tokens, budget)
            if not self.block_manager.allocate(seq, computed_block_ids, num_new_tokens):
                break
            self.waiting.popleft()
            seq.status = SequenceStatus.RUNNING
            if seq.num_preemptions == 0:  # usage reports the prompt's first lookup only
                seq.num_cached_tokens = num_cached_tokens
            seq.num_computed_tokens = num_cached_tokens
            bisect.insort(self.running, seq, key=_arrival)
            chunks.append(self._advance(seq, num_new_tokens))
            budget -= num_new_tokens
        return budget

    def _advance(self, seq: Sequence, num_new_tokens: int) -> ScheduledChunk:
        chunk = ScheduledChunk(seq, seq.num_computed_tokens, num_new_tokens)
        seq.num_computed_tokens = chunk.end
        return chunk

    def _release_siblings(self, request_id: int) -> None:
        """Queue the held siblings at the front (they arrived with their leader)."""
        self._prompt_leaders.pop(request_id, None)
        for sibling in reversed(self._held.pop(request_id, [])):
            self.waiting.appendleft(sibling)
