"""The new architectures' forward on the Triton kernels (KernelOps; the interpreter on
CPU): windows shorter than the prompt, Gemma 2's soft-capped attention and logits,
Gemma 3's per-layer-type RoPE, QK-norm, experts; logits equal transformers' in fp32. One
windowed model also generates through the whole engine on the kernels, freeing the
blocks behind its window, token for token as transformers."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.kernels.kernel_testing import ATTENTION_TOLERANCES

pytest.importorskip("transformers")

PROMPT = [1, 17, 93, 5, 64, 23, 88, 41, 7, 120, 3, 56, 77, 9, 31, 100, 45, 12]


def packaged(name: str, directory: Path, tokenizer_from: Path) -> tuple[torch.nn.Module, Path]:
    from engine.package import WEIGHTS_DIR, package_model
    from tests.engine.tiny_architectures import save_tiny_architecture

    model = save_tiny_architecture(name, directory / "source", tokenizer_from=tokenizer_from)
    return model, package_model(str(directory / "source"), name, directory / "repo") / WEIGHTS_DIR


@pytest.mark.parametrize("name", ["gemma2", "gemma3", "phi3", "qwen3_moe"])
def test_logits_on_kernels_equal_transformers(name: str, tmp_path: Path, default_weights_dir: Path) -> None:
    from engine.model_runner import ModelRunner
    from tests.engine.test_architectures import engine_config, teacher_forced_logits
    from tests.engine.tiny_models import hf_logits

    model, weights_dir = packaged(name, tmp_path, default_weights_dir)
    runner = ModelRunner(engine_config(name, weights_dir, use_kernels="on"))
    assert type(runner.ops).__name__ == "KernelOps"
    ours = teacher_forced_logits(runner, PROMPT, prefill_len=11)
    atol, rtol = ATTENTION_TOLERANCES[torch.float32]
    torch.testing.assert_close(ours, hf_logits(model, PROMPT), atol=atol, rtol=rtol)


def test_windowed_model_generates_on_kernels_as_transformers(tmp_path: Path, default_weights_dir: Path) -> None:
    from engine.api import GenerationRequest
    from engine.llm_engine import LLMEngine
    from engine.sampling_params import SamplingParams
    from tests.engine.test_architectures import engine_config
    from tests.engine.tiny_architectures import hf_greedy

    model, weights_dir = packaged("mistral", tmp_path, default_weights_dir)
    engine = LLMEngine(engine_config("mistral", weights_dir, use_kernels="on"))
    params = SamplingParams(temperature=0.0, max_tokens=6, ignore_eos=True, logprobs=True)
    prompts = {0: PROMPT, 1: PROMPT[:9] + [4, 4]}
    for key, prompt in prompts.items():
        engine.add_request(key, engine.prepare(GenerationRequest(params, prompt_token_ids=prompt)))
    tokens: dict[int, list[int]] = {key: [] for key in prompts}
    freed = False
    while engine.has_unfinished():
        for key, output in engine.step():
            for choice in output.choices:
                assert choice.logprobs is not None
                tokens[key] += choice.logprobs.token_ids
        freed |= any(None in seq.block_ids for seq in engine.scheduler.running)
    assert freed
    for key, prompt in prompts.items():
        assert tokens[key] == hf_greedy(model, prompt, 6)
