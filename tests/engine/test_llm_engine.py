"""The whole engine on the real default model, against Hugging Face transformers.

Runs `LLMEngine` directly (no Triton): staggered arrivals, chunked prefill, prefix
caching, cancellation, per-request seeds.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np
import pytest

from contract.errors import ContractError, ErrorKind
from contract.tensors import decode_request
from engine.api import GenerationOutput, GenerationRequest
from engine.config import EngineConfig
from engine.llm_engine import LLMEngine
from engine.sampling_params import SamplingParams

PROMPTS = [
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "List three prime numbers.",
    "Explain photosynthesis in one sentence.",
    "hi",
    "Translate 'good morning' into Spanish.",
    "What is 12 times 12?",
    "Give me a name for a pet turtle.",
    "Describe the color blue to someone who cannot see. Use vivid comparisons and keep it short.",
    "Why is the sky blue?",
    "Write a Python function that adds two numbers.",
    "What day comes after Monday?",
    "Name a famous painter.",
    "Summarize the plot of Romeo and Juliet in two sentences, mentioning both families by name.",
    "How many legs does a spider have?",
    "Suggest a healthy breakfast.",
]


@pytest.fixture(scope="module")
def engine(default_weights_dir: Path) -> LLMEngine:
    parameters = {
        "max_model_len": "512",
        "max_num_seqs": "8",  # fewer than the prompts: requests wait, join and leave the batch
        "max_num_batched_tokens": "48",  # long prompts are prefilled in chunks
        "kv_cache_memory_mb": "64",
        "dtype": "float32",
        "quantization": "none",  # compared with transformers on the dense weights
    }
    return LLMEngine(EngineConfig.from_parameters(default_weights_dir, parameters))


@lru_cache(maxsize=1)
def _hf(weights_dir: str):  # noqa: ANN202
    import torch
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(weights_dir, dtype=torch.float32).eval()


def _hf_greedy(weights_dir: Path, prompt_ids: list[int], max_new_tokens: int, eos: set[int]) -> list[int]:
    import torch

    with torch.no_grad():
        out = _hf(str(weights_dir)).generate(
            torch.tensor([prompt_ids]), max_new_tokens=max_new_tokens, do_sample=False
        )[0, len(prompt_ids) :].tolist()
    for position, token in enumerate(out):
        if token in eos:
            return out[: position + 1]
    return out


def _chat(content: str, **params: object) -> GenerationRequest:
    return GenerationRequest(
        params=SamplingParams(**params),
        messages=[{"role": "user", "content": content}],
        include_input=False,
    )


def _run(engine: LLMEngine, arrivals: dict[int, list[tuple[int, GenerationRequest]]]) -> dict[int, list[GenerationOutput]]:
    """Add requests at the given steps; step until all finish; outputs per request key."""
    outputs: dict[int, list[GenerationOutput]] = {}
    step = 0
    while step <= max(arrivals) or engine.has_unfinished():
        for key, request in arrivals.get(step, []):
            engine.add_request(key, engine.prepare(request))
        for key, output in engine.step():
            outputs.setdefault(key, []).append(output)
        step += 1
        assert step < 5000, "the engine does not finish"
    return outputs


def _token_ids(outputs: list[GenerationOutput], index: int = 0) -> list[int]:
    return [
        token_id
        for output in outputs
        for choice in output.choices
        if choice.index == index and choice.logprobs
        for token_id in choice.logprobs.token_ids
    ]


def test_staggered_greedy_batch_equals_transformers_alone(
    engine: LLMEngine, default_weights_dir: Path
) -> None:
    requests = {key: _chat(prompt, temperature=0.0, max_tokens=32, logprobs=True)
                for key, prompt in enumerate(PROMPTS)}
    arrivals: dict[int, list] = {}
    for key, request in requests.items():
        arrivals.setdefault(key * 3, []).append((key, request))  # a new request every 3 steps
    generated_before = engine.metrics.snapshot.get("tritium_generation_tokens_total", 0)
    outputs = _run(engine, arrivals)
    eos = set(engine.tokenizer.eos_token_ids)
    for key, request in requests.items():
        prompt_ids = engine.prepare(request).prompt_token_ids
        expected = _hf_greedy(default_weights_dir, prompt_ids, 32, eos)
        assert _token_ids(outputs[key]) == expected, f"prompt {key}: {PROMPTS[key]!r}"
        assert outputs[key][-1].finished
    assert engine.scheduler.num_running == 0 and engine.scheduler.num_used_blocks == 0
    generated = sum(len(_token_ids(outputs[key])) for key in requests)
    assert engine.metrics.snapshot["tritium_generation_tokens_total"] - generated_before == generated


def test_prefix_cache_computes_only_new_tokens(engine: LLMEngine) -> None:
    system = "You are a careful assistant. " * 30  # ~200 tokens, many full KV blocks
    first = GenerationRequest(SamplingParams(temperature=0.0, max_tokens=2),
                              messages=[{"role": "system", "content": system},
                                        {"role": "user", "content": "Hello!"}])
    second = GenerationRequest(SamplingParams(temperature=0.0, max_tokens=2),
                               messages=[{"role": "system", "content": system},
                                         {"role": "user", "content": "Goodbye!"}])
    _run(engine, {0: [(1000, first)]})
    hits_before = engine.scheduler.prefix_cache_hits
    prepared = engine.prepare(second)
    _run(engine, {0: [(1001, second)]})
    hit_tokens = engine.scheduler.prefix_cache_hits - hits_before
    block_size = engine.config.cache.block_size
    shared = 0
    for a, b in zip(engine.prepare(first).prompt_token_ids, prepared.prompt_token_ids, strict=False):
        if a != b:
            break
        shared += 1
    assert hit_tokens == shared // block_size * block_size
    assert hit_tokens >= 160


def test_abort_frees_blocks_within_one_step(engine: LLMEngine) -> None:
    request = _chat("Write a long essay about rivers.", max_tokens=200, ignore_eos=True)
    engine.add_request(2000, engine.prepare(request))
    for _ in range(5):
        engine.step()
    assert engine.scheduler.num_running == 1
    engine.abort(2000)
    engine.step()
    assert engine.scheduler.num_running == 0
    assert engine.scheduler.num_used_blocks == 0
    assert not engine.has_unfinished()


def test_seeded_sampling_does_not_depend_on_the_batch(engine: LLMEngine) -> None:
    def seeded(key: int) -> GenerationRequest:
        return _chat("Invent a word.", temperature=1.0, seed=1234, max_tokens=12, logprobs=True)

    alone = _run(engine, {0: [(3000, seeded(3000))]})[3000]
    crowd = {0: [(3001 + i, _chat(PROMPTS[i], temperature=1.0, max_tokens=12)) for i in range(4)]}
    crowd[2] = [(3010, seeded(3010))]
    batched = _run(engine, crowd)[3010]
    assert _token_ids(alone) == _token_ids(batched)


def test_n_choices_differ_with_a_seed_and_streamed_text_matches(engine: LLMEngine) -> None:
    request = GenerationRequest(
        SamplingParams(n=2, seed=7, temperature=1.0, max_tokens=16),
        messages=[{"role": "user", "content": "Say something surprising."}], stream=True,
    )
    outputs = _run(engine, {0: [(4000, request)]})[4000]
    texts = ["", ""]
    for output in outputs:
        for choice in output.choices:
            texts[choice.index] += choice.text
    assert texts[0] and texts[1] and texts[0] != texts[1]
    assert outputs[-1].finished


def test_token_id_prompts_are_used_as_they_are(engine: LLMEngine) -> None:
    params = SamplingParams(max_tokens=4, temperature=0.0)
    as_text = engine.prepare(GenerationRequest(params, prompt="The capital of France is"))
    ids = list(as_text.prompt_token_ids)
    as_ids = engine.prepare(GenerationRequest(params, prompt_token_ids=ids))
    assert as_ids.prompt_token_ids == ids
    assert as_ids.prompt_text == engine.tokenizer.decode(ids, skip_special_tokens=False)
    for bad in ([1, engine.config.model.vocab_size], [-1], []):
        with pytest.raises(ContractError) as raised:
            engine.prepare(GenerationRequest(params, prompt_token_ids=bad))
        assert raised.value.field == "prompt"
    with pytest.raises(ContractError):  # one prompt input, never two
        decode_request({"text_input": np.array([b"text"]), "input_ids": np.array([1])}.get)


def test_truncate_prompt_tokens_keeps_the_prompts_last_tokens(engine: LLMEngine) -> None:
    text = " ".join(PROMPTS)
    whole = engine.prepare(GenerationRequest(SamplingParams(max_tokens=4), prompt=text))
    kept = engine.prepare(
        GenerationRequest(SamplingParams(max_tokens=4, truncate_prompt_tokens=5), prompt=text)
    )
    assert kept.prompt_token_ids == whole.prompt_token_ids[-5:]
    assert kept.prompt_text == engine.tokenizer.decode(kept.prompt_token_ids, skip_special_tokens=False)
    short = engine.prepare(
        GenerationRequest(SamplingParams(max_tokens=4, truncate_prompt_tokens=10_000), prompt=text)
    )
    assert short.prompt_token_ids == whole.prompt_token_ids  # shorter than k: untouched
    max_model_len = engine.config.scheduler.max_model_len
    too_long = "word " * (max_model_len + 50)
    with pytest.raises(ContractError) as error:  # without truncation: over the context
        engine.prepare(GenerationRequest(SamplingParams(max_tokens=1), prompt=too_long))
    assert error.value.kind is ErrorKind.CONTEXT_LENGTH
    to_context = SamplingParams(max_tokens=1, truncate_prompt_tokens=-1)
    with pytest.raises(ContractError) as error:  # -1: the context length, no room left to generate
        engine.prepare(GenerationRequest(to_context, prompt=too_long))
    assert error.value.kind is ErrorKind.CONTEXT_LENGTH
    fits = SamplingParams(max_tokens=1, truncate_prompt_tokens=max_model_len - 1)
    assert len(engine.prepare(GenerationRequest(fits, prompt=too_long)).prompt_token_ids) == max_model_len - 1
    with pytest.raises(ContractError) as error:
        SamplingParams(truncate_prompt_tokens=0)
    assert error.value.field == "truncate_prompt_tokens"
