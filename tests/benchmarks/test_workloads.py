"""Workload generators: seeded, reproducible, the lengths asked for."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.workloads import PromptFactory, WorkloadSpec, conversation_mix, shared_prefix


@pytest.mark.parametrize("name", ["fixed", "random", "conversation", "shared-prefix"])
def test_same_seed_same_requests_other_seed_other_requests(name: str) -> None:
    spec = WorkloadSpec(name=name, input_len=16, output_len=8, input_range=(4, 32), prefix_len=64)
    assert spec.build(12) == spec.build(12)
    assert spec.build(12) != WorkloadSpec(name=name, input_len=16, output_len=8, seed=1).build(12)
    assert spec.build(12, seed_offset=1) != spec.build(12)


def test_fixed_lengths_in_words() -> None:
    requests = WorkloadSpec(input_len=20, output_len=7).build(5)
    assert all(len(r.prompt.split()) == 20 and r.max_tokens == 7 for r in requests)


def test_random_lengths_stay_in_the_ranges() -> None:
    spec = WorkloadSpec(name="random", input_range=(3, 9), output_range=(2, 5))
    requests = spec.build(200)
    assert {len(r.prompt.split()) for r in requests} <= set(range(3, 10))
    assert {r.max_tokens for r in requests} == set(range(2, 6))


def test_conversation_mix_has_short_turns_and_a_long_tail() -> None:
    requests = conversation_mix(500, PromptFactory(0), max_input=1024, max_output=512)
    inputs = sorted(len(r.prompt.split()) for r in requests)
    assert inputs[0] >= 4 and inputs[-1] <= 1024
    assert 50 < inputs[len(inputs) // 2] < 150  # median near 90
    assert inputs[-1] > 4 * inputs[len(inputs) // 2]  # a long tail
    assert all(4 <= r.max_tokens <= 512 for r in requests)


def test_shared_prefix_shares_one_system_prompt() -> None:
    requests = shared_prefix(6, prefix_len=50, suffix_len=5, output_len=4, prompts=PromptFactory(3))
    assert len({r.system for r in requests}) == 1
    assert len(requests[0].system.split()) == 50
    assert requests[0].as_messages()[0] == {"role": "system", "content": requests[0].system}
    assert requests[0].as_text().startswith(requests[0].system)


def test_bad_ranges_are_refused() -> None:
    with pytest.raises(ValueError, match="--input-range"):
        WorkloadSpec(name="random", input_range=(10, 2))
    with pytest.raises(ValueError, match="workload must be one of"):
        WorkloadSpec(name="sharegpt-ish")
    with pytest.raises(ValueError, match="--dataset-path goes with"):
        WorkloadSpec(name="sharegpt")


def test_with_the_model_tokenizer_a_prompt_of_n_words_is_n_tokens(
    default_weights_dir: Path,
) -> None:
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(default_weights_dir / "tokenizer.json"))
    spec = WorkloadSpec(input_len=128, tokenizer_path=default_weights_dir)
    for request in spec.build(4):
        assert len(tokenizer.encode(request.prompt).ids) == 128
