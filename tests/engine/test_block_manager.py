"""Block manager: ref counts, slots, prefix cache hits, LRU eviction, collisions."""

from __future__ import annotations

import pytest

import engine.block_manager as block_manager_module
from engine.block_manager import BlockManager
from engine.request import Sequence
from engine.sampling_params import SamplingParams

BLOCK_SIZE = 4


def make_seq(seq_id: int, token_ids: list[int]) -> Sequence:
    return Sequence(
        seq_id=seq_id,
        request_id=seq_id,
        index=0,
        token_ids=list(token_ids),
        num_prompt_tokens=len(token_ids),
        params=SamplingParams(),
        max_tokens=8,
        arrival_time=float(seq_id),
    )


def admit(manager: BlockManager, seq: Sequence) -> int:
    """Admit seq for its whole prompt, mark it computed and cache it; returns cached tokens."""
    computed = manager.get_computed_blocks(seq)
    num_cached_tokens = len(computed) * manager.block_size
    assert manager.allocate(seq, computed, seq.num_tokens - num_cached_tokens)
    seq.num_computed_tokens = seq.num_tokens
    manager.cache_full_blocks(seq)
    return num_cached_tokens


def test_allocate_append_and_free_keep_counts() -> None:
    manager = BlockManager(num_blocks=8, block_size=BLOCK_SIZE)
    seq = make_seq(0, list(range(10)))
    assert manager.allocate(seq, [], 10)
    assert len(seq.block_ids) == 3 and len(set(seq.block_ids)) == 3
    assert manager.num_used_blocks == 3 and manager.num_free_blocks == 5
    seq.num_computed_tokens = 10
    assert manager.append_slots(seq, 2)  # positions 10, 11 fit the third block
    assert len(seq.block_ids) == 3
    assert manager.append_slots(seq, 3)  # position 12 needs a fourth
    assert len(seq.block_ids) == 4
    assert manager.num_appendable_tokens(seq) == 4 * BLOCK_SIZE + 4 * BLOCK_SIZE - 10
    manager.free(seq)
    manager.free(seq)  # idempotent: block_ids were cleared
    assert seq.block_ids == [] and manager.num_used_blocks == 0


def test_failed_allocation_changes_nothing() -> None:
    manager = BlockManager(num_blocks=2, block_size=BLOCK_SIZE)
    seq = make_seq(0, list(range(12)))
    assert not manager.allocate(seq, [], 12)
    assert seq.block_ids == [] and manager.num_free_blocks == 2
    assert manager.allocate(seq, [], 8)
    seq.num_computed_tokens = 8
    assert not manager.append_slots(seq, 1)
    assert len(seq.block_ids) == 2 and manager.num_free_blocks == 0


def test_prefix_hit_shares_full_blocks_but_never_the_last_token() -> None:
    manager = BlockManager(num_blocks=16, block_size=BLOCK_SIZE)
    first = make_seq(0, list(range(12)))
    assert admit(manager, first) == 0
    assert manager.num_cached_blocks == 3
    same = make_seq(1, list(range(12)))  # block-aligned: its last block is recomputed
    assert admit(manager, same) == 8
    assert same.block_ids[:2] == first.block_ids[:2]
    assert same.block_ids[2] != first.block_ids[2]
    assert [manager.ref_count(block_id) for block_id in first.block_ids] == [2, 2, 1]
    longer = make_seq(2, list(range(13)))
    assert admit(manager, longer) == 12
    assert manager.ref_count(first.block_ids[0]) == 3
    other = make_seq(3, [99, *range(1, 12)])  # first block differs: the chain breaks at once
    assert manager.get_computed_blocks(other) == []
    assert manager.prefix_cache_queries == 12 + 12 + 13
    assert manager.prefix_cache_hits == 8 + 12


def test_free_blocks_stay_cached_and_are_evicted_least_recently_freed_first() -> None:
    manager = BlockManager(num_blocks=4, block_size=BLOCK_SIZE)
    seq_x = make_seq(0, [1, 1, 1, 1, 9])
    seq_y = make_seq(1, [2, 2, 2, 2, 9])
    admit(manager, seq_x)
    admit(manager, seq_y)
    x_full, y_full = seq_x.block_ids[0], seq_y.block_ids[0]
    manager.free(seq_x)
    manager.free(seq_y)
    assert manager.num_used_blocks == 0 and manager.num_cached_blocks == 2
    # Plain blocks are taken first, then the cached block freed longest ago (x's).
    filler = make_seq(2, list(range(100, 109)))
    assert manager.allocate(filler, [], 9)
    assert x_full in filler.block_ids and y_full not in filler.block_ids
    assert manager.get_computed_blocks(make_seq(3, [1, 1, 1, 1, 9])) == []
    revived = make_seq(4, [2, 2, 2, 2, 9])
    assert manager.get_computed_blocks(revived) == [y_full]
    assert manager.allocate(revived, [y_full], 1) is False  # y_full + 1 fresh, 1 free only
    manager.free(filler)
    assert admit(manager, revived) == 4
    assert revived.block_ids[0] == y_full and manager.ref_count(y_full) == 1


def test_hash_collision_never_returns_other_tokens(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(block_manager_module, "hash_block", lambda parent, token_ids: b"same")
    manager = BlockManager(num_blocks=8, block_size=BLOCK_SIZE)
    admit(manager, make_seq(0, [1, 2, 3, 4, 5]))
    assert manager.get_computed_blocks(make_seq(1, [5, 6, 7, 8, 9])) == []
    assert len(manager.get_computed_blocks(make_seq(2, [1, 2, 3, 4, 5]))) == 1


def test_same_prefix_computed_twice_keeps_one_cached_copy() -> None:
    manager = BlockManager(num_blocks=8, block_size=BLOCK_SIZE)
    first, second = make_seq(0, list(range(6))), make_seq(1, list(range(6)))
    for seq in (first, second):  # both admitted before either is cached
        assert manager.allocate(seq, [], 6)
        seq.num_computed_tokens = 6
    manager.cache_full_blocks(first)
    manager.cache_full_blocks(second)
    assert manager.num_cached_blocks == 1
    assert manager.get_computed_blocks(make_seq(2, list(range(6)))) == first.block_ids[:1]
    manager.free(first)
    manager.free(second)
    assert manager.num_used_blocks == 0


def test_prefix_caching_disabled_never_hits() -> None:
    manager = BlockManager(num_blocks=8, block_size=BLOCK_SIZE, enable_prefix_caching=False)
    admit(manager, make_seq(0, list(range(9))))
    assert manager.num_cached_blocks == 0
    assert admit(manager, make_seq(1, list(range(9)))) == 0
    assert manager.prefix_cache_hits == 0
