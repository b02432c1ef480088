"""Every architecture against transformers on its tiny checkpoint, packaged as users do.

For each one (tests/engine/tiny_architectures.py): `tritium package` (engine.package)
turns the saved directory into a repository entry; fp32 logits of a prompt longer than
the window, as one chunked prefill then decodes, equal transformers'; and greedy
generation through the whole engine (several prompts at once joining a running batch,
chunked prefill, prefix cache hits) equals transformers' `generate` token for token.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch

from engine.api import GenerationRequest
from engine.attention import build_attention_metadata
from engine.config import ConfigError, EngineConfig
from engine.llm_engine import LLMEngine
from engine.model_runner import ModelRunner
from engine.package import WEIGHTS_DIR, package_model
from engine.sampling_params import SamplingParams
from tests.engine.tiny_architectures import ARCHITECTURES, WINDOW, hf_greedy, save_tiny_architecture
from tests.engine.tiny_models import hf_logits

PROMPT = [1, 17, 93, 5, 64, 23, 88, 41, 7, 120, 3, 56, 77, 9, 31, 100, 45, 12, 66, 81, 2, 14]
SHARED = [1, 11, 22, 33, 44, 55, 66, 77, 88, 99, 110, 121, 4, 8]  # 3 full blocks of 4 and more
PROMPTS = [SHARED + [5, 6, 7], PROMPT, SHARED + [60, 61], [1, 3], PROMPT[::-1] + [9] * 5]
MAX_NEW_TOKENS = 12
assert min(len(p) for p in (PROMPT, SHARED)) > WINDOW


@pytest.fixture(scope="module", params=sorted(ARCHITECTURES))
def packaged(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, default_weights_dir: Path
) -> tuple[str, torch.nn.Module, Path]:
    """(name, transformers' model, the packaged weights directory)."""
    name = request.param
    source = tmp_path_factory.mktemp(name)
    model = save_tiny_architecture(name, source, tokenizer_from=default_weights_dir)
    model_dir = package_model(str(source), name, tmp_path_factory.mktemp("repository"))
    return name, model, model_dir / WEIGHTS_DIR


def engine_config(name: str, weights_dir: Path, **parameters: str) -> EngineConfig:
    values = {
        "max_model_len": str(ARCHITECTURES[name].max_model_len),
        "max_num_seqs": "3",  # fewer than the prompts: requests wait, join and leave
        "max_num_batched_tokens": "10",  # prompts are prefilled in chunks
        "kv_block_size": "4",
        "kv_num_blocks": "64",
        "enable_prefix_caching": "true",
        "dtype": "float32",
        "device": "cpu",
        "use_kernels": "off",
        # The eager forward; test_compiled_decode_equals_transformers runs the compiled one.
        "compile_decode": "off",
        **parameters,
    }
    return EngineConfig.from_parameters(weights_dir, values)


def teacher_forced_logits(runner: ModelRunner, token_ids: list[int], prefill_len: int) -> torch.Tensor:
    """[len(token_ids), vocab]: a prefill of prefill_len tokens, then one decode per token."""
    blocks = [list(range(-(-len(token_ids) // runner.block_size)))[::-1]]  # out of order
    pieces = []
    with torch.inference_mode():
        steps = [(0, prefill_len)] + [(p, 1) for p in range(prefill_len, len(token_ids))]
        for start, length in steps:
            metadata = build_attention_metadata(
                [start], [length], blocks, [True], runner.block_size
            )
            hidden = runner.model(
                torch.tensor(token_ids[start : start + length]), metadata, runner.kv_caches, runner.ops
            )
            pieces.append(runner.model.compute_logits(hidden))
    return torch.cat(pieces)


def test_logits_equal_transformers(packaged: tuple[str, torch.nn.Module, Path]) -> None:
    name, model, weights_dir = packaged
    runner = ModelRunner(engine_config(name, weights_dir))
    ours = teacher_forced_logits(runner, PROMPT, prefill_len=9)
    theirs = hf_logits(model, PROMPT)
    # Next-token logits at every position: the prefill's, then each decode's.
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=1e-4)


def test_greedy_generation_equals_transformers(packaged: tuple[str, torch.nn.Module, Path]) -> None:
    name, model, weights_dir = packaged
    assert_greedy_equals_transformers(LLMEngine(engine_config(name, weights_dir)), model)


def test_compiled_decode_equals_transformers(packaged: tuple[str, torch.nn.Module, Path]) -> None:
    """The same staggered, windowed, prefix-cached generation with decode steps through the
    compiled graph (engine/decode_graph.py): every dense architecture's layers compile, and
    every decode step of 1 to 3 sequences runs compiled."""
    name, model, weights_dir = packaged
    config = engine_config(name, weights_dir, compile_decode="on")
    if config.model.moe is not None:  # routing has data-dependent shapes: eager, or an error
        with pytest.raises(ConfigError, match="compile_decode=on: mixture-of-experts"):
            ModelRunner(config)
        assert ModelRunner(replace(config, compile_decode="auto")).decode_graph is None
        return
    engine = LLMEngine(config)
    graph = engine.runner.decode_graph
    assert graph is not None
    assert_greedy_equals_transformers(engine, model)
    assert graph.misses == 0
    # Every step after the prompts' prefills is a pure decode: most ran compiled.
    assert graph.steps >= MAX_NEW_TOKENS


def assert_greedy_equals_transformers(engine: LLMEngine, model: torch.nn.Module) -> None:
    params = SamplingParams(
        temperature=0.0, max_tokens=MAX_NEW_TOKENS, ignore_eos=True, logprobs=True
    )
    tokens: dict[int, list[int]] = {key: [] for key in range(len(PROMPTS))}
    pending = list(enumerate(PROMPTS))
    step = 0
    freed = False  # a running sequence had blocks freed behind the window
    while pending or engine.has_unfinished():
        if pending and step % 2 == 0:  # a new request every other step
            key, prompt = pending.pop(0)
            engine.add_request(key, engine.prepare(GenerationRequest(params, prompt_token_ids=prompt)))
        for key, output in engine.step():
            for choice in output.choices:
                assert choice.logprobs is not None
                tokens[key] += choice.logprobs.token_ids
        freed |= any(None in seq.block_ids for seq in engine.scheduler.running)
        step += 1
        assert step < 1000, "the engine does not finish"
    assert engine.scheduler.prefix_cache_hits >= 12  # SHARED's 3 blocks, twice
    # Models whose every layer has a window (Phi-3, Mistral, Mixtral here) free the blocks
    # behind it; one global layer (Gemma) keeps them all.
    window = engine.config.model.kv_window
    assert engine.config.cache.sliding_window == window
    assert freed == (window is not None)
    for key, prompt in enumerate(PROMPTS):
        assert tokens[key] == hf_greedy(model, prompt, MAX_NEW_TOKENS), f"prompt {key}"
    assert engine.scheduler.num_used_blocks == 0
