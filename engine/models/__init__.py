"""Our model classes, one module per layer layout; `model_class` finds a checkpoint's."""

from __future__ import annotations

import importlib

from engine.architectures import ARCHITECTURES
from engine.config import ConfigError, ModelConfig


def model_class(config: ModelConfig) -> type:
    """Our class for `config.architecture` (engine.architectures.ARCHITECTURES)."""
    entry = ARCHITECTURES.get(config.architecture)
    if entry is None:  # ModelConfig refuses these already; kept for a direct caller
        raise ConfigError(f"unsupported architecture {config.architecture!r}")
    module_name, class_name = entry.model.rsplit(".", 1)
    return getattr(importlib.import_module(f"engine.models.{module_name}"), class_name)
