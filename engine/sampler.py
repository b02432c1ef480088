"""Turn a batch of next-token logits into tokens, one batched pass per step.

Order of operations (each only on the rows that ask for it):
  1. penalties: repetition (CTRL, over prompt + output), then presence/frequency
     (OpenAI, over output tokens);
  2. logit_bias (ids >= vocab_size are ignored);
  3. min_tokens: EOS (unless ignore_eos) and stop_token_ids masked to -inf while the
     sequence has fewer than min_tokens output tokens (rows under a grammar: not here, see
     step 4);
  4. the allowed-token mask, when one is given (structured output, `engine.structured`):
     a masked token is never drawn, whatever its bias, greedy rows included. A grammar's
     row keeps EOS out for min_tokens itself, unless EOS is all the grammar allows
     (masking it here too would leave the row nothing to draw);
  5. greedy rows (temperature 0) take the argmax, the lowest token id among tied maxima;
  6. the others: temperature, then top_k, top_p, min_p, then sample.

The sampling rule, one for both backends (`tritium_kernels.sampling.sampling_probs_ref` is the
kernel's reference of it). Per row, x = logits / temperature over the allowed tokens:
  - top_k keeps x >= the k-th largest value of x;
  - top_p keeps x >= t_p, the largest value whose upper set {x >= t_p} holds at least
    top_p of the probability mass top_k kept;
  - min_p keeps x >= max(x) + log(min_p), i.e. p >= min_p * p_max (unchanged by the
    renormalisations before it);
and the row draws from the softmax over what all three keep. Every filter is a
threshold on the value, so tied tokens share one fate and a tie at a boundary stays in:
logits [2, 1, 1, 0] with top_k=2 keep three tokens, [0.576, 0.212, 0.212, 0]; top_p keeps
the whole tied group whose mass crosses top_p. Why: a token's fate then depends on its
value alone, never on its index or on how a sort orders equal values (bf16 logits tie
often); it is the top_k rule of transformers' TopKLogitsWarper and of vLLM; and it is
what a sort-free kernel computes (thresholds by search, no ranks). Sort-based top_p
code splits a straddling tie by sort order instead; we do not.

Sampling is an exponential race: token = argmax(probability / E) with E ~ Exp(1)
per vocabulary entry, which picks each token with exactly its probability. For a
seeded row the noise depends only on (seed, choice index, number of output tokens so
far), never on the rest of the batch; unseeded rows draw from a per-engine stream
(`seed`, or fresh entropy).

Two backends behind `SamplingBackend`, picked once when the Sampler is built:
- `TorchSampling` (the CPU default): the steps above in torch; a seeded row's noise
  comes from a torch generator seeded by `row_seed(seed, index, position)`;
- `engine.kernel_ops.KernelSampling`: penalties and the additions through
  `tritium_kernels.penalties`, steps 4-6 in one sort-free `tritium_kernels.sampling.sample` call; a
  seeded row's Philox key is `choice_key(seed, index)` and its counter offset the
  output position. Same distribution, different random stream: a seed gives the same
  tokens run after run on one backend, not across backends.

Logprobs are log_softmax of the raw model logits, before penalties, bias and
temperature: what the model believes, comparable across requests whatever their
sampling settings (vLLM's default "raw_logprobs" choice). They are computed here, in
torch, once for both backends and only for the rows that ask.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from collections.abc import Sequence as SequenceOf
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch

from engine.request import Sequence
from engine.sampling_params import SamplingParams

_MASK64 = (1 << 64) - 1


@dataclass(frozen=True)
class SampleResult:
    token_id: int
    # log P(token_id) under the raw model logits; None unless params.logprobs.
    logprob: float | None
    # params.top_logprobs (token id, logprob) pairs, highest first; () when not asked.
    top_logprobs: tuple[tuple[int, float], ...]


@dataclass(frozen=True)
class Penalties:
    """Penalty inputs of R rows (the rows that have any penalty)."""

    output_counts: torch.Tensor  # [R, vocab_size] int32: occurrences in the output so far
    in_prompt: torch.Tensor  # [R, vocab_size] bool: token occurs in the prompt
    repetition: torch.Tensor  # [R] float32, 1 = off (applies to prompt and output tokens)
    frequency: torch.Tensor  # [R] float32, 0 = off
    presence: torch.Tensor  # [R] float32, 0 = off


@runtime_checkable
class SamplingBackend(Protocol):
    """What the Sampler asks of a backend; `logits` are [num_rows, vocab_size] float32."""

    def apply_penalties(self, logits: torch.Tensor, penalties: Penalties) -> None:
        """Repetition, frequency and presence penalties on every row, in place."""
        ...

    def add_to_logits(
        self,
        logits: torch.Tensor,
        token_ids: torch.Tensor,  # [num_rows, width] int32, unique per row; -1 pads
        values: torch.Tensor,  # [num_rows, width] float32
    ) -> None:
        """logits[r, token_ids[r, j]] += values[r, j] where token_ids[r, j] >= 0, in place."""
        ...

    def choose(
        self,
        logits: torch.Tensor,  # processed: penalties and additions applied
        seqs: list[Sequence],  # seqs[r]: temperature, top_k/p, min_p, seed of row r
        allowed: torch.Tensor | None = None,  # [num_rows, cdiv(vocab_size, 32)] int32 bits
    ) -> torch.Tensor:  # [num_rows] int64
        """One token per row under the module's rule; bit j of allowed[r, w] allows token
        32 * w + j in row r (every row must allow one), None allows every token."""
        ...


class Sampler:
    def __init__(
        self,
        vocab_size: int,
        eos_token_ids: SequenceOf[int],
        seed: int | None = None,
        backend: Callable[[int | None], SamplingBackend] | None = None,
    ) -> None:
        """`backend`: the backend's class (or any factory) called once with `seed`, the
        seed of the stream shared by unseeded rows (None = fresh entropy); default torch."""
        self.vocab_size = vocab_size
        self.eos_token_ids = tuple(eos_token_ids)
        self.backend: SamplingBackend = (backend or TorchSampling)(seed)

    def sample(
        self,
        logits: torch.Tensor,  # [num_seqs, vocab_size] float32
        seqs: list[Sequence],
        allowed: torch.Tensor | None = None,  # [num_seqs, cdiv(vocab_size, 32)] int32 bits
    ) -> list[SampleResult]:
        """One token per row of `logits`; `seqs[i]` is the sequence of row i."""
        token_ids = self.backend.choose(self.adjust_logits(logits, seqs), seqs, allowed)
        chosen = token_ids.tolist()
        logprob_rows = [row for row, seq in enumerate(seqs) if seq.params.logprobs]
        if not logprob_rows:
            return [SampleResult(token, None, ()) for token in chosen]
        return self._with_logprobs(logits, chosen, seqs, logprob_rows)

    def adjust_logits(
        self,
        logits: torch.Tensor,  # [num_seqs, vocab_size] float32
        seqs: list[Sequence],
    ) -> torch.Tensor:  # [num_seqs, vocab_size]; `logits` itself when no row needs a change
        """Penalties, logit_bias and min_tokens masking (steps 1-3), on a copy."""
        if not any(_needs_processing(seq.params) for seq in seqs):
            return logits
        logits = logits.clone()
        rows = [r for r, s in enumerate(seqs) if _has_penalty(s.params)]
        if rows:
            selected = logits[rows]  # [R, V], a copy the backend updates in place
            penalties = self._penalties([seqs[r] for r in rows], logits.device)
            self.backend.apply_penalties(selected, penalties)
            logits[rows] = selected
        additions = [self._additions(seq) for seq in seqs]
        width = max(len(row) for row in additions)
        if width:
            # [num_seqs, width], padded with token -1.
            token_ids = [list(row) + [-1] * (width - len(row)) for row in additions]
            values = [list(row.values()) + [0.0] * (width - len(row)) for row in additions]
            self.backend.add_to_logits(
                logits,
                token_ids=torch.tensor(token_ids, dtype=torch.int32).to(logits.device),
                values=torch.tensor(values, dtype=torch.float32).to(logits.device),
            )
        return logits

    def _penalties(self, seqs: list[Sequence], device: torch.device) -> Penalties:
        factors = torch.tensor(
            [
                [s.params.repetition_penalty for s in seqs],
                [s.params.frequency_penalty for s in seqs],
                [s.params.presence_penalty for s in seqs],
            ],
            dtype=torch.float32,
        ).to(device)  # [3, R]
        return Penalties(
            output_counts=self._token_counts([s.output_token_ids for s in seqs], device),
            in_prompt=self._token_counts([s.prompt_token_ids for s in seqs], device) > 0,
            repetition=factors[0],
            frequency=factors[1],
            presence=factors[2],
        )

    def _token_counts(self, token_lists: list[list[int]], device: torch.device) -> torch.Tensor:
        """[len(token_lists), vocab_size] int32: occurrences of each id (ids >= vocab dropped).

        A column slice of a [R, vocab_size + 1] tensor: rows are not contiguous."""
        width = max((len(tokens) for tokens in token_lists), default=0)
        # Pad with vocab_size: a spare column that is cut off afterwards.
        padded = [tokens + [self.vocab_size] * (width - len(tokens)) for tokens in token_lists]
        index = torch.tensor(padded, dtype=torch.int64).reshape(len(token_lists), width)
        index = index.clamp_(max=self.vocab_size).to(device)
        counts = torch.zeros(
            len(token_lists), self.vocab_size + 1, dtype=torch.int32, device=device
        )
        counts.scatter_add_(1, index, torch.ones_like(index, dtype=torch.int32))
        return counts[:, : self.vocab_size]

    def _additions(self, seq: Sequence) -> dict[int, float]:
        """Token id -> what to add to its logit: the logit_bias (ids >= vocab_size ignored),
        and -inf for the stop tokens while min_tokens is not reached (whatever their bias;
        a row under a grammar gets that from its allowed mask instead)."""
        params = seq.params
        additions = {t: bias for t, bias in params.logit_bias.items() if t < self.vocab_size}
        if seq.num_output_tokens < params.min_tokens and params.structured_outputs is None:
            stops = set(params.stop_token_ids)
            if not params.ignore_eos:
                stops.update(self.eos_token_ids)
            additions.update({t: float("-inf") for t in stops if t < self.vocab_size})
        return additions

    def _with_logprobs(
        self,
        raw_logits: torch.Tensor,  # [num_seqs, vocab_size]
        chosen: list[int],
        seqs: list[Sequence],
        rows: list[int],
    ) -> list[SampleResult]:
        logprobs = raw_logits[rows].float().log_softmax(dim=-1)  # [L, vocab_size]
        device = logprobs.device
        chosen_logprobs = logprobs.gather(
            1, torch.tensor([chosen[r] for r in rows], device=device)[:, None]
        )[:, 0].tolist()
        most = max(seqs[r].params.top_logprobs for r in rows)
        top_values, top_ids = logprobs.topk(most, dim=-1) if most else (None, None)
        top_values_list = top_values.tolist() if top_values is not None else []
        top_ids_list = top_ids.tolist() if top_ids is not None else []
        results = [SampleResult(token, None, ()) for token in chosen]
        for i, row in enumerate(rows):
            count = seqs[row].params.top_logprobs
            top = (
                tuple(zip(top_ids_list[i][:count], top_values_list[i][:count], strict=True))
                if count
                else ()
            )
            results[row] = SampleResult(chosen[row], chosen_logprobs[i], top)
        return results


class TorchSampling:
    """The rule in torch, sorting only when a row asks for top_k or top_p."""

    def __init__(self, seed: int | None = None) -> None:
        # Seed of the stream shared by unseeded rows; None = fresh entropy.
        self.seed = seed
        self._shared_generators: dict[torch.device, torch.Generator] = {}

    def apply_penalties(self, logits: torch.Tensor, penalties: Penalties) -> None:
        counts = penalties.output_counts.float()  # [R, V]
        seen = penalties.in_prompt | (penalties.output_counts > 0)
        repetition = penalties.repetition[:, None]
        # CTRL: shrink a seen token's logit toward "less likely" whatever its sign.
        repeated = torch.where(logits > 0, logits / repetition, logits * repetition)
        logits.copy_(
            torch.where(seen, repeated, logits)
            - penalties.frequency[:, None] * counts
            - penalties.presence[:, None] * (counts > 0).float()
        )

    def add_to_logits(
        self, logits: torch.Tensor, token_ids: torch.Tensor, values: torch.Tensor
    ) -> None:
        valid = token_ids >= 0
        rows = torch.arange(token_ids.shape[0], device=logits.device)[:, None].expand_as(token_ids)
        logits.index_put_((rows[valid], token_ids[valid].long()), values[valid], accumulate=True)

    def choose(
        self,
        logits: torch.Tensor,  # [num_seqs, vocab_size] float32, processed
        seqs: list[Sequence],
        allowed: torch.Tensor | None = None,  # [num_seqs, cdiv(vocab_size, 32)] int32
    ) -> torch.Tensor:  # [num_seqs] int64
        if allowed is not None:
            logits = mask_disallowed(logits, allowed)
        token_ids = logits.argmax(dim=-1)  # final for greedy rows
        random_rows = [row for row, seq in enumerate(seqs) if not seq.params.greedy]
        if random_rows:
            token_ids[random_rows] = self._sample_random(logits[random_rows], seqs, random_rows)
        return token_ids

    def _sample_random(
        self,
        logits: torch.Tensor,  # [R, vocab_size], processed
        seqs: list[Sequence],
        rows: list[int],
    ) -> torch.Tensor:  # [R] int64
        device = logits.device
        params = [seqs[r].params for r in rows]
        probabilities = sampling_probabilities(
            logits,
            temperature=torch.tensor([p.temperature for p in params], device=device),
            top_k=torch.tensor([max(p.top_k, 0) for p in params], device=device),
            top_p=torch.tensor([p.top_p for p in params], device=device),
            min_p=torch.tensor([p.min_p for p in params], device=device),
        )
        noise = torch.empty_like(probabilities)
        unseeded = [i for i, p in enumerate(params) if p.seed is None]
        if unseeded:
            noise[unseeded] = torch.empty(
                len(unseeded), probabilities.shape[1], device=device
            ).exponential_(generator=self._shared_generator(device))
        for i, p in enumerate(params):
            if p.seed is not None:
                seq = seqs[rows[i]]
                generator = torch.Generator(device=device)
                generator.manual_seed(row_seed(p.seed, seq.index, seq.num_output_tokens))
                noise[i].exponential_(generator=generator)
        # Exp(1) can return 0 for a tiny share of draws; never divide by it.
        return (probabilities / noise.clamp_(min=1e-20)).argmax(dim=-1)

    def _shared_generator(self, device: torch.device) -> torch.Generator:
        generator = self._shared_generators.get(device)
        if generator is None:
            generator = engine_generator(self.seed, device)
            self._shared_generators[device] = generator
        return generator


def sampling_probabilities(
    logits: torch.Tensor,  # [R, vocab_size] float32, processed; disallowed tokens -inf
    temperature: torch.Tensor,  # [R] float32, > 0
    top_k: torch.Tensor,  # [R] int64, 0 = off
    top_p: torch.Tensor,  # [R] float32, 1 = off
    min_p: torch.Tensor,  # [R] float32, 0 = off
) -> torch.Tensor:  # [R, vocab_size] float32: what each row draws from, 0 where filtered
    """The module's rule: keep x = logits / temperature >= the largest of the top_k,
    top_p and min_p thresholds, softmax over the kept values."""
    scaled = logits / temperature[:, None]
    top = scaled.max(dim=-1, keepdim=True).values  # [R, 1]
    threshold = top + min_p[:, None].log()  # min_p 0: -inf, keeps every token
    if bool((top_k > 0).any()) or bool((top_p < 1.0).any()):
        threshold = torch.maximum(threshold, _top_k_top_p_threshold(scaled, top_k, top_p))
    return scaled.masked_fill(scaled < threshold, float("-inf")).softmax(dim=-1)


def _top_k_top_p_threshold(
    scaled: torch.Tensor,  # [R, V]
    top_k: torch.Tensor,  # [R] int64, 0 = off
    top_p: torch.Tensor,  # [R] float32, 1 = off
) -> torch.Tensor:  # [R, 1]: the larger of the two thresholds (-inf where both are off)
    vocab_size = scaled.shape[1]
    values = scaled.sort(dim=-1, descending=True).values  # [R, V]
    k = torch.where(top_k > 0, top_k, vocab_size).clamp(max=vocab_size)
    top_k_threshold = values.gather(1, k[:, None] - 1)  # the k-th largest value, ties and all
    # Mass of the upper set {x >= v} for each sorted value v, within what top_k kept: the
    # cumulative sum at v's last tie.
    weights = (values - values[:, :1]).exp().masked_fill(values < top_k_threshold, 0.0)
    cumulative = weights.cumsum(dim=-1)
    last_tie = torch.searchsorted(-values, -values, right=True) - 1
    mass_at_or_above = cumulative.gather(1, last_tie)  # non-decreasing along the row
    short = mass_at_or_above < top_p[:, None] * cumulative[:, -1:]
    # The first value whose upper set holds enough: the largest such value.
    first_enough = short.sum(dim=-1, keepdim=True).clamp(max=vocab_size - 1)
    top_p_threshold = values.gather(1, first_enough)
    top_p_threshold = top_p_threshold.masked_fill(top_p[:, None] >= 1.0, float("-inf"))
    return torch.maximum(top_k_threshold, top_p_threshold)


def unpack_bitmask(
    words: torch.Tensor,  # [R, cdiv(vocab_size, 32)] int32: bit j of word w = token 32 w + j
    vocab_size: int,
) -> torch.Tensor:  # [R, vocab_size] bool
    bit_values = torch.tensor([1 << bit for bit in range(8)], dtype=torch.uint8, device=words.device)
    return ((_bitmask_bytes(words)[:, :, None] & bit_values) != 0).reshape(words.shape[0], -1)[
        :, :vocab_size
    ]


def mask_disallowed(
    logits: torch.Tensor,  # [R, vocab_size] float32
    words: torch.Tensor,  # [R, cdiv(vocab_size, 32)] int32, unpack_bitmask's layout
) -> torch.Tensor:  # [R, vocab_size]: logits, -inf where the bitmask disallows
    """logits + (0 or -inf per token), the addend looked up a byte of the mask at a time:
    about 1 ms for 32 rows of 49,152 on one CPU core, where unpacking bits to a bool mask
    and `masked_fill` took 30 (the torch backend's whole cost of structured output)."""
    byte_values = torch.arange(256, device=words.device)[:, None]
    bits = torch.arange(8, device=words.device)
    addend = torch.where((byte_values >> bits) & 1 == 1, 0.0, float("-inf"))  # [256, 8]
    per_token = torch.nn.functional.embedding(_bitmask_bytes(words).long(), addend)
    return logits + per_token.reshape(words.shape[0], -1)[:, : logits.shape[1]]


def _bitmask_bytes(words: torch.Tensor) -> torch.Tensor:  # [R, 4 * W] uint8
    """The mask's bytes in token order: byte k of word w holds tokens 32 w + 8 k .. + 7,
    which is how a little-endian machine (every one torch runs on) stores the words."""
    if sys.byteorder != "little":
        raise RuntimeError("the allowed-token bitmask is read as little-endian bytes")
    return words.contiguous().view(torch.uint8)


def engine_generator(seed: int | None, device: torch.device) -> torch.Generator:
    """The stream of the rows without a seed: from `seed`, or fresh entropy when None."""
    generator = torch.Generator(device=device)
    if seed is None:
        generator.seed()
    else:
        generator.manual_seed(seed)
    return generator


def _needs_processing(params: SamplingParams) -> bool:
    """Whether a row needs anything before argmax / sampling (most rows do not)."""
    return bool(_has_penalty(params) or params.logit_bias or params.min_tokens)


def _has_penalty(params: SamplingParams) -> bool:
    return (
        params.repetition_penalty != 1.0
        or params.presence_penalty != 0.0
        or params.frequency_penalty != 0.0
    )


def row_seed(seed: int, index: int, step: int) -> int:
    """A 63-bit torch generator seed from (request seed, choice index, output position)."""
    return _splitmix64((_choice_state(seed, index) + step * 0xBF58476D1CE4E5B9) & _MASK64) >> 1


def choice_key(seed: int, index: int) -> int:
    """A 63-bit Philox key from (request seed, choice index); the output position is
    the kernel's counter offset."""
    return _choice_state(seed, index) >> 1


def _choice_state(seed: int, index: int) -> int:
    value = (seed & _MASK64) ^ 0x9E3779B97F4A7C15
    return _splitmix64((value + index * 0xBF58476D1CE4E5B9) & _MASK64)


def _splitmix64(value: int) -> int:
    value = (value + 0x9E3779B97F4A7C15) & _MASK64
    value = ((value ^ (value >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    value = ((value ^ (value >> 27)) * 0x94D049BB133111EB) & _MASK64
    return value ^ (value >> 31)
