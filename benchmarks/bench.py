"""`tritium bench`: drive an endpoint with a workload under one or more loads.

    tritium bench --backend openai-chat --url http://127.0.0.1:8000/v1 \\
        --workload fixed --input-len 128 --output-len 128 --concurrency 1 4 16 32 \\
        --num-prompts 64 --output-dir benchmarks/results --label tritium

`BenchConfig` is built once from the command line; the suite builds its own and calls
`run_bench` directly.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.clients import (
    BACKEND_NAMES,
    Backend,
    OpenAIBackend,
    TritonGenerateBackend,
    TritonGrpcBackend,
)
from benchmarks.metrics import SLO, RequestRecord, summarize
from benchmarks.report import LevelResult, RunResult, machine_info, markdown_table, write_all
from benchmarks.runner import Load, Progress, run_load, warm_up
from benchmarks.workloads import WORKLOAD_NAMES, WorkloadSpec


@dataclass(frozen=True)
class BenchConfig:
    backend: str
    url: str
    model: str | None
    workload: WorkloadSpec
    loads: tuple[Load, ...]
    num_prompts: int = 64
    warmup_requests: int = 4
    ignore_eos: bool = True
    # Servers without usage in streams: count max_tokens for requests that end by length.
    length_without_usage: bool = False
    extra_body: dict[str, Any] = field(default_factory=dict)
    slo: SLO | None = None
    time_limit_s: float | None = None  # per load level; requests still running then fail
    api_key: str | None = None
    label: str = "bench"
    progress: bool = True

    def __post_init__(self) -> None:
        if self.backend not in BACKEND_NAMES:
            raise ValueError(
                f"--backend must be one of {', '.join(BACKEND_NAMES)}, got {self.backend!r}"
            )
        if self.num_prompts < 1:
            raise ValueError(f"--num-prompts must be >= 1, got {self.num_prompts}")
        if self.backend.startswith("triton") and not self.model:
            raise ValueError("--model is required for the Triton backends")

    def as_dict(self) -> dict[str, Any]:
        settings = asdict(self)
        settings.pop("api_key")  # never write a secret into results
        settings["loads"] = [load.label for load in self.loads]
        return settings


async def discover_model(base_url: str, api_key: str | None) -> str:
    """The first model an OpenAI-compatible server lists."""
    import httpx

    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    async with httpx.AsyncClient(timeout=30) as client:
        response = await client.get(base_url.rstrip("/") + "/models", headers=headers)
        response.raise_for_status()
        models = response.json().get("data") or []
    if not models:
        raise ValueError(f"{base_url}/models lists no model; pass --model")
    return str(models[0]["id"])


def make_backend(config: BenchConfig, model: str) -> Backend:
    connections = max((load.concurrency or 256) for load in config.loads) + 8
    if config.backend in ("openai-chat", "openai-completions"):
        extra = dict(config.extra_body)
        if config.ignore_eos:
            extra.setdefault("ignore_eos", True)
        return OpenAIBackend(
            config.url,
            model,
            config.backend == "openai-chat",
            connections,
            extra,
            config.api_key,
            length_without_usage=config.length_without_usage,
        )
    if config.backend == "triton-grpc":
        return TritonGrpcBackend(config.url, model, config.ignore_eos)
    return TritonGenerateBackend(config.url, model, connections, config.ignore_eos)


async def run_bench(config: BenchConfig) -> RunResult:
    """Warm up once, then measure every load in turn on the same workload."""
    model = config.model or await discover_model(config.url, config.api_key)
    backend = make_backend(config, model)
    run = RunResult(config.label, {**config.as_dict(), "model": model}, machine=machine_info())
    try:
        if config.warmup_requests:
            concurrency = min(config.loads[0].concurrency or 4, config.warmup_requests)
            warmup = config.workload.build(config.warmup_requests, seed_offset=10_000)
            records: list[RequestRecord] = []
            with contextlib.suppress(TimeoutError):  # a slow server: measure anyway
                async with asyncio.timeout(config.time_limit_s):
                    records = await warm_up(backend, warmup, concurrency)
            failures = [record.error for record in records if not record.ok]
            if records and len(failures) == len(records):
                raise RuntimeError(f"every warm-up request failed, e.g. {failures[0]}")
        requests = config.workload.build(config.num_prompts)
        for index, load in enumerate(config.loads):
            progress = Progress(len(requests), f"{config.label} {load.label}", config.progress)
            seed = config.workload.seed + index
            records, duration = await run_load(
                backend, requests, load, seed, progress, config.time_limit_s
            )
            summary = summarize(records, duration, config.slo)
            run.levels.append(
                LevelResult(load.label, load.concurrency, load.request_rate, summary, records)
            )
    finally:
        await backend.close()
    run.machine["load_average_end"] = machine_info()["load_average"]
    return run


def _range(text: str) -> tuple[int, int]:
    low, _, high = text.partition(":")
    try:
        return int(low), int(high or low)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected LOW:HIGH (integers), got {text!r}") from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    target = parser.add_argument_group("endpoint")
    target.add_argument("--backend", choices=BACKEND_NAMES, default="openai-chat")
    target.add_argument(
        "--url",
        default="http://127.0.0.1:8000/v1",
        help="OpenAI base URL (…/v1), Triton gRPC HOST:PORT, or Triton HTTP URL",
    )
    target.add_argument("--model", help="model name (default: the first of /v1/models)")
    target.add_argument("--api-key", help="Bearer key for the OpenAI endpoint")
    target.add_argument(
        "--extra-body",
        type=json.loads,
        default={},
        help="JSON object merged into each OpenAI request body",
    )
    target.add_argument(
        "--ignore-eos",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="ask for exactly max_tokens tokens (default: on)",
    )
    target.add_argument(
        "--length-without-usage",
        action="store_true",
        help="for servers that send no usage when streaming (llama-cpp-python): a request "
        "that ends with finish_reason length counts max_tokens output tokens",
    )
    work = parser.add_argument_group("workload")
    work.add_argument("--workload", choices=WORKLOAD_NAMES, default="fixed")
    work.add_argument("--num-prompts", type=int, default=64, help="requests per load level")
    work.add_argument(
        "--input-len", type=int, default=128, help="prompt tokens (fixed; shared-prefix suffix)"
    )
    work.add_argument("--output-len", type=int, default=128)
    work.add_argument("--input-range", type=_range, default=(32, 512), metavar="LOW:HIGH")
    work.add_argument("--output-range", type=_range, default=(32, 256), metavar="LOW:HIGH")
    work.add_argument("--prefix-len", type=int, default=512, help="shared system prompt tokens")
    work.add_argument("--seed", type=int, default=0)
    work.add_argument(
        "--tokenizer", type=Path, help="tokenizer.json (or its directory) for exact prompt lengths"
    )
    load = parser.add_argument_group("load")
    load.add_argument(
        "--concurrency", type=int, nargs="+", default=[8], help="sweep of in-flight requests"
    )
    load.add_argument(
        "--request-rate",
        type=float,
        nargs="+",
        help="Poisson rates (req/s) instead of a concurrency sweep; --max-concurrency caps",
    )
    load.add_argument(
        "--max-concurrency", type=int, help="cap on in-flight requests with --request-rate"
    )
    load.add_argument(
        "--time-limit",
        type=float,
        metavar="SECONDS",
        help="per load level: requests still running then are cancelled and count as failed",
    )
    load.add_argument("--warmup", type=int, default=4, help="unmeasured requests first")
    slo = parser.add_argument_group("goodput SLOs (a request counts when it meets all given)")
    slo.add_argument("--slo-ttft-ms", type=float)
    slo.add_argument("--slo-tpot-ms", type=float)
    slo.add_argument("--slo-e2e-ms", type=float)
    out = parser.add_argument_group("output")
    out.add_argument("--label", default="bench", help="name of this run in tables and plots")
    out.add_argument("--output-dir", type=Path, help="write <label>.json/.csv/.md/-*.png here")
    out.add_argument("--no-progress", action="store_true")


def config_from_args(args: argparse.Namespace) -> BenchConfig:
    workload = WorkloadSpec(
        name=args.workload, input_len=args.input_len, output_len=args.output_len,
        input_range=args.input_range, output_range=args.output_range,
        prefix_len=args.prefix_len, seed=args.seed, tokenizer_path=args.tokenizer,
    )  # fmt: skip
    if args.request_rate:
        loads = tuple(Load(args.max_concurrency, rate) for rate in args.request_rate)
    else:
        loads = tuple(Load(concurrency) for concurrency in args.concurrency)
    given = (args.slo_ttft_ms, args.slo_tpot_ms, args.slo_e2e_ms)
    slo = None
    if any(value is not None for value in given):
        slo = SLO(*(None if value is None else value / 1000 for value in given))
    return BenchConfig(
        backend=args.backend, url=args.url, model=args.model, workload=workload, loads=loads,
        num_prompts=args.num_prompts, warmup_requests=args.warmup, ignore_eos=args.ignore_eos,
        length_without_usage=args.length_without_usage,
        extra_body=args.extra_body, slo=slo, time_limit_s=args.time_limit, api_key=args.api_key, label=args.label,
        progress=not args.no_progress,
    )  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="tritium bench",
        description="Load generator for OpenAI-compatible and Triton endpoints: TTFT, TPOT, ITL, "
        "latency percentiles, throughput and goodput under a concurrency sweep or a Poisson "
        "request rate. See docs/benchmarks.md.",
    )
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        config = config_from_args(args)
        run = asyncio.run(run_bench(config))
    except (ValueError, RuntimeError, OSError) as error:
        print(f"tritium bench: error: {error}", file=sys.stderr)
        return 1
    print(markdown_table([run]))
    if args.output_dir:
        stem = "".join(c if c.isalnum() or c in "-_." else "-" for c in config.label)
        for path in write_all([run], args.output_dir, stem, f"tritium bench: {config.label}"):
            print(f"wrote {path}")
    failed = sum(level.summary.failed for level in run.levels)
    return 1 if failed and not any(level.summary.completed for level in run.levels) else 0


if __name__ == "__main__":
    sys.exit(main())
