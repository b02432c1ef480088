"""benchmarks/quant_accuracy.py's pieces: the comparison's arithmetic and the F32 GGUF it
writes for llama.cpp's base run."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from gguf import GGMLQuantizationType, GGUFReader, GGUFWriter, dequantize, quants

from benchmarks.quant_accuracy import compare, dequantized_gguf


def test_compare_is_zero_against_itself_and_counts_disagreements() -> None:
    reference = torch.tensor([[2.0, 0.0, 0.0], [0.0, 3.0, 0.0]])
    targets = torch.tensor([0, 1])
    same = compare(reference, reference, targets)
    assert same["mean_kl"] == 0 and same["top1_agreement"] == 1
    expected_ppl = float(torch.exp(-reference.log_softmax(-1).gather(1, targets[:, None]).mean()))
    assert abs(same["perplexity"] - expected_ppl) < 1e-6
    flipped = compare(torch.tensor([[0.0, 2.0, 0.0], [0.0, 3.0, 0.0]]), reference, targets)
    assert flipped["top1_agreement"] == 0.5 and flipped["mean_kl"] > 0


def test_the_f32_gguf_holds_the_quantized_values_and_the_metadata(tmp_path: Path) -> None:
    weight = np.random.default_rng(0).normal(0, 0.1, size=(4, 64)).astype(np.float32)
    source, target = tmp_path / "q.gguf", tmp_path / "f32.gguf"
    writer = GGUFWriter(str(source), "llama")
    writer.add_context_length(128)
    raw = quants.quantize(weight, GGMLQuantizationType.Q8_0)
    writer.add_tensor("blk.0.ffn_down.weight", raw, raw_shape=raw.shape, raw_dtype=GGMLQuantizationType.Q8_0)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    dequantized_gguf(source, target)
    reader = GGUFReader(str(target))
    assert reader.fields["llama.context_length"].contents() == 128
    (tensor,) = reader.tensors
    assert tensor.tensor_type == GGMLQuantizationType.F32
    expected = dequantize(raw, GGMLQuantizationType.Q8_0)
    np.testing.assert_array_equal(np.asarray(tensor.data).reshape(expected.shape), expected)
