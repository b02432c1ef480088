"""Fused sampler: distribution (chi-square against the reference's exact probabilities),
seeds, greedy, the kept set, the allowed-token mask; penalties and logit bias.

The tie rule, and the torch backend agreeing with the kernel on it, is tested in
test_sampler_kernels.py."""

from __future__ import annotations

import pytest
import torch

from tests.kernels.kernel_testing import assert_close, fresh_generator
from tritium_kernels.penalties import (
    apply_logit_bias,
    apply_logit_bias_ref,
    apply_penalties,
    apply_penalties_ref,
)
from tritium_kernels.sampling import pack_token_mask, sample, sampling_probs_ref, unpack_token_mask

P_VALUE_FLOOR = 1e-4  # a correct sampler fails a chi-square test once in 10,000 runs


def sampling_rows(batch: int, device: torch.device, temperature: float = 1.0, top_k: int = 0,
                  top_p: float = 1.0, min_p: float = 0.0) -> tuple[torch.Tensor, ...]:  # fmt: skip
    return (
        torch.full((batch,), temperature, dtype=torch.float32, device=device),
        torch.full((batch,), top_k, dtype=torch.int32, device=device),
        torch.full((batch,), top_p, dtype=torch.float32, device=device),
        torch.full((batch,), min_p, dtype=torch.float32, device=device),
    )


def chi_square_p_value(counts: torch.Tensor, probs: torch.Tensor) -> float:
    """Pearson's test; cells expecting < 5 draws are pooled into one."""
    expected = probs * counts.sum()
    small = expected < 5
    observed_cells = torch.cat([counts[~small], counts[small].sum(0, keepdim=True)])
    expected_cells = torch.cat([expected[~small], expected[small].sum(0, keepdim=True)])
    keep = expected_cells > 0
    statistic = (((observed_cells - expected_cells) ** 2)[keep] / expected_cells[keep]).sum()
    degrees = int(keep.sum()) - 1
    return float(torch.special.gammaincc(torch.tensor(degrees / 2.0, dtype=torch.float64), statistic / 2))


@pytest.mark.parametrize(
    ("temperature", "top_k", "top_p", "min_p"),
    [(1.3, 0, 1.0, 0.0), (0.8, 12, 0.9, 0.02)],
    ids=["plain", "top_k-top_p-min_p"],
)
def test_empirical_distribution_matches_reference(
    temperature: float, top_k: int, top_p: float, min_p: float, device: torch.device
) -> None:
    generator = fresh_generator()
    num_draws, vocab_size = 400, 40
    row = 1.5 * torch.randn(vocab_size, generator=generator)
    logits = row.repeat(num_draws, 1).to(device)
    params = sampling_rows(num_draws, device, temperature, top_k, top_p, min_p)
    seeds = torch.randint(0, 2**62, (num_draws,), generator=generator).to(device)
    offsets = torch.zeros(num_draws, dtype=torch.int64, device=device)

    token_ids = sample(logits, *params, seeds, offsets)

    probs = sampling_probs_ref(logits[:1], *(p[:1] for p in params))[0].cpu()
    counts = torch.bincount(token_ids.cpu(), minlength=vocab_size).double()
    assert counts[probs == 0].sum() == 0, "drew a token outside the kept set"
    assert chi_square_p_value(counts, probs) > P_VALUE_FLOOR


def mixed_rows(batch: int, vocab_size: int, device: torch.device, generator: torch.Generator):  # noqa: ANN201
    """Rows with every feature on or off at random, and a random allowed mask."""
    logits = (2 * torch.randn(batch, vocab_size, generator=generator)).to(device)
    logits[:, :5] = logits[:, 5:10]  # ties across the row
    pick = torch.rand(batch, 4, generator=generator)
    temperature = torch.where(pick[:, 0] < 0.2, 0.0, 0.3 + 1.5 * torch.rand(batch, generator=generator))
    top_k = torch.where(pick[:, 1] < 0.5, torch.randint(1, 20, (batch,), generator=generator), 0)
    top_p = torch.where(pick[:, 2] < 0.5, 0.2 + 0.79 * torch.rand(batch, generator=generator), 1.0)
    min_p = torch.where(pick[:, 3] < 0.3, 0.2 * torch.rand(batch, generator=generator), 0.0)
    allowed = torch.rand(batch, vocab_size, generator=generator) < 0.7
    allowed[:, 0] = True
    return (
        logits,
        temperature.float().to(device),
        top_k.int().to(device),
        top_p.float().to(device),
        min_p.float().to(device),
        pack_token_mask(allowed).to(device),
    )


def test_tokens_stay_in_the_kept_set_and_greedy_is_argmax(device: torch.device) -> None:
    generator = fresh_generator()
    batch, vocab_size = 24, 1100  # two tiles of the vocabulary
    logits, temperature, top_k, top_p, min_p, allowed = mixed_rows(batch, vocab_size, device, generator)
    seeds = torch.randint(0, 2**62, (batch,), generator=generator).to(device)
    offsets = torch.randint(0, 2**40, (batch,), generator=generator).to(device)

    token_ids = sample(logits, temperature, top_k, top_p, min_p, seeds, offsets, allowed)

    probs = sampling_probs_ref(logits, temperature, top_k, top_p, min_p, allowed)
    assert (probs.gather(1, token_ids[:, None]) > 0).all()
    greedy = temperature == 0
    expected_greedy = logits.masked_fill(~unpack_token_mask(allowed, vocab_size), float("-inf")).argmax(1)
    assert torch.equal(token_ids[greedy], expected_greedy[greedy])


def test_same_seed_same_token_whatever_else_is_batched(device: torch.device) -> None:
    generator = fresh_generator()
    batch, vocab_size = 8, 300
    logits, temperature, top_k, top_p, min_p, allowed = mixed_rows(batch, vocab_size, device, generator)
    temperature = temperature.clamp(min=0.5)  # all stochastic
    seeds = torch.randint(0, 2**62, (batch,), generator=generator).to(device)
    offsets = torch.full((batch,), 17, dtype=torch.int64, device=device)
    rows = (logits, temperature, top_k, top_p, min_p)

    first = sample(*rows, seeds, offsets, allowed)
    again = sample(*rows, seeds, offsets, allowed)
    order = torch.tensor([5, 2, 7], device=device)
    subset = sample(*(r[order] for r in rows), seeds[order], offsets[order], allowed[order])

    assert torch.equal(first, again)
    assert torch.equal(subset, first[order])


def test_offsets_and_seeds_change_the_draw(device: torch.device) -> None:
    num_draws, vocab_size = 64, 50
    logits = torch.zeros(num_draws, vocab_size, device=device)  # uniform: draws should vary
    params = sampling_rows(num_draws, device)
    same_seed = torch.full((num_draws,), 1234, dtype=torch.int64, device=device)
    steps = torch.arange(num_draws, dtype=torch.int64, device=device) << 33  # high counter word
    by_step = sample(logits, *params, same_seed, steps)
    by_seed = sample(logits, *params, torch.arange(num_draws, device=device) << 40, steps * 0)
    assert len(set(by_step.tolist())) > 20 and len(set(by_seed.tolist())) > 20


def test_sampler_rejects_bad_inputs(device: torch.device) -> None:
    logits = torch.zeros(2, 40, device=device)
    params = sampling_rows(2, device)
    seeds = torch.zeros(2, dtype=torch.int64, device=device)
    with pytest.raises(ValueError, match="top_k"):
        sample(logits, params[0], params[1].long(), *params[2:], seeds, seeds)
    with pytest.raises(ValueError, match="allowed_mask"):
        sample(logits, *params, seeds, seeds, torch.zeros(2, 1, dtype=torch.int32, device=device))


def test_penalties_and_logit_bias_match_reference(device: torch.device) -> None:
    generator = fresh_generator()
    batch, vocab_size = 3, 70
    logits = torch.randn(batch, vocab_size, generator=generator).to(device)
    counts = torch.randint(0, 3, (batch, vocab_size), generator=generator).int().to(device)
    prompt = pack_token_mask(torch.rand(batch, vocab_size, generator=generator) < 0.2).to(device)
    repetition = torch.tensor([1.0, 1.3, 0.8], device=device)
    frequency = torch.tensor([0.0, 0.5, -0.2], device=device)
    presence = torch.tensor([0.7, 0.0, 0.1], device=device)
    expected = apply_penalties_ref(logits, counts, prompt, repetition, frequency, presence)
    apply_penalties(logits, counts, prompt, repetition, frequency, presence)
    assert_close(logits, expected, torch.float32)

    token_ids = torch.tensor([[3, 69, -1], [-1, -1, -1], [0, 5, 6]], dtype=torch.int32, device=device)
    biases = torch.tensor([[1.0, -100.0, 9.0], [5.0, 5.0, 5.0], [2.5, 0.5, -1.0]], device=device)
    expected = apply_logit_bias_ref(logits, token_ids, biases)
    apply_logit_bias(logits, token_ids, biases)
    assert_close(logits, expected, torch.float32)


@pytest.mark.gpu
@pytest.mark.parametrize("vocab_size", [49152, 128256])
def test_real_sizes(vocab_size: int, device: torch.device) -> None:
    generator = torch.Generator().manual_seed(0)
    batch = 256
    logits, temperature, top_k, top_p, min_p, allowed = mixed_rows(batch, vocab_size, device, generator)
    seeds = torch.randint(0, 2**62, (batch,), generator=generator).to(device)
    offsets = torch.zeros(batch, dtype=torch.int64, device=device)
    token_ids = sample(logits, temperature, top_k, top_p, min_p, seeds, offsets, allowed)
    probs = sampling_probs_ref(logits, temperature, top_k, top_p, min_p, allowed)
    assert (probs.gather(1, token_ids[:, None]) > 0).all()
    # Distribution at real size: 256 draws of one top-p row, against its exact probabilities.
    row = logits[:1].repeat(batch, 1)
    params = sampling_rows(batch, device, 1.0, 0, 0.95, 0.0)
    many = sample(row, *params, torch.arange(batch, device=device), offsets)
    exact = sampling_probs_ref(row[:1], *(p[:1] for p in params))[0].cpu()
    counts = torch.bincount(many.cpu(), minlength=vocab_size).double()
    assert counts[exact == 0].sum() == 0
