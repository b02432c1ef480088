"""Workloads from files: ShareGPT conversations and JSONL prompts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks.datasets import DatasetError
from benchmarks.workloads import WorkloadSpec

WORDS = "one two three four five six seven eight nine ten eleven twelve"


def conversation(prompt_words: int, reply_words: int) -> dict:
    return {
        "id": f"c{prompt_words}-{reply_words}",
        "conversations": [
            {"from": "human", "value": " ".join(WORDS.split()[:prompt_words]) * 3},
            {"from": "gpt", "value": " ".join(WORDS.split()[:reply_words]) * 3},
            {"from": "human", "value": "a later turn, not used"},
        ],
    }


def test_sharegpt_takes_the_first_exchange_and_skips_tiny_ones(tmp_path: Path) -> None:
    path = tmp_path / "sharegpt.json"
    data = [conversation(12, 10), conversation(1, 1), {"id": "x", "conversations": []}]
    path.write_text(json.dumps(data))
    spec = WorkloadSpec(name="sharegpt", dataset_path=path)
    requests = spec.build(3)
    assert len(requests) == 3  # one usable conversation, repeated
    assert all(
        r.prompt.startswith("one two three") and "later turn" not in r.prompt for r in requests
    )
    # Without a tokenizer, about four characters per token.
    assert requests[0].max_tokens == round(len(data[0]["conversations"][1]["value"]) / 4)
    fixed = WorkloadSpec(name="sharegpt", dataset_path=path, fixed_output_len=16).build(1)
    assert fixed[0].max_tokens == 16


def test_sharegpt_with_the_model_tokenizer_counts_tokens(
    tmp_path: Path, default_weights_dir: Path
) -> None:
    from tokenizers import Tokenizer

    path = tmp_path / "sharegpt.jsonl"  # JSON Lines works too
    path.write_text("\n".join(json.dumps(conversation(12, 12)) for _ in range(2)))
    spec = WorkloadSpec(name="sharegpt", dataset_path=path, tokenizer_path=default_weights_dir)
    (request,) = spec.build(1)
    tokenizer = Tokenizer.from_file(str(default_weights_dir / "tokenizer.json"))
    reply = conversation(12, 12)["conversations"][1]["value"]
    assert request.max_tokens == len(tokenizer.encode(reply, add_special_tokens=False).ids)


def test_jsonl_prompts_with_or_without_their_lengths(tmp_path: Path) -> None:
    path = tmp_path / "prompts.jsonl"
    path.write_text('{"prompt": "Tell me a story.", "output_tokens": 40}\n{"prompt": "Hi"}\n')
    requests = WorkloadSpec(name="custom", dataset_path=path, output_len=12).build(4)
    assert [(r.prompt, r.max_tokens) for r in requests] == [
        ("Tell me a story.", 40), ("Hi", 12), ("Tell me a story.", 40), ("Hi", 12),
    ]  # fmt: skip


def test_bad_files_are_named(tmp_path: Path) -> None:
    missing = tmp_path / "missing.json"
    with pytest.raises(DatasetError, match="missing.json"):
        WorkloadSpec(name="sharegpt", dataset_path=missing).build(1)
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"text": "no prompt key"}\n')
    with pytest.raises(DatasetError, match='entry 1 has no "prompt"'):
        WorkloadSpec(name="custom", dataset_path=broken).build(1)
    empty = tmp_path / "empty.json"
    empty.write_text("[]")
    with pytest.raises(DatasetError, match="no usable ShareGPT"):
        WorkloadSpec(name="sharegpt", dataset_path=empty).build(1)
