"""`tritium serve MODEL`: MODEL packaged into a model repository of its own in the cache.

    <cache>/served/<stem>-<hash of MODEL's path>/<served name>/   config.pbtxt, 1/model.py, weights/

The weights are rebuilt only when MODEL changes (`engine.package` compares the sizes and
times of its files); config.pbtxt is written on every start from the flags, so that
`--max-num-seqs 8` today and none tomorrow both mean what they say. A repository holds
exactly one model: serving the same MODEL under another name renames it.
"""

from __future__ import annotations

import hashlib
import re
import shutil
from collections.abc import Mapping
from pathlib import Path

DEFAULT_SOURCE = "default"
DEFAULT_SOURCE_NAME = "smollm2-135m-instruct"


def default_served_name(source: str) -> str:
    """The API's model id for MODEL: its directory name, or its file name without `.gguf`,
    with characters a model directory cannot hold replaced by '-'."""
    if source == DEFAULT_SOURCE:
        return DEFAULT_SOURCE_NAME
    path = Path(source).expanduser().resolve()
    stem = path.stem if path.suffix == ".gguf" else path.name
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", stem).strip("-.")
    return name or "model"


def repository_for(source: str, cache_dir: Path) -> Path:
    """The cache repository of MODEL: one per source path (the same file served from two
    places is two entries; two sources with one name never share)."""
    if source == DEFAULT_SOURCE:
        key, stem = DEFAULT_SOURCE, DEFAULT_SOURCE_NAME
    else:
        path = Path(source).expanduser().resolve()
        key, stem = str(path), default_served_name(source)
    digest = hashlib.sha256(key.encode()).hexdigest()[:12]
    return cache_dir / "served" / f"{stem}-{digest}"


def prepare_repository(
    source: str,
    name: str,
    parameters: Mapping[str, str],
    cache_dir: Path,
    progress: bool = True,
) -> Path:
    """Package MODEL as `name` into its cache repository with these config.pbtxt
    parameters; returns the repository. Raises ValueError (engine.package.PackageError,
    engine.config.ConfigError) for a source or parameter that cannot work."""
    from engine.config import EngineConfig
    from engine.package import WEIGHTS_DIR, model_parameters, package_model

    repository = repository_for(source, cache_dir)
    repository.mkdir(parents=True, exist_ok=True)
    _keep_only(repository, name)
    model_dir = package_model(
        source,
        name,
        repository,
        parameters=dict(parameters),
        progress=progress,
        rewrite_config=True,
    )
    # The engine's own check, now rather than minutes later inside tritonserver.
    weights_dir = model_dir / WEIGHTS_DIR
    EngineConfig.from_parameters(weights_dir, model_parameters(weights_dir, dict(parameters)))
    return repository


def _keep_only(repository: Path, name: str) -> None:
    """Leave `name` as the only model of `repository`: another name's package is renamed
    (its weights are kept), anything more is removed."""
    others = sorted(
        entry for entry in repository.iterdir() if entry.is_dir() and entry.name != name
    )
    if others and not (repository / name).exists():
        others.pop(0).rename(repository / name)
    for entry in others:
        shutil.rmtree(entry)
