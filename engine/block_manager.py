"""Paged KV cache bookkeeping: fixed-size blocks, reference counts, prefix caching.

Pure Python (no torch): the model runner owns the KV tensors, this module only decides
which block ids a sequence's positions live in. Position `p` of a sequence is slot
`p % block_size` of block `seq.block_ids[p // block_size]`.

Prefix caching: a block that is full and whose KV is computed is registered under a
chained hash, `hash_block(parent_hash, token_ids)`, which identifies the whole prefix up
to the end of the block. A new sequence shares (ref count + 1, no copy) the longest run
of its leading full blocks found in the cache. Blocks whose ref count drops to 0 stay
cached ("free but cached") until a fresh block is needed; then the least recently
freed one is evicted. Shared blocks are read-only: a sequence only writes positions at
or after its cached prefix, which lie in blocks it got fresh.

Collisions: the chain hash is SHA-256 (Python's `hash()` of ints is not randomized, so
colliding prompts could be built on purpose); on top of that every hit compares the
block's token ids, so a hit never returns KV computed for other tokens.

Sliding windows: when every layer of the model has one (`CacheConfig.sliding_window`,
the widest), a query at position p reads no key at or before p - window. Before each
step, `free_out_of_window` releases a running sequence's leading blocks that lie wholly
behind the window of its next query (and so of every later one): their entries in
`seq.block_ids` become None, the blocks go back to the free list like those of a
finished sequence (cached ones stay cached and evictable). The attention metadata points
those table entries at block 0, which is never read (the window masks it). A model with
a global layer frees nothing: that layer reads the whole context.

Invariants (checked by the tests): the sum of ref counts equals the number of block ids
(not None) of live sequences; a block is in the free list iff its ref count is 0;
`num_free_blocks + num_used_blocks == num_blocks`.
"""

from __future__ import annotations

import hashlib
from array import array
from collections import OrderedDict
from dataclasses import dataclass

from engine.request import Sequence


def hash_block(parent_hash: bytes | None, token_ids: tuple[int, ...]) -> bytes:
    """Chain hash of a full block: SHA-256 over the parent block's hash and the tokens."""
    digest = hashlib.sha256(parent_hash or b"")
    digest.update(array("q", token_ids).tobytes())
    return digest.digest()


@dataclass
class _Block:
    block_id: int
    ref_count: int = 0  # sequences holding the block; 0 = in the free list
    # Chain hash while the block is in the prefix cache (full, KV computed); None = plain.
    block_hash: bytes | None = None
    token_ids: tuple[int, ...] = ()  # the block's tokens while cached: compared on every hit


class BlockManager:
    """Owns the block ids of every sequence; the scheduler is its only caller.

    Per sequence: `get_computed_blocks` + `allocate` at admission, `append_slots` before
    each later step, `cache_full_blocks` after a step has computed KV, `free` when it
    finishes or is preempted.
    """

    def __init__(
        self, num_blocks: int, block_size: int, enable_prefix_caching: bool = True
    ) -> None:
        if num_blocks < 1 or block_size < 1:
            raise ValueError(
                f"need num_blocks >= 1 and block_size >= 1, got {num_blocks}, {block_size}"
            )
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.enable_prefix_caching = enable_prefix_caching
        self._blocks = [_Block(block_id) for block_id in range(num_blocks)]
        # Free blocks in eviction order (front first): plain blocks go to the front,
        # cached ones to the back, so cached KV is evicted last and least recently freed first.
        self._free: OrderedDict[int, None] = OrderedDict.fromkeys(range(num_blocks))
        self._cached: dict[bytes, int] = {}  # chain hash -> block id
        # seq_id -> chain hashes of the sequence's leading full blocks (content only; memo).
        self._seq_hashes: dict[int, list[bytes]] = {}
        # seq_id -> leading blocks already offered to the cache by cache_full_blocks.
        self._seq_num_registered: dict[int, int] = {}
        self.prefix_cache_queries = 0  # tokens looked up at admission (all admissions)
        self.prefix_cache_hits = 0  # of those, found in the cache

    @property
    def num_free_blocks(self) -> int:
        """Blocks a sequence can get now: unused ones plus free-but-cached (evictable) ones."""
        return len(self._free)

    @property
    def num_used_blocks(self) -> int:
        return self.num_blocks - len(self._free)

    @property
    def num_cached_blocks(self) -> int:
        return len(self._cached)

    def ref_count(self, block_id: int) -> int:
        return self._blocks[block_id].ref_count

    def get_computed_blocks(self, seq: Sequence) -> list[int]:
        """Block ids of the longest run of seq's leading full blocks found in the cache.

        Never includes the block holding the last token: at least one token must be
        computed so the model returns logits. No side effects (nothing is taken yet).
        """
        if not self.enable_prefix_caching:
            return []
        max_blocks = (seq.num_tokens - 1) // self.block_size
        hits: list[int] = []
        for index, block_hash in enumerate(self._chain_hashes(seq, max_blocks)):
            block_id = self._cached.get(block_hash)
            if block_id is None or self._blocks[block_id].token_ids != self._block_tokens(
                seq, index
            ):
                break
            hits.append(block_id)
        return hits

    def allocate(
        self, seq: Sequence, computed_block_ids: list[int | None], num_new_tokens: int
    ) -> bool:
        """Admit seq: share `computed_block_ids` (from get_computed_blocks, nothing in
        between; a None is a hit not taken, behind the sliding window) and add fresh
        blocks for the next `num_new_tokens` positions.

        Returns False, changing nothing, when the free blocks are too few.
        """
        assert not seq.block_ids, f"sequence {seq.seq_id} already holds blocks"
        num_cached_tokens = len(computed_block_ids) * self.block_size
        num_fresh = self._num_blocks_for(num_cached_tokens + num_new_tokens) - len(
            computed_block_ids
        )
        # A hit on a free-but-cached block takes it out of the free list too.
        taken = [block_id for block_id in computed_block_ids if block_id is not None]
        num_revived = sum(1 for block_id in taken if self._blocks[block_id].ref_count == 0)
        if num_fresh + num_revived > len(self._free):
            return False
        for block_id in taken:
            block = self._blocks[block_id]
            if block.ref_count == 0:
                del self._free[block_id]
            block.ref_count += 1
        seq.block_ids = list(computed_block_ids) + [self._take_fresh() for _ in range(num_fresh)]
        self._seq_num_registered[seq.seq_id] = len(computed_block_ids)
        self.prefix_cache_queries += seq.num_tokens
        self.prefix_cache_hits += num_cached_tokens
        return True

    def num_appendable_tokens(self, seq: Sequence) -> int:
        """How many positions after seq.num_computed_tokens can get slots right now."""
        num_slots = (len(seq.block_ids) + len(self._free)) * self.block_size
        return max(0, num_slots - seq.num_computed_tokens)

    def append_slots(self, seq: Sequence, num_new_tokens: int) -> bool:
        """Make positions < seq.num_computed_tokens + num_new_tokens have slots.

        Returns False, changing nothing, when the free blocks are too few.
        """
        num_needed = self._num_blocks_for(seq.num_computed_tokens + num_new_tokens) - len(
            seq.block_ids
        )
        if num_needed > len(self._free):
            return False
        seq.block_ids.extend(self._take_fresh() for _ in range(num_needed))
        return True

    def free_out_of_window(self, seq: Sequence, window: int) -> None:
        """Release seq's leading blocks whose every position is at least `window` behind
        seq.num_computed_tokens, the next query (it reads keys > position - window)."""
        num_behind = min((seq.num_computed_tokens - window + 1) // self.block_size, len(seq.block_ids))
        for index in range(max(num_behind, 0)):
            block_id = seq.block_ids[index]
            if block_id is not None:
                self._release(block_id)
                seq.block_ids[index] = None

    def cache_full_blocks(self, seq: Sequence) -> None:
        """Register seq's full blocks whose KV is computed (positions < num_computed_tokens).

        Call only once the KV is really written (after the step ran). Idempotent. A block
        whose prefix is already cached in another block (two sequences computed the same
        prefix at once) stays plain: the cache keeps the first.
        """
        if not self.enable_prefix_caching:
            return
        num_full = min(seq.num_computed_tokens // self.block_size, len(seq.block_ids))
        start = self._seq_num_registered.get(seq.seq_id, 0)
        if num_full <= start:
            return
        hashes = self._chain_hashes(seq, num_full)
        for index in range(start, num_full):
            block_id = seq.block_ids[index]
            if block_id is None:  # freed behind the window before it was offered
                continue
            block = self._blocks[block_id]
            if block.block_hash is None and hashes[index] not in self._cached:
                block.block_hash = hashes[index]
                block.token_ids = self._block_tokens(seq, index)
                self._cached[block.block_hash] = block.block_id
        self._seq_num_registered[seq.seq_id] = num_full

    def free(self, seq: Sequence) -> None:
        """Release seq's blocks (idempotent: seq.block_ids is cleared).

        Cached blocks stay in the cache. Freed in reverse so a sequence's tail is evicted
        before its head, which other prompts are likelier to share.
        """
        for block_id in reversed(seq.block_ids):
            if block_id is not None:
                self._release(block_id)
        seq.block_ids = []
        self._seq_hashes.pop(seq.seq_id, None)
        self._seq_num_registered.pop(seq.seq_id, None)

    def _release(self, block_id: int) -> None:
        """One holder less; at 0 the block is free: plain ones to the front of the free
        list, cached ones to the back (evicted last)."""
        block = self._blocks[block_id]
        assert block.ref_count > 0, f"block {block_id} freed twice"
        block.ref_count -= 1
        if block.ref_count == 0:
            self._free[block_id] = None
            if block.block_hash is None:
                self._free.move_to_end(block_id, last=False)

    def _take_fresh(self) -> int:
        """Pop the front of the free list, evicting its cached KV if any."""
        block_id, _ = self._free.popitem(last=False)
        block = self._blocks[block_id]
        if block.block_hash is not None:
            del self._cached[block.block_hash]
            block.block_hash = None
            block.token_ids = ()
        block.ref_count = 1
        return block_id

    def _num_blocks_for(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    def _block_tokens(self, seq: Sequence, index: int) -> tuple[int, ...]:
        return tuple(seq.token_ids[index * self.block_size : (index + 1) * self.block_size])

    def _chain_hashes(self, seq: Sequence, num_blocks: int) -> list[bytes]:
        """Chain hashes of seq's first num_blocks full blocks, memoized per sequence
        (token ids are only appended to, so a full block's hash never changes)."""
        hashes = self._seq_hashes.setdefault(seq.seq_id, [])
        while len(hashes) < num_blocks:
            parent = hashes[-1] if hashes else None
            hashes.append(hash_block(parent, self._block_tokens(seq, len(hashes))))
        return hashes[:num_blocks]
