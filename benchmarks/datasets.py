"""Workloads read from a file: ShareGPT conversations, or JSONL prompts.

- ShareGPT (`--dataset-name sharegpt --dataset-path FILE`): a JSON list (or JSONL) of
  `{"conversations": [{"from": "human", "value": ...}, {"from": "gpt", "value": ...}, ...]}`,
  the format of the public ShareGPT dumps that vLLM's benchmark reads. The first human
  turn is the prompt; the reply that follows sets the output length (its tokens), unless
  `output_len` fixes it. Like vLLM's sampler: conversations are shuffled with the seed;
  a prompt or reply under 4 tokens, a prompt over 1024 or both over 2048 are skipped.
- JSONL (`--dataset-name custom --dataset-path FILE`): one object per line with a
  `prompt`, and optionally `output_tokens` (or `max_tokens`); else `output_len`.

Token counts use the tokenizer when one is given (`--tokenizer`), else about four
characters per token; the reported input and output lengths come from the server's
usage either way. Fewer usable entries than requests: the entries repeat in order.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

MIN_TOKENS = 4
MAX_PROMPT_TOKENS = 1024
MAX_TOTAL_TOKENS = 2048

TokenCounter = Callable[[str], int]


class DatasetError(ValueError):
    """A dataset file that cannot be used; the message names the file and what is wrong."""


def token_counter(tokenizer_path: Path | None) -> TokenCounter:
    if tokenizer_path is None:
        return lambda text: max(1, round(len(text) / 4))
    from tokenizers import Tokenizer  # the bench extra's tokenizer

    file = tokenizer_path / "tokenizer.json" if tokenizer_path.is_dir() else tokenizer_path
    tokenizer = Tokenizer.from_file(str(file))
    return lambda text: len(tokenizer.encode(text, add_special_tokens=False).ids)


def _records(path: Path) -> list[Any]:
    """A JSON list, or JSON Lines (one value per line)."""
    try:
        text = path.read_text()
    except OSError as error:
        raise DatasetError(f"--dataset-path {path}: {error.strerror}") from None
    stripped = text.lstrip()
    try:
        if stripped.startswith("["):
            loaded = json.loads(text)
            return loaded if isinstance(loaded, list) else [loaded]
        return [json.loads(line) for line in text.splitlines() if line.strip()]
    except json.JSONDecodeError as error:
        raise DatasetError(f"--dataset-path {path}: not JSON or JSON Lines ({error})") from None


def sharegpt_pairs(
    path: Path, seed: int, count_tokens: TokenCounter, output_len: int | None
) -> list[tuple[str, int]]:
    """(prompt, output tokens) from ShareGPT conversations, shuffled, filtered."""
    entries = [
        entry
        for entry in _records(path)
        if isinstance(entry, dict) and len(entry.get("conversations") or []) >= 2
    ]
    random.Random(seed).shuffle(entries)
    pairs: list[tuple[str, int]] = []
    for entry in entries:
        first, reply = entry["conversations"][0], entry["conversations"][1]
        prompt, completion = str(first.get("value", "")), str(reply.get("value", ""))
        prompt_tokens = count_tokens(prompt)
        output_tokens = output_len or count_tokens(completion)
        if prompt_tokens < MIN_TOKENS or output_tokens < MIN_TOKENS:
            continue
        if prompt_tokens > MAX_PROMPT_TOKENS or prompt_tokens + output_tokens > MAX_TOTAL_TOKENS:
            continue
        pairs.append((prompt, output_tokens))
    if not pairs:
        raise DatasetError(
            f"--dataset-path {path}: no usable ShareGPT conversation (a list of "
            '{"conversations": [{"from": "human", "value": ...}, {"from": "gpt", ...}]})'
        )
    return pairs


def jsonl_pairs(path: Path, output_len: int) -> list[tuple[str, int]]:
    """(prompt, output tokens) from JSONL lines with a `prompt`."""
    pairs = []
    for number, entry in enumerate(_records(path), start=1):
        if not isinstance(entry, dict) or not isinstance(entry.get("prompt"), str):
            raise DatasetError(f'--dataset-path {path}: entry {number} has no "prompt" string')
        tokens = entry.get("output_tokens", entry.get("max_tokens", output_len))
        pairs.append((entry["prompt"], int(tokens)))
    if not pairs:
        raise DatasetError(f"--dataset-path {path}: empty")
    return pairs
