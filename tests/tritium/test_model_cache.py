"""`tritium serve MODEL`: the cache repository of a model (reused, rebuilt, renamed)."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest

from engine.package import MARKER
from tests.engine.tiny_models import save_tiny_model
from tritium.model_cache import default_served_name, prepare_repository, repository_for


@pytest.fixture
def hf_dir(tmp_path: Path, default_weights_dir: Path) -> Path:
    directory = tmp_path / "My Model"
    save_tiny_model(directory)
    shutil.copy(default_weights_dir / "tokenizer.json", directory)  # any tokenizer will do
    return directory


def test_names_come_from_the_source() -> None:
    assert default_served_name("/models/Llama-3.2-1B") == "Llama-3.2-1B"
    assert default_served_name("/x/SmolLM2-135M-Instruct.Q4_1.gguf") == "SmolLM2-135M-Instruct.Q4_1"
    assert default_served_name("/x/My Model") == "My-Model"
    assert default_served_name("default") == "smollm2-135m-instruct"


def test_the_package_is_reused_until_the_source_changes(hf_dir: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    repository = prepare_repository(str(hf_dir), "tiny", {"max_num_seqs": "4"}, cache)
    assert repository == repository_for(str(hf_dir), cache)
    marker = repository / "tiny" / "weights" / MARKER
    built = marker.stat().st_mtime_ns
    config = repository / "tiny" / "config.pbtxt"
    assert 'key: "max_num_seqs" value: { string_value: "4" }' in config.read_text()

    # Same source, other flags: weights kept, config.pbtxt follows the flags.
    prepare_repository(str(hf_dir), "tiny", {"max_num_seqs": "2"}, cache)
    assert marker.stat().st_mtime_ns == built
    assert 'string_value: "2"' in config.read_text() and 'string_value: "4"' not in config.read_text()
    prepare_repository(str(hf_dir), "tiny", {}, cache)
    assert "max_num_seqs" not in config.read_text()

    # The source changes: rebuilt.
    time.sleep(1.1)  # the fingerprint keeps whole seconds
    (hf_dir / "model.safetensors").write_bytes((hf_dir / "model.safetensors").read_bytes())
    prepare_repository(str(hf_dir), "tiny", {}, cache)
    assert marker.stat().st_mtime_ns != built


def test_another_name_renames_the_only_model(hf_dir: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    repository = prepare_repository(str(hf_dir), "first", {}, cache)
    built = (repository / "first" / "weights" / MARKER).stat().st_mtime_ns
    prepare_repository(str(hf_dir), "second", {}, cache)
    assert sorted(p.name for p in repository.iterdir() if p.is_dir()) == ["second"]
    assert (repository / "second" / "weights" / MARKER).stat().st_mtime_ns == built
    assert 'name: "second"' in (repository / "second" / "config.pbtxt").read_text()


def test_a_parameter_the_engine_refuses_fails_before_triton(hf_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="max_model_len 100000 is over"):
        prepare_repository(str(hf_dir), "tiny", {"max_model_len": "100000"}, tmp_path / "cache")
    with pytest.raises(ValueError, match="does not exist"):
        prepare_repository(str(tmp_path / "missing"), "tiny", {}, tmp_path / "cache")
