"""The offline engine benchmark's arithmetic: FLOP counts and the bar verdicts."""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks.engine_offline import MatmulFlops, Result, _bars


def test_matmul_flops_count_every_weight_twice(tmp_path: Path) -> None:
    config = {"hidden_size": 8, "intermediate_size": 16, "num_hidden_layers": 2,
              "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 100}  # fmt: skip
    (tmp_path / "config.json").write_text(json.dumps(config))
    flops = MatmulFlops.of(tmp_path)
    # head_dim 2: q 8x8, k and v 8x4 each, o 8x8; gate, up, down 8x16 each.
    per_layer = 8 * 8 + 2 * 8 * 4 + 8 * 8 + 3 * 8 * 16
    assert flops.per_layer_token == 2 * 2 * per_layer
    assert flops.per_logits_row == 2 * 8 * 100
    # 3 prompt tokens + 2 outputs: 4 tokens through the layers, 2 rows of logits.
    assert flops.of_request(3, 2) == 4 * flops.per_layer_token + 2 * flops.per_logits_row


def _result(system: str, tokens_per_s: float, dtype: str = "bfloat16") -> Result:
    return Result(system, dtype, num_requests=1, output_tokens=int(tokens_per_s * 10), seconds=10.0)


def test_bars_compare_against_transformers_in_the_same_dtype() -> None:
    results = [
        _result("hf sequential", 20.0),
        _result("hf batched (batch 32)", 150.0),
        _result("tritium max_num_seqs=1", 19.0),
        _result("tritium max_num_seqs=32", 210.0),
        _result("hf sequential", 2.0, dtype="float32"),  # another dtype's rows do not count
    ]
    lines = _bars(results, "bfloat16")
    assert lines[0] == (
        "- bfloat16: 10.5x HF sequential (bar 10x: met), 1.40x HF batched (bar 1.5x: missed)"
    )
    assert lines[1].endswith("(missed: not slower)")
