"""Fixtures shared by the whole suite: the packaged default model."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.triton_interpreter import import_triton_interpreted

import_triton_interpreted()  # before any test module imports triton (see that module)

# The real stack, shared by tests/e2e and tests/reliability: registered once here so a
# session starts it once, whichever of those directories runs.
from tests.stack import stack, start_adapter  # noqa: E402, F401

REPO_ROOT = Path(__file__).resolve().parents[1]
CACHE_DIR = REPO_ROOT / ".cache"
DEFAULT_MODEL = "smollm2-135m-instruct"


@pytest.fixture(scope="session")
def default_model_dir() -> Path:
    """The default model packaged once per checkout (dequantizing the GGUF takes ~20 s)."""
    from engine.package import package_model

    return package_model("default", DEFAULT_MODEL, CACHE_DIR / "models", progress=False)


@pytest.fixture(scope="session")
def default_weights_dir(default_model_dir: Path) -> Path:
    """Hugging Face layout (config.json, model.safetensors, tokenizer) of the default model."""
    return default_model_dir / "weights"
