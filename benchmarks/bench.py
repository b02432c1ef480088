"""`tritium bench`: drive an endpoint with a workload under one or more loads.

    tritium bench --backend openai-chat --url http://127.0.0.1:8000/v1 \\
        --workload fixed --input-len 128 --output-len 128 --concurrency 1 4 16 32 \\
        --num-prompts 64 --output-dir benchmarks/results --label tritium

    # `vllm bench serve`'s flags, as pasted:
    tritium bench --backend vllm --base-url http://127.0.0.1:8000 --model M \\
        --dataset-name random --random-input-len 128 --random-output-len 128 \\
        --num-prompts 64 --max-concurrency 16 --save-result

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
from benchmarks.vllm_result import (
    default_filename,
    level_result,
    parse_metrics,
    parse_percentiles,
)
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
    # Without a cap, every request of a level may be in flight at once.
    connections = max((load.concurrency or config.num_prompts) for load in config.loads) + 8
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
        # Each load gets prompts of its own: the server's prefix cache keeps what earlier
        # loads sent, and the same prompts again would be prefilled from it.
        count = config.num_prompts
        every = config.workload.build(count * len(config.loads))
        for index, load in enumerate(config.loads):
            requests = every[index * count : (index + 1) * count]
            progress = Progress(len(requests), f"{config.label} {load.label}", config.progress)
            seed = config.workload.seed + index
            records, duration = await run_load(
                backend, requests, load, seed, progress, config.time_limit_s
            )
            progress.close()
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


# vLLM's --backend names -> ours (`vllm bench serve --backend vllm` speaks /v1/completions).
BACKEND_ALIASES = {"openai": "openai-completions", "vllm": "openai-completions"}
OPENAI_ENDPOINTS = {"/v1/completions": "openai-completions", "/v1/chat/completions": "openai-chat"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Our flags, and `vllm bench serve`'s common ones as given (a pasted vLLM command line
    runs): --base-url/--host/--port/--endpoint, --dataset-name/--dataset-path,
    --random-input-len ..., --max-concurrency, --save-result, --percentile-metrics ..."""
    target = parser.add_argument_group("endpoint")
    target.add_argument(
        "--backend",
        choices=(*BACKEND_NAMES, *BACKEND_ALIASES),
        help="openai-chat (default), openai-completions, triton-grpc, triton-generate; "
        "vLLM's openai and vllm mean openai-completions",
    )
    target.add_argument(
        "--url",
        help="OpenAI base URL (…/v1, default http://127.0.0.1:8000/v1), Triton gRPC "
        "HOST:PORT, or Triton HTTP URL",
    )
    target.add_argument("--base-url", help="vLLM style: server URL without /v1 (with --endpoint)")
    target.add_argument("--host", help="vLLM style: server host (default 127.0.0.1)")
    target.add_argument("--port", type=int, help="vLLM style: server port (default 8000)")
    target.add_argument(
        "--endpoint",
        choices=tuple(OPENAI_ENDPOINTS),
        help="vLLM style: the OpenAI route; /v1/chat/completions means chat",
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
    for name in ("temperature", "top-p", "top-k", "min-p"):
        target.add_argument(f"--{name}", type=float, help=f"sampling {name} of every request")
    target.add_argument(
        "--length-without-usage",
        action="store_true",
        help="for servers that send no usage when streaming (llama-cpp-python): a request "
        "that ends with finish_reason length counts max_tokens output tokens",
    )
    work = parser.add_argument_group("workload (--dataset-name is vLLM's name of --workload)")
    work.add_argument(
        "--workload", "--dataset-name", dest="workload", choices=WORKLOAD_NAMES, default="fixed"
    )
    work.add_argument(
        "--dataset-path", type=Path, help="sharegpt: ShareGPT JSON or JSONL; custom: JSONL prompts"
    )
    work.add_argument("--num-prompts", type=int, default=64, help="requests per load level")
    work.add_argument(
        "--input-len",
        "--random-input-len",
        dest="input_len",
        type=int,
        default=128,
        help="prompt tokens (fixed, random; shared-prefix suffix)",
    )
    work.add_argument(
        "--output-len", "--random-output-len", dest="output_len", type=int, default=128
    )
    work.add_argument(
        "--random-range-ratio",
        type=float,
        default=0.0,
        help="random: lengths uniform in len*(1-R)..len*(1+R) (vLLM's meaning; default 0)",
    )
    work.add_argument(
        "--input-range", type=_range, metavar="LOW:HIGH", help="random: prompt tokens, inclusive"
    )
    work.add_argument("--output-range", type=_range, metavar="LOW:HIGH")
    work.add_argument("--prefix-len", type=int, default=512, help="shared system prompt tokens")
    work.add_argument(
        "--random-prefix-len", type=int, default=0, help="random: tokens every prompt starts with"
    )
    work.add_argument(
        "--sharegpt-output-len", type=int, help="sharegpt: output tokens (default: each reply's)"
    )
    work.add_argument(
        "--custom-output-len", type=int, help="custom: output tokens of lines that give none"
    )
    work.add_argument("--seed", type=int, default=0)
    work.add_argument(
        "--tokenizer", type=Path, help="tokenizer.json (or its directory) for exact token counts"
    )
    load = parser.add_argument_group("load")
    load.add_argument(
        "--concurrency",
        type=int,
        nargs="+",
        help="sweep of in-flight requests, closed loop (default 8)",
    )
    load.add_argument(
        "--request-rate",
        type=float,
        nargs="+",
        help="arrival rates (req/s; inf = all at once) instead of a concurrency sweep",
    )
    load.add_argument(
        "--burstiness",
        type=float,
        default=1.0,
        help="with --request-rate: gamma shape of the gaps; 1 = Poisson (vLLM's meaning)",
    )
    load.add_argument(
        "--max-concurrency",
        type=int,
        help="requests in flight at most: caps --request-rate; alone, a closed loop at N "
        "(what vLLM means)",
    )
    load.add_argument(
        "--time-limit",
        type=float,
        metavar="SECONDS",
        help="per load level: requests still running then are cancelled and count as failed",
    )
    load.add_argument(
        "--warmup", "--num-warmups", dest="warmup", type=int, default=4,
        help="unmeasured requests first",
    )  # fmt: skip
    slo = parser.add_argument_group("goodput SLOs (a request counts when it meets all given)")
    slo.add_argument("--slo-ttft-ms", type=float)
    slo.add_argument("--slo-tpot-ms", type=float)
    slo.add_argument("--slo-e2e-ms", type=float)
    slo.add_argument(
        "--goodput", nargs="+", metavar="METRIC:MS", help="vLLM style: ttft:500 tpot:50 e2el:2000"
    )
    out = parser.add_argument_group("output")
    out.add_argument("--label", default="bench", help="name of this run in tables and plots")
    out.add_argument("--output-dir", type=Path, help="write <label>.json/.csv/.md/-*.png here")
    out.add_argument("--no-progress", "--disable-tqdm", dest="no_progress", action="store_true")
    out.add_argument(
        "--save-result", action="store_true", help="write vLLM's result JSON, one per load level"
    )
    out.add_argument("--result-dir", type=Path, default=Path("."), help="for --save-result")
    out.add_argument("--result-filename", help="for --save-result (default: vLLM's naming)")
    out.add_argument(
        "--percentile-metrics", default="ttft,tpot,itl", help="vLLM's: of ttft, tpot, itl, e2el"
    )
    out.add_argument("--metric-percentiles", default="99", help="vLLM's: e.g. 50,90,99")
    out.add_argument(
        "--metadata", nargs="+", default=[], metavar="KEY=VALUE", help="added to --save-result"
    )


def _endpoint(args: argparse.Namespace) -> tuple[str, str]:
    """(backend, url) from ours (--backend, --url) or vLLM's (--base-url | --host/--port,
    --endpoint); a vLLM command line without --backend defaults to completions as vLLM does."""
    vllm_style = any(v is not None for v in (args.base_url, args.host, args.port, args.endpoint))
    if vllm_style and args.url:
        raise ValueError("give --url, or vLLM's --base-url / --host / --port, not both")
    backend = BACKEND_ALIASES.get(args.backend, args.backend)
    if not vllm_style:
        return backend or "openai-chat", args.url or "http://127.0.0.1:8000/v1"
    base = args.base_url or f"http://{args.host or '127.0.0.1'}:{args.port or 8000}"
    endpoint = args.endpoint or (
        "/v1/chat/completions" if backend == "openai-chat" else "/v1/completions"
    )
    if backend is not None and backend != OPENAI_ENDPOINTS[endpoint]:
        raise ValueError(f"--backend {args.backend} does not speak --endpoint {endpoint}")
    return OPENAI_ENDPOINTS[endpoint], base.rstrip("/") + "/v1"


def _loads(args: argparse.Namespace) -> tuple[Load, ...]:
    if args.request_rate:
        return tuple(
            Load(args.max_concurrency, rate, args.burstiness) for rate in args.request_rate
        )
    if args.max_concurrency is not None:
        if args.concurrency and args.concurrency != [args.max_concurrency]:
            raise ValueError(
                "--max-concurrency without --request-rate is a closed loop at that concurrency; "
                "use --concurrency for a sweep, not both"
            )
        return (Load(args.max_concurrency),)
    return tuple(Load(concurrency) for concurrency in args.concurrency or [8])


def _workload(args: argparse.Namespace) -> WorkloadSpec:
    ratio = args.random_range_ratio
    if not 0 <= ratio < 1:
        raise ValueError(f"--random-range-ratio must be in [0, 1), got {ratio}")

    def around(length: int) -> tuple[int, int]:
        return max(1, round(length * (1 - ratio))), max(1, round(length * (1 + ratio)))

    return WorkloadSpec(
        name=args.workload, input_len=args.input_len, output_len=args.output_len,
        input_range=args.input_range or around(args.input_len),
        output_range=args.output_range or around(args.output_len),
        prefix_len=args.prefix_len, random_prefix_len=args.random_prefix_len,
        seed=args.seed, tokenizer_path=args.tokenizer, dataset_path=args.dataset_path,
        fixed_output_len=args.sharegpt_output_len or args.custom_output_len,
    )  # fmt: skip


def _slo(args: argparse.Namespace) -> SLO | None:
    given = {"ttft": args.slo_ttft_ms, "tpot": args.slo_tpot_ms, "e2el": args.slo_e2e_ms}
    for item in args.goodput or []:
        metric, _, value = item.partition(":")
        if metric not in given:
            raise ValueError(f"--goodput {item}: the metric is one of ttft, tpot, e2el")
        try:
            given[metric] = float(value)
        except ValueError:
            raise ValueError(f"--goodput {item}: expected METRIC:MILLISECONDS") from None
    if all(value is None for value in given.values()):
        return None
    return SLO(*(None if value is None else value / 1000 for value in given.values()))


def config_from_args(args: argparse.Namespace) -> BenchConfig:
    backend, url = _endpoint(args)
    sampling = {
        key: value
        for key, value in (
            ("temperature", args.temperature), ("top_p", args.top_p),
            ("top_k", None if args.top_k is None else int(args.top_k)), ("min_p", args.min_p),
        )
        if value is not None
    }  # fmt: skip
    return BenchConfig(
        backend=backend, url=url, model=args.model, workload=_workload(args), loads=_loads(args),
        num_prompts=args.num_prompts, warmup_requests=args.warmup, ignore_eos=args.ignore_eos,
        length_without_usage=args.length_without_usage,
        extra_body={**sampling, **args.extra_body}, slo=_slo(args), time_limit_s=args.time_limit,
        api_key=args.api_key, label=args.label, progress=not args.no_progress,
    )  # fmt: skip


def save_vllm_results(run: RunResult, config: BenchConfig, args: argparse.Namespace) -> list[Path]:
    """`--save-result`: one vLLM-format JSON per load level."""
    metrics = parse_metrics(args.percentile_metrics)
    percentiles = parse_percentiles(args.metric_percentiles)
    metadata = dict(item.partition("=")[::2] for item in args.metadata)
    args.result_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for index, level in enumerate(run.levels):
        load = config.loads[index]
        result = level_result(
            level.records, level.summary.duration_s, backend=config.backend,
            model=run.config["model"], tokenizer=str(args.tokenizer) if args.tokenizer else None,
            request_rate=load.request_rate, burstiness=load.burstiness,
            max_concurrency=load.concurrency, slo=config.slo, metrics=metrics,
            percentiles=percentiles, label=args.label,
        )  # fmt: skip
        result.update(metadata)
        name = args.result_filename or default_filename(result, args.label)
        if args.result_filename and len(run.levels) > 1:
            name = f"{Path(name).stem}-{index}{Path(name).suffix or '.json'}"
        path = args.result_dir / name
        path.write_text(json.dumps(result, indent=1))
        paths.append(path)
    return paths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="tritium bench",
        description="Load generator for OpenAI-compatible and Triton endpoints: TTFT, TPOT, ITL, "
        "latency percentiles, throughput and goodput under a concurrency sweep or a request "
        "rate. Takes `vllm bench serve`'s common flags as well. See docs/benchmarks.md.",
    )
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        config = config_from_args(args)
        parse_metrics(args.percentile_metrics)  # bad values fail before the run, not after
        parse_percentiles(args.metric_percentiles)
        run = asyncio.run(run_bench(config))
    except (ValueError, RuntimeError, OSError) as error:
        print(f"tritium bench: error: {error}", file=sys.stderr)
        return 1
    print(markdown_table([run]))
    if args.output_dir:
        stem = "".join(c if c.isalnum() or c in "-_." else "-" for c in config.label)
        for path in write_all([run], args.output_dir, stem, f"tritium bench: {config.label}"):
            print(f"wrote {path}")
    if args.save_result:
        for path in save_vllm_results(run, config, args):
            print(f"wrote {path}")
    failed = sum(level.summary.failed for level in run.levels)
    return 1 if failed and not any(level.summary.completed for level in run.levels) else 0


if __name__ == "__main__":
    sys.exit(main())
