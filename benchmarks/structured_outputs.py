"""What structured output costs the engine: per decode step, and while a grammar compiles.

    .venv/bin/python -m benchmarks.structured_outputs [--dtype bfloat16] [--output PATH]

1. step: 32 requests decoding together on the default model: all unconstrained, half of
   them under a JSON schema, and half under the same schema with a bounded string
   (`maxLength`, xgrammar's costly case); grammars that cannot end inside the window, so
   all 32 rows decode throughout. One engine per batch in one process, stepped in turn:
   the wall time of `LLMEngine.step` once every request is decoding, `--steps` steps each,
   and of that the time in `GrammarMatchers.allowed_mask`. The machine is shared: each
   round of steps sees the same moment of it, so the headline is the median over rounds
   of the ratio to the unconstrained step. Bar: half constrained costs <= 10% more.
2. compile: an `EngineService` streams `--streams` unconstrained requests while a large
   JSON schema (`large_schema`, distinct every round so the cache never hits) is
   submitted, compiling on the submitting thread's behalf as a Triton request's would.
   Measured: the other streams'
   inter-token latencies (gaps between their outputs) while the schema compiles, against
   the window of the same length just before it. Bar: p99 <= 1.2x.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

from benchmarks.engine_offline import default_weights_dir
from engine.api import GenerationOutput, GenerationRequest
from engine.config import EngineConfig
from engine.llm_engine import LLMEngine
from engine.sampling_params import SamplingParams
from engine.serving import EngineService

NUM_SEQS = 32
LARGE_SCHEMA_PROPERTIES = 400  # ~60 KB of schema, a few seconds to compile here


def long_schema(name_max_length: int | None) -> dict[str, Any]:
    """At least 64 items of ~12 tokens: no end inside the window. `name_max_length` bounds
    a string's length, which is where xgrammar's masks cost the most (docs/architecture.md)."""
    name: dict[str, Any] = {"type": "string"}
    if name_max_length is not None:
        name["maxLength"] = name_max_length
    item = {"type": "object", "properties": {"id": {"type": "integer"}, "name": name,
            "ok": {"type": "boolean"}}, "required": ["id", "name", "ok"]}  # fmt: skip
    return {"type": "object", "properties": {"items": {"type": "array", "minItems": 64,
            "items": item}}, "required": ["items"]}  # fmt: skip


# The batches of the step benchmark: name -> the schema of its constrained half (None: no
# constraint at all).
BATCHES: dict[str, dict[str, Any] | None] = {
    "unconstrained": None,
    "half constrained": long_schema(None),
    "half constrained, bounded strings": long_schema(16),
}


def large_schema(tag: str, num_properties: int = LARGE_SCHEMA_PROPERTIES) -> dict[str, Any]:
    """A large JSON schema: `num_properties` properties cycling through nested objects,
    enums, bounded integers, patterned strings, arrays and unions; `tag` makes it distinct."""
    kinds = [
        {"type": "object", "properties": {f"f{j}": {"type": "string"} for j in range(6)},
         "required": ["f0", "f1"]},
        {"enum": [f"value_{j}" for j in range(24)]},
        {"type": "integer", "minimum": -1000, "maximum": 1000000},
        {"type": "string", "pattern": "^[A-Z]{2}-[0-9]{4,6}(-[a-z]+)?$"},
        {"type": "array", "items": {"type": "number"}, "minItems": 1, "maxItems": 8},
        {"anyOf": [{"type": "string", "format": "date"}, {"type": "null"}, {"type": "boolean"}]},
    ]  # fmt: skip
    properties = {f"p{i}_{tag}": kinds[i % len(kinds)] for i in range(num_properties)}
    return {"type": "object", "properties": properties, "required": list(properties)[::3]}


# -- 1. per decode step ----------------------------------------------------------------------


class _FillTimer:
    """Wraps an engine's `GrammarMatchers.allowed_mask`, adding up the seconds it takes."""

    def __init__(self, engine: LLMEngine) -> None:
        self.seconds = 0.0
        self._fill = engine.grammars.allowed_mask
        engine.grammars.allowed_mask = self

    def __call__(self, seqs):  # noqa: ANN001, ANN204
        start = time.perf_counter()
        mask = self._fill(seqs)
        self.seconds += time.perf_counter() - start
        return mask


def start_decoding(engine: LLMEngine, schema: dict[str, Any] | None) -> None:
    """Add NUM_SEQS requests, every other one under `schema`, and step until every one has
    its first token (all in decode from then on)."""
    for row in range(NUM_SEQS):
        spec = {"json": schema} if schema is not None and row % 2 == 0 else None
        params = SamplingParams(temperature=1.0, seed=row, max_tokens=1024, ignore_eos=True,
                                structured_outputs=spec)  # fmt: skip
        request = GenerationRequest(params, messages=[{"role": "user", "content":
                                    f"List {row + 3} things in a store as JSON."}])  # fmt: skip
        engine.add_request(row, engine.prepare(request))
    running = engine.scheduler.running
    while len(running) < NUM_SEQS or any(seq.num_output_tokens == 0 for seq in running):
        engine.step()
    for _ in range(3):  # settle into pure decode steps
        engine.step()


def bench_step(weights_dir: Path, dtype: str, steps: int) -> dict[str, Any]:
    """One engine per batch, stepped in turn (the order reversed every round): all see the
    same moments of a shared machine, and each round gives each batch a ratio to the
    unconstrained one."""
    parameters = {"max_num_seqs": str(NUM_SEQS), "max_num_batched_tokens": "2048",
                  "max_model_len": "2048", "kv_cache_memory_mb": "256", "dtype": dtype}  # fmt: skip
    config = EngineConfig.from_parameters(weights_dir, parameters)
    engines = {name: LLMEngine(config) for name in BATCHES}
    for name, engine in engines.items():
        start_decoding(engine, BATCHES[name])
    fills = {name: _FillTimer(engine) for name, engine in engines.items()}
    times: dict[str, list[float]] = {name: [] for name in engines}
    for step in range(steps):
        order = list(engines) if step % 2 == 0 else list(reversed(engines))  # one round
        for name in order:
            start = time.perf_counter()
            engines[name].step()
            times[name].append(time.perf_counter() - start)
            assert engines[name].scheduler.num_running == NUM_SEQS  # nobody finished or waits
        if (step + 1) % 16 == 0:
            print(f"step {step + 1}/{steps}: " + ", ".join(
                f"{n} {statistics.median(t) * 1e3:.1f} ms" for n, t in times.items()), flush=True)  # fmt: skip
    base = times["unconstrained"]
    result: dict[str, Any] = {"dtype": dtype, "steps": steps, "batches": {}}
    for name, values in times.items():
        ratios = [ours / theirs for ours, theirs in zip(values, base, strict=True)]
        result["batches"][name] = {
            "mean_step_ms": statistics.mean(values) * 1e3,
            "median_step_ms": statistics.median(values) * 1e3,
            "overhead_median_of_rounds": statistics.median(ratios) - 1,
            "overhead_of_means": statistics.mean(values) / statistics.mean(base) - 1,
            "bitmask_fill_ms_per_step": fills[name].seconds / steps * 1e3,
        }
    return result


# -- 2. while a grammar compiles -------------------------------------------------------------


class _Stream:
    """A sink that records when each output arrives."""

    def __init__(self, cancelled: bool = False) -> None:
        self.times: list[float] = []
        self.cancelled = cancelled

    def send(self, output: GenerationOutput) -> None:
        self.times.append(time.perf_counter())

    def is_cancelled(self) -> bool:
        return self.cancelled

    def close(self) -> None:
        pass


def _gaps_in(streams: list[_Stream], start: float, end: float) -> list[float]:
    """Inter-token gaps of every stream that end inside [start, end]."""
    gaps = []
    for stream in streams:
        times = stream.times
        gaps += [b - a for a, b in zip(times, times[1:], strict=False) if start <= b <= end]
    return gaps


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def bench_compile(weights_dir: Path, dtype: str, num_streams: int, rounds: int) -> dict[str, Any]:
    parameters = {"max_num_seqs": str(num_streams + 1), "max_model_len": "2048",
                  "kv_cache_memory_mb": "512", "dtype": dtype}  # fmt: skip
    service = EngineService(EngineConfig.from_parameters(weights_dir, parameters))
    service.start()
    try:
        streams = [_Stream() for _ in range(num_streams)]
        for index, stream in enumerate(streams):
            params = SamplingParams(temperature=1.0, seed=index, max_tokens=2000, ignore_eos=True)
            service.submit(GenerationRequest(params, prompt=f"Story {index}:", stream=True), stream)
        while min(len(s.times) for s in streams) < 10:  # all decoding
            time.sleep(0.05)
        baseline, compiling, compile_seconds = [], [], []
        for round_index in range(rounds):
            spec = {"json": large_schema(f"r{round_index}")}
            # Cancelled before its first step: only the compile is measured, not its prefill.
            request = GenerationRequest(SamplingParams(structured_outputs=spec, max_tokens=8), prompt="x")
            start = time.perf_counter()
            service.submit(request, _Stream(cancelled=True))  # compiles on this thread's behalf
            end = time.perf_counter()
            compile_seconds.append(end - start)
            compiling += _gaps_in(streams, start, end)
            baseline += _gaps_in(streams, start - (end - start), start)
            time.sleep(end - start)  # the next round's baseline window is clear of this one
            print(f"round {round_index + 1}/{rounds}: compile {end - start:.2f} s", flush=True)
    finally:
        service.shutdown()
    result = {"streams": num_streams, "rounds": rounds, "schema_properties": LARGE_SCHEMA_PROPERTIES,
              "compile_s": compile_seconds, "samples": {"baseline": len(baseline), "compiling": len(compiling)}}  # fmt: skip
    for name, gaps in (("baseline", baseline), ("compiling", compiling)):
        result[name] = {f"p{int(q * 100)}_ms": _percentile(gaps, q) * 1e3 for q in (0.5, 0.9, 0.99)}
        result[name]["mean_ms"] = statistics.mean(gaps) * 1e3
    result["p99_ratio"] = result["compiling"]["p99_ms"] / result["baseline"]["p99_ms"]
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--weights-dir", type=Path, default=None)
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    parser.add_argument("--steps", type=int, default=64, help="timed decode steps of each batch")
    parser.add_argument("--streams", type=int, default=8)
    parser.add_argument("--compile-rounds", type=int, default=5)
    parser.add_argument("--only", choices=["step", "compile"], default=None)
    parser.add_argument("--output", type=Path, default=None, help="write the results as JSON")
    args = parser.parse_args(argv)
    weights_dir = args.weights_dir or default_weights_dir()
    results: dict[str, Any] = {}
    if args.only in (None, "step"):
        results["step"] = bench_step(weights_dir, args.dtype, args.steps)
        print(f"decode step, {NUM_SEQS} sequences ({args.dtype}):")
        for name, batch in results["step"]["batches"].items():
            print(f"  {name}: median {batch['median_step_ms']:.1f} ms, mean {batch['mean_step_ms']:.1f} ms; "
                  f"overhead {batch['overhead_median_of_rounds']:+.1%} (median of rounds), "
                  f"{batch['overhead_of_means']:+.1%} (of means); bitmask fill "
                  f"{batch['bitmask_fill_ms_per_step']:.2f} ms per step", flush=True)  # fmt: skip
    if args.only in (None, "compile"):
        results["compile"] = bench_compile(weights_dir, args.dtype, args.streams, args.compile_rounds)
        compiled = results["compile"]
        print(f"ITL of {args.streams} streams while a {compiled['schema_properties']}-property schema "
              f"compiles (median {statistics.median(compiled['compile_s']):.2f} s): p99 "
              f"{compiled['compiling']['p99_ms']:.1f} ms vs {compiled['baseline']['p99_ms']:.1f} ms before "
              f"({compiled['p99_ratio']:.2f}x); p50 {compiled['compiling']['p50_ms']:.1f} vs "
              f"{compiled['baseline']['p50_ms']:.1f} ms", flush=True)  # fmt: skip
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
