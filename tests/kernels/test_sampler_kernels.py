"""The engine's Sampler on the fused kernels (`Sampler(backend=KernelSampling)`),
interpreted on CPU.

The backend-independent tests of tests/engine/test_sampler.py run here a second time,
with a `make_sampler` that builds the kernel path. The tests below check where the two
paths must agree exactly (processed logits, greedy tokens, logprobs, the distribution
on tied logits) and what only random rows show (min_tokens masks, the engine's seed
stream).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from engine.kernel_ops import KernelSampling
from engine.sampler import Sampler, SamplingBackend, TorchSampling, sampling_probabilities
from engine.sampling_params import SamplingParams
from tests.engine import test_sampler as torch_path
from tests.engine.test_ops import assert_implements
from tests.engine.test_sampler import EOS, VOCAB_SIZE, _logits, _seq
from tests.kernels.kernel_testing import assert_close, fresh_generator
from tests.kernels.test_sampling import P_VALUE_FLOOR, chi_square_p_value
from tritium_kernels.sampling import pack_token_mask, sampling_probs_ref

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
test_allowed_mask_limits_every_row = torch_path.test_allowed_mask_limits_every_row


@pytest.fixture
def make_sampler() -> Callable[..., Sampler]:
    """Sampler(vocab_size, eos_token_ids, seed=None) on the fused kernels."""
    return functools.partial(Sampler, backend=KernelSampling)


def test_kernel_sampling_implements_the_protocol() -> None:
    assert_implements(KernelSampling, SamplingBackend)


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
    kernel_sampler = Sampler(VOCAB_SIZE, [EOS], seed=0, backend=KernelSampling)

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
        return [r.token_id for r in Sampler(VOCAB_SIZE, [EOS], seed=seed, backend=KernelSampling).sample(logits, seqs)]

    assert not {EOS, 11} & set(draw(0, early))
    assert set(draw(0, done)) <= {EOS, 11}
    # Unseeded rows: the engine seed makes the stream repeatable; rows draw apart.
    uniform = torch.zeros(6, VOCAB_SIZE)
    sampler = Sampler(VOCAB_SIZE, [EOS], seed=5, backend=KernelSampling)
    first = [r.token_id for r in sampler.sample(uniform, [_seq(SamplingParams())] * 6)]
    again = [r.token_id for r in Sampler(VOCAB_SIZE, [EOS], seed=5, backend=KernelSampling).sample(
        uniform, [_seq(SamplingParams())] * 6)]  # fmt: skip
    assert first == again and len(set(first)) > 1


# Ties at every level: sorted, 2 2 | 1 1 1 | 0 0 | -1. Probabilities at temperature 1:
# 0.292 each for the 2s (0.584 together), 0.107 each for the 1s (0.906 with the 2s).
TIED_LOGITS = [1.0, 2.0, 1.0, 0.0, 2.0, 1.0, -1.0, 0.0]


@pytest.mark.parametrize(
    ("params", "kept"),
    [
        (SamplingParams(top_k=1), {1, 4}),  # the two largest tie: both stay
        (SamplingParams(top_k=3), {0, 1, 2, 4, 5}),  # the 3rd largest is a 1: every 1 stays
        (SamplingParams(top_p=0.25), {1, 4}),  # one 2 reaches 0.25; its twin stays
        (SamplingParams(top_p=0.7), {0, 1, 2, 4, 5}),  # the 1s cross 0.7 together
        (SamplingParams(min_p=0.3), {0, 1, 2, 4, 5}),  # the 1s: p / p_max = 0.37
        (SamplingParams(temperature=0.5, min_p=0.3), {1, 4}),  # now 0.14: all go
        (SamplingParams(temperature=0.8, top_k=6, top_p=0.95, min_p=0.1), {0, 1, 2, 4, 5}),
    ],
    ids=["top_k-1", "top_k-3", "top_p-0.25", "top_p-0.7", "min_p", "min_p-cold", "combined"],
)
def test_both_backends_keep_ties_at_the_boundary(params: SamplingParams, kept: set[int]) -> None:
    """The same tied logits give the same distribution on both backends: the torch
    backend's probabilities equal the kernel's reference, and each backend draws every
    kept token, tied twins included, and nothing else (and passes a chi-square test)."""
    logits = torch.tensor([TIED_LOGITS])
    rows = (
        torch.tensor([params.temperature]),
        torch.tensor([params.top_k]),
        torch.tensor([params.top_p]),
        torch.tensor([params.min_p]),
    )
    reference = sampling_probs_ref(logits, *rows)[0]  # float64, the kernel's definition
    assert set(reference.nonzero()[:, 0].tolist()) == kept
    assert_close(sampling_probabilities(logits, *rows)[0], reference, torch.float32)

    num_draws = 150  # the rarest kept token (p >= 0.1) goes undrawn with p < 1e-6
    seqs = [_seq(params)] * num_draws
    for backend in (TorchSampling, KernelSampling):
        sampler = Sampler(len(TIED_LOGITS), [], seed=0, backend=backend)
        drawn = [r.token_id for r in sampler.sample(logits.expand(num_draws, -1), seqs)]
        counts = torch.bincount(torch.tensor(drawn), minlength=len(TIED_LOGITS)).double()
        assert set(counts.nonzero()[:, 0].tolist()) == kept, (backend, counts)
        assert chi_square_p_value(counts, reference) > P_VALUE_FLOOR, (backend, counts)


@pytest.mark.parametrize("vocab_size", [37, 1057])  # a partial last word; past one tile of 1024
def test_masked_rows_agree_across_backends_and_never_draw_a_masked_token(vocab_size: int) -> None:
    """Structured output's path: the allowed mask after a +100 bias on a masked token (the
    row's favourite), greedy and random rows. Both backends take the same greedy tokens
    and draw from the same distribution (the torch backend's probabilities equal the
    kernel's reference), and neither ever draws a masked token."""
    generator = fresh_generator()
    batch = 6
    logits = 2 * torch.randn(batch, vocab_size, generator=generator)
    allowed = torch.rand(batch, vocab_size, generator=generator) < 0.3
    allowed[:, vocab_size - 1] = True  # a token in the last, partial word of the mask
    favourite = logits.argmax(1)
    allowed[torch.arange(batch), favourite] = False
    words = pack_token_mask(allowed)
    settings = [
        dict(temperature=0.0),
        dict(temperature=0.0, min_tokens=3),
        dict(temperature=1.0),
        dict(temperature=1.5, top_k=5, seed=1),
        dict(temperature=0.8, top_p=0.8, seed=2),
        dict(temperature=1.0, min_p=0.1),
    ]
    seqs = [
        _seq(SamplingParams(logit_bias={int(favourite[row]): 100.0}, **setting))
        for row, setting in enumerate(settings)
    ]
    greedy = [row for row, seq in enumerate(seqs) if seq.params.greedy]
    drawn: dict[str, list[list[int]]] = {}
    for backend in (TorchSampling, KernelSampling):
        sampler = Sampler(vocab_size, [EOS], seed=0, backend=backend)
        drawn[backend.__name__] = [
            [r.token_id for r in sampler.sample(logits, seqs, words)] for _ in range(5)
        ]
        for tokens in drawn[backend.__name__]:
            assert all(allowed[row, token] for row, token in enumerate(tokens)), (backend, tokens)
    processed = Sampler(vocab_size, [EOS]).adjust_logits(logits, seqs)
    expected_greedy = processed.masked_fill(~allowed, float("-inf")).argmax(1)
    for tokens in drawn["TorchSampling"] + drawn["KernelSampling"]:
        assert [tokens[row] for row in greedy] == expected_greedy[greedy].tolist()
    random_rows = [row for row in range(batch) if row not in greedy]
    rows = (
        torch.tensor([settings[r]["temperature"] for r in random_rows]),
        torch.tensor([settings[r].get("top_k", 0) for r in random_rows]),
        torch.tensor([settings[r].get("top_p", 1.0) for r in random_rows]),
        torch.tensor([settings[r].get("min_p", 0.0) for r in random_rows]),
    )
    reference = sampling_probs_ref(processed[random_rows], *rows, allowed_mask=words[random_rows])
    ours = sampling_probabilities(processed[random_rows].masked_fill(~allowed[random_rows], float("-inf")), *rows)
    assert_close(ours, reference, torch.float32)
    assert (reference.gather(1, favourite[random_rows, None]) == 0).all()


def test_a_real_grammars_bitmask_through_the_fused_kernel(default_weights_dir: Path) -> None:
    """xgrammar's bitmask for the default model's vocabulary (49,152) is the kernel's
    layout: every token the kernel draws under it is one its matcher accepts."""
    from engine.structured import GrammarCompiler, GrammarMatchers
    from engine.tokenizer import Tokenizer

    tokenizer = Tokenizer(default_weights_dir)
    vocab_size = 49152
    compiler = GrammarCompiler(tokenizer.hf, vocab_size, tokenizer.eos_token_ids)
    grammar = compiler.compile({"json": {"type": "object", "properties": {
        "id": {"type": "integer"}, "tag": {"enum": ["a", "b"]}}, "required": ["id", "tag"]}})  # fmt: skip
    compiler.shutdown()
    matchers = GrammarMatchers(vocab_size, tokenizer.eos_token_ids)
    seqs = [_seq(SamplingParams(temperature=t, seed=s)) for t, s in ((0.0, None), (1.0, 3), (2.0, 4))]
    for seq_id, seq in enumerate(seqs):
        seq.seq_id = seq_id
        matchers.add(seq, grammar)
    sampler = Sampler(vocab_size, tokenizer.eos_token_ids, seed=0, backend=KernelSampling)
    generator = fresh_generator()
    for _ in range(4):
        logits = 3 * torch.randn(len(seqs), vocab_size, generator=generator)
        mask = matchers.allowed_mask(seqs)
        for seq, result in zip(seqs, sampler.sample(logits, seqs, mask.clone()), strict=True):
            matchers.accept(seq, result.token_id)  # raises if the grammar rejects it
            seq.append_token(result.token_id)
