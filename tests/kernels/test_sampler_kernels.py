"""The engine's Sampler on the fused kernels (`Sampler(fused=KernelOps())`), interpreted on CPU.

The backend-independent tests of tests/engine/test_sampler.py run here a second time,
with a `make_sampler` that builds the kernel path. The tests below check where the two
paths must agree exactly (processed logits, greedy tokens, logprobs) and what only
random rows show (min_tokens masks, the engine's seed stream).
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import pytest
import torch

from engine.kernel_ops import KernelOps
from engine.sampler import Sampler
from engine.sampling_params import SamplingParams
from tests.engine import test_sampler as torch_path
from tests.engine.test_sampler import EOS, VOCAB_SIZE, _logits, _seq

# Collected again in this module, so they take this module's `make_sampler`.
test_greedy_takes_argmax = torch_path.test_greedy_takes_argmax
test_seeded_row_ignores_batch_composition = torch_path.test_seeded_row_ignores_batch_composition
test_penalties_follow_their_formulas = torch_path.test_penalties_follow_their_formulas
test_logit_bias_forces_a_token_and_ignores_out_of_vocab_ids = (
    torch_path.test_logit_bias_forces_a_token_and_ignores_out_of_vocab_ids
)
test_min_tokens_masks_eos_and_stop_ids_until_reached = (
    torch_path.test_min_tokens_masks_eos_and_stop_ids_until_reached
)
test_logprobs_sorted_and_from_raw_logits = torch_path.test_logprobs_sorted_and_from_raw_logits


@pytest.fixture
def make_sampler() -> Callable[..., Sampler]:
    """Sampler(vocab_size, eos_token_ids, seed=None) on the fused kernels."""
    return functools.partial(Sampler, fused=KernelOps())


def mixed_batch() -> list:  # noqa: ANN201 - list[Sequence]
    """Rows with every logit processor on or off, greedy and random, with and without logprobs."""
    return [
        _seq(SamplingParams(temperature=0.0, logprobs=True, top_logprobs=3, repetition_penalty=1.7),
             prompt=[3, 3, 9], output=[9, 12]),
        _seq(SamplingParams(temperature=0.0)),
        _seq(SamplingParams(temperature=0.0, logprobs=True, presence_penalty=0.8, frequency_penalty=-0.3,
                            logit_bias={5: 3.0, EOS: 50.0, VOCAB_SIZE + 2: 9.0}, min_tokens=4),
             output=[5, 5, 7]),
        _seq(SamplingParams(temperature=0.9, top_p=0.8, seed=3, logprobs=True, top_logprobs=2,
                            logit_bias={0: -100.0})),
        _seq(SamplingParams(temperature=0.0, logprobs=True, min_tokens=2, ignore_eos=True,
                            stop_token_ids=(11,), logit_bias={11: 7.0}), output=[4]),
    ]  # fmt: skip


def test_processed_logits_greedy_tokens_and_logprobs_equal_the_torch_path() -> None:
    logits = _logits(5, seed=11)
    seqs = mixed_batch()
    torch_sampler = Sampler(VOCAB_SIZE, [EOS], seed=0)
    kernel_sampler = Sampler(VOCAB_SIZE, [EOS], seed=0, fused=KernelOps())

    expected = torch_sampler.adjust_logits(logits, seqs)
    actual = kernel_sampler.adjust_logits(logits, seqs)
    torch.testing.assert_close(actual, expected)  # -inf (min_tokens masks) in the same places
    assert actual[2, EOS] == float("-inf") and actual[4, 11] == float("-inf")
    torch.testing.assert_close(logits, _logits(5, seed=11))  # input untouched

    want = torch_sampler.sample(logits, seqs)
    got = kernel_sampler.sample(logits, seqs)
    raw = logits.log_softmax(-1)
    for row, (ours, theirs) in enumerate(zip(got, want, strict=True)):
        if seqs[row].params.greedy:
            assert ours.token_id == theirs.token_id, row
        if seqs[row].params.logprobs:
            # Raw model logits, not the processed ones the kernel sampled from.
            assert ours.logprob == pytest.approx(raw[row, ours.token_id].item(), abs=1e-6)
            assert [t for t, _ in ours.top_logprobs] == [t for t, _ in theirs.top_logprobs]
            assert [v for _, v in ours.top_logprobs] == pytest.approx([v for _, v in theirs.top_logprobs])
        else:
            assert ours.logprob is None and ours.top_logprobs == ()
    assert got[3].token_id != 0  # biased to -100 on top of the nucleus


def test_min_tokens_and_engine_seed_on_random_rows() -> None:
    logits = torch.zeros(6, VOCAB_SIZE)
    logits[:, EOS], logits[:, 11] = 12.0, 11.0  # EOS or 11 nearly always, unless masked
    params = SamplingParams(temperature=1.0, min_tokens=3, stop_token_ids=(11,))
    early = [_seq(params, output=[4, 4]) for _ in range(6)]
    done = [_seq(params, output=[4, 4, 4]) for _ in range(6)]

    def draw(seed: int, seqs: list) -> list[int]:  # noqa: ANN001
        return [r.token_id for r in Sampler(VOCAB_SIZE, [EOS], seed=seed, fused=KernelOps()).sample(logits, seqs)]

    assert not {EOS, 11} & set(draw(0, early))
    assert set(draw(0, done)) <= {EOS, 11}
    # Unseeded rows: the engine seed makes the stream repeatable; rows draw apart.
    uniform = torch.zeros(6, VOCAB_SIZE)
    sampler = Sampler(VOCAB_SIZE, [EOS], seed=5, fused=KernelOps())
    first = [r.token_id for r in sampler.sample(uniform, [_seq(SamplingParams())] * 6)]
    again = [r.token_id for r in Sampler(VOCAB_SIZE, [EOS], seed=5, fused=KernelOps()).sample(
        uniform, [_seq(SamplingParams())] * 6)]  # fmt: skip
    assert first == again and len(set(first)) > 1
