"""`tritium package`: Hugging Face directories and GGUF files into a Triton model repository."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from engine.config import EngineConfig
from engine.package import MARKER, PackageError, package_model
from tests.engine.tiny_models import save_tiny_model


@pytest.fixture
def hf_dir(tmp_path: Path, default_weights_dir: Path) -> Path:
    directory = tmp_path / "hf"
    save_tiny_model(directory)
    shutil.copy(default_weights_dir / "tokenizer.json", directory)  # any tokenizer will do
    return directory


def test_hf_directory_becomes_a_triton_model(hf_dir: Path, tmp_path: Path) -> None:
    repository = tmp_path / "repo"
    model_dir = package_model(str(hf_dir), "tiny", repository, parameters={"max_num_seqs": "4"})
    assert model_dir == (repository / "tiny").resolve()
    config = (model_dir / "config.pbtxt").read_text()
    assert 'backend: "python"' in config and "decoupled: true" in config
    assert 'key: "max_num_seqs" value: { string_value: "4" }' in config
    assert (model_dir / "1" / "model.py").read_text() == (
        Path(__file__).resolve().parents[2] / "engine" / "triton_model.py"
    ).read_text()
    weights = model_dir / "weights"
    assert (weights / "model.safetensors").stat().st_ino == (hf_dir / "model.safetensors").stat().st_ino
    # The parameters written are the ones the engine accepts.
    parameters = dict(
        line.split('"')[1::2] for line in config.splitlines() if line.startswith("parameters")
    )
    assert EngineConfig.from_parameters(weights, parameters).scheduler.max_num_seqs == 4


def test_packaging_is_idempotent_and_force_rebuilds(hf_dir: Path, tmp_path: Path) -> None:
    model_dir = package_model(str(hf_dir), "tiny", tmp_path / "repo")
    marker = model_dir / "weights" / MARKER
    first = marker.stat().st_mtime_ns
    (model_dir / "config.pbtxt").write_text("# edited by the user\n")
    package_model(str(hf_dir), "tiny", tmp_path / "repo")
    assert marker.stat().st_mtime_ns == first  # weights kept
    assert (model_dir / "config.pbtxt").read_text() == "# edited by the user\n"  # user edits kept
    package_model(str(hf_dir), "tiny", tmp_path / "repo", force=True)
    assert marker.stat().st_mtime_ns != first
    assert "decoupled" in (model_dir / "config.pbtxt").read_text()


@pytest.mark.parametrize(
    ("remove", "message"),
    [
        ("config.json", "no config.json"),
        ("model.safetensors", r"no \*\.safetensors"),
        ("tokenizer.json", "no tokenizer.json"),
    ],
)
def test_missing_files_are_named(hf_dir: Path, tmp_path: Path, remove: str, message: str) -> None:
    (hf_dir / remove).unlink()
    with pytest.raises(PackageError, match=message):
        package_model(str(hf_dir), "tiny", tmp_path / "repo")
    assert not (tmp_path / "repo" / "tiny").exists()  # nothing half-written


def test_unsupported_architecture_is_refused(hf_dir: Path, tmp_path: Path) -> None:
    config = json.loads((hf_dir / "config.json").read_text())
    config["architectures"] = ["GPT2LMHeadModel"]
    (hf_dir / "config.json").write_text(json.dumps(config))
    with pytest.raises(PackageError, match="unsupported architecture.*GPT2LMHeadModel"):
        package_model(str(hf_dir), "tiny", tmp_path / "repo")
    # Nothing is left for tritonserver to trip over ("Could not determine backend").
    assert not (tmp_path / "repo" / "tiny").exists()


def test_a_failed_packaging_leaves_the_repository_as_it_was(
    hf_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    repository = tmp_path / "repo"
    model_dir = package_model(str(hf_dir), "tiny", repository)
    before = sorted(p.relative_to(model_dir) for p in model_dir.rglob("*"))

    def fail(*args: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr("engine.package._copy_hf_dir", fail)
    with pytest.raises(OSError, match="disk full"):
        package_model(str(hf_dir), "tiny", repository, force=True)  # an existing model
    assert sorted(p.relative_to(model_dir) for p in model_dir.rglob("*")) == before
    with pytest.raises(OSError, match="disk full"):
        package_model(str(hf_dir), "other", repository)  # a new one
    assert sorted(p.name for p in repository.iterdir()) == ["tiny"]


def test_bad_sources_and_names(tmp_path: Path) -> None:
    with pytest.raises(PackageError, match="does not exist"):
        package_model(str(tmp_path / "nope"), "x", tmp_path / "repo")
    (tmp_path / "weights.bin").write_bytes(b"")
    with pytest.raises(PackageError, match="not a .gguf"):
        package_model(str(tmp_path / "weights.bin"), "x", tmp_path / "repo")
    with pytest.raises(PackageError, match="--name"):
        package_model("default", "../escape", tmp_path / "repo")


def test_default_gguf_is_dequantized_to_bf16(default_weights_dir: Path) -> None:
    from safetensors import safe_open

    config = json.loads((default_weights_dir / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"]
    assert (config["num_hidden_layers"], config["num_attention_heads"], config["num_key_value_heads"]) == (30, 9, 3)
    with safe_open(str(default_weights_dir / "model.safetensors"), "pt") as weights:
        names = list(weights.keys())
        assert "lm_head.weight" not in names  # tied embeddings are stored once
        assert weights.get_tensor("model.embed_tokens.weight").dtype.is_floating_point
        assert str(weights.get_tensor("model.norm.weight").dtype) == "torch.bfloat16"
    assert (default_weights_dir / "chat_template.jinja").is_file()


def test_the_packaged_model_has_the_contracts_tensors_and_its_context_length(
    hf_dir: Path, tmp_path: Path
) -> None:
    from contract.tensors import INPUTS, OUTPUTS

    config = (package_model(str(hf_dir), "tiny", tmp_path / "repo") / "config.pbtxt").read_text()
    names = {line.split('"')[1] for line in config.splitlines() if line.startswith("  { name:")}
    assert names == {spec.name for spec in INPUTS + OUTPUTS}
    assert 'key: "max_model_len"' in config
