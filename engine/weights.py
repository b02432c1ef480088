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
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Protocol

import torch
from safetensors import safe_open

from engine.models.layers import Linear, WeightSlot
from engine.quantization import (
    QUANTIZED_FILE,
    QuantizationError,
    QuantizedMatmul,
    QuantizedTensor,
    load_quantized,
    quantize_int4,
    quantize_int8,
)

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

    def named_parameters(self) -> Iterator[tuple[str, torch.nn.Parameter]]: ...

    def named_modules(self) -> Iterator[tuple[str, torch.nn.Module]]: ...


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


def iterate_tensors(
    files: list[Path], skip: Callable[[str], bool] = lambda name: False
) -> Iterator[tuple[str, torch.Tensor | None]]:
    """Every tensor of the checkpoint by name; None for those `skip` names (not read)."""
    started = time.monotonic()
    for number, path in enumerate(files, start=1):
        # Loading progress, file by file (`tritium serve` shows these lines while it waits).
        size_gb = path.stat().st_size / 1e9
        logger.info("weights: file %d of %d, %s (%.2f GB)", number, len(files), path.name, size_gb)
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            for name in handle.keys():  # noqa: SIM118 - safe_open is not a mapping
                yield name, None if skip(name) else handle.get_tensor(name)
    logger.info("weights: loaded in %.1f s", time.monotonic() - started)


@torch.inference_mode()
def load_weights(model: LoadableModel, model_dir: str | Path) -> None:
    """Fill every parameter of `model` from the checkpoint in `model_dir`.

    Tensors are cast to each parameter's dtype and moved to its device as they are
    copied. A parameter on the meta device (a dense weight `load_and_quantize` dropped)
    is not read. Raises `WeightsError` naming the first missing, unexpected or misshapen
    tensor.
    """
    expected = model.hf_weight_map()
    dropped = {name for name, slot in expected.items() if model.get_parameter(slot.parameter).is_meta}
    loaded: set[str] = set()
    for name, tensor in iterate_tensors(checkpoint_files(model_dir), skip=dropped.__contains__):
        slot = expected.get(name)
        if slot is None:
            if name.endswith(_IGNORED_SUFFIXES) or _is_tied_head(name, expected):
                continue
            raise WeightsError(
                f"checkpoint tensor {name!r} in {model_dir} has no place in the model"
            )
        if tensor is None:  # dropped: its quantized copy serves
            loaded.add(name)
            continue
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


@torch.inference_mode()
def load_and_quantize(
    model: LoadableModel,
    model_dir: str | Path,
    mode: str,
    max_rows: int | None,
    dtype: torch.dtype,
    device: torch.device,
    cpu_kernel: str = "auto",
    max_step_rows: int | None = None,
) -> dict[str, int]:
    """`load_weights`, and the model's `Linear` layers given their quantized weights.

    mode (EngineConfig.quantization): "none"; "gguf" = the package's quantized tensors
    (`QUANTIZED_FILE`, written by `tritium package` from a GGUF) where a layer has them;
    "auto" = "gguf", except on CPU with float32 activations, where torch's weight-only
    kernels are slower than the dense matmul (engine/quantization.py); "int4" / "int8" =
    the stored tensors of these bits, and every other layer quantized from its dense
    weight. A fused layer (qkv, gate/up) takes stored tensors only when all its parts have
    them in one format. A layer whose quantized weight serves every matmul (its max rows at
    least `max_step_rows`, the most rows a step computes) drops its dense weight, unless
    another module shares it (a tied LM head's embedding): a layer with stored tensors is
    quantized before the checkpoint is read, so such a dense weight is never read or held;
    one quantized at load drops it after. Returns {how: layers} ("Q4_1", "int4 at load",
    "dense" ...).
    """
    counts: dict[str, int] = {}
    if mode == "auto" and device.type == "cpu" and dtype == torch.float32:
        logger.info("quantization auto: dense weights (float32 on CPU, where the quantized kernels are slower)")
        mode = "none"
    if mode == "none":
        load_weights(model, model_dir)
        return counts
    path = Path(model_dir) / QUANTIZED_FILE
    stored = load_quantized(path) if path.is_file() else {}
    slots_of: dict[str, list[tuple[str, WeightSlot]]] = {}
    for name, slot in model.hf_weight_map().items():
        slots_of.setdefault(slot.parameter, []).append((name, slot))
    parameter_names = {id(parameter): name for name, parameter in model.named_parameters()}
    holders = Counter(id(p) for _, p in model.named_parameters(remove_duplicate=False))
    wanted_bits = {"int4": 4, "int8": 8}.get(mode)
    dropped = 0

    def quantize(layer: Linear, tensor: QuantizedTensor, how: str) -> None:
        nonlocal dropped
        matmul = QuantizedMatmul(tensor, dtype, device, cpu_kernel)
        rows = matmul.default_max_rows if max_rows is None else max_rows
        drop = max_step_rows is not None and rows >= max_step_rows and holders[id(layer.weight)] == 1
        dropped += layer.weight.numel() * layer.weight.element_size() if drop else 0
        layer.quantize(matmul, rows, drop_dense=drop)
        counts[how] = counts.get(how, 0) + 1

    at_load: list[Linear] = []
    for _, layer in model.named_modules():
        if not isinstance(layer, Linear):
            continue
        parameter = parameter_names[id(layer.weight)]
        found = _stored_tensor(slots_of.get(parameter, []), stored, layer.weight)
        for name, _ in slots_of.get(parameter, []):  # held no longer than its layer needs it
            stored.pop(name, None)
        if found is not None and wanted_bits in (None, found[0].bits):
            quantize(layer, *found)
        elif wanted_bits is not None:
            at_load.append(layer)
        else:
            counts["dense"] = counts.get("dense", 0) + 1
    load_weights(model, model_dir)
    for layer in at_load:
        if wanted_bits == 4:
            quantize(layer, quantize_int4(layer.weight), "int4 at load")
        else:
            quantize(layer, quantize_int8(layer.weight), "int8 at load")
    logger.info("quantized linear layers: %s", ", ".join(f"{v} {k}" for k, v in sorted(counts.items())))
    if dropped:
        logger.info("dense weights dropped (the quantized ones serve every step): %.1f MB", dropped / 1e6)
    return counts


def _stored_tensor(
    slots: list[tuple[str, WeightSlot]],
    stored: dict[str, tuple[QuantizedTensor, str]],
    weight: torch.Tensor,
) -> tuple[QuantizedTensor, str] | None:
    """The stored quantized tensors of one parameter's slots, stacked in row order; None
    when a part is missing, stacks experts, or the parts differ in format."""
    if not slots or any(slot.expert is not None or name not in stored for name, slot in slots):
        return None
    slots = sorted(slots, key=lambda item: item[1].row_start)
    parts = []
    for name, slot in slots:
        tensor, _ = stored[name]
        if tensor.shape != (slot.rows, weight.shape[1]):
            raise QuantizationError(
                f"quantized tensor {name!r} has shape {tensor.shape}, the model expects "
                f"{(slot.rows, weight.shape[1])}"
            )
        parts.append(tensor)
    if len({(p.bits, p.group_size) for p in parts}) > 1:
        return None
    sources = sorted({stored[name][1] for name, _ in slots})
    return QuantizedTensor.concatenate(parts), "+".join(sources)
