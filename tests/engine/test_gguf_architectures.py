"""`tritium package` of a GGUF for the new architectures: a tiny Qwen3 and Gemma 2 written
as GGUF files the way llama.cpp lays them out (its tensor names from the `gguf`
package, head size and window in the header, Gemma's norms stored as 1 + w), packaged,
and their logits equal transformers' on the same weights. Unknown GGUF architectures are
refused with the list."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import pytest
import torch

from engine.config import EngineConfig
from engine.model_runner import ModelRunner
from engine.package import WEIGHTS_DIR, PackageError, package_model
from tests.engine.test_architectures import teacher_forced_logits
from tests.engine.tiny_architectures import WINDOW, TinyArchitecture
from tests.engine.tiny_models import hf_logits

SHAPE = dict(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, head_dim=16, max_position_embeddings=256,
             vocab_size=49152)  # fmt: skip  # the default model's tokenizer goes in the header
CASES: dict[str, tuple[TinyArchitecture, gguf.MODEL_ARCH, float]] = {
    # name -> (the model, its GGUF architecture, what llama.cpp adds to norm weights)
    "qwen3": (TinyArchitecture("Qwen3Config", "Qwen3ForCausalLM", SHAPE), gguf.MODEL_ARCH.QWEN3, 0.0),
    "gemma2": (
        # transformers' GGUF reader keeps Gemma 2's defaults for the caps and the q scale.
        TinyArchitecture("Gemma2Config", "Gemma2ForCausalLM",
                         {**SHAPE, "sliding_window": WINDOW, "tie_word_embeddings": True}, norm_mean=0.0),
        gguf.MODEL_ARCH.GEMMA2, 1.0,
    ),  # fmt: skip
}


def write_gguf(model: torch.nn.Module, path: Path, arch: gguf.MODEL_ARCH, norm_offset: float,
               tokenizer_json: dict[str, Any]) -> None:  # fmt: skip
    config = model.config
    writer = gguf.GGUFWriter(str(path), gguf.MODEL_ARCH_NAMES[arch])
    writer.add_block_count(config.num_hidden_layers)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_key_length(config.head_dim)
    writer.add_value_length(config.head_dim)
    writer.add_rope_freq_base(10000.0)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    if getattr(config, "sliding_window", None):
        writer.add_sliding_window(config.sliding_window)
    vocab = tokenizer_json["model"]["vocab"]
    special = {token["id"] for token in tokenizer_json["added_tokens"]}
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(sorted(vocab, key=vocab.__getitem__))
    writer.add_token_types([gguf.TokenType.CONTROL if i in special else gguf.TokenType.NORMAL for i in range(len(vocab))])
    writer.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in tokenizer_json["model"]["merges"]])
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    names = gguf.get_tensor_name_map(arch, config.num_hidden_layers)
    for name, tensor in model.state_dict().items():
        if name == "lm_head.weight" and config.tie_word_embeddings:
            continue
        gguf_name = names.get_name(name, try_suffixes=(".weight", ".bias"))
        assert gguf_name is not None, name
        data = tensor + norm_offset if "norm" in name else tensor
        writer.add_tensor(gguf_name, data.numpy().astype(np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


@pytest.mark.parametrize("name", sorted(CASES))
def test_gguf_of_a_new_architecture_packages_and_equals_transformers(
    name: str, tmp_path: Path, default_weights_dir: Path
) -> None:
    tiny, arch, norm_offset = CASES[name]
    model = tiny.build()
    with torch.no_grad():  # bf16-exact weights: packaging stores a GGUF's weights as bf16
        for parameter in model.parameters():  # (not the buffers: RoPE's stay float32)
            parameter.copy_(parameter.to(torch.bfloat16))
    tokenizer_json = json.loads((default_weights_dir / "tokenizer.json").read_text())
    write_gguf(model, tmp_path / f"{name}.gguf", arch, norm_offset, tokenizer_json)
    weights_dir = package_model(str(tmp_path / f"{name}.gguf"), name, tmp_path / "repo", progress=False) / WEIGHTS_DIR
    assert json.loads((weights_dir / "config.json").read_text())["architectures"] == [tiny.model_class]
    parameters = {"dtype": "float32", "kv_block_size": "4", "kv_num_blocks": "32", "compile_decode": "off",
                  "max_model_len": "64", "device": "cpu", "use_kernels": "off"}  # fmt: skip
    runner = ModelRunner(EngineConfig.from_parameters(weights_dir, parameters))
    prompt = [1, 500, 9000, 42, 77, 1234, 5, 31, 16, 2048, 3, 99]  # longer than the window
    ours = teacher_forced_logits(runner, prompt, prefill_len=7)
    torch.testing.assert_close(ours, hf_logits(model, prompt), atol=1e-4, rtol=1e-4)


def test_an_unknown_gguf_architecture_is_refused_with_the_list(tmp_path: Path) -> None:
    writer = gguf.GGUFWriter(str(tmp_path / "x.gguf"), "starcoder2")
    writer.add_block_count(1)
    writer.add_context_length(16)
    writer.add_embedding_length(8)
    writer.add_feed_forward_length(8)
    writer.add_head_count(1)
    writer.add_tensor("token_embd.weight", np.zeros((4, 8), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(PackageError, match=r"unsupported .*starcoder2.*supported: .*gemma2.*qwen3"):
        package_model(str(tmp_path / "x.gguf"), "x", tmp_path / "repo", progress=False)
    assert not (tmp_path / "repo" / "x").exists()
