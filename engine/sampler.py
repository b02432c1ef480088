"""Turn a batch of next-token logits into tokens, one batched pass per step.

Order of operations (each only on the rows that ask for it):
  1. penalties: repetition (CTRL, over prompt + output), then presence/frequency
     (OpenAI, over output tokens);
  2. logit_bias (ids >= vocab_size are ignored);
  3. min_tokens: EOS (unless ignore_eos) and stop_token_ids masked to -inf while the
     sequence has fewer than min_tokens output tokens;
  4. greedy rows (temperature 0) take the argmax here;
  5. the others: temperature, then top_k, top_p, min_p (each on the distribution
     the previous one left), then sample.

Sampling is an exponential race: token = argmax(probability / E) with E ~ Exp(1)
per vocabulary entry, which picks each token with exactly its probability. For a
seeded row the noise depends only on (seed, choice index, number of output tokens so
far), never on the rest of the batch; unseeded rows draw from a per-engine stream
(`seed`, or fresh entropy).

Two backends behind one class, picked once by the model runner:
- torch (`fused=None`, the CPU default): the steps above in torch; a seeded row's
  noise comes from a torch generator seeded by `_row_seed(seed, index, position)`;
- fused kernels (`fused=KernelOps()`): penalties and bias + min_tokens masks run in
  place through `kernels.penalties`, steps 4-5 in one `kernels.sampling.sample` call
  (sort-free); a seeded row's Philox key is `_choice_key(seed, index)` and its
  counter offset the output position. Same distribution, different random stream:
  a seed gives the same tokens run after run on one backend, not across backends.

Logprobs are log_softmax of the raw model logits, before penalties, bias and
temperature: what the model believes, comparable across requests whatever their
sampling settings (vLLM's default "raw_logprobs" choice). Both backends compute them
here in torch, only for the rows that ask (the kernel's own logprobs are of the
processed logits, so they are not used).
"""

from __future__ import annotations

from collections.abc import Sequence as SequenceOf
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from engine.request import Sequence
from engine.sampling_params import SamplingParams

if TYPE_CHECKING:  # importing it loads triton: only the kernel backend's runner does
    from engine.kernel_ops import KernelOps

_MASK64 = (1 << 64) - 1


@dataclass(frozen=True)
class SampleResult:
    token_id: int
    # log P(token_id) under the raw model logits; None unless params.logprobs.
    logprob: float | None
    # params.top_logprobs (token id, logprob) pairs, highest first; () when not asked.
    top_logprobs: tuple[tuple[int, float], ...]


class Sampler:
    def __init__(
        self,
        vocab_size: int,
        eos_token_ids: SequenceOf[int],
        seed: int | None = None,
        fused: KernelOps | None = None,
    ) -> None:
        self.vocab_size = vocab_size
        self.eos_token_ids = tuple(eos_token_ids)
        # Seed of the generator shared by unseeded rows; None = fresh entropy.
        self.seed = seed
        # The kernel backend; None = torch.
        self.fused = fused
        self._shared_generators: dict[torch.device, torch.Generator] = {}

    def sample(
        self,
        logits: torch.Tensor,  # [num_seqs, vocab_size] float32
        seqs: list[Sequence],
    ) -> list[SampleResult]:
        """One token per row of `logits`; `seqs[i]` is the sequence of row i."""
        raw_logits = logits
        logits = self.adjust_logits(logits, seqs)
        if self.fused is None:
            token_ids = self._choose_torch(logits, seqs)
        else:
            token_ids = self._choose_fused(logits, seqs)
        chosen = token_ids.tolist()
        logprob_rows = [row for row, seq in enumerate(seqs) if seq.params.logprobs]
        if not logprob_rows:
            return [SampleResult(token, None, ()) for token in chosen]
        return self._with_logprobs(raw_logits, chosen, seqs, logprob_rows)

    def adjust_logits(
        self,
        logits: torch.Tensor,  # [num_seqs, vocab_size] float32
        seqs: list[Sequence],
    ) -> torch.Tensor:  # [num_seqs, vocab_size]; `logits` itself when no row needs a change
        """Penalties, logit_bias and min_tokens masking (steps 1-3), on a copy."""
        if not any(_needs_processing(seq.params) for seq in seqs):
            return logits
        logits = logits.clone()
        if self.fused is None:
            self._apply_penalties(logits, seqs)
        else:
            self._apply_penalties_fused(logits, seqs)
        self._apply_bias_and_min_tokens(logits, seqs)
        return logits

    def _apply_penalties(self, logits: torch.Tensor, seqs: list[Sequence]) -> None:
        """Repetition, presence and frequency penalties, in place."""
        repetition_rows = [r for r, s in enumerate(seqs) if s.params.repetition_penalty != 1.0]
        if repetition_rows:
            seen = (
                self._token_counts([seqs[r].token_ids for r in repetition_rows], logits.device) > 0
            )  # [R, V]
            penalty = torch.tensor(
                [seqs[r].params.repetition_penalty for r in repetition_rows], device=logits.device
            )[:, None]
            rows = logits[repetition_rows]
            # CTRL: shrink a seen token's logit toward "less likely" whatever its sign.
            penalised = torch.where(rows > 0, rows / penalty, rows * penalty)
            logits[repetition_rows] = torch.where(seen, penalised, rows)
        additive_rows = [
            r
            for r, s in enumerate(seqs)
            if s.params.presence_penalty != 0.0 or s.params.frequency_penalty != 0.0
        ]
        if additive_rows:
            counts = self._token_counts(
                [seqs[r].output_token_ids for r in additive_rows], logits.device
            )  # [R, V]
            presence = torch.tensor(
                [seqs[r].params.presence_penalty for r in additive_rows], device=logits.device
            )[:, None]
            frequency = torch.tensor(
                [seqs[r].params.frequency_penalty for r in additive_rows], device=logits.device
            )[:, None]
            logits[additive_rows] -= presence * (counts > 0) + frequency * counts

    def _apply_penalties_fused(self, logits: torch.Tensor, seqs: list[Sequence]) -> None:
        """The same penalties in one kernel pass over the rows that have any, in place."""
        assert self.fused is not None
        rows = [r for r, s in enumerate(seqs) if _has_penalty(s.params)]
        if not rows:
            return
        device = logits.device
        penalised = [seqs[r] for r in rows]
        output_counts = self._token_counts(
            [s.output_token_ids for s in penalised], device, torch.int32
        )  # [R, V]
        in_prompt = self._token_counts([s.prompt_token_ids for s in penalised], device) > 0
        params = [s.params for s in penalised]
        factors = torch.tensor(
            [
                [p.repetition_penalty for p in params],
                [p.frequency_penalty for p in params],
                [p.presence_penalty for p in params],
            ],
            dtype=torch.float32,
        ).to(device)  # [3, R]
        selected = logits[rows]  # [R, V], a copy the kernel updates in place
        self.fused.apply_penalties(
            selected, output_counts, self.fused.pack_token_mask(in_prompt), *factors
        )
        logits[rows] = selected

    def _token_counts(
        self,
        token_lists: list[list[int]],
        device: torch.device,
        dtype: torch.dtype = torch.float32,
    ) -> torch.Tensor:
        """[len(token_lists), vocab_size]: occurrences of each id (ids >= vocab dropped).

        A column slice of a [R, vocab_size + 1] tensor: rows are not contiguous."""
        width = max((len(tokens) for tokens in token_lists), default=0)
        # Pad with vocab_size: a spare column that is cut off afterwards.
        padded = [tokens + [self.vocab_size] * (width - len(tokens)) for tokens in token_lists]
        index = torch.tensor(padded, dtype=torch.int64).reshape(len(token_lists), width)
        index = index.clamp_(max=self.vocab_size).to(device)
        counts = torch.zeros(len(token_lists), self.vocab_size + 1, dtype=dtype, device=device)
        counts.scatter_add_(1, index, torch.ones_like(index, dtype=dtype))
        return counts[:, : self.vocab_size]

    def _apply_bias_and_min_tokens(self, logits: torch.Tensor, seqs: list[Sequence]) -> None:
        """Add each row's `_additions` to its logits, in place."""
        additions = [self._additions(seq) for seq in seqs]
        width = max(len(row) for row in additions)
        if width == 0:
            return
        device = logits.device
        if self.fused is None:
            rows = [r for r, row in enumerate(additions) for _ in row]
            columns = [token for row in additions for token in row]
            values = [value for row in additions for value in row.values()]
            index = (torch.tensor(rows, device=device), torch.tensor(columns, device=device))
            logits.index_put_(index, torch.tensor(values, device=device), accumulate=True)
            return
        # [num_seqs, width], padded with token -1.
        token_ids = [list(row) + [-1] * (width - len(row)) for row in additions]
        biases = [list(row.values()) + [0.0] * (width - len(row)) for row in additions]
        self.fused.apply_logit_bias(
            logits,
            torch.tensor(token_ids, dtype=torch.int32).to(device),
            torch.tensor(biases, dtype=torch.float32).to(device),
        )

    def _additions(self, seq: Sequence) -> dict[int, float]:
        """Token id -> what to add to its logit: the logit_bias (ids >= vocab_size ignored),
        and -inf for the stop tokens while min_tokens is not reached (whatever their bias)."""
        params = seq.params
        additions = {t: bias for t, bias in params.logit_bias.items() if t < self.vocab_size}
        if seq.num_output_tokens < params.min_tokens:
            stops = set(params.stop_token_ids)
            if not params.ignore_eos:
                stops.update(self.eos_token_ids)
            additions.update({t: float("-inf") for t in stops if t < self.vocab_size})
        return additions

    def _choose_torch(
        self,
        logits: torch.Tensor,  # [num_seqs, vocab_size], processed
        seqs: list[Sequence],
    ) -> torch.Tensor:  # [num_seqs] int64
        token_ids = logits.argmax(dim=-1)  # final for greedy rows
        random_rows = [row for row, seq in enumerate(seqs) if not seq.params.greedy]
        if random_rows:
            token_ids[random_rows] = self._sample_random(logits[random_rows], seqs, random_rows)
        return token_ids

    def _sample_random(
        self,
        logits: torch.Tensor,  # [R, vocab_size], penalised
        seqs: list[Sequence],
        rows: list[int],
    ) -> torch.Tensor:  # [R] int64
        device = logits.device
        params = [seqs[r].params for r in rows]
        temperature = torch.tensor([p.temperature for p in params], device=device)[:, None]
        logits = _filter(
            logits / temperature,
            top_k=[p.top_k if p.top_k > 0 else 0 for p in params],
            top_p=[p.top_p for p in params],
            min_p=[p.min_p for p in params],
        )
        probabilities = logits.softmax(dim=-1)
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
                generator.manual_seed(_row_seed(p.seed, seq.index, seq.num_output_tokens))
                noise[i].exponential_(generator=generator)
        # Exp(1) can return 0 for a tiny share of draws; never divide by it.
        return (probabilities / noise.clamp_(min=1e-20)).argmax(dim=-1)

    def _choose_fused(
        self,
        logits: torch.Tensor,  # [num_seqs, vocab_size] float32, processed
        seqs: list[Sequence],
    ) -> torch.Tensor:  # [num_seqs] int64
        """All rows, greedy or not, in one kernel call (temperature 0 = argmax there)."""
        assert self.fused is not None
        device = logits.device
        params = [seq.params for seq in seqs]
        # Philox keys: seeded rows from (seed, choice index); unseeded random rows from
        # the engine's stream, fresh each step; greedy rows draw nothing.
        num_unseeded = sum(1 for p in params if p.seed is None and not p.greedy)
        fresh = iter(
            torch.randint(
                0, 1 << 62, (num_unseeded,), generator=self._shared_generator(torch.device("cpu"))
            ).tolist()
        )
        keys = [
            _choice_key(p.seed, seq.index) if p.seed is not None else 0 if p.greedy else next(fresh)
            for p, seq in zip(params, seqs, strict=True)
        ]
        floats = torch.tensor(
            [[p.temperature for p in params], [p.top_p for p in params], [p.min_p for p in params]],
            dtype=torch.float32,
        ).to(device)  # [3, num_seqs]: temperature, top_p, min_p
        integers = torch.tensor(
            [[max(p.top_k, 0) for p in params], keys, [seq.num_output_tokens for seq in seqs]],
            dtype=torch.int64,
        ).to(device)  # [3, num_seqs]: top_k, Philox key, offset (the output position)
        token_ids, _processed_logprobs = self.fused.sample(
            logits, floats[0], integers[0].int(), floats[1], floats[2], integers[1], integers[2]
        )
        return token_ids

    def _shared_generator(self, device: torch.device) -> torch.Generator:
        generator = self._shared_generators.get(device)
        if generator is None:
            generator = torch.Generator(device=device)
            if self.seed is None:
                generator.seed()
            else:
                generator.manual_seed(self.seed)
            self._shared_generators[device] = generator
        return generator

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


def _needs_processing(params: SamplingParams) -> bool:
    """Whether a row needs anything before argmax / sampling (most rows do not)."""
    return bool(_has_penalty(params) or params.logit_bias or params.min_tokens)


def _has_penalty(params: SamplingParams) -> bool:
    return (
        params.repetition_penalty != 1.0
        or params.presence_penalty != 0.0
        or params.frequency_penalty != 0.0
    )


def _filter(
    logits: torch.Tensor,  # [R, V], temperature applied
    top_k: list[int],  # 0 = off
    top_p: list[float],  # 1.0 = off
    min_p: list[float],  # 0.0 = off
) -> torch.Tensor:  # [R, V] with filtered-out entries at -inf
    device = logits.device
    if any(top_k) or any(p < 1.0 for p in top_p):
        sorted_logits, order = logits.sort(dim=-1, descending=True)  # [R, V]
        vocab_size = logits.shape[1]
        ranks = torch.arange(vocab_size, device=device)[None, :]
        k = torch.tensor([k if k > 0 else vocab_size for k in top_k], device=device)[:, None]
        sorted_logits = sorted_logits.masked_fill(ranks >= k, float("-inf"))
        sorted_probabilities = sorted_logits.softmax(dim=-1)
        # Mass strictly before each token: keep it while that mass is still < top_p,
        # i.e. the smallest prefix whose mass reaches top_p (the top token always stays).
        mass_before = sorted_probabilities.cumsum(dim=-1) - sorted_probabilities
        p = torch.tensor(top_p, device=device)[:, None]
        sorted_logits = sorted_logits.masked_fill(mass_before >= p, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter_(1, order, sorted_logits)
    if any(m > 0.0 for m in min_p):
        # p_i >= min_p * p_max  <=>  logit_i >= logit_max + log(min_p).
        threshold = torch.tensor(min_p, device=device)[:, None].log()
        top = logits.max(dim=-1, keepdim=True).values
        logits = logits.masked_fill(logits < top + threshold, float("-inf"))
    return logits


def _row_seed(seed: int, index: int, step: int) -> int:
    """A 63-bit torch generator seed from (request seed, choice index, output position)."""
    return _splitmix64((_choice_state(seed, index) + step * 0xBF58476D1CE4E5B9) & _MASK64) >> 1


def _choice_key(seed: int, index: int) -> int:
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
