"""Sampler: seeds, filtering distributions and their tie rule, penalties, bias,
min_tokens, the allowed-token mask, logprobs.

The tests that take `make_sampler` run here on the torch backend and again on the
fused kernels in tests/kernels/test_sampler_kernels.py (which needs the interpreter),
where both backends also meet on tied logits.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from engine.request import Sequence
from engine.sampler import Sampler, SamplingBackend, TorchSampling, sampling_probabilities
from engine.sampling_params import SamplingParams
from tests.engine.test_ops import assert_implements

VOCAB_SIZE = 16
EOS = 2
# Chi-square critical values at significance 0.001, by degrees of freedom.
CHI_SQUARE_CRITICAL = {1: 10.83, 2: 13.82, 3: 16.27, 4: 18.47, 5: 20.52, 6: 22.46, 7: 24.32}


def _seq(
    params: SamplingParams,
    prompt: list[int] | None = None,
    output: list[int] | None = None,
    index: int = 0,
) -> Sequence:
    prompt = prompt if prompt is not None else [1, 4]
    return Sequence(
        seq_id=0,
        request_id=0,
        index=index,
        token_ids=prompt + (output or []),
        num_prompt_tokens=len(prompt),
        params=params,
        max_tokens=64,
        arrival_time=0.0,
    )


def _logits(rows: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(rows, VOCAB_SIZE, generator=torch.Generator().manual_seed(seed)) * 2


@pytest.fixture
def make_sampler() -> Callable[..., Sampler]:
    """Sampler(vocab_size, eos_token_ids, seed=None) on the backend under test: torch."""
    return Sampler


def test_greedy_takes_argmax(make_sampler: Callable[..., Sampler]) -> None:
    logits = _logits(3)
    seqs = [_seq(SamplingParams(temperature=0.0)) for _ in range(3)]
    results = make_sampler(VOCAB_SIZE, [EOS]).sample(logits, seqs)
    assert [r.token_id for r in results] == logits.argmax(-1).tolist()
    assert all(r.logprob is None and r.top_logprobs == () for r in results)


def test_seeded_row_ignores_batch_composition(make_sampler: Callable[..., Sampler]) -> None:
    params = SamplingParams(temperature=1.0, top_p=0.9, seed=1234)
    row = _logits(1, seed=7)[0]

    def run(batch_logits: torch.Tensor, seqs: list[Sequence], row_index: int) -> list[int]:
        sampler = make_sampler(VOCAB_SIZE, [EOS])
        tokens = []
        for step in range(12):
            seqs[row_index].token_ids[:] = [1, 4] + [5] * step  # step = output tokens so far
            tokens.append(sampler.sample(batch_logits, seqs)[row_index].token_id)
        return tokens

    alone = run(row[None], [_seq(params)], 0)
    others = _logits(4, seed=9)
    crowded = torch.cat([others[:2], row[None], others[2:]])
    crowd = [
        _seq(SamplingParams(temperature=0.7, seed=5)),
        _seq(SamplingParams(temperature=1.0)),
        _seq(params),
        _seq(SamplingParams(temperature=0.0)),
        _seq(SamplingParams(temperature=1.2, top_k=3)),
    ]
    assert run(crowded, crowd, 2) == alone
    assert len(set(alone)) > 1  # the step feeds the seed: not one token repeated
    other_choice = run(row[None], [_seq(params, index=1)], 0)
    assert other_choice != alone  # choice index n feeds the seed too


def test_torch_sampling_implements_the_protocol() -> None:
    assert_implements(TorchSampling, SamplingBackend)


def _expected_distribution(logits: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """Straight from the rule in engine/sampler.py, value by value: temperature, then
    top_k, top_p, min_p each keep the tokens at or above a value (ties together)."""
    probabilities = (logits.double() / params.temperature).softmax(-1).tolist()
    kept = list(range(len(probabilities)))
    if params.top_k > 0:
        kth_largest = sorted(probabilities, reverse=True)[params.top_k - 1]
        kept = [t for t in kept if probabilities[t] >= kth_largest]
    total = sum(probabilities[t] for t in kept)
    for value in sorted({probabilities[t] for t in kept}, reverse=True):
        upper_set = [t for t in kept if probabilities[t] >= value]
        if sum(probabilities[t] for t in upper_set) >= params.top_p * total:
            kept = upper_set
            break
    top = max(probabilities)
    kept = [t for t in kept if probabilities[t] >= params.min_p * top]
    expected = torch.zeros(len(probabilities), dtype=torch.float64)
    expected[kept] = torch.tensor([probabilities[t] for t in kept], dtype=torch.float64)
    return expected / expected.sum()


@pytest.mark.parametrize(
    "params",
    [
        SamplingParams(temperature=1.0),
        SamplingParams(temperature=1.0, top_k=3),
        SamplingParams(temperature=1.0, top_p=0.8),
        SamplingParams(temperature=1.0, min_p=0.2),
        SamplingParams(temperature=0.7, top_k=5, top_p=0.9, min_p=0.1),
    ],
    ids=["plain", "top_k", "top_p", "min_p", "combined"],
)
def test_sampling_distribution_chi_square(params: SamplingParams) -> None:
    vocab_size = 8
    logits = torch.tensor([2.0, 1.5, 1.0, 0.5, 0.0, -0.5, -1.0, -3.0])
    num_samples = 20000
    sampler = Sampler(vocab_size, [], seed=0)
    seqs = [_seq(params)] * num_samples
    tokens = torch.tensor(
        [r.token_id for r in sampler.sample(logits.expand(num_samples, vocab_size), seqs)]
    )
    counts = torch.bincount(tokens, minlength=vocab_size).double()
    expected = _expected_distribution(logits, params) * num_samples
    allowed = expected > 0
    assert counts[~allowed].sum() == 0, "sampled a token the filters exclude"
    statistic = ((counts[allowed] - expected[allowed]) ** 2 / expected[allowed]).sum().item()
    degrees_of_freedom = int(allowed.sum()) - 1
    assert statistic < CHI_SQUARE_CRITICAL[degrees_of_freedom], (statistic, counts, expected)


def test_ties_at_a_boundary_stay_in() -> None:
    """[2, 1, 1, 0]: top_k=2 keeps both 1s (the 2nd largest value), and top_p, whose
    boundary falls inside the tie, keeps both too; min_p keeps or drops them together."""

    def probabilities(top_k: int = 0, top_p: float = 1.0, min_p: float = 0.0) -> list[float]:
        row = sampling_probabilities(
            torch.tensor([[2.0, 1.0, 1.0, 0.0]]),
            temperature=torch.tensor([1.0]),
            top_k=torch.tensor([top_k]),
            top_p=torch.tensor([top_p]),
            min_p=torch.tensor([min_p]),
        )
        return row[0].tolist()

    assert probabilities(top_k=2) == pytest.approx([0.576, 0.212, 0.212, 0.0], abs=1e-3)
    assert probabilities(top_p=0.6) == pytest.approx([0.576, 0.212, 0.212, 0.0], abs=1e-3)
    assert probabilities(min_p=0.3) == pytest.approx([0.576, 0.212, 0.212, 0.0], abs=1e-3)
    assert probabilities(min_p=0.5) == pytest.approx([1.0, 0.0, 0.0, 0.0])
    for settings in ({"top_k": 2}, {"top_p": 0.6}, {"min_p": 0.3}):
        expected = _expected_distribution(
            torch.tensor([2.0, 1.0, 1.0, 0.0]), SamplingParams(**settings)
        )
        assert probabilities(**settings) == pytest.approx(expected.tolist(), abs=1e-6)


def test_allowed_mask_limits_every_row(make_sampler: Callable[..., Sampler]) -> None:
    logits = _logits(6, seed=6)
    allowed = torch.zeros(6, VOCAB_SIZE, dtype=torch.bool)
    allowed[:, [3, 8, 13]] = True
    allowed[1] = True  # row 1 allows everything
    words = (allowed.long() << torch.arange(VOCAB_SIZE)).sum(1, keepdim=True).int()  # [6, 1]
    seqs = [
        _seq(SamplingParams(temperature=0.0)),
        _seq(SamplingParams(temperature=0.0)),
        _seq(SamplingParams(temperature=1.0, top_k=2)),
        _seq(SamplingParams(temperature=2.0, seed=4, logprobs=True)),
        _seq(SamplingParams(temperature=1.5, top_p=0.9, logit_bias={5: 50.0})),
        _seq(SamplingParams(temperature=1.0, min_p=0.5)),
    ]
    sampler = make_sampler(VOCAB_SIZE, [EOS], seed=0)
    for _ in range(4):
        results = sampler.sample(logits, seqs, words)
        tokens = [r.token_id for r in results]
        assert all(allowed[row, token] for row, token in enumerate(tokens)), tokens
        assert tokens[0] == logits[0].masked_fill(~allowed[0], float("-inf")).argmax()
        assert tokens[1] == logits[1].argmax()
        # Logprobs stay those of the raw logits, mask or not.
        raw = logits[3].log_softmax(-1)[tokens[3]].item()
        assert results[3].logprob == pytest.approx(raw, abs=1e-6)


def test_penalties_follow_their_formulas(make_sampler: Callable[..., Sampler]) -> None:
    logits = _logits(1, seed=3)
    params = SamplingParams(
        temperature=0.0, repetition_penalty=1.5, presence_penalty=0.5, frequency_penalty=0.25
    )
    prompt, output = [3, 3, 6], [6, 7, 7, 7]
    adjusted = make_sampler(VOCAB_SIZE, [EOS]).adjust_logits(
        logits, [_seq(params, prompt, output)]
    )[0]
    expected = logits[0].clone()
    for token in {3, 6, 7}:  # repetition: prompt and output
        value = expected[token]
        expected[token] = value / 1.5 if value > 0 else value * 1.5
    for token in {6, 7}:  # presence and frequency: output only
        expected[token] -= 0.5 + 0.25 * output.count(token)
    torch.testing.assert_close(adjusted, expected)
    torch.testing.assert_close(logits, _logits(1, seed=3))  # input untouched


def test_logit_bias_forces_a_token_and_ignores_out_of_vocab_ids(
    make_sampler: Callable[..., Sampler],
) -> None:
    params = SamplingParams(temperature=1.0, logit_bias={9: 100.0, VOCAB_SIZE + 5: 100.0})
    results = make_sampler(VOCAB_SIZE, [EOS], seed=0).sample(_logits(8), [_seq(params)] * 8)
    assert {r.token_id for r in results} == {9}


def test_min_tokens_masks_eos_and_stop_ids_until_reached(
    make_sampler: Callable[..., Sampler],
) -> None:
    logits = torch.zeros(1, VOCAB_SIZE)
    logits[0, EOS], logits[0, 11], logits[0, 5] = 10.0, 9.0, 8.0
    params = SamplingParams(temperature=0.0, min_tokens=2, stop_token_ids=(11,))
    sampler = make_sampler(VOCAB_SIZE, [EOS])
    assert sampler.sample(logits, [_seq(params, output=[4])])[0].token_id == 5
    assert sampler.sample(logits, [_seq(params, output=[4, 4])])[0].token_id == EOS
    ignoring = SamplingParams(temperature=0.0, min_tokens=2, ignore_eos=True, stop_token_ids=(11,))
    # With ignore_eos, EOS is an ordinary token: not a stop, so not masked.
    assert sampler.sample(logits, [_seq(ignoring)])[0].token_id == EOS


def test_logprobs_sorted_and_from_raw_logits(make_sampler: Callable[..., Sampler]) -> None:
    logits = _logits(3, seed=4)
    seqs = [
        _seq(
            SamplingParams(temperature=0.0, logprobs=True, top_logprobs=5, repetition_penalty=2.0)
        ),
        _seq(SamplingParams(temperature=0.0)),
        _seq(SamplingParams(temperature=1.0, logprobs=True, top_logprobs=0)),
    ]
    results = make_sampler(VOCAB_SIZE, [EOS], seed=0).sample(logits, seqs)
    reference = logits.log_softmax(-1)
    first = results[0]
    assert len(first.top_logprobs) == 5
    values = [value for _, value in first.top_logprobs]
    assert values == sorted(values, reverse=True)
    assert [token for token, _ in first.top_logprobs] == reference[0].topk(5).indices.tolist()
    for token, value in first.top_logprobs:
        assert value == pytest.approx(reference[0, token].item(), abs=1e-6)
    assert first.logprob == pytest.approx(reference[0, first.token_id].item(), abs=1e-6)
    assert results[1].logprob is None and results[1].top_logprobs == ()
    assert results[2].logprob == pytest.approx(reference[2, results[2].token_id].item(), abs=1e-6)
    assert results[2].top_logprobs == ()
