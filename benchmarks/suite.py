"""The published measurement: the stack's ceiling, the overhead breakdown, and the peer.

    .venv/bin/python -m benchmarks.peer build      # once: llama.cpp's llama-server (10-15 min)
    .venv/bin/python -m benchmarks.suite null      # null model: responses/s through Triton and the adapter
    .venv/bin/python -m benchmarks.suite compare   # engine offline -> Triton direct -> adapter
    .venv/bin/python -m benchmarks.suite peer      # Tritium and llama-server, back to back
    .venv/bin/python -m benchmarks.suite hf        # transformers generate: the floor
    .venv/bin/python -m benchmarks.suite bars      # the issue's bars from the stages above

Each stage runs in a few minutes, records `uptime` before and after, and writes
`<output-dir>/<stage>.json` (the facts the bars use) and `<stage>-runs.*` (every request,
CSV, markdown, plots). Workload everywhere: prompts of exactly 128 tokens, 128 output
tokens (ignore_eos), greedy, /v1/completions (no chat template, so every server sees the
same tokens).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks import peer
from benchmarks.bench import BenchConfig, run_bench
from benchmarks.cpu_usage import CpuMeter
from benchmarks.report import LevelResult, RunResult, machine_info, write_all
from benchmarks.runner import Load
from benchmarks.stack import REPO_ROOT, Endpoints, llama_cpp_server, llama_server, tritium_stack
from benchmarks.workloads import WorkloadSpec

MODEL_NAME = "smollm2-135m-instruct"
INPUT_LEN = OUTPUT_LEN = 128
BAR_CONCURRENCY = 32
# (concurrency, requests): one wave of requests per level (four at concurrency 1, for a
# median of more than two). On 2 CPU cores a wave at concurrency 32 (4,096 prompt + 4,096
# output tokens) takes the engine about 20 s on a quiet machine, minutes on a busy one.
SWEEP = ((1, 4), (8, 8), (BAR_CONCURRENCY, BAR_CONCURRENCY))
# The engine's sizes as the offline benchmark's `run_engine` sets them, and the dtype passed
# to it, so that "engine offline" and "through Triton" differ only by what is in front.
ENGINE_PARAMETERS = {
    "max_num_seqs": str(BAR_CONCURRENCY),
    "max_num_batched_tokens": "512",
    "max_model_len": "2048",
    "kv_cache_memory_mb": "1024",
    "dtype": "auto",  # what users get: bf16 on CPUs with AVX512-BF16 or AMX, else fp32
}
# llama-cpp-python's server, an extra row only (not the peer: it is not what llama.cpp's users
# run): both cores, the engine's context length, prompt batches as large as the engine's
# token budget. It serves one request at a time (a lock around one llama.cpp context);
# interrupt_requests (on by default) would cut a stream short whenever another request
# waits, so it is off.
LLAMA_CPP_SETTINGS = {
    "n_threads": "2",
    "n_threads_batch": "2",
    "n_ctx": "2048",
    "n_batch": "512",
    "interrupt_requests": "False",
}
# Bounds every load level (and its warm-up): a server slowed by a busy machine gives fewer
# completed requests, never an unbounded run.
LEVEL_TIME_LIMIT_S = 600.0
NULL_MODELS = {"null-1": 1, "null-4": 4, "null-16": 16}


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def workload(tokenizer_dir: Path | None) -> WorkloadSpec:
    return WorkloadSpec("fixed", INPUT_LEN, OUTPUT_LEN, tokenizer_path=tokenizer_dir)


def bench(label: str, backend: str, url: str, model: str, spec: WorkloadSpec,
          levels: tuple[tuple[int, int], ...], extra_body: dict[str, Any] | None = None,
          single_slot: bool = False, seed: int = 0) -> RunResult:  # fmt: skip
    """One run per level (each with its own request count), merged into one result.
    llama-cpp-python's single-slot server gets no ignore_eos (the extra body says how it keeps
    generating), may lack usage, and is warmed up by one request (it batches nothing).

    Prompts come from `seed` + the level's concurrency: two runs against one server pass
    different seeds, or the second is prefilled from the prefix cache the first filled; the
    peers get the same seed (each server sees those prompts fresh)."""
    merged: RunResult | None = None
    for concurrency, num_prompts in levels:
        level_spec = dataclasses.replace(spec, seed=spec.seed + seed + concurrency)
        config = BenchConfig(
            backend=backend, url=url, model=model, workload=level_spec, loads=(Load(concurrency),),
            # A whole wave warms every batch shape (ours, llama-server's).
            num_prompts=num_prompts, warmup_requests=1 if single_slot else concurrency,
            time_limit_s=LEVEL_TIME_LIMIT_S, extra_body=extra_body or {}, label=label,
            ignore_eos=not single_slot, length_without_usage=single_slot,
        )  # fmt: skip
        run = asyncio.run(run_bench(config))
        if merged is None:
            merged = run
        else:
            merged.levels += run.levels
    assert merged is not None
    return merged


def measured(run: RunResult, concurrency: int) -> LevelResult:
    return next(level for level in run.levels if level.concurrency == concurrency)


def facts(run: RunResult, concurrency: int, cpu: dict[str, float] | None = None) -> dict[str, Any]:
    summary = measured(run, concurrency).summary
    return {
        "label": run.label,
        "concurrency": concurrency,
        "output_tokens_per_s": summary.output_tokens_per_s,
        "requests_per_s": summary.requests_per_s,
        "ttft_p50_ms": summary.ttft.p50_ms,
        "tpot_p50_ms": summary.tpot.p50_ms,
        "failed": summary.failed,
        "cpu_core_seconds": cpu,
    }


def measure_with_cpu(roots: list[int], measure: Any) -> tuple[RunResult, dict[str, float]]:
    meter = CpuMeter(roots)
    meter.start()
    run = measure()
    return run, meter.stop()


def stage_null(work_dir: Path) -> tuple[dict[str, Any], list[RunResult]]:
    from benchmarks.null_model import write_null_repository

    repository = write_null_repository(work_dir / "null_repository", NULL_MODELS)
    spec, level = workload(None), ((BAR_CONCURRENCY, 128),)
    results: dict[str, Any] = {}
    runs = []
    with tritium_stack(repository, work_dir / "null_logs") as endpoints:
        for name, tokens_per_response in NULL_MODELS.items():
            for path, backend, url in (
                ("triton", "triton-grpc", endpoints.triton_grpc_url),
                ("adapter", "openai-completions", endpoints.openai_url),
            ):
                label = f"null {tokens_per_response} tok/resp via {path}"
                run, cpu = measure_with_cpu(
                    [endpoints.pid],
                    lambda b=backend, u=url, n=name, la=label: bench(la, b, u, n, spec, level),
                )
                entry = facts(run, BAR_CONCURRENCY, cpu)
                entry["responses_per_s"] = entry["output_tokens_per_s"] / tokens_per_response
                results[f"{path} {tokens_per_response}"] = entry
                runs.append(run)
    return results, runs


def stage_compare(work_dir: Path) -> tuple[dict[str, Any], list[RunResult]]:
    from benchmarks.engine_offline import default_weights_dir
    from engine.package import package_model

    weights_dir = default_weights_dir()
    spec = workload(weights_dir)
    results: dict[str, Any] = {
        "engine_offline": offline_engine(weights_dir, spec),
        "engine_offline_first_token_ms": offline_first_token_ms(weights_dir, spec),
    }
    repository = work_dir / "model_repository"
    package_model(
        str(weights_dir), MODEL_NAME, repository, parameters=ENGINE_PARAMETERS, progress=False
    )
    c32 = (SWEEP[-1],)
    with tritium_stack(repository, work_dir / "stack_logs") as endpoints:
        roots = [endpoints.pid]
        direct, cpu = measure_with_cpu(
            roots, lambda: bench("tritium: Triton direct (gRPC)", "triton-grpc",
                                 endpoints.triton_grpc_url, MODEL_NAME, spec, c32)
        )  # fmt: skip
        results["triton_direct"] = facts(direct, BAR_CONCURRENCY, cpu)
        adapter, cpu = measure_with_cpu(
            roots, lambda: bench("tritium: adapter", "openai-completions", endpoints.openai_url,
                                 MODEL_NAME, spec, c32, seed=1000)
        )  # fmt: skip
        results["adapter"] = facts(adapter, BAR_CONCURRENCY, cpu)
        sweep = bench(
            "tritium", "openai-completions", endpoints.openai_url, MODEL_NAME, spec, SWEEP[:-1],
            seed=2000,
        )
        sweep.levels.append(measured(adapter, BAR_CONCURRENCY))
        results["adapter_concurrency_1"] = facts(sweep, 1)
    return results, [direct, sweep]


def stage_peer(work_dir: Path) -> tuple[dict[str, Any], list[RunResult]]:
    """Tritium's full stack and llama.cpp's llama-server, one after the other in one run: the
    same GGUF (ours dequantized to bf16 from it, llama-server's as it is), the same client,
    workload and levels. llama-cpp-python's server follows as an extra row when installed."""
    from engine.package import default_gguf_path, package_model

    binary = peer.binary_path()
    if not binary.is_file():
        raise peer.PeerError(f"{binary} is missing: `python -m benchmarks.peer build` first")
    from benchmarks.engine_offline import default_weights_dir

    weights_dir = default_weights_dir()
    spec = workload(weights_dir)
    gguf = default_gguf_path()
    repository = work_dir / "model_repository"
    package_model(
        str(weights_dir), MODEL_NAME, repository, parameters=ENGINE_PARAMETERS, progress=False
    )
    results: dict[str, Any] = {"machine": machine_info(), "gguf": str(gguf)}
    runs = []
    with tritium_stack(repository, work_dir / "stack_logs") as endpoints:
        results["tritium"], run = server_sweep(
            "tritium", endpoints, MODEL_NAME, spec, {"engine_parameters": ENGINE_PARAMETERS}
        )
        runs.append(run)
    threads = os.cpu_count() or 1
    with llama_server(binary, gguf, work_dir / "llama_server_logs", threads) as endpoints:
        described = {
            "command": peer.server_command(binary, gguf, 0, threads),
            "build": peer.build_info(),
            "non_streamed_usage": check_usage(endpoints.openai_url, spec, {"ignore_eos": True}),
        }
        results["llama_server"], run = server_sweep(
            "llama-server", endpoints, MODEL_NAME, spec, described
        )
        runs.append(run)
    extra = single_slot_row(gguf, spec, work_dir)
    if extra is not None:
        results["llama_cpp_python"], run = extra
        runs.append(run)
    return results, runs


def server_sweep(label: str, endpoints: Endpoints, model: str, spec: WorkloadSpec,
                 described: dict[str, Any], extra_body: dict[str, Any] | None = None,
                 single_slot: bool = False) -> tuple[dict[str, Any], RunResult]:  # fmt: skip
    """Every level of SWEEP against one server, each level with its own CPU meter, between
    two `uptime`s."""
    entry: dict[str, Any] = {**described, "uptime_before": uptime(), "levels": {}}
    merged: RunResult | None = None
    for level in SWEEP:
        run, cpu = measure_with_cpu(
            [endpoints.pid],
            lambda lv=level: bench(label, "openai-completions", endpoints.openai_url, model,
                                   spec, (lv,), extra_body, single_slot),
        )  # fmt: skip
        entry["levels"][str(level[0])] = facts(run, level[0], cpu)
        if merged is None:
            merged = run
        else:
            merged.levels += run.levels
    entry["uptime_after"] = uptime()
    assert merged is not None
    return entry, merged


def single_slot_row(
    gguf: Path, spec: WorkloadSpec, work_dir: Path
) -> tuple[dict[str, Any], RunResult] | None:
    """llama-cpp-python's server (one request at a time), labelled for what it is; skipped
    when it is not installed."""
    try:
        import llama_cpp  # noqa: F401 - only to know whether it is installed
    except ImportError:
        print("llama-cpp-python is not installed: no single-slot row (it is optional)")
        return None
    # It has no ignore_eos: min_tokens = max_tokens does the same (EOS is masked until then).
    # It sends no usage when streaming, so a stream that ends by "length" counts max_tokens;
    # check_usage verifies that on a non-streamed request.
    extra = {"min_tokens": OUTPUT_LEN}
    with llama_cpp_server(gguf, work_dir / "llama_cpp_logs", LLAMA_CPP_SETTINGS) as endpoints:
        described = {
            "settings": LLAMA_CPP_SETTINGS,
            "non_streamed_usage": check_usage(endpoints.openai_url, spec, extra),
        }
        return server_sweep("llama-cpp-python server (one request at a time)", endpoints,
                            "peer", spec, described, extra, single_slot=True)  # fmt: skip


def check_usage(base_url: str, spec: WorkloadSpec, extra: dict[str, Any]) -> dict[str, Any]:
    """One non-streamed request: the usage a server reports for the benchmark's request."""
    import httpx

    request = spec.build(1, seed_offset=20_000)[0]
    body = {"model": MODEL_NAME, "prompt": request.as_text(), "max_tokens": request.max_tokens,
            "temperature": 0.0}  # fmt: skip
    reply = httpx.post(f"{base_url}/completions", json={**body, **extra}, timeout=300).json()
    usage = reply["usage"]
    if usage["completion_tokens"] != request.max_tokens:
        raise RuntimeError(
            f"the server generated {usage['completion_tokens']} tokens, not {request.max_tokens}"
        )
    return usage


def offline_engine(weights_dir: Path, spec: WorkloadSpec) -> dict[str, Any]:
    """The engine alone on prompts of the same workload (token ids of such texts), 32 running."""
    from tokenizers import Tokenizer

    from benchmarks.engine_offline import run_engine

    tokenizer = Tokenizer.from_file(str(weights_dir / "tokenizer.json"))
    prompts = [tokenizer.encode(r.as_text()).ids for r in spec.build(SWEEP[-1][1])]
    # A whole wave of other prompts first (no prefix-cache hits), as the stack gets one.
    warmup = [tokenizer.encode(r.as_text()).ids for r in spec.build(BAR_CONCURRENCY, 50_000)]
    result = run_engine(
        weights_dir, prompts, OUTPUT_LEN, BAR_CONCURRENCY, ENGINE_PARAMETERS["dtype"], warmup
    )
    return {"output_tokens_per_s": result.output_tokens_per_s, "seconds": result.seconds,
            "output_tokens": result.output_tokens, "num_requests": len(prompts)}  # fmt: skip


def offline_first_token_ms(weights_dir: Path, spec: WorkloadSpec, repeats: int = 5) -> float:
    """The engine alone: median time from add_request to the first output token of one
    128-token prompt (nothing else running): the floor under TTFT at concurrency 1."""
    from tokenizers import Tokenizer

    from benchmarks.metrics import percentile
    from engine.api import GenerationRequest
    from engine.config import EngineConfig
    from engine.llm_engine import LLMEngine, PreparedRequest
    from engine.sampling_params import SamplingParams

    tokenizer = Tokenizer.from_file(str(weights_dir / "tokenizer.json"))
    engine = LLMEngine(EngineConfig.from_parameters(weights_dir, ENGINE_PARAMETERS))
    params = SamplingParams(temperature=0.0, max_tokens=1, ignore_eos=True)
    times = []
    for key, request in enumerate(spec.build(repeats + 1, seed_offset=30_000)):
        prompt = tokenizer.encode(request.as_text()).ids
        started = time.perf_counter()
        engine.add_request(
            key, PreparedRequest(GenerationRequest(params, ""), prompt, "", 1)
        )
        while engine.has_unfinished():
            engine.step()
        times.append(time.perf_counter() - started)
    return percentile(times[1:], 50) * 1000  # the first one warms up


def stage_hf(work_dir: Path) -> tuple[dict[str, Any], list[RunResult]]:
    from tokenizers import Tokenizer

    from benchmarks.engine_offline import default_weights_dir, run_hf

    weights_dir = default_weights_dir()
    tokenizer = Tokenizer.from_file(str(weights_dir / "tokenizer.json"))
    prompts = [
        tokenizer.encode(r.as_text()).ids for r in workload(weights_dir).build(BAR_CONCURRENCY)
    ]
    # bf16: transformers' own default for this checkpoint (its config's dtype).
    batched = run_hf(weights_dir, prompts, OUTPUT_LEN, BAR_CONCURRENCY, "bfloat16")
    sequential = run_hf(weights_dir, prompts[:2], OUTPUT_LEN, 1, "bfloat16")
    return {
        "hf_batched": {
            "output_tokens_per_s": batched.output_tokens_per_s,
            "batch": BAR_CONCURRENCY,
        },
        "hf_sequential": {"output_tokens_per_s": sequential.output_tokens_per_s, "requests": 2},
    }, []


STAGES = {"null": stage_null, "compare": stage_compare, "peer": stage_peer, "hf": stage_hf}


def run_stage(name: str, output_dir: Path) -> None:
    output_dir.mkdir(parents=True, exist_ok=True)
    before = uptime()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix=f"tritium-bench-{name}-") as scratch:
        results, runs = STAGES[name](Path(scratch))
    record = {"stage": name, "uptime_before": before, "uptime_after": uptime(),
              "wall_s": round(time.perf_counter() - started, 1), "results": results}  # fmt: skip
    (output_dir / f"{name}.json").write_text(json.dumps(record, indent=1))
    if runs:
        write_all(runs, output_dir, f"{name}-runs", f"Tritium benchmark suite: {name}")
    print(json.dumps(record, indent=1))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("stage", choices=[*STAGES, "bars"])
    parser.add_argument("--output-dir", type=Path, default=REPO_ROOT / "benchmarks" / "results")
    args = parser.parse_args(argv)
    if args.stage == "bars":
        from benchmarks.bars import write_bars

        print(write_bars(args.output_dir))
        return 0
    try:
        run_stage(args.stage, args.output_dir)
    except peer.PeerError as error:
        print(f"benchmarks.suite: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
