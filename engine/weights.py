"""Load safetensors checkpoints (single file or sharded) into our models.

The model says where each Hugging Face tensor goes (`hf_weight_map`: name ->
parameter, expert and row range, which is how q/k/v and gate/up get fused and experts
stacked; and an offset, Gemma's RMSNorm weights being stored as w for 1 + w); this module
reads the files, checks shapes, casts to the run dtype, and copies. A missing or
misshapen tensor is an error that names it.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

import torch
from safetensors import safe_open

from engine.models.layers import WeightSlot

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"
# Checkpoint tensors that we recompute or do not use.
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)

logger = logging.getLogger(__name__)


class WeightsError(ValueError):
    """A checkpoint that does not fit the model; the message names the tensor."""


class LoadableModel(Protocol):
    def hf_weight_map(self) -> dict[str, WeightSlot]: ...

    def get_parameter(self, target: str) -> torch.nn.Parameter: ...


def checkpoint_files(model_dir: str | Path) -> list[Path]:
    """The safetensors files of a model directory, sharded (via the index) or single."""
    directory = Path(model_dir)
    index = directory / INDEX_FILE
    if index.is_file():
        weight_map = json.loads(index.read_text()).get("weight_map") or {}
        files = [directory / name for name in sorted(set(weight_map.values()))]
    elif (directory / SINGLE_FILE).is_file():
        files = [directory / SINGLE_FILE]
    else:
        files = sorted(directory.glob("*.safetensors"))
    if not files:
        raise WeightsError(
            f"no safetensors weights in {directory} (expected {SINGLE_FILE} or {INDEX_FILE})"
        )
    for path in files:
        if not path.is_file():
            raise WeightsError(
                f"{path.name} is listed in {INDEX_FILE} but missing from {directory}"
            )
    return files


def iterate_tensors(files: list[Path]) -> Iterator[tuple[str, torch.Tensor]]:
    started = time.monotonic()
    for number, path in enumerate(files, start=1):
        # Loading progress, file by file (`tritium serve` shows these lines while it waits).
        size_gb = path.stat().st_size / 1e9
        logger.info("weights: file %d of %d, %s (%.2f GB)", number, len(files), path.name, size_gb)
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            for name in handle.keys():  # noqa: SIM118 - safe_open is not a mapping
                yield name, handle.get_tensor(name)
    logger.info("weights: loaded in %.1f s", time.monotonic() - started)


@torch.inference_mode()
def load_weights(model: LoadableModel, model_dir: str | Path) -> None:
    """Fill every parameter of `model` from the checkpoint in `model_dir`.

    Tensors are cast to each parameter's dtype and moved to its device as they are
    copied. Raises `WeightsError` naming the first missing, unexpected or misshapen tensor.
    """
    expected = model.hf_weight_map()
    loaded: set[str] = set()
    for name, tensor in iterate_tensors(checkpoint_files(model_dir)):
        slot = expected.get(name)
        if slot is None:
            if name.endswith(_IGNORED_SUFFIXES) or _is_tied_head(name, expected):
                continue
            raise WeightsError(
                f"checkpoint tensor {name!r} in {model_dir} has no place in the model"
            )
        parameter = model.get_parameter(slot.parameter)
        data = parameter.data if slot.expert is None else parameter.data[slot.expert]
        target = data[slot.row_start : slot.row_start + slot.rows]
        if tuple(tensor.shape) != tuple(target.shape):
            raise WeightsError(
                f"checkpoint tensor {name!r} has shape {tuple(tensor.shape)}, "
                f"the model expects {tuple(target.shape)}"
            )
        target.copy_(tensor.float() + slot.offset if slot.offset else tensor)
        loaded.add(name)
    missing = [name for name in expected if name not in loaded]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise WeightsError(f"checkpoint in {model_dir} is missing tensor {missing[0]!r}{more}")


def _is_tied_head(name: str, expected: dict[str, WeightSlot]) -> bool:
    # Some tied checkpoints still store lm_head; the embedding already serves as it.
    return name == "lm_head.weight" and name not in expected
