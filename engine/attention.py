"""Attention metadata: what one engine step tells every attention layer.

The model runner builds one `AttentionMetadata` per step from the scheduled chunks
and passes it down as an argument (never through a global). Sequences appear in
the order of the chunks; each contributes `query_len` new tokens, laid out back to
back in the flat token dimension (`query_start_loc` marks where each one starts).

Both backends (`engine.ops.TorchOps`, `engine.kernel_ops.KernelOps`) read the device
tensors; the `*_host` tuples are the same numbers as Python ints, so the torch path
can group sequences without a device-to-host sync.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class AttentionMetadata:
    # Position in its sequence of every new token.  [num_tokens] int64
    positions: torch.Tensor
    # KV-cache slot of every new token: block_id * block_size + offset in block.
    # [num_tokens] int64
    slot_mapping: torch.Tensor
    # Cumulative new-token counts; sequence i owns tokens
    # query_start_loc[i] : query_start_loc[i + 1].  [num_seqs + 1] int32
    query_start_loc: torch.Tensor
    # Context length after this step (start + num_new_tokens).  [num_seqs] int32
    seq_lens: torch.Tensor
    # KV block ids of each sequence in position order, padded with 0 (never read
    # past seq_lens).  [num_seqs, max_blocks_per_seq] int32
    block_tables: torch.Tensor
    # Largest number of new tokens of any sequence this step.
    max_query_len: int
    # Largest context length of any sequence this step.
    max_seq_len: int
    # Flat token index of the last new token of every sequence that samples this
    # step, in chunk order.  [num_sampled] int64
    logits_indices: torch.Tensor
    # New tokens per sequence, as host ints (len num_seqs).
    query_lens_host: tuple[int, ...]
    # Context length per sequence after this step, as host ints (len num_seqs).
    seq_lens_host: tuple[int, ...]
    # Tokens per KV block.
    block_size: int

    @property
    def num_seqs(self) -> int:
        return len(self.seq_lens_host)

    @property
    def num_tokens(self) -> int:
        return int(self.positions.shape[0])


def build_attention_metadata(
    starts: Sequence[int],
    query_lens: Sequence[int],
    block_ids: Sequence[Sequence[int | None]],
    sample_flags: Sequence[bool],
    block_size: int,
    device: torch.device | str = "cpu",
) -> AttentionMetadata:
    """Metadata for sequences that each feed tokens [start, start + query_len).

    `block_ids[i]` must cover every position < start + query_len of sequence i
    (extra blocks are ignored); a None is a block freed behind the sliding window, never
    read, which the table points at block 0. Built from Python lists with one tensor per field,
    so the cost is per block, not per tensor op.
    """
    positions: list[int] = []
    slots: list[int] = []
    query_start_loc = [0]
    seq_lens: list[int] = []
    tables: list[list[int]] = []
    logits_indices: list[int] = []
    for start, query_len, blocks, sample in zip(
        starts, query_lens, block_ids, sample_flags, strict=True
    ):
        end = start + query_len
        positions.extend(range(start, end))
        _extend_slots(slots, blocks, start, end, block_size)
        query_start_loc.append(query_start_loc[-1] + query_len)
        seq_lens.append(end)
        tables.append([0 if b is None else b for b in blocks[: -(-end // block_size)]])
        if sample:
            logits_indices.append(query_start_loc[-1] - 1)
    width = max((len(t) for t in tables), default=0)
    padded = [t + [0] * (width - len(t)) for t in tables]
    pin = torch.device(device).type == "cuda"

    def to_device(values: list[int] | list[list[int]], dtype: torch.dtype) -> torch.Tensor:
        tensor = torch.tensor(values, dtype=dtype, pin_memory=pin)
        return tensor.to(device, non_blocking=True) if pin else tensor

    query_lens_host = tuple(query_lens)
    return AttentionMetadata(
        positions=to_device(positions, torch.int64),
        slot_mapping=to_device(slots, torch.int64),
        query_start_loc=to_device(query_start_loc, torch.int32),
        seq_lens=to_device(seq_lens, torch.int32),
        block_tables=to_device(padded, torch.int32).reshape(len(tables), width),
        max_query_len=max(query_lens_host, default=0),
        max_seq_len=max(seq_lens, default=0),
        logits_indices=to_device(logits_indices, torch.int64),
        query_lens_host=query_lens_host,
        seq_lens_host=tuple(seq_lens),
        block_size=block_size,
    )


def _extend_slots(
    slots: list[int], blocks: Sequence[int | None], start: int, end: int, block_size: int
) -> None:
    """Append the cache slots of positions [start, end), one range per block."""
    position = start
    while position < end:
        block_index, offset = divmod(position, block_size)
        stop = min(end, (block_index + 1) * block_size)
        block_id = blocks[block_index]
        assert block_id is not None, "a new token's block was freed"
        base = block_id * block_size
        slots.extend(range(base + offset, base + offset + stop - position))
        position = stop
