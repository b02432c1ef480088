"""Tiny randomly initialised Hugging Face checkpoints, and a way to drive ModelRunner.

Shared by test_llama.py and test_model_runner.py. Everything is built on the fly in
a tmp_path: no download.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import torch
from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

from engine.config import CacheConfig, EngineConfig, ModelConfig, SchedulerConfig
from engine.request import Sequence
from engine.sampling_params import SamplingParams
from engine.scheduler import ScheduledChunk

BLOCK_SIZE = 4
NUM_BLOCKS = 96


def save_tiny_model(
    directory: Path,
    architecture: str = "llama",
    tie_word_embeddings: bool = False,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    head_dim: int = 16,
) -> torch.nn.Module:
    """Save a 2-layer model with safetensors; returns the HF model (float32, eval)."""
    torch.manual_seed(0)
    kwargs: dict[str, Any] = dict(
        vocab_size=128,
        hidden_size=num_heads * head_dim,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        max_position_embeddings=256,
        tie_word_embeddings=tie_word_embeddings,
        initializer_range=0.2,  # peaked logits: greedy argmax is never a near-tie
        eos_token_id=2,
        bos_token_id=1,
        rms_norm_eps=1e-5,
    )
    if architecture == "qwen2":
        model: torch.nn.Module = Qwen2ForCausalLM(Qwen2Config(**kwargs, rope_theta=1000000.0))
        with torch.no_grad():  # HF zero-initialises biases; make them matter
            for layer in model.model.layers:
                for projection in (
                    layer.self_attn.q_proj,
                    layer.self_attn.k_proj,
                    layer.self_attn.v_proj,
                ):
                    projection.bias.normal_(0, 0.5)
    else:
        model = LlamaForCausalLM(LlamaConfig(**kwargs))
    model = model.float().eval()
    model.save_pretrained(directory, safe_serialization=True)
    return model


def engine_config(
    directory: Path, num_blocks: int | None = NUM_BLOCKS, **overrides: Any
) -> EngineConfig:
    values: dict[str, Any] = dict(
        model_dir=str(directory),
        model=ModelConfig.from_model_dir(directory),
        cache=CacheConfig(block_size=BLOCK_SIZE, num_blocks=num_blocks),
        scheduler=SchedulerConfig(max_num_seqs=4, max_model_len=128),
        dtype="float32",
        device="cpu",
        use_kernels="off",
        compile_decode="off",  # the eager forward; tests/engine/test_decode_graph.py compiles
    )
    values.update(overrides)
    return EngineConfig(**values)


def make_sequence(seq_id: int, prompt: list[int], params: SamplingParams | None = None) -> Sequence:
    return Sequence(
        seq_id=seq_id,
        request_id=seq_id,
        index=0,
        token_ids=list(prompt),
        num_prompt_tokens=len(prompt),
        params=params or SamplingParams(temperature=0.0),
        max_tokens=64,
        arrival_time=0.0,
    )


class BlockPool:
    """Hands out shuffled block ids so sequences never sit in contiguous memory."""

    def __init__(self, num_blocks: int = NUM_BLOCKS, seed: int = 0) -> None:
        self.free = list(range(num_blocks))
        random.Random(seed).shuffle(self.free)

    def chunk(self, seq: Sequence, num_new_tokens: int) -> ScheduledChunk:
        """Allocate blocks for the next num_new_tokens of seq and schedule them."""
        end = seq.num_computed_tokens + num_new_tokens
        while len(seq.block_ids) * BLOCK_SIZE < end:
            seq.block_ids.append(self.free.pop())
        return ScheduledChunk(seq=seq, start=seq.num_computed_tokens, num_new_tokens=num_new_tokens)


def finish_step(chunks: list[ScheduledChunk], results: list[Any]) -> None:
    """What the engine does after a step: advance computed tokens, append samples."""
    for chunk, result in zip(chunks, results, strict=True):
        chunk.seq.num_computed_tokens = chunk.end
        if result is not None:
            chunk.seq.append_token(result.token_id)


def hf_logits(model: torch.nn.Module, token_ids: list[int]) -> torch.Tensor:
    """[len(token_ids), vocab] float32: HF's next-token logits at every position."""
    with torch.no_grad():
        return model(torch.tensor([token_ids])).logits[0].float()
