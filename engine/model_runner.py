"""The model runner: owns the device, the weights and the KV cache; runs one step.

`execute(chunks, allowed_mask)` is the whole contract with the engine: each scheduled
chunk feeds `seq.token_ids[start : start + num_new_tokens]`, whose KV slots are already
allocated in `seq.block_ids`; chunks that reach the end of their sequence get a
sampled token back, the others `None`. `allowed_mask` (structured output) says which
tokens those may be.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
from collections.abc import Callable
from collections.abc import Sequence as SequenceOf
from typing import Protocol

import torch

from engine.attention import build_attention_metadata
from engine.config import ConfigError, EngineConfig
from engine.decode_graph import DecodeGraph, GraphMiss, can_compile
from engine.models import model_class
from engine.models.layers import KVCache, Linear
from engine.ops import Ops, TorchOps
from engine.request import Sequence
from engine.sampler import Sampler, SampleResult, SamplingBackend, TorchSampling
from engine.weights import load_and_quantize

logger = logging.getLogger(__name__)

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class Chunk(Protocol):
    """What `execute` reads of `engine.scheduler.ScheduledChunk`."""

    @property
    def seq(self) -> Sequence: ...
    @property
    def start(self) -> int: ...
    @property
    def num_new_tokens(self) -> int: ...
    @property
    def sample(self) -> bool: ...


class ModelRunner:
    def __init__(self, config: EngineConfig) -> None:
        self.config = config
        self.device = resolve_device(config.device)
        self.dtype = resolve_dtype(config.dtype, self.device)
        self.ops, sampling = make_backends(config.use_kernels, self.device)
        if config.num_threads > 0 and self.device.type == "cpu":
            torch.set_num_threads(config.num_threads)
        model_config = config.model
        self.block_size = config.cache.block_size
        self.model = model_class(model_config)(
            model_config, self.dtype, self.device, max_positions=config.scheduler.max_model_len
        )
        self.quantized_layers = load_and_quantize(
            self.model,
            config.model_dir,
            config.quantization,
            config.quantized_max_rows,
            self.dtype,
            self.device,
            config.quantized_cpu_kernel,
            max_step_rows=config.scheduler.max_num_batched_tokens,
        )
        element_bytes = torch.empty((), dtype=self.dtype).element_size()
        # K and V, every layer, one block of positions.
        self.block_bytes: int = (
            2
            * model_config.num_layers
            * self.block_size
            * model_config.num_kv_heads
            * model_config.head_dim
            * element_bytes
        )
        self.num_blocks: int = self._count_blocks()
        graph_limits = self._decode_graph_limits()
        # Per layer, K and V: [num_blocks, block_size, num_kv_heads, head_dim] each, their
        # own tensors (a compiled step writes into them in place; views of one tensor would
        # be copied whole). Zeros, so that padding slots a backend may read (masked out) are
        # never NaN. A compiled decode step gets one more block, the scratch block of its
        # warm-up, which the block manager never hands out.
        cache_blocks = self.num_blocks + (graph_limits is not None)
        self.kv_caches: list[KVCache] = [
            tuple(  # type: ignore[misc]
                torch.zeros(
                    cache_blocks,
                    self.block_size,
                    model_config.num_kv_heads,
                    model_config.head_dim,
                    dtype=self.dtype,
                    device=self.device,
                )
                for _ in range(2)
            )
            for _ in range(model_config.num_layers)
        ]
        self.decode_graph: DecodeGraph | None = None
        if graph_limits is not None:
            self.decode_graph = DecodeGraph(
                self.model, self.kv_caches, self.block_size, graph_limits, self.num_blocks
            )
            seconds = self.decode_graph.compile()
            logger.info(
                "decode steps of 1 row and of %s rows compiled in %.1f s (compile_decode)",
                ", ".join(f"{fewest}-{most}" for fewest, most in self.decode_graph.bands),
                seconds,
            )
        self.sampler = Sampler(
            model_config.vocab_size, model_config.eos_token_ids, backend=sampling
        )

    def _decode_graph_limits(self) -> list[int] | None:
        """The row limits of the compiled decode step's bands (engine/decode_graph.py) when
        `compile_decode` asks for it and it can serve this model here, else None; "on"
        where it cannot is an error."""
        wanted = self.config.compile_decode
        if wanted == "off":
            return None
        reason = can_compile(self.model, self.device)
        if reason is None and not isinstance(self.ops, TorchOps):
            reason = "the Triton kernel backend (use_kernels) runs the forward"
        if reason is not None:
            if wanted == "on":
                raise ConfigError(f"compile_decode=on: {reason}; set compile_decode=off or auto")
            logger.info("decode steps run eagerly: %s", reason)
            return None
        # Every batch up to max_num_seqs, and a padding row: a band ends wherever a
        # quantized layer's matmul changes from its quantized to its dense weight.
        most = self.config.scheduler.max_num_seqs + 1
        switches = {
            module.max_quantized_rows
            for module in self.model.layers.modules()
            if isinstance(module, Linear) and module.quantized is not None
        }
        return sorted(limit for limit in switches if 2 <= limit < most) + [most]

    def _count_blocks(self) -> int:
        cache = self.config.cache
        if cache.num_blocks is not None:
            return cache.num_blocks
        scheduler = self.config.scheduler
        # More than every running sequence at full length could ever hold is waste.
        most_needed = scheduler.max_num_seqs * -(-scheduler.max_model_len // self.block_size)
        fitting = cache.memory_budget_bytes // self.block_bytes
        if fitting < 1:
            raise ConfigError(
                f"kv_cache_memory_mb is too small for one KV block of {self.block_bytes} bytes; "
                "raise it or lower kv_block_size"
            )
        return min(fitting, most_needed)

    @torch.inference_mode()
    def execute(
        self,
        chunks: SequenceOf[Chunk],
        # Called with the sequences that sample, in row order: their [rows, cdiv(vocab_size,
        # 32)] int32 bitmask on the CPU (engine.sampler's layout), or None = every token.
        allowed_mask: Callable[[list[Sequence]], torch.Tensor | None] | None = None,
    ) -> list[SampleResult | None]:
        """Run the model on the scheduled chunks; sample where a chunk completes its sequence."""
        if not chunks:
            return []
        input_ids: list[int] = []
        for chunk in chunks:
            input_ids.extend(chunk.seq.token_ids[chunk.start : chunk.start + chunk.num_new_tokens])
        sample_flags = [chunk.sample for chunk in chunks]
        starts = [chunk.start for chunk in chunks]
        query_lens = [chunk.num_new_tokens for chunk in chunks]
        block_ids: list[SequenceOf[int | None]] = [chunk.seq.block_ids for chunk in chunks]
        graph = self.decode_graph
        padding = graph.fit(starts, query_lens) if graph is not None else None
        if padding is None:
            graph = None
        for start, blocks in padding or ():  # rows that sample nothing, after the real ones
            starts.append(start)
            block_ids.append(blocks)
            query_lens.append(1)
            input_ids.append(0)
        metadata = build_attention_metadata(
            starts=starts,
            query_lens=query_lens,
            block_ids=block_ids,
            sample_flags=sample_flags + [False] * (len(starts) - len(chunks)),
            block_size=self.block_size,
            device=self.device,
        )
        tokens = torch.tensor(input_ids, dtype=torch.int64).to(self.device)
        hidden = None
        if graph is not None:
            with contextlib.suppress(GraphMiss):  # logged by the graph; the step runs eagerly
                hidden = graph(tokens, metadata)
        if hidden is None:
            hidden = self.model(tokens, metadata, self.kv_caches, self.ops)  # [T, hidden]
        sampled_seqs = [chunk.seq for chunk in chunks if chunk.sample]
        if not sampled_seqs:
            return [None] * len(chunks)
        logits = self.model.compute_logits(hidden[metadata.logits_indices])  # [B, vocab]
        # Filled here, once the forward is launched: on CUDA the CPU's fill overlaps it.
        allowed = allowed_mask(sampled_seqs) if allowed_mask is not None else None
        if allowed is not None:
            allowed = allowed.to(self.device, non_blocking=True)  # page-locked on CUDA
        results = iter(self.sampler.sample(logits, sampled_seqs, allowed))
        return [next(results) if flag else None for flag in sample_flags]


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device is cuda but no CUDA device is available; use device=cpu or auto")
    return torch.device(name)


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """ "auto": bfloat16 where the hardware multiplies it natively (CUDA; CPUs with
    AVX512-BF16 or AMX), else float32 (emulated bf16 matmuls are slower than fp32)."""
    if name == "auto":
        native = device.type == "cuda" or cpu_has_native_bfloat16()
        return torch.bfloat16 if native else torch.float32
    return _DTYPES[name]


def cpu_has_native_bfloat16() -> bool:
    """AVX512-BF16 or AMX: oneDNN then runs bf16 matmuls at about twice the fp32 rate
    (docs/benchmarks.md). torch only exposes these probes privately; absent means no."""
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, probe, lambda: False)() for probe in probes)


def make_backends(
    use_kernels: str, device: torch.device
) -> tuple[Ops, Callable[[int | None], SamplingBackend]]:
    """The forward's ops and the sampler's backend class: TorchOps and TorchSampling, or
    the Triton KernelOps and KernelSampling when asked ("on") or on CUDA ("auto")."""
    if use_kernels == "off" or (use_kernels == "auto" and device.type != "cuda"):
        return TorchOps(), TorchSampling
    try:
        module = importlib.import_module("engine.kernel_ops")
    except ModuleNotFoundError as error:
        if error.name != "engine.kernel_ops":
            raise
        raise ConfigError(
            f"use_kernels={use_kernels} on {device.type} needs engine.kernel_ops, which is not "
            "available in this build; set use_kernels=off to run the torch backend"
        ) from None
    return module.KernelOps(), module.KernelSampling
