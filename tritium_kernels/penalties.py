"""Logit processors that run before `tritium_kernels.sampling.sample`, in place on the logits.

- `apply_penalties` (one pass over [batch, vocab_size]): for each token with output
  count c (tokens generated so far) that appears in the output or the prompt,
      repetition (CTRL):  logit = logit / r if logit > 0 else logit * r
      frequency:          logit -= frequency * c
      presence:           logit -= presence * (c > 0)
  Reads logits, counts (int32) and the prompt bitmask, writes logits:
  (4 + 4 + 4/32 + 4) bytes per element. The engine runs it only on steps where some
  row has a penalty.
- `apply_logit_bias` (one program per row, sparse): logit[token] += bias for the
  row's (token, bias) pairs; token ids are unique per row, -1 pads.

Order: penalties, then bias (the user's explicit bias has the last word), then the
allowed-token mask, temperature, top-k/top-p/min-p inside the sampling kernel.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from tritium_kernels.sampling import unpack_token_mask


@triton.jit
def penalties_kernel(
    logits_ptr,  # [batch, vocab_size] float32, in place
    output_counts_ptr,  # [batch, vocab_size] int32
    prompt_mask_ptr,  # [batch, cdiv(vocab_size, 32)] int32 bitmask of prompt tokens
    repetition_ptr,  # [batch] float32, 1 = off
    frequency_ptr,  # [batch] float32, 0 = off
    presence_ptr,  # [batch] float32, 0 = off
    stride_logits_row,
    stride_counts_row,
    stride_prompt_row,
    vocab_size,
    BLOCK_V: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    index = tl.program_id(1) * BLOCK_V + tl.arange(0, BLOCK_V)
    in_vocab = index < vocab_size
    logits = tl.load(logits_ptr + row * stride_logits_row + index, mask=in_vocab)
    counts = tl.load(output_counts_ptr + row * stride_counts_row + index, mask=in_vocab, other=0)
    words = tl.load(prompt_mask_ptr + row * stride_prompt_row + index // 32, mask=in_vocab, other=0)
    in_prompt = ((words >> (index % 32)) & 1) != 0
    repetition = tl.load(repetition_ptr + row)
    frequency = tl.load(frequency_ptr + row)
    presence = tl.load(presence_ptr + row)
    seen = in_prompt | (counts > 0)
    repeated = tl.where(logits > 0, logits / repetition, logits * repetition)
    logits = tl.where(seen, repeated, logits)
    logits = logits - frequency * counts.to(tl.float32) - presence * (counts > 0).to(tl.float32)
    tl.store(logits_ptr + row * stride_logits_row + index, logits, mask=in_vocab)


@triton.jit
def logit_bias_kernel(
    logits_ptr,  # [batch, vocab_size] float32, in place
    token_ids_ptr,  # [batch, max_biases] int32, -1 = none
    biases_ptr,  # [batch, max_biases] float32
    stride_logits_row,
    stride_token_ids_row,
    stride_biases_row,
    max_biases,
    vocab_size,
    BLOCK_BIASES: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    slots = tl.arange(0, BLOCK_BIASES)
    token_ids = tl.load(token_ids_ptr + row * stride_token_ids_row + slots, mask=slots < max_biases, other=-1)
    biases = tl.load(biases_ptr + row * stride_biases_row + slots, mask=slots < max_biases, other=0.0)
    valid = (token_ids >= 0) & (token_ids < vocab_size)
    pointers = logits_ptr + row * stride_logits_row + token_ids
    logits = tl.load(pointers, mask=valid, other=0.0)
    tl.store(pointers, logits + biases, mask=valid)


def _check_rows(logits: torch.Tensor, **row_params: torch.Tensor) -> None:
    if logits.dim() != 2 or logits.dtype != torch.float32 or logits.stride(1) != 1:
        raise ValueError(f"logits must be [batch, vocab_size] float32, contiguous; got {tuple(logits.shape)} {logits.dtype}")
    for name, tensor in row_params.items():
        if tensor.shape != (logits.shape[0],) or tensor.dtype != torch.float32:
            raise ValueError(f"{name} must be [{logits.shape[0]}] float32, got {tuple(tensor.shape)} {tensor.dtype}")


def apply_penalties(
    logits: torch.Tensor,  # [batch, vocab_size] float32, modified in place
    output_counts: torch.Tensor,  # [batch, vocab_size] int32
    prompt_mask: torch.Tensor,  # [batch, cdiv(vocab_size, 32)] int32 bitmask
    repetition_penalty: torch.Tensor,  # [batch] float32
    frequency_penalty: torch.Tensor,  # [batch] float32
    presence_penalty: torch.Tensor,  # [batch] float32
) -> None:
    """Repetition, frequency and presence penalties, in place."""
    _check_rows(logits, repetition_penalty=repetition_penalty, frequency_penalty=frequency_penalty,
                presence_penalty=presence_penalty)  # fmt: skip
    batch, vocab_size = logits.shape
    if output_counts.shape != logits.shape or output_counts.dtype != torch.int32 or output_counts.stride(1) != 1:
        raise ValueError(f"output_counts must be {tuple(logits.shape)} int32, got {tuple(output_counts.shape)} {output_counts.dtype}")
    num_words = triton.cdiv(vocab_size, 32)
    if prompt_mask.shape != (batch, num_words) or prompt_mask.dtype != torch.int32 or prompt_mask.stride(1) != 1:
        raise ValueError(f"prompt_mask must be [{batch}, {num_words}] int32, got {tuple(prompt_mask.shape)} {prompt_mask.dtype}")
    if batch == 0:
        return
    block_v = min(2048, triton.next_power_of_2(vocab_size))
    penalties_kernel[(batch, triton.cdiv(vocab_size, block_v))](
        logits_ptr=logits, output_counts_ptr=output_counts, prompt_mask_ptr=prompt_mask,
        repetition_ptr=repetition_penalty, frequency_ptr=frequency_penalty,
        presence_ptr=presence_penalty,
        stride_logits_row=logits.stride(0), stride_counts_row=output_counts.stride(0),
        stride_prompt_row=prompt_mask.stride(0), vocab_size=vocab_size,
        BLOCK_V=block_v, num_warps=4,
    )  # fmt: skip


def apply_logit_bias(
    logits: torch.Tensor,  # [batch, vocab_size] float32, modified in place
    token_ids: torch.Tensor,  # [batch, max_biases] int32, unique per row, -1 = none
    biases: torch.Tensor,  # [batch, max_biases] float32
) -> None:
    """logits[b, token_ids[b, j]] += biases[b, j], in place."""
    _check_rows(logits)
    batch = logits.shape[0]
    if token_ids.dim() != 2 or token_ids.shape[0] != batch or token_ids.dtype != torch.int32:
        raise ValueError(f"token_ids must be [{batch}, max_biases] int32, got {tuple(token_ids.shape)} {token_ids.dtype}")
    if biases.shape != token_ids.shape or biases.dtype != torch.float32:
        raise ValueError(f"biases must be {tuple(token_ids.shape)} float32, got {tuple(biases.shape)} {biases.dtype}")
    if batch == 0 or token_ids.shape[1] == 0:
        return
    logit_bias_kernel[(batch,)](
        logits_ptr=logits, token_ids_ptr=token_ids, biases_ptr=biases,
        stride_logits_row=logits.stride(0), stride_token_ids_row=token_ids.stride(0),
        stride_biases_row=biases.stride(0), max_biases=token_ids.shape[1],
        vocab_size=logits.shape[1],
        BLOCK_BIASES=triton.next_power_of_2(token_ids.shape[1]), num_warps=1,
    )  # fmt: skip


def apply_penalties_ref(
    logits: torch.Tensor,
    output_counts: torch.Tensor,
    prompt_mask: torch.Tensor,
    repetition_penalty: torch.Tensor,
    frequency_penalty: torch.Tensor,
    presence_penalty: torch.Tensor,
) -> torch.Tensor:  # new [batch, vocab_size] float32
    """Reference (vLLM's formulas), out of place."""
    seen = unpack_token_mask(prompt_mask, logits.shape[1]) | (output_counts > 0)
    repetition = repetition_penalty[:, None]
    repeated = torch.where(logits > 0, logits / repetition, logits * repetition)
    out = torch.where(seen, repeated, logits)
    counts = output_counts.float()
    return out - frequency_penalty[:, None] * counts - presence_penalty[:, None] * (counts > 0).float()


def apply_logit_bias_ref(logits: torch.Tensor, token_ids: torch.Tensor, biases: torch.Tensor) -> torch.Tensor:
    """Reference: scatter-add of the valid (token, bias) pairs, out of place."""
    valid = token_ids >= 0
    return logits.scatter_add(1, token_ids.long().clamp(min=0), torch.where(valid, biases, 0.0))
