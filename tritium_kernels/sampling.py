"""Fused, sort-free sampling: temperature, top-k, top-p, min-p, allowed-token mask,
per-row seeds; returns token ids.

The distribution (defined by `sampling_probs_ref`). Per row, with x = logits / T over
the allowed tokens (others -inf):
- top-k keeps x >= t_k, the k-th largest value (ties at the boundary stay in);
- top-p, after top-k: keeps x >= t_p, the largest value whose upper set
  {x >= t_p} holds >= top_p of the top-k set's probability mass;
- min-p keeps x >= max(x) + log(min_p) (p >= min_p * p_max);
the kept set is x >= max(t_k, t_p, t_m), renormalised: every filter is a threshold on
the value, so tied tokens are kept or dropped together. Temperature 0 = argmax (the
lowest index among tied maxima). This is the engine's one sampling rule; its torch
backend (`engine.sampler`, which says why ties stay in) follows it too.

The kernel (one program per row) never sorts. Per row it streams the vocabulary:
1. one pass for the max, min and count of x;
2. top-k and top-p thresholds by a 16-way search over the value range: each pass
   counts (top-k) or sums exp(x - max) (top-p) at 16 pivots, and narrows [lo, hi) to the
   gap holding the answer; the search ends as soon as [lo, hi) holds one distinct
   value, typically after 4-6 passes (rows without top-k / top-p skip this);
3. one pass of the exponential race: token = argmax over kept x of x - log(E) with
   E ~ Exp(1) from Philox(seed, (token index, offset)) — exactly a draw from the
   renormalised softmax, so a row's randomness depends only on its seed and offset.
Memory: (2 + search passes) * vocab_size * 4 bytes per row (+ the mask, 1/32 of it).

No logprobs: the engine reports those of the raw model logits, before the penalties and
bias these logits carry (`engine.sampler`), and computes them itself.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

NUM_PIVOTS = 16
MAX_SEARCH_PASSES = 12


@triton.jit
def _load_scaled(logits_row_ptr, allowed_row_ptr, start, vocab_size, temperature,
                 HAS_MASK: tl.constexpr, BLOCK_V: tl.constexpr):  # fmt: skip
    """Tile of the row: (token index, logits / T with disallowed tokens -inf)."""
    index = start + tl.arange(0, BLOCK_V)
    in_vocab = index < vocab_size
    logits = tl.load(logits_row_ptr + index, mask=in_vocab, other=float("-inf"))
    allowed = in_vocab
    if HAS_MASK:
        words = tl.load(allowed_row_ptr + index // 32, mask=in_vocab, other=0)
        allowed = allowed & (((words >> (index % 32)) & 1) != 0)
    scaled = tl.where(allowed, logits / temperature, float("-inf"))
    return index, scaled


@triton.jit
def _threshold_search(logits_row_ptr, allowed_row_ptr, vocab_size, temperature, max_scaled,
                      lo, target, RELATIVE: tl.constexpr, COUNT: tl.constexpr,
                      HAS_MASK: tl.constexpr, BLOCK_V: tl.constexpr,
                      NUM_PIVOTS: tl.constexpr, MAX_PASSES: tl.constexpr):  # fmt: skip
    """Largest value v of the row with f(v) >= target, where f(t) counts (COUNT) or sums
    exp(x - max) over the elements x >= t. Needs f(lo) >= target. With RELATIVE the
    target is a fraction of f(lo). Invariant: the answer lies in [lo, hi)."""
    hi = float("inf")
    answer = lo
    passes = 0
    done = 0
    pivot_rank = (tl.arange(0, NUM_PIVOTS) + 1).to(tl.float32)
    while (done == 0) & (passes < MAX_PASSES):
        # Pivots split (lo, hi) evenly; while hi is unknown the last pivot is the max.
        bounded = hi < float("inf")
        upper = tl.where(bounded, hi, max_scaled)
        pivots = lo + (upper - lo) * pivot_rank / tl.where(bounded, NUM_PIVOTS + 1.0, NUM_PIVOTS * 1.0)
        pivots = tl.where(pivot_rank == NUM_PIVOTS, tl.where(bounded, pivots, max_scaled), pivots)
        f_pivots = tl.zeros([NUM_PIVOTS], dtype=tl.float32)
        f_lo = 0.0
        min_inside = float("inf")
        max_inside = float("-inf")
        for start in range(0, vocab_size, BLOCK_V):
            _index, scaled = _load_scaled(
                logits_row_ptr=logits_row_ptr, allowed_row_ptr=allowed_row_ptr, start=start,
                vocab_size=vocab_size, temperature=temperature, HAS_MASK=HAS_MASK, BLOCK_V=BLOCK_V,
            )  # fmt: skip
            if COUNT:
                weight = tl.where(scaled > float("-inf"), 1.0, 0.0)
            else:
                weight = tl.exp(scaled - max_scaled)
            above = scaled[:, None] >= pivots[None, :]  # [BLOCK_V, NUM_PIVOTS]
            f_pivots += tl.sum(tl.where(above, weight[:, None], 0.0), 0)
            at_or_above_lo = scaled >= lo
            f_lo += tl.sum(tl.where(at_or_above_lo, weight, 0.0), 0)
            inside = at_or_above_lo & (scaled < hi) & (scaled > float("-inf"))
            min_inside = tl.minimum(min_inside, tl.min(tl.where(inside, scaled, float("inf")), 0))
            max_inside = tl.maximum(max_inside, tl.max(tl.where(inside, scaled, float("-inf")), 0))
        if RELATIVE:
            target = tl.where(passes == 0, target * f_lo, target)
        # [lo, hi) holding a single distinct value: that value is the answer.
        single = max_inside <= min_inside
        answer = tl.where(single, min_inside, lo)
        done = single.to(tl.int32)
        lo = tl.maximum(lo, tl.max(tl.where(f_pivots >= target, pivots, float("-inf")), 0))
        hi = tl.minimum(hi, tl.min(tl.where(f_pivots < target, pivots, float("inf")), 0))
        passes += 1
    # Out of passes (values a few ulps apart): lo keeps a superset of the exact set.
    return tl.where(done != 0, answer, lo)


@triton.jit
def sample_kernel(
    logits_ptr,  # [batch, vocab_size] float32
    allowed_ptr,  # [batch, cdiv(vocab_size, 32)] int32 bitmask; None unless HAS_MASK
    temperature_ptr,  # [batch] float32, 0 = greedy
    top_k_ptr,  # [batch] int32, <= 0 or >= vocab_size = off
    top_p_ptr,  # [batch] float32, 1 = off
    min_p_ptr,  # [batch] float32, 0 = off
    seeds_ptr,  # [batch] int64
    offsets_ptr,  # [batch] int64: e.g. the output position, a second Philox counter
    token_ids_ptr,  # [batch] int64 out
    stride_logits_row,
    stride_allowed_row,
    vocab_size,
    HAS_MASK: tl.constexpr,
    BLOCK_V: tl.constexpr,
    NUM_PIVOTS: tl.constexpr,
    MAX_PASSES: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    logits_row_ptr = logits_ptr + row * stride_logits_row
    allowed_row_ptr = allowed_ptr  # None without a mask
    if HAS_MASK:
        allowed_row_ptr = allowed_ptr + row * stride_allowed_row
    temperature = tl.load(temperature_ptr + row)
    stochastic = temperature != 0.0  # temperature 0 = greedy
    temperature = tl.where(stochastic, temperature, 1.0)

    # Pass 1: statistics of x = logits / T over the allowed tokens.
    max_scaled = float("-inf")
    min_scaled = float("inf")
    num_allowed = 0
    for start in range(0, vocab_size, BLOCK_V):
        _index, scaled = _load_scaled(
            logits_row_ptr=logits_row_ptr, allowed_row_ptr=allowed_row_ptr, start=start,
            vocab_size=vocab_size, temperature=temperature, HAS_MASK=HAS_MASK, BLOCK_V=BLOCK_V,
        )  # fmt: skip
        is_allowed = scaled > float("-inf")
        max_scaled = tl.maximum(max_scaled, tl.max(scaled, 0))
        min_scaled = tl.minimum(min_scaled, tl.min(tl.where(is_allowed, scaled, float("inf")), 0))
        num_allowed += tl.sum(is_allowed.to(tl.int32), 0)

    # Pass 2: thresholds. The kept set is {x >= threshold}.
    top_k = tl.load(top_k_ptr + row)
    top_p = tl.load(top_p_ptr + row)
    min_p = tl.load(min_p_ptr + row)
    threshold = tl.where((min_p > 0.0) & stochastic, max_scaled + tl.log(tl.maximum(min_p, 1e-30)), float("-inf"))
    top_k_threshold = min_scaled
    if (top_k > 0) & (top_k < num_allowed) & stochastic:
        top_k_threshold = _threshold_search(
            logits_row_ptr=logits_row_ptr, allowed_row_ptr=allowed_row_ptr, vocab_size=vocab_size,
            temperature=temperature, max_scaled=max_scaled, lo=min_scaled,
            target=top_k.to(tl.float32), RELATIVE=False, COUNT=True, HAS_MASK=HAS_MASK,
            BLOCK_V=BLOCK_V, NUM_PIVOTS=NUM_PIVOTS, MAX_PASSES=MAX_PASSES,
        )  # fmt: skip
    threshold = tl.maximum(threshold, top_k_threshold)
    if (top_p < 1.0) & stochastic:
        top_p_threshold = _threshold_search(
            logits_row_ptr=logits_row_ptr, allowed_row_ptr=allowed_row_ptr, vocab_size=vocab_size,
            temperature=temperature, max_scaled=max_scaled, lo=top_k_threshold, target=top_p,
            RELATIVE=True, COUNT=False, HAS_MASK=HAS_MASK,
            BLOCK_V=BLOCK_V, NUM_PIVOTS=NUM_PIVOTS, MAX_PASSES=MAX_PASSES,
        )  # fmt: skip
        threshold = tl.maximum(threshold, top_p_threshold)

    # Pass 3: exponential race over the kept set (plain argmax when greedy).
    seed = tl.load(seeds_ptr + row)
    offset = tl.load(offsets_ptr + row)
    offset_low = (offset & 0xFFFFFFFF).to(tl.uint32)
    offset_high = ((offset >> 32) & 0xFFFFFFFF).to(tl.uint32)
    best_score = float("-inf")
    best_index = 0
    for start in range(0, vocab_size, BLOCK_V):
        index, scaled = _load_scaled(
            logits_row_ptr=logits_row_ptr, allowed_row_ptr=allowed_row_ptr, start=start,
            vocab_size=vocab_size, temperature=temperature, HAS_MASK=HAS_MASK, BLOCK_V=BLOCK_V,
        )  # fmt: skip
        keep = (scaled >= threshold) & (scaled > float("-inf"))
        score = scaled
        if stochastic:
            counter = index.to(tl.uint32)
            bits, _bits1, _bits2, _bits3 = tl.philox(seed, counter, counter * 0 + offset_low,
                                                     counter * 0 + offset_high, counter * 0)  # fmt: skip
            uniform = tl.uint_to_uniform_float(bits)  # [0, 1)
            score = scaled - tl.log(-tl.log(uniform))  # x - log(E), E ~ Exp(1)
        score = tl.where(keep, score, float("-inf"))
        tile_best = tl.max(score, 0)
        tile_index = start + tl.argmax(score, 0)
        better = tile_best > best_score  # strict: the first maximum wins, as torch.argmax
        best_index = tl.where(better, tile_index, best_index)
        best_score = tl.where(better, tile_best, best_score)

    tl.store(token_ids_ptr + row, best_index.to(tl.int64))


def sample(
    logits: torch.Tensor,  # [batch, vocab_size] float32
    temperature: torch.Tensor,  # [batch] float32
    top_k: torch.Tensor,  # [batch] int32
    top_p: torch.Tensor,  # [batch] float32
    min_p: torch.Tensor,  # [batch] float32
    seeds: torch.Tensor,  # [batch] int64
    offsets: torch.Tensor,  # [batch] int64
    allowed_mask: torch.Tensor | None = None,  # [batch, cdiv(vocab_size, 32)] int32
) -> torch.Tensor:  # token_ids [batch] int64
    """Sample one token per row; see the module docstring for the distribution.

    Every row must allow at least one token. Bit j of allowed_mask[b, w] allows token
    32 * w + j.
    """
    if logits.dim() != 2 or logits.dtype != torch.float32 or logits.stride(1) != 1:
        raise ValueError(
            f"logits must be [batch, vocab_size] float32, contiguous along vocab; "
            f"got {tuple(logits.shape)} {logits.dtype} strides {logits.stride()}"
        )
    batch, vocab_size = logits.shape
    for name, tensor, dtype in (
        ("temperature", temperature, torch.float32),
        ("top_k", top_k, torch.int32),
        ("top_p", top_p, torch.float32),
        ("min_p", min_p, torch.float32),
        ("seeds", seeds, torch.int64),
        ("offsets", offsets, torch.int64),
    ):
        if tensor.shape != (batch,) or tensor.dtype != dtype or tensor.device != logits.device:
            raise ValueError(
                f"{name} must be [{batch}] {dtype} on {logits.device}, "
                f"got {tuple(tensor.shape)} {tensor.dtype} on {tensor.device}"
            )
    num_words = triton.cdiv(vocab_size, 32)
    if allowed_mask is not None and (
        allowed_mask.shape != (batch, num_words)
        or allowed_mask.dtype != torch.int32
        or allowed_mask.stride(1) != 1
    ):
        raise ValueError(
            f"allowed_mask must be [{batch}, {num_words}] int32, contiguous, "
            f"got {tuple(allowed_mask.shape)} {allowed_mask.dtype}"
        )
    token_ids = torch.empty(batch, dtype=torch.int64, device=logits.device)
    if batch == 0:
        return token_ids
    sample_kernel[(batch,)](
        logits_ptr=logits,
        allowed_ptr=allowed_mask,
        temperature_ptr=temperature,
        top_k_ptr=top_k,
        top_p_ptr=top_p,
        min_p_ptr=min_p,
        seeds_ptr=seeds,
        offsets_ptr=offsets,
        token_ids_ptr=token_ids,
        stride_logits_row=logits.stride(0),
        stride_allowed_row=allowed_mask.stride(0) if allowed_mask is not None else 0,
        vocab_size=vocab_size,
        HAS_MASK=allowed_mask is not None,
        BLOCK_V=min(1024, triton.next_power_of_2(vocab_size)),
        NUM_PIVOTS=NUM_PIVOTS,
        MAX_PASSES=MAX_SEARCH_PASSES,
        num_warps=8,
    )
    return token_ids


def sampling_probs_ref(
    logits: torch.Tensor,  # [batch, vocab_size] float32
    temperature: torch.Tensor,  # [batch]
    top_k: torch.Tensor,  # [batch]
    top_p: torch.Tensor,  # [batch]
    min_p: torch.Tensor,  # [batch]
    allowed_mask: torch.Tensor | None = None,  # [batch, cdiv(vocab_size, 32)] int32
    dtype: torch.dtype = torch.float64,  # of the probabilities (float32 for the baseline)
) -> torch.Tensor:  # [batch, vocab_size]: the distribution `sample` draws from
    """The reference distribution, by sorting each row (the path the kernel avoids).

    Memory: a sort of [batch, vocab_size] (several passes), cumsum, gather, softmax.
    """
    batch, vocab_size = logits.shape
    stochastic = temperature != 0
    divisor = torch.where(stochastic, temperature, torch.ones_like(temperature)).float()
    scaled = logits.float() / divisor[:, None]  # same float32 division as the kernel
    if allowed_mask is not None:
        scaled = scaled.masked_fill(~unpack_token_mask(allowed_mask, vocab_size), float("-inf"))
    sorted_values, _ = scaled.sort(dim=1, descending=True)  # [batch, vocab_size]
    num_allowed = (sorted_values > float("-inf")).sum(1)
    k = top_k.long()
    use_top_k = stochastic & (k > 0) & (k < num_allowed)
    top_k_threshold = sorted_values.gather(1, (k.clamp(1, vocab_size) - 1)[:, None])[:, 0]
    top_k_threshold = torch.where(use_top_k, top_k_threshold, torch.full_like(top_k_threshold, float("-inf")))
    row_max = sorted_values[:, :1]
    weights = (sorted_values.to(dtype) - row_max.to(dtype)).exp()
    weights = weights.masked_fill(sorted_values < top_k_threshold[:, None], 0.0)
    cumulative = weights.cumsum(1)
    # Mass of {x >= v} for every sorted value v: the cumsum at v's last tie.
    last_tie = torch.searchsorted(-sorted_values, -sorted_values, right=True) - 1
    mass_at_or_above = cumulative.gather(1, last_tie)
    target = top_p.to(dtype)[:, None] * cumulative[:, -1:]
    first_enough = (mass_at_or_above < target).sum(1).clamp(max=vocab_size - 1)
    top_p_threshold = sorted_values.gather(1, first_enough[:, None])[:, 0]
    use_top_p = stochastic & (top_p < 1)
    top_p_threshold = torch.where(use_top_p, top_p_threshold, torch.full_like(top_p_threshold, float("-inf")))
    min_p_threshold = torch.where(
        stochastic & (min_p > 0), row_max[:, 0] + min_p.float().log(), torch.full_like(top_p_threshold, float("-inf"))
    )
    threshold = torch.maximum(torch.maximum(top_k_threshold, top_p_threshold), min_p_threshold)
    kept = scaled.masked_fill(scaled < threshold[:, None], float("-inf"))
    probs = kept.to(dtype).softmax(1)
    greedy = torch.nn.functional.one_hot(scaled.argmax(1), vocab_size).to(dtype)
    return torch.where(stochastic[:, None], probs, greedy)


def sample_ref(
    logits: torch.Tensor,  # [batch, vocab_size] float32
    temperature: torch.Tensor,
    top_k: torch.Tensor,
    top_p: torch.Tensor,
    min_p: torch.Tensor,
    allowed_mask: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:  # token_ids [batch] int64
    """Sort-based sampling with torch's RNG: same distribution as `sample`, different
    random stream. Also the baseline the sampling benchmark times."""
    probs = sampling_probs_ref(
        logits=logits, temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p,
        allowed_mask=allowed_mask, dtype=torch.float32,
    )  # fmt: skip
    noise = torch.empty_like(probs).exponential_(generator=generator)
    return (probs / noise).argmax(1)


def pack_token_mask(tokens: torch.Tensor) -> torch.Tensor:
    """[batch, vocab_size] bool -> [batch, cdiv(vocab_size, 32)] int32 bitmask: bit j of
    word w = token 32 w + j. The layout of `sample`'s allowed mask and of
    `tritium_kernels.penalties.apply_penalties`' prompt mask."""
    batch, vocab_size = tokens.shape
    padded = torch.zeros((batch, triton.cdiv(vocab_size, 32) * 32), dtype=torch.int64, device=tokens.device)
    padded[:, :vocab_size] = tokens.long()
    bits = padded.view(batch, -1, 32) << torch.arange(32, device=tokens.device)
    words = bits.sum(2)  # < 2**32
    return torch.where(words >= 2**31, words - 2**32, words).to(torch.int32)


def unpack_token_mask(mask: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """[batch, cdiv(vocab_size, 32)] int32 bitmask -> [batch, vocab_size] bool."""
    bits = (mask.long()[:, :, None] >> torch.arange(32, device=mask.device)) & 1
    return bits.reshape(mask.shape[0], -1)[:, :vocab_size].bool()
