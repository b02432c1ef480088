"""Engine configuration: frozen dataclasses built once at the edge.

`EngineConfig.from_parameters` takes the string parameters of a model's
`config.pbtxt` (Triton gives them to `initialize`) and the model directory.
Values learned later (the number of KV blocks that fit the memory budget) are
set with `dataclasses.replace`, never by mutation.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from contract.tools import FORMATS
from engine import architectures as architectures_module
from engine.architectures import SUPPORTED_ARCHITECTURES, MoEConfig, RopeSpec

ACTIVATIONS = ("silu", "gelu_pytorch_tanh", "gelu")


class ConfigError(ValueError):
    """A configuration value that cannot work; the message says what to change."""


@dataclass(frozen=True)
class ModelConfig:
    architecture: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float
    rope_theta: float
    rope_scaling: dict[str, Any] | None  # the HF `rope_scaling` dict, or None
    max_position_embeddings: int
    tie_word_embeddings: bool
    attention_bias: bool  # Qwen2: q/k/v projections carry a bias
    eos_token_ids: tuple[int, ...]
    bos_token_id: int | None
    torch_dtype: str  # as saved in config.json ("bfloat16", "float32", ...)
    # What some architectures add (engine.architectures reads them from config.json):
    # per layer, its sliding window (a query at p sees keys p - window < k <= p) or None
    # for a global layer; () = no windows.
    layer_windows: tuple[int | None, ...] = ()
    hidden_act: str = "silu"  # the MLP gate's activation (transformers' ACT2FN name)
    attention_scale: float | None = None  # the factor on q·k; None = head_dim ** -0.5
    attention_softcap: float | None = None  # scores -> cap * tanh(scores / cap) (Gemma 2)
    final_softcap: float | None = None  # the same on the output logits (Gemma 2)
    sliding_rope: RopeSpec | None = None  # the sliding layers' own RoPE (Gemma 3)
    moe: MoEConfig | None = None  # mixture of experts (Mixtral, Qwen-MoE)

    def __post_init__(self) -> None:
        if self.architecture not in SUPPORTED_ARCHITECTURES:
            raise ConfigError(
                f"unsupported architecture {self.architecture!r}; "
                f"supported: {', '.join(SUPPORTED_ARCHITECTURES)}"
            )
        if self.num_heads % self.num_kv_heads:
            raise ConfigError(
                f"num_attention_heads {self.num_heads} is not a multiple of "
                f"num_key_value_heads {self.num_kv_heads}"
            )
        if self.hidden_act not in ACTIVATIONS:
            raise ConfigError(
                f"unsupported activation {self.hidden_act!r}; supported: {', '.join(ACTIVATIONS)}"
            )
        if self.layer_windows and len(self.layer_windows) != self.num_layers:
            raise ConfigError(
                f"{len(self.layer_windows)} layer windows for {self.num_layers} layers"
            )

    def window(self, layer: int) -> int | None:
        """Layer `layer`'s sliding window, or None when it attends to the whole context."""
        return self.layer_windows[layer] if self.layer_windows else None

    @property
    def kv_window(self) -> int | None:
        """Positions older than this are read by no layer (every layer has a window);
        None when some layer attends to the whole context."""
        windows = [self.window(layer) for layer in range(self.num_layers)]
        if not windows or None in windows:
            return None
        return max(w for w in windows if w is not None)

    @classmethod
    def from_hf_config(cls, config: dict[str, Any]) -> ModelConfig:
        architectures = config.get("architectures") or [""]
        num_heads = int(config["num_attention_heads"])
        hidden_size = int(config["hidden_size"])
        eos = config.get("eos_token_id")
        eos_ids = tuple(eos) if isinstance(eos, list) else (() if eos is None else (int(eos),))
        architecture = architectures[0]
        num_layers = int(config["num_hidden_layers"])
        head_dim = int(config.get("head_dim") or hidden_size // num_heads)
        rope, sliding_rope = architectures_module.rope_specs(config, architecture)
        if architectures_module.partial_rotary_factor(config) != 1.0:
            raise ConfigError(
                f"partial_rotary_factor {architectures_module.partial_rotary_factor(config)} "
                "(RoPE on part of each head) is not supported yet; supported: 1.0"
            )
        return cls(
            architecture=architecture,
            vocab_size=int(config["vocab_size"]),
            hidden_size=hidden_size,
            intermediate_size=int(config["intermediate_size"]),
            num_layers=num_layers,
            num_heads=num_heads,
            num_kv_heads=int(config.get("num_key_value_heads") or num_heads),
            head_dim=head_dim,
            rms_norm_eps=float(config.get("rms_norm_eps", 1e-6)),
            rope_theta=rope.theta,
            rope_scaling=rope.scaling,
            max_position_embeddings=int(config.get("max_position_embeddings", 2048)),
            tie_word_embeddings=bool(config.get("tie_word_embeddings", False)),
            attention_bias=architectures_module.attention_bias(config, architecture),
            eos_token_ids=eos_ids,
            bos_token_id=config.get("bos_token_id"),
            torch_dtype=str(config.get("torch_dtype") or config.get("dtype") or "float32"),
            layer_windows=architectures_module.layer_windows(config, architecture, num_layers),
            hidden_act=architectures_module.hidden_activation(config),
            attention_scale=architectures_module.attention_scale(config, head_dim),
            attention_softcap=architectures_module.attention_softcap(config, architecture),
            final_softcap=architectures_module.final_softcap(config),
            sliding_rope=sliding_rope,
            moe=architectures_module.moe_config(config, architecture, num_layers),
        )

    @classmethod
    def from_model_dir(cls, model_dir: str | Path) -> ModelConfig:
        path = Path(model_dir) / "config.json"
        if not path.is_file():
            raise ConfigError(f"{path} is missing: a model directory needs a config.json")
        return cls.from_hf_config(json.loads(path.read_text()))


@dataclass(frozen=True)
class CacheConfig:
    block_size: int = 16  # tokens per KV block
    # Exactly this many KV blocks; None = as many as `memory_budget_bytes` holds.
    num_blocks: int | None = None
    memory_budget_bytes: int = 1 << 30  # KV cache memory when num_blocks is None
    enable_prefix_caching: bool = True
    # No layer reads keys more than this many positions behind a query (every layer of the
    # model has a sliding window, this the widest): the blocks behind it are freed while
    # the sequence runs. None = some layer reads the whole context. From the model.
    sliding_window: int | None = None

    def __post_init__(self) -> None:
        if self.block_size < 1 or self.block_size & (self.block_size - 1):
            raise ConfigError(f"kv_block_size must be a power of two, got {self.block_size}")
        if self.num_blocks is not None and self.num_blocks < 1:
            raise ConfigError(f"kv_num_blocks must be >= 1, got {self.num_blocks}")
        if self.memory_budget_bytes < 1:
            raise ConfigError("kv_cache_memory_mb must be > 0")


@dataclass(frozen=True)
class SchedulerConfig:
    max_num_seqs: int = 64  # sequences in the running batch at most
    max_num_batched_tokens: int = 512  # tokens computed per step (the chunked-prefill budget)
    max_model_len: int = 2048  # prompt + output tokens per sequence at most

    def __post_init__(self) -> None:
        if self.max_num_seqs < 1:
            raise ConfigError(f"max_num_seqs must be >= 1, got {self.max_num_seqs}")
        if self.max_num_batched_tokens < 1:
            raise ConfigError(
                f"max_num_batched_tokens must be >= 1, got {self.max_num_batched_tokens}"
            )
        if self.max_model_len < 2:
            raise ConfigError(f"max_model_len must be >= 2, got {self.max_model_len}")


@dataclass(frozen=True)
class EngineConfig:
    model_dir: str
    model: ModelConfig
    cache: CacheConfig = field(default_factory=CacheConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    # "auto" = bfloat16 on CUDA and on CPUs with native bf16 (AVX512-BF16, AMX), else
    # float32; or float32 / bfloat16 / float16
    dtype: str = "auto"
    device: str = "auto"  # "auto" = cuda when available, else cpu
    use_kernels: str = "auto"  # "auto" = Triton kernels on CUDA, torch on CPU; "on" / "off"
    num_threads: int = 0  # torch intra-op threads on CPU; 0 = torch's default
    # Decode steps through the model's forward compiled whole (engine/decode_graph.py):
    # "auto" = on CPU with the torch backend and a dense model, "on" (an error where it
    # cannot be), "off".
    compile_decode: str = "auto"
    # How the model writes tool calls (contract.tools.FORMATS); "" = read from the chat
    # template. "generic": the template takes no tools, the engine writes the tool prompt.
    tool_call_format: str = ""
    # Weight-only quantized linear layers (engine/quantization.py, engine.weights.load_and_quantize):
    # "gguf" = the package's quantized GGUF tensors where it has them; "auto" = gguf, but dense
    # for float32 on CPU; "none"; "int4" / "int8" = those bits (the package's tensors of those
    # bits, else quantized from the dense weights at load).
    quantization: str = "auto"
    # Matmuls of up to this many rows use the quantized weight, bigger ones the dense one;
    # None = where the layer's kernel stops paying (QuantizedMatmul.default_max_rows: every
    # row count on our CPU kernel; per bits on torch's, engine.quantization.DEFAULT_MAX_ROWS).
    quantized_max_rows: int | None = None
    # Which CPU kernel runs quantized matmuls (tritium_kernels/quant_matmul_cpu.py): "auto" = ours
    # where the CPU has AVX-512 VNNI and it builds, else torch's; "ours" (an error where it
    # cannot run); "torch" = torch's weight-only kernels.
    quantized_cpu_kernel: str = "auto"

    def __post_init__(self) -> None:
        if self.dtype not in ("auto", "float32", "bfloat16", "float16"):
            raise ConfigError(f"dtype must be auto, float32, bfloat16 or float16, got {self.dtype!r}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ConfigError(f"device must be auto, cpu or cuda, got {self.device!r}")
        if self.use_kernels not in ("auto", "on", "off"):
            raise ConfigError(f"use_kernels must be auto, on or off, got {self.use_kernels!r}")
        if self.compile_decode not in ("auto", "on", "off"):
            raise ConfigError(
                f"compile_decode must be auto, on or off, got {self.compile_decode!r}"
            )
        if self.quantization not in QUANTIZATION_MODES:
            raise ConfigError(
                f"quantization must be {', '.join(QUANTIZATION_MODES)}, got {self.quantization!r}"
            )
        check_quantized_cpu_kernel(self.quantized_cpu_kernel)
        if self.quantized_max_rows is not None and self.quantized_max_rows < 0:
            raise ConfigError(f"quantized_max_rows must be >= 0 or auto, got {self.quantized_max_rows}")
        if self.tool_call_format not in ("", *FORMATS):
            raise ConfigError(
                f"tool_call_format must be one of {', '.join(FORMATS)}, got {self.tool_call_format!r}"
            )

    @classmethod
    def from_parameters(cls, model_dir: str | Path, parameters: dict[str, str]) -> EngineConfig:
        """Build from config.pbtxt parameters (all strings); unknown keys are an error."""
        model = ModelConfig.from_model_dir(model_dir)
        params = dict(parameters)
        known = set(_PARAMETERS)
        unknown = sorted(set(params) - known)
        if unknown:
            raise ConfigError(
                f"unknown parameter {unknown[0]!r} in config.pbtxt; known: {', '.join(sorted(known))}"
            )
        values = {key: _PARAMETERS[key][1](key, value) for key, value in params.items()}

        def pick(group: str) -> dict[str, Any]:
            return {
                _PARAMETERS[key][0].split(".")[1]: value
                for key, value in values.items()
                if _PARAMETERS[key][0].split(".")[0] == group
            }

        scheduler_kwargs = pick("scheduler")
        scheduler_kwargs.setdefault("max_model_len", model.max_position_embeddings)
        if scheduler_kwargs["max_model_len"] > model.max_position_embeddings:
            raise ConfigError(
                f"max_model_len {scheduler_kwargs['max_model_len']} is over the model's "
                f"max_position_embeddings {model.max_position_embeddings}"
            )
        cache_kwargs = pick("cache")
        if "memory_budget_bytes" in cache_kwargs:
            cache_kwargs["memory_budget_bytes"] = int(cache_kwargs["memory_budget_bytes"]) << 20
        return cls(
            model_dir=str(model_dir),
            model=model,
            cache=CacheConfig(**cache_kwargs, sliding_window=model.kv_window),
            scheduler=SchedulerConfig(**scheduler_kwargs),
            **pick("engine"),
        )


def _int(key: str, value: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise ConfigError(f"parameter {key} must be an integer, got {value!r}") from None


def _bool(key: str, value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"parameter {key} must be true or false, got {value!r}")


def _str(key: str, value: str) -> str:
    return value.strip()


def _int_or_auto(key: str, value: str) -> int | None:
    return None if value.strip().lower() == "auto" else _int(key, value)


QUANTIZATION_MODES = ("auto", "gguf", "none", "int4", "int8")
QUANTIZED_CPU_KERNELS = ("auto", "ours", "torch")  # engine.quantization.QuantizedMatmul


def check_quantized_cpu_kernel(value: str) -> None:
    """ConfigError unless `value` is one of QUANTIZED_CPU_KERNELS (the config's and
    QuantizedMatmul's check)."""
    if value not in QUANTIZED_CPU_KERNELS:
        *first, last = QUANTIZED_CPU_KERNELS
        raise ConfigError(f"quantized_cpu_kernel must be {', '.join(first)} or {last}, got {value!r}")


# config.pbtxt parameter -> (group.field, parser). The one table of tunables.
_PARAMETERS: dict[str, tuple[str, Any]] = {
    "kv_block_size": ("cache.block_size", _int),
    "kv_num_blocks": ("cache.num_blocks", _int),
    "kv_cache_memory_mb": ("cache.memory_budget_bytes", _int),
    "enable_prefix_caching": ("cache.enable_prefix_caching", _bool),
    "max_num_seqs": ("scheduler.max_num_seqs", _int),
    "max_num_batched_tokens": ("scheduler.max_num_batched_tokens", _int),
    "max_model_len": ("scheduler.max_model_len", _int),
    "dtype": ("engine.dtype", _str),
    "device": ("engine.device", _str),
    "use_kernels": ("engine.use_kernels", _str),
    "num_threads": ("engine.num_threads", _int),
    "compile_decode": ("engine.compile_decode", _str),
    "tool_call_format": ("engine.tool_call_format", _str),
    "quantization": ("engine.quantization", _str),
    "quantized_max_rows": ("engine.quantized_max_rows", _int_or_auto),
    "quantized_cpu_kernel": ("engine.quantized_cpu_kernel", _str),
}

# config.pbtxt parameter -> what it means (`tritium serve MODEL --<parameter>` help text).
PARAMETER_HELP: dict[str, str] = {
    "kv_block_size": "tokens per KV block (a power of two; default 16)",
    "kv_num_blocks": "exactly this many KV blocks (default: what --kv-cache-memory-mb holds)",
    "kv_cache_memory_mb": "KV cache memory in MiB when --kv-num-blocks is not set (default 1024)",
    "enable_prefix_caching": "reuse the KV blocks of identical prompt prefixes (default on)",
    "max_num_seqs": "sequences in the running batch at most (default 64)",
    "max_num_batched_tokens": "tokens computed per engine step, the chunked-prefill budget (default 512)",
    "max_model_len": "prompt + output tokens per sequence (default: the model's context, at most 8192)",
    "dtype": "auto, float32, bfloat16 or float16 (auto: bf16 on CUDA and CPUs with native bf16)",
    "device": "auto, cpu or cuda (auto: cuda when available)",
    "use_kernels": "auto, on or off: Triton kernels instead of torch ops (auto: on with CUDA)",
    "num_threads": "torch intra-op threads on CPU (default 0: torch's choice)",
    "compile_decode": "auto, on or off: decode steps through the forward compiled whole with "
    "torch.compile, at load (auto: on CPU with the torch backend, dense models; needs g++)",
    "tool_call_format": "how the model writes tool calls: hermes, generic, llama3_json or mistral "
    "(default: read from the chat template; `tritium package` writes it)",
    "quantization": "weight-only quantized linear layers: auto, gguf, none, int4 or int8 (gguf: a "
    "GGUF's own Q4_0/Q4_1/Q4_K/Q8_0 tensors as they are; auto: gguf, but dense for float32 on CPU; "
    "int4/int8: also quantize the other layers at load)",
    "quantized_max_rows": "matmuls of up to this many rows use the quantized weights, larger ones the "
    "dense copy (default auto: every row count on our CPU kernel; on torch's, 16 for 4-bit weights, "
    "4 for 8-bit)",
    "quantized_cpu_kernel": "auto, ours or torch: the CPU kernel of quantized matmuls (auto: ours, "
    "int8 products with AVX-512 VNNI, where the CPU has it; else torch's weight-only kernels)",
}
assert set(PARAMETER_HELP) == set(_PARAMETERS)

assert {f.name for f in fields(CacheConfig)} >= {
    v[0].split(".")[1] for v in _PARAMETERS.values() if v[0].startswith("cache.")
}
