"""The null model (see model.py) and the model repository that serves it.

    write_null_repository(repository, {"null-1": 1, "null-16": 16})

writes one decoupled Python-backend model per entry, each with the LLM tensor contract
(`contract.tensors.render_model_config`, as `tritium package` writes it) and its
`tokens_per_response`.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from contract.tensors import render_model_config

MODEL_SOURCE = Path(__file__).with_name("model.py")
# The context length the adapter reads from config.pbtxt; the null model has no limit.
NULL_MAX_MODEL_LEN = 32768


def write_null_repository(repository: Path, models: dict[str, int]) -> Path:
    """Write `<repository>/<name>/` for each name -> tokens_per_response; returns repository."""
    for name, tokens_per_response in models.items():
        if tokens_per_response < 1:
            raise ValueError(
                f"tokens_per_response of {name} must be >= 1, got {tokens_per_response}"
            )
        model_dir = repository / name
        (model_dir / "1").mkdir(parents=True, exist_ok=True)
        parameters = {
            "max_model_len": str(NULL_MAX_MODEL_LEN),
            "tokens_per_response": str(tokens_per_response),
        }
        (model_dir / "config.pbtxt").write_text(render_model_config(name, parameters))
        shutil.copyfile(MODEL_SOURCE, model_dir / "1" / "model.py")
    return repository
