"""The whole model forward through KernelOps (interpreted on CPU) equals the torch path.

A tiny randomly initialised 2-layer Llama with the default model's head layout (9 query
heads over 3 KV heads, head_dim 64) runs two engine steps — prefills, a chunk continuing
a cached context, decodes — once with TorchOps and once with KernelOps, each with its
own paged KV cache; the logits of every token must agree.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from tests.kernels.kernel_testing import ATTENTION_TOLERANCES

_MISSING = [m for m in ("engine.ops", "engine.models.llama", "engine.attention") if importlib.util.find_spec(m) is None]
pytestmark = pytest.mark.skipif(bool(_MISSING), reason=f"engine modules not written yet: {_MISSING}")

BLOCK_SIZE = 8
NUM_BLOCKS = 24


def tiny_llama(device: torch.device):  # noqa: ANN201 - engine types are imported lazily
    from engine.config import ModelConfig
    from engine.models.llama import LlamaForCausalLM

    config = ModelConfig(
        architecture="LlamaForCausalLM", vocab_size=97, hidden_size=9 * 64, intermediate_size=96,
        num_layers=2, num_heads=9, num_kv_heads=3, head_dim=64, rms_norm_eps=1e-5,
        rope_theta=10000.0, rope_scaling=None, max_position_embeddings=128,
        tie_word_embeddings=False, attention_bias=False, eos_token_ids=(2,), bos_token_id=1,
        torch_dtype="float32",
    )  # fmt: skip
    model = LlamaForCausalLM(config, torch.float32, device, max_positions=128)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            noise = torch.randn(parameter.shape, generator=generator)
            value = 1 + 0.1 * noise if "norm" in name else noise * parameter.shape[-1] ** -0.5
            parameter.copy_(value.to(device))
    return model


def run_steps(model, ops, device: torch.device) -> list[torch.Tensor]:  # noqa: ANN001
    """Step 1: A's 13-token prompt, B's first 9 tokens. Step 2: A decodes, B's next 6
    tokens (continuing its cached context), C's 5-token prompt, then step 3: all decode."""
    from engine.attention import build_attention_metadata

    caches = [
        (torch.zeros(NUM_BLOCKS, BLOCK_SIZE, 3, 64, device=device),
         torch.zeros(NUM_BLOCKS, BLOCK_SIZE, 3, 64, device=device))
        for _ in range(2)
    ]  # fmt: skip
    blocks = {"A": [5, 17, 2], "B": [9, 0, 21], "C": [12, 3]}
    tokens = torch.randint(3, 97, (40,), generator=torch.Generator().manual_seed(1)).tolist()
    steps = [
        [("A", 0, 13), ("B", 0, 9)],
        [("A", 13, 1), ("B", 9, 6), ("C", 0, 5)],
        [("A", 14, 1), ("B", 15, 1), ("C", 5, 1)],
    ]
    logits = []
    for step in steps:
        metadata = build_attention_metadata(
            starts=[start for _, start, _ in step],
            query_lens=[count for _, _, count in step],
            block_ids=[blocks[name] for name, _, _ in step],
            sample_flags=[True] * len(step),
            block_size=BLOCK_SIZE,
            device=device,
        )
        input_ids = torch.tensor([t for _, start, count in step for t in tokens[start : start + count]],
                                 device=device)  # fmt: skip
        with torch.no_grad():
            hidden = model(input_ids, metadata, caches, ops)
            logits.append(model.compute_logits(hidden))
    return logits


def test_forward_through_kernels_matches_torch_path(device: torch.device) -> None:
    from engine.kernel_ops import KernelOps
    from engine.ops import TorchOps

    model = tiny_llama(device)
    expected = run_steps(model, TorchOps(), device)
    actual = run_steps(model, KernelOps(), device)
    atol, rtol = ATTENTION_TOLERANCES[torch.float32]
    for step, (got, want) in enumerate(zip(actual, expected, strict=True)):
        torch.testing.assert_close(got, want, atol=atol, rtol=rtol, msg=lambda m, s=step: f"step {s}: {m}")
        assert torch.equal(got.argmax(-1), want.argmax(-1))


def test_model_runner_switch_runs_the_engine_on_kernels(tmp_path: Path) -> None:
    """EngineConfig.use_kernels="on" on CPU: the runner's whole step goes through KernelOps;
    greedy tokens over a staggered schedule equal the torch backend's."""
    pytest.importorskip("transformers")
    from engine.model_runner import ModelRunner
    from tests.engine.tiny_models import (
        BlockPool,
        engine_config,
        finish_step,
        make_sequence,
        save_tiny_model,
    )

    save_tiny_model(tmp_path, "llama", num_heads=9, num_kv_heads=3, head_dim=16)
    outputs = {}
    for use_kernels in ("off", "on"):
        runner = ModelRunner(engine_config(tmp_path, use_kernels=use_kernels))
        assert type(runner.ops).__name__ == ("KernelOps" if use_kernels == "on" else "TorchOps")
        pool = BlockPool()
        seqs = [make_sequence(i, prompt) for i, prompt in enumerate([[1, 5, 9, 14, 3, 77, 21], [1, 99, 42, 8, 8, 31]])]
        for step in [[(0, 7)], [(0, 1), (1, 4)], [(1, 2), (0, 1)], [(0, 1), (1, 1)], [(0, 1), (1, 1)]]:
            chunks = [pool.chunk(seqs[i], n) for i, n in step]
            finish_step(chunks, runner.execute(chunks))
        outputs[use_kernels] = [seq.output_token_ids for seq in seqs]
    assert outputs["on"] == outputs["off"]
