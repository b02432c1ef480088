"""Seeded, reproducible workloads: the prompts and output lengths of a benchmark.

Synthetic ones are built here; `sharegpt` and `custom` read a file (benchmarks/datasets.py).

Prompts are words drawn from a fixed pool. With a tokenizer the pool is narrowed to
words that are exactly one token after a space, so a prompt of N words is N tokens
(byte-level BPE never merges across the space before a word); without one, a prompt is
about N tokens. Either way the reported input length comes from the server's usage.
Nothing is downloaded.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from pathlib import Path

# Common English words, as one string for readability; dict.fromkeys drops repeats and
# keeps the order, so prompts are the same on every run.
_WORDS = (
    "the of and to in is was for on that with as by at from his it an were are which "
    "this be or had not but first one their its new after who they have her she two "
    "been other when there all during into school time may years more most only over "
    "city some world would where later up such used many can state about national out "
    "known university united then made also well year between game being three under "
    "team both film season second water number part people church house river "
    "small music high system band north south west east name early local group family "
    "book large life back home line long work march album found place great public "
    "light stone green black white red blue open road story party power war day "
    "history island field mind point order voice heart space paper table garden window "
    "summer winter market price value level simple clear"
)
WORD_POOL = tuple(dict.fromkeys(_WORDS.split(" ")))


@dataclass(frozen=True)
class BenchRequest:
    """One request of a workload."""

    prompt: str  # the user turn (chat) or the prompt (completions)
    max_tokens: int
    system: str | None = None  # a system prompt (the shared-prefix workload)

    def as_text(self) -> str:
        """The whole prompt for endpoints without roles (completions, Triton text_input)."""
        return self.prompt if self.system is None else f"{self.system}\n\n{self.prompt}"

    def as_messages(self) -> list[dict[str, str]]:
        messages = [] if self.system is None else [{"role": "system", "content": self.system}]
        return [*messages, {"role": "user", "content": self.prompt}]


class PromptFactory:
    """Makes prompts of a given number of words (≈ tokens) from a seeded generator."""

    def __init__(self, seed: int, tokenizer_path: Path | None = None) -> None:
        self.rng = random.Random(seed)
        self.words = single_token_words(tokenizer_path) if tokenizer_path else list(WORD_POOL)

    def text(self, num_tokens: int) -> str:
        return " ".join(self.rng.choice(self.words) for _ in range(num_tokens))


def single_token_words(tokenizer_path: Path) -> list[str]:
    """The pool's words that encode to one token with a leading space."""
    from tokenizers import Tokenizer  # only when asked for: an engine dependency

    file = tokenizer_path / "tokenizer.json" if tokenizer_path.is_dir() else tokenizer_path
    tokenizer = Tokenizer.from_file(str(file))
    words = sorted(
        {
            word
            for word in WORD_POOL
            if len(tokenizer.encode(" " + word, add_special_tokens=False).ids) == 1
        }
    )
    if len(words) < 20:
        raise ValueError(
            f"{file}: only {len(words)} pool words are single tokens; pass no tokenizer"
        )
    return words


def fixed(
    num_requests: int, input_len: int, output_len: int, prompts: PromptFactory
) -> list[BenchRequest]:
    return [BenchRequest(prompts.text(input_len), output_len) for _ in range(num_requests)]


def random_lengths(
    num_requests: int,
    input_range: tuple[int, int],
    output_range: tuple[int, int],
    prompts: PromptFactory,
    prefix_len: int = 0,
) -> list[BenchRequest]:
    """Lengths uniform in the inclusive ranges, after a prefix of `prefix_len` tokens that
    every prompt shares (vLLM's --random-prefix-len)."""
    rng = prompts.rng
    prefix = prompts.text(prefix_len) + " " if prefix_len else ""
    return [
        BenchRequest(prefix + prompts.text(rng.randint(*input_range)), rng.randint(*output_range))
        for _ in range(num_requests)
    ]


def conversation_mix(
    num_requests: int, prompts: PromptFactory, max_input: int = 1024, max_output: int = 512
) -> list[BenchRequest]:
    """Synthetic chat traffic: log-normal lengths, many short turns and a long tail, in the
    shape public chat logs (ShareGPT-like) show; medians about 90 input and 120 output
    tokens. Seeded, so every run sends the same mix."""
    rng = prompts.rng

    def length(median: float, sigma: float, cap: int) -> int:
        return max(4, min(cap, round(rng.lognormvariate(math.log(median), sigma))))

    return [
        BenchRequest(prompts.text(length(90, 1.0, max_input)), length(120, 0.8, max_output))
        for _ in range(num_requests)
    ]


def shared_prefix(
    num_requests: int, prefix_len: int, suffix_len: int, output_len: int, prompts: PromptFactory
) -> list[BenchRequest]:
    """One long system prompt shared by every request, then a short distinct question:
    what prefix caching is for."""
    system = prompts.text(prefix_len)
    return [BenchRequest(prompts.text(suffix_len), output_len, system) for _ in range(num_requests)]


WORKLOAD_NAMES = ("fixed", "random", "conversation", "shared-prefix", "sharegpt", "custom")
FILE_WORKLOADS = ("sharegpt", "custom")


@dataclass(frozen=True)
class WorkloadSpec:
    """The command line's description of a workload."""

    name: str = "fixed"
    input_len: int = 128
    output_len: int = 128
    input_range: tuple[int, int] = (32, 512)
    output_range: tuple[int, int] = (32, 256)
    prefix_len: int = 512  # shared-prefix: the system prompt's tokens
    random_prefix_len: int = 0  # random: tokens every prompt starts with
    seed: int = 0
    tokenizer_path: Path | None = None
    dataset_path: Path | None = None  # sharegpt, custom
    # sharegpt: output tokens of every request (None = the length of each reply)
    fixed_output_len: int | None = None

    def __post_init__(self) -> None:
        if self.name not in WORKLOAD_NAMES:
            raise ValueError(
                f"workload must be one of {', '.join(WORKLOAD_NAMES)}, got {self.name!r}"
            )
        if (self.name in FILE_WORKLOADS) != (self.dataset_path is not None):
            raise ValueError(
                f"--dataset-path goes with --dataset-name {' or '.join(FILE_WORKLOADS)} "
                f"(got --dataset-name {self.name}, --dataset-path {self.dataset_path})"
            )
        for label, (low, high) in (("input", self.input_range), ("output", self.output_range)):
            if not 1 <= low <= high:
                raise ValueError(
                    f"--{label}-range must be LOW:HIGH with 1 <= LOW <= HIGH, got {low}:{high}"
                )

    def build(self, num_requests: int, seed_offset: int = 0) -> list[BenchRequest]:
        prompts = PromptFactory(self.seed + seed_offset, self.tokenizer_path)
        if self.name == "fixed":
            return fixed(num_requests, self.input_len, self.output_len, prompts)
        if self.name == "random":
            return random_lengths(
                num_requests, self.input_range, self.output_range, prompts, self.random_prefix_len
            )
        if self.name in FILE_WORKLOADS:
            return self._from_file(num_requests, seed_offset)
        if self.name == "conversation":
            return conversation_mix(num_requests, prompts)
        return shared_prefix(
            num_requests, self.prefix_len, self.input_len, self.output_len, prompts
        )

    def _from_file(self, num_requests: int, seed_offset: int) -> list[BenchRequest]:
        from benchmarks.datasets import jsonl_pairs, sharegpt_pairs, token_counter

        assert self.dataset_path is not None
        if self.name == "sharegpt":
            count = token_counter(self.tokenizer_path)
            seed = self.seed + seed_offset
            pairs = sharegpt_pairs(self.dataset_path, seed, count, self.fixed_output_len)
        else:
            pairs = jsonl_pairs(self.dataset_path, self.fixed_output_len or self.output_len)
        # Warm-up (seed_offset) takes its requests from the end, so measured ones differ.
        if seed_offset:
            pairs = pairs[::-1]
        return [BenchRequest(*pairs[index % len(pairs)]) for index in range(num_requests)]
