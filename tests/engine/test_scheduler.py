"""Scheduler: a handful of blocks, assertions on what each step schedules."""

from __future__ import annotations

import re
from collections import Counter
from itertools import count

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.config import CacheConfig, ConfigError, SchedulerConfig
from engine.request import Sequence, SequenceStatus
from engine.sampling_params import SamplingParams
from engine.scheduler import RequestTooLargeError, Scheduler, SchedulerOutput

BLOCK_SIZE = 4


def make_scheduler(
    num_blocks: int = 16,
    max_num_batched_tokens: int = 64,
    max_num_seqs: int = 8,
    max_model_len: int = 64,
    enable_prefix_caching: bool = True,
    block_size: int = BLOCK_SIZE,
    sliding_window: int | None = None,
) -> Scheduler:
    return Scheduler(
        SchedulerConfig(max_num_seqs, max_num_batched_tokens, max_model_len),
        CacheConfig(
            block_size,
            num_blocks,
            enable_prefix_caching=enable_prefix_caching,
            sliding_window=sliding_window,
        ),
    )


_seq_ids = count()


def make_seq(
    prompt: list[int], max_tokens: int = 4, request_id: int | None = None, index: int = 0
) -> Sequence:
    seq_id = next(_seq_ids)
    return Sequence(
        seq_id=seq_id,
        request_id=seq_id if request_id is None else request_id,
        index=index,
        token_ids=list(prompt),
        num_prompt_tokens=len(prompt),
        params=SamplingParams(),
        max_tokens=max_tokens,
        arrival_time=float(seq_id),
    )


def step(scheduler: Scheduler) -> SchedulerOutput:
    """schedule, 'run', step_done, then append a token where sampled; finish at max_tokens."""
    output = scheduler.schedule()
    scheduler.step_done(output)
    for chunk in output.chunks:
        if chunk.sample:
            chunk.seq.append_token(1000 + chunk.seq.num_tokens)
            if chunk.seq.num_output_tokens >= chunk.seq.max_tokens:
                scheduler.finish(chunk.seq, SequenceStatus.FINISHED_LENGTH)
    return output


def spans(output: SchedulerOutput) -> list[tuple[int, int, int, bool]]:
    return [(c.seq.seq_id, c.start, c.num_new_tokens, c.sample) for c in output.chunks]


def test_prefill_then_decode() -> None:
    scheduler = make_scheduler()
    seq = make_seq(list(range(10)), max_tokens=2)
    scheduler.add(seq)
    output = step(scheduler)
    assert spans(output) == [(seq.seq_id, 0, 10, True)]
    assert output.num_batched_tokens == 10 and seq.status is SequenceStatus.RUNNING
    assert len(seq.block_ids) == 3
    assert spans(step(scheduler)) == [(seq.seq_id, 10, 1, True)]
    assert seq.status is SequenceStatus.FINISHED_LENGTH and seq.block_ids == []
    assert not scheduler.has_unfinished() and scheduler.num_used_blocks == 0


def test_chunked_prefill_follows_the_token_budget() -> None:
    scheduler = make_scheduler(max_num_batched_tokens=8)
    seq = make_seq(list(range(20)))
    scheduler.add(seq)
    assert spans(step(scheduler)) == [(seq.seq_id, 0, 8, False)]
    assert spans(step(scheduler)) == [(seq.seq_id, 8, 8, False)]
    assert spans(step(scheduler)) == [(seq.seq_id, 16, 4, True)]
    assert seq.num_output_tokens == 1


def test_decodes_and_a_prefill_chunk_share_a_step() -> None:
    scheduler = make_scheduler(max_num_batched_tokens=8)
    decoding = make_seq(list(range(4)))
    scheduler.add(decoding)
    step(scheduler)
    prefilling = make_seq(list(range(50, 70)))
    scheduler.add(prefilling)
    output = step(scheduler)
    assert spans(output) == [(decoding.seq_id, 4, 1, True), (prefilling.seq_id, 0, 7, False)]
    assert output.num_batched_tokens == 8


def test_max_num_seqs_limits_the_running_batch() -> None:
    scheduler = make_scheduler(max_num_seqs=2)
    seqs = [make_seq([i, i, i]) for i in range(3)]
    for seq in seqs:
        scheduler.add(seq)
    assert [c.seq for c in step(scheduler).chunks] == seqs[:2]
    assert scheduler.num_running == 2 and scheduler.num_waiting == 1
    scheduler.finish(seqs[0], SequenceStatus.FINISHED_STOPPED)
    assert [c.seq for c in step(scheduler).chunks] == [seqs[1], seqs[2]]


@pytest.mark.parametrize(
    ("num_blocks", "enable_prefix_caching", "resume_start"),
    [
        (4, True, 0),  # the older one preempts the newer; its cached blocks are evicted later
        (5, True, 4),  # the newer one preempts itself; its block 0 survives in the cache
        (5, False, 0),
    ],
)
def test_preemption_recomputes_without_resampling(
    num_blocks: int, enable_prefix_caching: bool, resume_start: int
) -> None:
    # Two sequences of 6 prompt tokens outgrow 4 or 5 blocks of 4 tokens at position 8.
    scheduler = make_scheduler(num_blocks, enable_prefix_caching=enable_prefix_caching)
    older, newer = make_seq(list(range(6)), max_tokens=10), make_seq(list(range(6, 12)), 10)
    scheduler.add(older)
    scheduler.add(newer)
    outputs = [step(scheduler) for _ in range(4)]
    assert outputs[3].preempted == [newer]
    assert spans(outputs[3]) == [(older.seq_id, 8, 1, True)]
    assert newer.status is SequenceStatus.WAITING and newer.num_preemptions == 1
    assert newer.block_ids == [] and newer.num_computed_tokens == 0
    assert scheduler.waiting[0] is newer and scheduler.num_preemptions == 1
    tokens_at_preemption = list(newer.token_ids)  # 6 prompt + 3 outputs, 8 computed
    resumed = []
    while newer.status is not SequenceStatus.FINISHED_LENGTH:
        resumed += [c for c in step(scheduler).chunks if c.seq is newer]
    first = resumed[0]
    assert first.start == resume_start
    assert first.end == len(tokens_at_preemption) and first.sample
    assert newer.token_ids[:9] == tokens_at_preemption and newer.num_output_tokens == 10
    assert all(c.num_new_tokens == 1 for c in resumed[1:])
    assert older.status is SequenceStatus.FINISHED_LENGTH and scheduler.num_used_blocks == 0


def test_an_older_prefill_shrinks_rather_than_preempt_a_scheduled_decode() -> None:
    scheduler = make_scheduler(num_blocks=5, max_num_batched_tokens=16)
    decoding = make_seq([1, 2, 3], max_tokens=10)
    older = make_seq(list(range(18)), max_tokens=2)  # 20 tokens: the whole cache
    older.arrival_time = decoding.arrival_time - 1.0  # e.g. resumed after a preemption
    scheduler.add(decoding)
    scheduler.add(older)
    assert spans(step(scheduler)) == [(decoding.seq_id, 0, 3, True), (older.seq_id, 0, 13, False)]
    output = step(scheduler)  # no free block: the prefill gets what its last block holds
    assert spans(output) == [(decoding.seq_id, 3, 1, True), (older.seq_id, 13, 3, False)]
    assert output.preempted == []
    output = step(scheduler)  # the newer decode needs a block: it yields to the older one
    assert output.preempted == [decoding]
    assert spans(output) == [(older.seq_id, 16, 2, True)]


def test_finish_during_a_step_caches_nothing() -> None:
    scheduler = make_scheduler()
    seq = make_seq(list(range(9)))
    scheduler.add(seq)
    output = scheduler.schedule()
    scheduler.finish(seq, SequenceStatus.FINISHED_ABORTED)  # its KV may never be written
    scheduler.step_done(output)
    assert scheduler.block_manager.num_cached_blocks == 0
    assert scheduler.num_used_blocks == 0


def test_prefix_hit_starts_the_first_chunk_after_the_cached_tokens() -> None:
    scheduler = make_scheduler()
    first = make_seq(list(range(20)))
    scheduler.add(first)
    step(scheduler)
    second = make_seq(list(range(20)))
    scheduler.add(second)
    output = step(scheduler)
    assert spans(output)[1] == (second.seq_id, 16, 4, True)
    assert second.num_cached_tokens == 16 and second.block_ids[:4] == first.block_ids[:4]
    assert all(scheduler.block_manager.ref_count(b) == 2 for b in first.block_ids[:4])
    assert (scheduler.prefix_cache_queries, scheduler.prefix_cache_hits) == (40, 16)


def test_siblings_wait_for_the_first_prompt_then_share_its_blocks() -> None:
    scheduler = make_scheduler()
    siblings = [make_seq(list(range(10)), request_id=1003, index=i) for i in range(3)]
    for seq in siblings:
        scheduler.add(seq)
    leader = siblings[0]
    assert spans(step(scheduler)) == [(leader.seq_id, 0, 10, True)]
    assert scheduler.num_waiting == 2
    output = step(scheduler)
    assert spans(output) == [
        (leader.seq_id, 10, 1, True),
        (siblings[1].seq_id, 8, 2, True),
        (siblings[2].seq_id, 8, 2, True),
    ]
    for seq in siblings[1:]:
        assert seq.block_ids[:2] == leader.block_ids[:2]
    assert [scheduler.block_manager.ref_count(b) for b in leader.block_ids[:2]] == [3, 3]


def test_siblings_without_prefix_caching_are_scheduled_at_once() -> None:
    scheduler = make_scheduler(enable_prefix_caching=False)
    siblings = [make_seq(list(range(10)), request_id=1002, index=i) for i in range(2)]
    for seq in siblings:
        scheduler.add(seq)
    assert [c.start for c in step(scheduler).chunks] == [0, 0]


def test_requests_that_can_never_fit_are_rejected_with_the_numbers() -> None:
    scheduler = make_scheduler(num_blocks=8, max_model_len=64)  # cache: 32 tokens
    message = "prompt (60 tokens) + max_tokens (10) = 70 is over the context length 64"
    with pytest.raises(RequestTooLargeError, match=re.escape(message)):
        scheduler.check_fits(60, 10)
    message = "= 40 tokens need 10 KV blocks of 4 tokens, but the whole KV cache has 8 blocks"
    with pytest.raises(RequestTooLargeError, match=re.escape(message)):
        scheduler.add(make_seq(list(range(20)), max_tokens=20))
    with pytest.raises(RequestTooLargeError, match=r"prompt \(64 tokens\) leaves no room"):
        scheduler.check_fits(64, 1)
    with pytest.raises(ValueError, match="empty"):
        scheduler.check_fits(0, 1)
    scheduler.check_fits(16, 16)  # exactly the whole cache
    assert not scheduler.has_unfinished()


def test_abort_anywhere_frees_everything() -> None:
    scheduler = make_scheduler(max_num_batched_tokens=8, max_num_seqs=2)
    running, mid_prefill, waiting = make_seq([1, 2]), make_seq(list(range(30))), make_seq([3])
    held = [make_seq(list(range(40, 50)), request_id=1002, index=i) for i in range(2)]
    for seq in (running, mid_prefill, waiting, *held):
        scheduler.add(seq)
    step(scheduler)
    assert running.num_output_tokens == 1 and 0 < mid_prefill.num_computed_tokens < 30
    assert scheduler.abort(99999) == []
    for seq in (running, mid_prefill, waiting):
        assert scheduler.abort(seq.request_id) == [seq]
        assert seq.status is SequenceStatus.FINISHED_ABORTED and seq.block_ids == []
    assert scheduler.abort(1002) == held
    assert scheduler.abort(1002) == []
    assert not scheduler.has_unfinished() and scheduler.num_used_blocks == 0
    assert step(scheduler).is_empty


def test_a_step_must_be_closed_before_the_next() -> None:
    scheduler = make_scheduler()
    scheduler.add(make_seq([1, 2, 3]))
    output = scheduler.schedule()
    with pytest.raises(RuntimeError, match="step_done"):
        scheduler.schedule()
    scheduler.step_done(output)
    with pytest.raises(RuntimeError, match="appended"):
        scheduler.schedule()  # the sampled token was never appended


def test_num_blocks_must_be_known() -> None:
    with pytest.raises(ConfigError, match="num_blocks"):
        Scheduler(SchedulerConfig(), CacheConfig())


# ----- property: random arrivals, aborts, stops and steps never leak a block -----

PREFIXES = [[(k * 7 + i // 3) % 5 for i in range(40)] for k in range(3)]
ADD = st.tuples(
    st.just("add"), st.integers(0, 2), st.integers(1, 24), st.integers(1, 12), st.integers(1, 3)
)
OTHER = st.tuples(st.sampled_from(["step"] * 6 + ["abort", "stop"]), st.integers(0, 99))


def test_blocks_behind_every_layers_window_are_freed_as_the_sequence_runs() -> None:
    scheduler = make_scheduler(
        num_blocks=6, max_num_batched_tokens=12, max_model_len=64, sliding_window=6
    )
    seq = make_seq(list(range(10)), max_tokens=30)  # 40 tokens would need 10 blocks
    scheduler.add(seq)
    step(scheduler)  # the whole prompt: positions 0-9 in blocks 0-2
    assert None not in seq.block_ids
    for _ in range(28):
        start = seq.num_computed_tokens
        step(scheduler)
        # The step's query sat at `start` and read keys > start - 6: the blocks before
        # those were freed when it was scheduled.
        first_needed = max(start - 5, 0) // BLOCK_SIZE
        assert seq.block_ids[:first_needed] == [None] * first_needed
        assert all(b is not None for b in seq.block_ids[first_needed:])
        assert scheduler.num_used_blocks <= 3
    step(scheduler)
    assert seq.num_output_tokens == 30 and not scheduler.has_unfinished()
    assert scheduler.num_used_blocks == 0


def check_invariants(scheduler: Scheduler, live: list[Sequence]) -> None:
    manager = scheduler.block_manager
    held = {seq.seq_id: [b for b in seq.block_ids if b is not None] for seq in live}
    holders = Counter(block_id for blocks in held.values() for block_id in blocks)
    for block_id in range(manager.num_blocks):
        assert manager.ref_count(block_id) == holders[block_id]
    assert manager.num_free_blocks + manager.num_used_blocks == manager.num_blocks
    assert manager.num_used_blocks == len(holders)
    for seq in live:
        assert len(set(held[seq.seq_id])) == len(held[seq.seq_id])
        assert len(seq.block_ids) * manager.block_size >= seq.num_computed_tokens
        # Freed blocks are a leading run, all behind the sliding window.
        freed = seq.block_ids.index(held[seq.seq_id][0]) if held[seq.seq_id] else len(seq.block_ids)
        assert all(b is None for b in seq.block_ids[:freed])
        if freed:
            window = scheduler.sliding_window
            assert window is not None
            assert freed * manager.block_size <= seq.num_computed_tokens - window + 1
        assert seq.status is SequenceStatus.RUNNING or not seq.block_ids
    assert scheduler.num_running <= scheduler.config.max_num_seqs


def run_and_check(scheduler: Scheduler, kv: dict[tuple[int, int], tuple[int, ...]]) -> None:
    """One step with a fake runner whose 'KV' at a position is the whole prefix up to it:
    reading a cached or shared slot must find the prefix of the sequence reading it."""
    block_size = scheduler.block_size
    output = scheduler.schedule()
    assert output.num_batched_tokens == sum(c.num_new_tokens for c in output.chunks)
    assert output.num_batched_tokens <= scheduler.config.max_num_batched_tokens
    assert len({c.seq.seq_id for c in output.chunks}) == len(output.chunks)
    for seq in output.preempted:
        assert seq.status is SequenceStatus.WAITING and seq.num_computed_tokens == 0
    for chunk in output.chunks:
        seq = chunk.seq
        assert chunk.num_new_tokens >= 1 and seq.status is SequenceStatus.RUNNING
        assert chunk.end == seq.num_computed_tokens <= seq.num_tokens
        slot = [(seq.block_ids[p // block_size], p % block_size) for p in range(chunk.end)]
        # Keys the chunk's queries read: all before it, or those its first query's window holds.
        first_read = 0 if scheduler.sliding_window is None else chunk.start - scheduler.sliding_window + 1
        for position in range(max(first_read, 0), chunk.start):
            assert kv[slot[position]] == tuple(seq.token_ids[: position + 1])
        for position in range(chunk.start, chunk.end):
            assert scheduler.block_manager.ref_count(slot[position][0]) == 1  # never shared
            kv[slot[position]] = tuple(seq.token_ids[: position + 1])
    scheduler.step_done(output)
    for chunk in output.chunks:
        if chunk.sample:
            chunk.seq.append_token(chunk.seq.num_tokens % 3)  # repetitive: more shared blocks
            if chunk.seq.num_output_tokens >= chunk.seq.max_tokens:
                scheduler.finish(chunk.seq, SequenceStatus.FINISHED_LENGTH)


@settings(max_examples=200, deadline=None)
@given(
    block_size=st.sampled_from([1, 2, 4]),
    num_blocks=st.integers(4, 24),
    max_num_batched_tokens=st.integers(1, 32),
    max_num_seqs=st.integers(1, 6),
    enable_prefix_caching=st.booleans(),
    sliding_window=st.sampled_from([None, None, 1, 3, 6]),
    operations=st.lists(st.one_of(ADD, OTHER, OTHER), min_size=10, max_size=80),
)
def test_random_traffic_never_leaks_or_double_frees(
    block_size: int,
    num_blocks: int,
    max_num_batched_tokens: int,
    max_num_seqs: int,
    enable_prefix_caching: bool,
    sliding_window: int | None,
    operations: list[tuple],
) -> None:
    scheduler = make_scheduler(
        num_blocks,
        max_num_batched_tokens,
        max_num_seqs,
        40,
        enable_prefix_caching,
        block_size,
        sliding_window,
    )
    kv: dict[tuple[int, int], tuple[int, ...]] = {}
    sequences: list[Sequence] = []
    for operation in operations:
        if operation[0] == "add":
            _, prefix, num_prompt_tokens, max_tokens, n = operation
            request_id = f"req{len(sequences)}"
            batch = [
                make_seq(PREFIXES[prefix][:num_prompt_tokens], max_tokens, request_id, i)
                for i in range(n)
            ]
            try:
                scheduler.check_fits(num_prompt_tokens, max_tokens)
            except RequestTooLargeError:
                assert num_prompt_tokens + max_tokens > min(40, num_blocks * block_size)
                continue
            for seq in batch:
                scheduler.add(seq)
            sequences += batch
        elif operation[0] == "step":
            run_and_check(scheduler, kv)
        elif operation[0] == "abort" and sequences:
            scheduler.abort(sequences[operation[1] % len(sequences)].request_id)
        elif operation[0] == "stop" and scheduler.running:
            seq = scheduler.running[operation[1] % len(scheduler.running)]
            scheduler.finish(seq, SequenceStatus.FINISHED_STOPPED)
        check_invariants(scheduler, [s for s in sequences if not s.status.finished])
    for _ in range(2000):  # drain: everything admitted must finish (no deadlock/livelock)
        if not scheduler.has_unfinished():
            break
        run_and_check(scheduler, kv)
        check_invariants(scheduler, [s for s in sequences if not s.status.finished])
    assert not scheduler.has_unfinished()
    assert scheduler.num_used_blocks == 0
    assert all(s.status.finished and s.block_ids == [] for s in sequences)
