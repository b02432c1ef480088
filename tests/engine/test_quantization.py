"""Weight-only quantized linear layers (engine/quantization.py).

- GGUF's block layouts decode to exactly the values `gguf.dequantize` (llama.cpp's own
  Python package) gives, for Q4_0, Q4_1, Q4_K and Q8_0.
- torch's CPU packed kernels, as `QuantizedMatmul` drives them, compute x @ W^T of the
  weight the format stands for.
- A tiny Llama written as a quantized GGUF (llama.cpp's tensor names and its q/k row
  permutation) packages into quantized tensors equal to transformers' dequantization of
  the same file, and the engine running them gives transformers' logits.
- The default model: every linear layer quantized from the GGUF, and the quantized engine
  agrees with the dequantized-bf16 engine on a fixed text.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import pytest
import safetensors
import torch
from gguf import GGMLQuantizationType as GgmlType
from gguf import quants

import engine.weights
from benchmarks.quant_accuracy import transformers_on_gguf
from engine.config import ConfigError, EngineConfig
from engine.model_runner import ModelRunner
from engine.models.layers import Linear
from engine.package import WEIGHTS_DIR, package_model
from engine.quantization import (
    OURS_MAX_ROWS,
    QUANTIZED_FILE,
    QuantizedMatmul,
    from_gguf_blocks,
    load_quantized,
    pack_int4,
    quantize_int4,
    quantize_int8,
    unpack_int4,
)
from tests.engine.test_architectures import teacher_forced_logits
from tests.engine.tiny_architectures import TinyArchitecture
from tritium_kernels import quant_matmul_cpu

RNG = np.random.default_rng(7)


@pytest.mark.parametrize("kind", [GgmlType.Q4_0, GgmlType.Q4_1, GgmlType.Q8_0])
def test_gguf_blocks_decode_to_what_gguf_dequantizes(kind: GgmlType) -> None:
    weight = RNG.normal(0, 0.05, size=(24, 96)).astype(np.float32)
    data = quants.quantize(weight, kind)
    tensor = from_gguf_blocks(kind.name, data, 96)
    assert tensor.shape == (24, 96) and tensor.group_size == 32
    np.testing.assert_array_equal(tensor.dequantize().numpy(), quants.dequantize(data, kind))


def test_q4_k_blocks_decode_to_what_gguf_dequantizes() -> None:
    # gguf-py cannot quantize Q4_K: random blocks with finite d and dmin instead.
    rows, columns = 5, 512
    blocks = RNG.integers(0, 256, size=(rows, columns // 256, 144), dtype=np.uint8)
    halves = RNG.uniform(1e-3, 0.1, size=(rows, columns // 256, 2)).astype(np.float16)
    blocks[..., 0:4] = halves.view(np.uint8).reshape(rows, columns // 256, 4)
    data = blocks.reshape(rows, -1)
    tensor = from_gguf_blocks("Q4_K", data, columns)
    np.testing.assert_array_equal(tensor.dequantize().numpy(), quants.dequantize(data, GgmlType.Q4_K))


def test_int4_packing_round_trips_and_quantizers_stay_within_half_a_step() -> None:
    values = torch.randint(0, 16, (6, 64), dtype=torch.uint8)
    assert torch.equal(unpack_int4(pack_int4(values)), values)
    weight = torch.randn(16, 128)
    int4 = quantize_int4(weight)
    steps = int4.scales.repeat_interleave(32, dim=1)
    assert ((int4.dequantize() - weight).abs() <= steps / 2 + 1e-6).all()
    int8 = quantize_int8(weight)
    assert int8.group_size == 128
    assert ((int8.dequantize() - weight).abs() <= int8.scales / 2 + 1e-6).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("rows", [1, 5, 33])
def test_cpu_quantized_matmul_multiplies_by_the_weight_it_stands_for(dtype: torch.dtype, rows: int) -> None:
    # torch's kernels multiply in float; ours (tritium_kernels/quant_matmul_cpu.py, tested exactly
    # in tests/kernels) quantizes activations to int8 per 32 columns: within ~1%
    # (bf16: its own rounding on top).
    weight = torch.randn(40, 128) * 0.1
    x = torch.randn(rows, 128).to(dtype)
    kernels = ["torch", "ours"] if quant_matmul_cpu.available() else ["torch"]
    for kernel in kernels:
        for tensor in (quantize_int4(weight), quantize_int4(weight, group_size=64), quantize_int8(weight)):
            expected = x.float() @ tensor.dequantize().T
            got = QuantizedMatmul(tensor, dtype, torch.device("cpu"), kernel)(x)
            assert got.dtype == dtype and got.shape == (rows, 40)
            if kernel == "ours":
                assert ((got.float() - expected).norm() / expected.norm()).item() < 0.015
                continue
            tolerance = 1e-4 if dtype == torch.float32 else 3e-2
            torch.testing.assert_close(got.float(), expected, atol=tolerance, rtol=tolerance)


def test_q8_0_runs_exactly_on_cpu_as_two_int4_planes() -> None:
    # torch's CPU int8 kernel has one scale per output channel; Q8_0's per-32 scales run
    # through its int4 kernel as high and low nibble planes, which is exact in float32.
    weight = RNG.normal(0, 0.05, size=(20, 96)).astype(np.float32)  # 40 plane rows: padded
    tensor = from_gguf_blocks("Q8_0", quants.quantize(weight, GgmlType.Q8_0), 96)
    exact = tensor.dequantize()
    matmul = QuantizedMatmul(tensor, torch.float32, torch.device("cpu"), "torch")
    got = matmul(torch.eye(96)).T  # the weight itself
    torch.testing.assert_close(got, exact, atol=1e-6, rtol=1e-6)
    x = torch.randn(3, 96)
    torch.testing.assert_close(matmul(x), x @ exact.T, atol=1e-4, rtol=1e-4)
    per_channel = QuantizedMatmul(quantize_int8(exact), torch.float32, torch.device("cpu"), "torch")
    assert (per_channel(torch.eye(96)).T - exact).abs().max() > 100 * (got - exact).abs().max()


# ---- a quantized GGUF through `tritium package` and the engine ------------------------------

LLAMA = TinyArchitecture(
    "LlamaConfig",
    "LlamaForCausalLM",
    dict(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
         num_key_value_heads=2, head_dim=16, max_position_embeddings=256, vocab_size=49152,
         tie_word_embeddings=False),
)  # fmt: skip
# Linear weights by GGUF type (fused layers need one format for all their parts).
TYPES = {"attn_q": GgmlType.Q4_1, "attn_k": GgmlType.Q4_1, "attn_v": GgmlType.Q4_1,
         "attn_output": GgmlType.Q4_0, "ffn_gate": GgmlType.Q4_0, "ffn_up": GgmlType.Q4_0,
         "ffn_down": GgmlType.Q4_1, "output": GgmlType.Q4_0}  # fmt: skip


def _llama_cpp_permute(weight: np.ndarray, heads: int) -> np.ndarray:
    """The row order llama.cpp's converter gives Llama's q and k (rotary halves interleaved)."""
    return weight.reshape(heads, 2, weight.shape[0] // heads // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def _write_quantized_llama_gguf(model: torch.nn.Module, path: Path, tokenizer_json: dict) -> None:
    config = model.config
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(config.num_hidden_layers)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_rope_dimension_count(config.head_dim)
    writer.add_rope_freq_base(config.rope_parameters["rope_theta"])
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    vocab = tokenizer_json["model"]["vocab"]
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(sorted(vocab, key=vocab.__getitem__))
    writer.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in tokenizer_json["model"]["merges"]])
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, config.num_hidden_layers)
    for name, tensor in model.state_dict().items():
        gguf_name = names.get_name(name, try_suffixes=(".weight", ".bias"))
        assert gguf_name is not None, name
        data = tensor.numpy().astype(np.float32)
        if ".attn_q." in gguf_name:
            data = _llama_cpp_permute(data, config.num_attention_heads)
        elif ".attn_k." in gguf_name:
            data = _llama_cpp_permute(data, config.num_key_value_heads)
        kind = TYPES.get(gguf_name.split(".")[-2] if gguf_name.startswith("blk.") else gguf_name.split(".")[0])
        if kind is None:
            writer.add_tensor(gguf_name, data)
        else:
            raw = quants.quantize(data, kind)
            writer.add_tensor(gguf_name, raw, raw_shape=raw.shape, raw_dtype=kind)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


@pytest.fixture(scope="module")
def quantized_llama(tmp_path_factory: pytest.TempPathFactory, default_weights_dir: Path) -> tuple[Path, Path]:
    directory = tmp_path_factory.mktemp("quantized_llama")
    tokenizer_json = json.loads((default_weights_dir / "tokenizer.json").read_text())
    model = LLAMA.build()
    with torch.no_grad():  # the package stores unquantized tensors (norms, embeddings) as bf16
        for parameter in model.parameters():
            parameter.copy_(parameter.to(torch.bfloat16))
    _write_quantized_llama_gguf(model, directory / "llama.gguf", tokenizer_json)
    weights_dir = package_model(str(directory / "llama.gguf"), "llama", directory / "repo", progress=False) / WEIGHTS_DIR
    return directory / "llama.gguf", weights_dir


def test_a_quantized_gguf_packages_its_blocks_in_transformers_order(quantized_llama: tuple[Path, Path]) -> None:
    gguf_path, weights_dir = quantized_llama
    stored = load_quantized(weights_dir / QUANTIZED_FILE)
    # 7 linear weights per layer and the output projection, nothing else (norms, embeddings: F32).
    assert len(stored) == 7 * 2 + 1
    assert {source for _, source in stored.values()} == {"Q4_0", "Q4_1"}
    _, dequantized = transformers_on_gguf(gguf_path)
    for name, (tensor, _) in stored.items():  # q/k rows back in Hugging Face order
        torch.testing.assert_close(tensor.dequantize(), dequantized[name], atol=0, rtol=0, msg=name)


def test_the_engine_on_quantized_weights_equals_transformers_on_the_gguf(quantized_llama: tuple[Path, Path]) -> None:
    gguf_path, weights_dir = quantized_llama
    reference, _ = transformers_on_gguf(gguf_path)
    prompt = [1, 500, 9000, 42, 77, 1234, 5, 31, 16, 2048, 3, 99]
    with torch.no_grad():
        theirs = reference(torch.tensor([prompt])).logits[0]
    # Every matmul through the int4 kernels (rows up to 64: the prefill too), fp32 activations.
    parameters = {"dtype": "float32", "kv_block_size": "4", "kv_num_blocks": "32", "max_model_len": "64", "compile_decode": "off",
                  "device": "cpu", "use_kernels": "off", "quantized_max_rows": "64",
                  "quantization": "gguf",  # auto would keep float32 on CPU dense
                  "quantized_cpu_kernel": "torch"}  # float products: transformers' arithmetic  # fmt: skip
    runner = ModelRunner(EngineConfig.from_parameters(weights_dir, parameters))
    assert runner.quantized_layers == {"Q4_1": 2 * 2, "Q4_0": 2 * 2 + 1}  # qkv, down / o, gate_up, lm_head
    auto = ModelRunner(EngineConfig.from_parameters(weights_dir, {**parameters, "quantization": "auto"}))
    assert auto.quantized_layers == {}
    ours = teacher_forced_logits(runner, prompt, prefill_len=7)
    torch.testing.assert_close(ours, theirs, atol=2e-4, rtol=2e-4)
    # Off: the dense bf16 copy the package also holds (the same values, rounded to bf16).
    dense = ModelRunner(EngineConfig.from_parameters(weights_dir, {**parameters, "quantization": "none"}))
    assert dense.quantized_layers == {} and all(
        layer.quantized is None for layer in dense.model.modules() if isinstance(layer, Linear)
    )
    dense_logits = teacher_forced_logits(dense, prompt, prefill_len=7)
    torch.testing.assert_close(dense_logits, theirs, atol=0.2, rtol=0.2)
    assert (dense_logits - theirs).abs().max() > 10 * (ours - theirs).abs().max()
    if quant_matmul_cpu.available():  # ours: int8 activations, as llama.cpp multiplies these blocks
        int8_products = ModelRunner(EngineConfig.from_parameters(weights_dir, {**parameters, "quantized_cpu_kernel": "ours"}))
        logits = teacher_forced_logits(int8_products, prompt, prefill_len=7)

        def kl(a: torch.Tensor) -> float:
            each = torch.nn.functional.kl_div(a.log_softmax(-1), theirs.log_softmax(-1), log_target=True, reduction="none")
            return each.sum(-1).mean().item()

        # A random tiny model feels int8 activations more than the real one does (mean KL
        # 0.002 here; the default model's budget is measured by benchmarks/quant_accuracy.py);
        # a layer wired wrong would be off by a KL of order 1.
        assert 0 < kl(logits) < 0.01
        assert (logits.argmax(-1) == theirs.argmax(-1)).float().mean() >= 0.9


def test_int8_and_int4_quantize_a_dense_checkpoint_at_load(quantized_llama: tuple[Path, Path]) -> None:
    _, weights_dir = quantized_llama
    base = {"dtype": "float32", "kv_block_size": "4", "kv_num_blocks": "32", "max_model_len": "64", "compile_decode": "off"}
    int8 = ModelRunner(EngineConfig.from_parameters(weights_dir, {**base, "quantization": "int8"}))
    assert int8.quantized_layers == {"int8 at load": 2 * 4 + 1}
    int4 = ModelRunner(EngineConfig.from_parameters(weights_dir, {**base, "quantization": "int4"}))
    assert int4.quantized_layers == {"Q4_1": 4, "Q4_0": 5}  # the package's own int4 tensors
    layer = int4.model.layers[0].mlp.down_proj
    assert layer.quantized is not None and layer.max_quantized_rows == layer.quantized.default_max_rows
    assert int8.model.layers[0].mlp.down_proj.max_quantized_rows == (OURS_MAX_ROWS if quant_matmul_cpu.available() else 4)
    torch_kernel = ModelRunner(EngineConfig.from_parameters(weights_dir, {**base, "quantization": "int4", "quantized_cpu_kernel": "torch"}))
    assert torch_kernel.model.layers[0].mlp.down_proj.max_quantized_rows == 16  # where torch's int4 stops paying


def test_a_quantized_weight_that_serves_every_step_drops_the_dense_one(
    quantized_llama: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    _, weights_dir = quantized_llama
    base = {"dtype": "float32", "kv_block_size": "4", "kv_num_blocks": "32", "max_model_len": "64", "compile_decode": "off",
            "quantization": "int4", "quantized_cpu_kernel": "torch", "max_num_batched_tokens": "32"}  # fmt: skip
    read: list[str] = []  # the checkpoint tensors the loader reads

    class RecordingFile:
        def __init__(self, handle: Any) -> None:
            self.handle = handle

        def keys(self) -> list[str]:
            return list(self.handle.keys())

        def get_tensor(self, name: str) -> torch.Tensor:
            read.append(name)
            return self.handle.get_tensor(name)

    @contextlib.contextmanager
    def recording_open(*args: Any, **kwargs: Any) -> Iterator[RecordingFile]:
        with safetensors.safe_open(*args, **kwargs) as handle:
            yield RecordingFile(handle)

    monkeypatch.setattr(engine.weights, "safe_open", recording_open)
    # Max rows at the step budget: the dense weights can never run, so they go, unread.
    dropped = ModelRunner(EngineConfig.from_parameters(weights_dir, {**base, "quantized_max_rows": "32"}))
    assert read and not any(name.endswith("proj.weight") or name == "lm_head.weight" for name in read)
    read.clear()
    kept = ModelRunner(EngineConfig.from_parameters(weights_dir, {**base, "quantized_max_rows": "31"}))
    assert "lm_head.weight" in read and "model.layers.1.mlp.down_proj.weight" in read
    # Quantized at load from the dense weight (int8: the package holds int4), dropped after.
    int8 = ModelRunner(EngineConfig.from_parameters(weights_dir, {**base, "quantization": "int8", "quantized_max_rows": "32"}))
    assert int8.quantized_layers == {"int8 at load": 9}
    assert not any(layer.dense for layer in int8.model.modules() if isinstance(layer, Linear))
    linears = [(name, layer) for name, layer in dropped.model.named_modules() if isinstance(layer, Linear)]
    assert len(linears) == 9 and all(not layer.dense and layer.weight.is_meta for _, layer in linears)
    for name, layer in kept.model.named_modules():
        if isinstance(layer, Linear):
            assert layer.dense and layer.weight.shape == dropped.model.get_submodule(name).weight.shape
    held = [name for name, parameter in dropped.model.named_parameters() if not parameter.is_meta]
    assert held and not any(name.endswith(("proj.weight", "lm_head.weight")) for name in held)
    # Steps of up to 31 rows run the same quantized matmuls in both.
    prompt = [1, 500, 9000, 42, 77, 1234, 5, 31, 16, 2048, 3, 99]
    torch.testing.assert_close(
        teacher_forced_logits(dropped, prompt, prefill_len=7), teacher_forced_logits(kept, prompt, prefill_len=7), atol=0, rtol=0
    )


def test_quantization_settings_are_checked_by_name(quantized_llama: tuple[Path, Path]) -> None:
    _, weights_dir = quantized_llama
    with pytest.raises(ConfigError, match="quantization must be auto, gguf, none, int4, int8"):
        EngineConfig.from_parameters(weights_dir, {"quantization": "fp8"})
    with pytest.raises(ConfigError, match="quantized_cpu_kernel must be auto, ours or torch"):
        EngineConfig.from_parameters(weights_dir, {"quantized_cpu_kernel": "avx"})
    with pytest.raises(ConfigError, match="quantized_max_rows must be an integer"):
        EngineConfig.from_parameters(weights_dir, {"quantized_max_rows": "many"})
    assert EngineConfig.from_parameters(weights_dir, {"quantized_max_rows": "auto"}).quantized_max_rows is None


def test_the_default_model_serves_its_gguf_blocks(default_weights_dir: Path) -> None:
    parameters = {"dtype": "bfloat16", "kv_block_size": "16", "kv_num_blocks": "16", "max_model_len": "256", "compile_decode": "off"}
    quantized = ModelRunner(EngineConfig.from_parameters(default_weights_dir, parameters))
    # 30 layers x (qkv, o, gate_up, down) in Q4_1, the tied embedding/LM head in Q8_0.
    assert quantized.quantized_layers == {"Q4_1": 120, "Q8_0": 1}
    # The LM head's weight is the embedding (tied): held whatever the kernel. The others
    # are dropped where our kernel serves every step, kept where torch's hands big ones back.
    linears = [layer for layer in quantized.model.modules() if isinstance(layer, Linear)]
    assert [layer.dense for layer in linears].count(True) == (1 if quant_matmul_cpu.available() else 121)
    assert quantized.model.lm_head.dense
    dense = ModelRunner(EngineConfig.from_parameters(default_weights_dir, {**parameters, "quantization": "none"}))
    from transformers import AutoTokenizer

    from tests.engine.test_llama import REAL_TEXT

    text = AutoTokenizer.from_pretrained(default_weights_dir)(REAL_TEXT).input_ids
    ours = teacher_forced_logits(quantized, text, prefill_len=8)[8:]  # the decode rows: quantized
    reference = teacher_forced_logits(dense, text, prefill_len=8)[8:]
    kl = torch.nn.functional.kl_div(ours.log_softmax(-1), reference.log_softmax(-1), log_target=True, reduction="none")
    assert kl.sum(-1).mean() < 0.02  # the same weights; bf16 rounds them differently
    assert (ours.argmax(-1) == reference.argmax(-1)).float().mean() >= 0.9
