"""ModelRunner: device/dtype/backend resolution, KV sizing, weights, batched steps."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from engine.config import CacheConfig, ConfigError, SchedulerConfig
from engine.model_runner import ModelRunner, cpu_has_native_bfloat16
from engine.weights import WeightsError, checkpoint_files
from tests.engine.tiny_models import (
    BlockPool,
    engine_config,
    finish_step,
    hf_logits,
    make_sequence,
    save_tiny_model,
)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("tiny-llama")
    save_tiny_model(directory, "llama")
    return directory


def test_staggered_batch_matches_transformers_greedy(tmp_path: Path) -> None:
    """Decodes, a mid-prompt chunk and a final chunk share steps; tokens equal HF's greedy."""
    hf_model = save_tiny_model(tmp_path, "qwen2")
    runner = ModelRunner(engine_config(tmp_path))
    pool = BlockPool()
    prompts = [[1, 5, 9, 14, 3, 77, 21], [1, 99, 42, 8, 8, 8, 31, 64, 2, 11, 90], [1, 4]]
    seqs = [make_sequence(i, prompt) for i, prompt in enumerate(prompts)]
    # step 1: A's whole prompt; step 2: A decodes, B's first 6 tokens (no sample), C arrives.
    schedule = [
        [(0, 7)],
        [(0, 1), (1, 6), (2, 2)],
        [(1, 5), (0, 1), (2, 1)],
    ] + [[(0, 1), (1, 1), (2, 1)]] * 6
    for step in schedule:
        chunks = [pool.chunk(seqs[i], n) for i, n in step]
        results = runner.execute(chunks)
        assert [result is None for result in results] == [not c.sample for c in chunks]
        finish_step(chunks, results)
    for seq in seqs:
        expected = hf_logits(hf_model, seq.token_ids[:-1])[seq.num_prompt_tokens - 1 :]
        assert seq.output_token_ids == expected.argmax(-1).tolist()


def test_resolves_cpu_defaults_and_sizes_kv_cache(tiny_dir: Path) -> None:
    runner = ModelRunner(engine_config(tiny_dir, dtype="auto", device="auto", use_kernels="auto"))
    assert runner.device == torch.device("cpu") or torch.cuda.is_available()
    native_bf16 = torch.cuda.is_available() or cpu_has_native_bfloat16()
    assert runner.model.embed_weight.dtype == (torch.bfloat16 if native_bf16 else torch.float32)
    config = runner.config.model
    element_bytes = runner.kv_caches[0][0].element_size()
    assert (
        runner.block_bytes
        == 2 * config.num_layers * 4 * config.num_kv_heads * config.head_dim * element_bytes
    )
    assert runner.num_blocks == 96
    assert runner.kv_caches[0][0].shape == (96, 4, config.num_kv_heads, config.head_dim)


def test_num_blocks_from_memory_budget_capped_by_need(tiny_dir: Path) -> None:
    block_bytes = ModelRunner(engine_config(tiny_dir)).block_bytes
    budget = CacheConfig(block_size=4, memory_budget_bytes=10 * block_bytes + 5)
    assert ModelRunner(engine_config(tiny_dir, cache=budget)).num_blocks == 10
    # 4 sequences x 128 tokens / 4 per block = 128 blocks is all that could ever be used.
    large = CacheConfig(block_size=4, memory_budget_bytes=1 << 30)
    assert ModelRunner(engine_config(tiny_dir, cache=large)).num_blocks == 128
    small = CacheConfig(block_size=4, memory_budget_bytes=block_bytes - 1)
    with pytest.raises(ConfigError, match="too small"):
        ModelRunner(engine_config(tiny_dir, cache=small))
    assert SchedulerConfig().max_num_seqs > 0  # defaults stay valid


def test_missing_tensor_is_named(tmp_path: Path, tiny_dir: Path) -> None:
    tensors = load_file(str(tiny_dir / "model.safetensors"))
    del tensors["model.layers.1.self_attn.k_proj.weight"]
    save_file(tensors, str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text((tiny_dir / "config.json").read_text())
    with pytest.raises(WeightsError, match=r"model\.layers\.1\.self_attn\.k_proj\.weight"):
        ModelRunner(engine_config(tmp_path))


def test_sharded_checkpoint_loads_the_same(tmp_path: Path) -> None:
    hf_model = save_tiny_model(tmp_path / "single", "llama")
    hf_model.save_pretrained(tmp_path / "sharded", safe_serialization=True, max_shard_size="20KB")
    assert len(checkpoint_files(tmp_path / "sharded")) > 1
    single = ModelRunner(engine_config(tmp_path / "single"))
    sharded = ModelRunner(engine_config(tmp_path / "sharded"))
    for (name, ours), (_, theirs) in zip(
        single.model.named_parameters(), sharded.model.named_parameters(), strict=True
    ):
        assert torch.equal(ours, theirs), name


def test_execute_without_sampling_returns_none(tiny_dir: Path) -> None:
    runner = ModelRunner(engine_config(tiny_dir))
    seq = make_sequence(0, [1, 2, 3, 4, 5, 6])
    chunks = [BlockPool().chunk(seq, 3)]
    assert runner.execute(chunks) == [None]
    assert runner.execute([]) == []


@pytest.mark.skipif(
    importlib.util.find_spec("engine.kernel_ops") is not None, reason="kernel backend present"
)
def test_kernels_on_without_kernel_module_is_a_clear_error(tiny_dir: Path) -> None:
    with pytest.raises(ConfigError, match="use_kernels"):
        ModelRunner(engine_config(tiny_dir, use_kernels="on"))
