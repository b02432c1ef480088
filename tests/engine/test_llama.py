"""Our Llama-family decoder against Hugging Face transformers on the same weights."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from engine.model_runner import ModelRunner
from engine.sampler import SampleResult
from tests.engine.tiny_models import (
    BlockPool,
    engine_config,
    finish_step,
    hf_logits,
    make_sequence,
    save_tiny_model,
)

NUM_DECODE_STEPS = 20
PROMPT = [1, 17, 93, 5, 64, 23, 88, 41, 7, 120, 3, 56, 77]
PREFILL_CHUNKS = [5, 3, 5]  # 13 tokens, chunks ending mid-block (block size 4)


class RecordingSampler:
    """Wraps the runner's sampler and keeps every logits batch it is given."""

    def __init__(self, inner: object) -> None:
        self.inner = inner
        self.logits: list[torch.Tensor] = []

    def sample(self, logits: torch.Tensor, seqs: list) -> list[SampleResult]:
        self.logits.append(logits.clone())
        return self.inner.sample(logits, seqs)  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("architecture", "tied", "num_heads", "num_kv_heads"),
    [
        ("llama", False, 4, 2),
        ("llama", True, 9, 3),
        ("qwen2", False, 4, 2),
        ("qwen2", True, 4, 2),
    ],
)
def test_chunked_prefill_then_decode_matches_transformers(
    tmp_path: Path, architecture: str, tied: bool, num_heads: int, num_kv_heads: int
) -> None:
    hf_model = save_tiny_model(
        tmp_path, architecture, tied, num_heads=num_heads, num_kv_heads=num_kv_heads, head_dim=8
    )
    runner = ModelRunner(engine_config(tmp_path))
    recorder = RecordingSampler(runner.sampler)
    runner.sampler = recorder  # type: ignore[assignment]
    seq = make_sequence(0, PROMPT)
    pool = BlockPool()
    for size in PREFILL_CHUNKS:
        chunks = [pool.chunk(seq, size)]
        finish_step(chunks, runner.execute(chunks))
    for _ in range(NUM_DECODE_STEPS - 1):
        chunks = [pool.chunk(seq, 1)]
        finish_step(chunks, runner.execute(chunks))
    assert seq.num_output_tokens == NUM_DECODE_STEPS

    expected = hf_logits(hf_model, seq.token_ids[:-1])[len(PROMPT) - 1 :]  # [20, vocab]
    ours = torch.cat(recorder.logits)  # [20, vocab]
    torch.testing.assert_close(ours, expected, atol=1e-4, rtol=1e-4)
    # Greedy: every token we sampled is HF's argmax given the same prefix.
    assert seq.output_token_ids == expected.argmax(-1).tolist()


def test_bfloat16_run_stays_close_to_float32(tmp_path: Path) -> None:
    hf_model = save_tiny_model(tmp_path, "llama")
    runner = ModelRunner(engine_config(tmp_path, dtype="bfloat16"))
    assert runner.model.embed_weight.dtype == torch.bfloat16
    recorder = RecordingSampler(runner.sampler)
    runner.sampler = recorder  # type: ignore[assignment]
    seq = make_sequence(0, PROMPT)
    chunks = [BlockPool().chunk(seq, len(PROMPT))]
    runner.execute(chunks)
    expected = hf_logits(hf_model, PROMPT)[-1]
    assert recorder.logits[0].dtype == torch.float32
    torch.testing.assert_close(recorder.logits[0][0], expected, atol=0.15, rtol=0.05)
