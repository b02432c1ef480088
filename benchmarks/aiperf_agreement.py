"""`tritium bench` and NVIDIA's aiperf on the same workload against the same stack: do
they measure the same TTFT, inter-token latency and throughput?

    make aiperf    # aiperf in .venv-aiperf (its dependencies stay out of .venv)
    .venv/bin/python -m benchmarks.aiperf_agreement --url http://127.0.0.1:8000 \\
        --model smollm2-135m-instruct --tokenizer MODEL_DIR --aiperf .venv-aiperf/bin/aiperf

On a small machine, give the clients cores of their own: start the server under
`taskset -c 0` and pass `--client-cpus 1` (both tools then run on those CPUs only; aiperf,
a subprocess, inherits the affinity), so neither tool's processes slow the server.

Rounds alternate the two tools (tritium bench, aiperf, tritium bench, ...), so a machine
whose load drifts affects both alike; each metric is the median over rounds. The names
differ: aiperf's inter-token latency is our TPOT (docs/benchmarks.md, Metrics).
Results go to <output-dir>/aiperf.json and aiperf.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks.bench import BenchConfig, run_bench
from benchmarks.report import machine_info
from benchmarks.runner import Load
from benchmarks.workloads import WorkloadSpec

# ours -> aiperf's name, for the metrics compared
METRICS = {
    "ttft_mean_ms": ("time_to_first_token", "avg"),
    "ttft_p50_ms": ("time_to_first_token", "p50"),
    "tpot_mean_ms": ("inter_token_latency", "avg"),
    "tpot_p50_ms": ("inter_token_latency", "p50"),
    "output_tokens_per_s": ("output_token_throughput", "avg"),
    "requests_per_s": ("request_throughput", "avg"),
}
TOLERANCE = 0.10


def aiperf_summary(export: dict[str, Any]) -> dict[str, float]:
    """Our names for the numbers of aiperf's profile_export_aiperf.json."""
    return {ours: float(export[name][stat]) for ours, (name, stat) in METRICS.items()}


# The adapter's own clock: from a request's arrival to its first generated text, and to the
# end of its response body (per route).
SERVER_TTFT = "tritium_adapter_time_to_first_token_seconds"
SERVER_DURATION = "tritium_adapter_request_duration_seconds"
CHAT_ROUTE = "/v1/chat/completions"


def server_totals(url: str) -> dict[str, float] | None:
    """The adapter's TTFT histogram (sum of seconds, count; over its models) and its chat
    route's duration histogram; None when the server has no such metrics (not our adapter)."""
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    try:
        text = httpx.get(url.rstrip("/") + "/metrics", timeout=10).text
    except httpx.HTTPError:
        return None
    kinds = {SERVER_TTFT: "ttft", SERVER_DURATION: "duration"}
    totals: dict[str, float] = {}
    for family in text_string_to_metric_families(text):  # a histogram's family: its base name
        kind = kinds.get(family.name)
        for sample in family.samples if kind else ():
            if kind == "duration" and sample.labels.get("route") != CHAT_ROUTE:
                continue
            suffix = sample.name.removeprefix(family.name)
            if suffix in ("_sum", "_count"):
                totals[kind + suffix] = totals.get(kind + suffix, 0.0) + sample.value
    return totals if len(totals) == 4 else None


def with_server_clock(
    url: str, output_len: int, run: Callable[[], dict[str, float]]
) -> dict[str, float]:
    """`run()`'s metrics, plus the adapter's own means over the requests of that round
    (warm-up included) when the server exposes them: a witness that is neither tool. Its
    TPOT is (duration - TTFT) / (output_len - 1), the same definition, since every request
    makes exactly output_len tokens (ignore_eos)."""
    before = server_totals(url)
    result = run()
    after = server_totals(url)
    if before is None or after is None:
        return result
    delta = {key: after[key] - before[key] for key in after}
    if delta["ttft_count"] > 0:
        result["server_ttft_mean_ms"] = delta["ttft_sum"] / delta["ttft_count"] * 1e3
    if delta["duration_count"] > 0 and output_len > 1:
        generating = delta["duration_sum"] - delta["ttft_sum"]
        result["server_tpot_mean_ms"] = generating / delta["duration_count"] / (output_len - 1) * 1e3
    return result


def ours_summary(summary: Any) -> dict[str, float]:
    return {
        "ttft_mean_ms": summary.ttft.mean_ms,
        "ttft_p50_ms": summary.ttft.p50_ms,
        "tpot_mean_ms": summary.tpot.mean_ms,
        "tpot_p50_ms": summary.tpot.p50_ms,
        "output_tokens_per_s": summary.output_tokens_per_s,
        "requests_per_s": summary.requests_per_s,
    }


def agreement(ours: list[dict[str, float]], theirs: list[dict[str, float]]) -> dict[str, Any]:
    """Per metric: the median of each tool over rounds and their relative difference."""
    rows = {}
    for metric in METRICS:
        mine = statistics.median(round_[metric] for round_ in ours)
        other = statistics.median(round_[metric] for round_ in theirs)
        difference = abs(mine - other) / other if other else float("inf")
        rows[metric] = {
            "tritium_bench": mine,
            "aiperf": other,
            "relative_difference": difference,
            "within_tolerance": difference <= TOLERANCE,
        }
    return rows


def aiperf_command(args: argparse.Namespace, artifacts: Path) -> list[str]:
    return [
        args.aiperf, "profile", "-m", args.model, "--url", args.url,
        "--endpoint-type", "chat", "--streaming", "--tokenizer", str(args.tokenizer),
        "--synthetic-input-tokens-mean", str(args.input_len), "--synthetic-input-tokens-stddev", "0",
        "--output-tokens-mean", str(args.output_len), "--output-tokens-stddev", "0",
        "--extra-inputs", "ignore_eos:true", "--use-server-token-count",
        "--concurrency", str(args.concurrency), "--request-count", str(args.num_prompts),
        "--warmup-request-count", str(args.concurrency),
        "--artifact-dir", str(artifacts), "--ui-type", "none",
    ] + (["--request-rate", f"{args.request_rate:g}", "--arrival-pattern", "poisson"]
         if args.request_rate else [])  # fmt: skip


def run_aiperf(args: argparse.Namespace) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="aiperf-") as directory:
        artifacts = Path(directory)
        result = subprocess.run(aiperf_command(args, artifacts), capture_output=True, text=True)
        export = artifacts / "profile_export_aiperf.json"
        if result.returncode != 0 or not export.is_file():
            raise RuntimeError(f"aiperf failed ({result.returncode}):\n{result.stderr[-3000:]}")
        data = json.loads(export.read_text())
    if data.get("error_request_count", {}).get("avg"):
        raise RuntimeError(f"aiperf saw failed requests: {data.get('error_summary')}")
    return aiperf_summary(data)


def run_ours(args: argparse.Namespace, seed: int) -> dict[str, float]:
    """One round of tritium bench. `seed`: its prompts' (warm-up and measured). A fresh seed
    each round matters: the prefix cache keeps the prompts of earlier rounds, which a
    repeated seed would send again (85% of prompt tokens cached, TTFT halved), while aiperf
    draws new text every run."""
    workload = WorkloadSpec(
        "fixed", args.input_len, args.output_len, tokenizer_path=args.tokenizer, seed=seed
    )
    config = BenchConfig(
        backend="openai-chat", url=args.url.rstrip("/") + "/v1", model=args.model,
        workload=workload,
        loads=(Load(args.concurrency, request_rate=args.request_rate),), num_prompts=args.num_prompts,
        warmup_requests=args.concurrency, label="tritium bench", progress=False,
    )  # fmt: skip
    run = asyncio.run(run_bench(config))
    (level,) = run.levels
    if level.summary.failed:
        raise RuntimeError(f"tritium bench saw {level.summary.failed} failed requests")
    return ours_summary(level.summary)


def markdown(result: dict[str, Any]) -> str:
    lines = [
        "| metric | tritium bench | aiperf | difference |",
        "|---|---|---|---|",
    ]
    for metric, row in result["agreement"].items():
        mark = "" if row["within_tolerance"] else " (over 10%)"
        lines.append(
            f"| {metric} | {row['tritium_bench']:.2f} | {row['aiperf']:.2f} "
            f"| {row['relative_difference']:.1%}{mark} |"
        )
    lines += ["", "Each round, the tool's means and the adapter's own (its /metrics, the same requests):",
              "", "| round | tool | TTFT mean (ms): tool / adapter | TPOT mean (ms): tool / adapter |",
              "|---|---|---|---|"]  # fmt: skip
    rounds = result["rounds"]

    def cell(row: dict[str, float], metric: str) -> str:
        server = row.get(f"server_{metric}_mean_ms")
        return f"{row[f'{metric}_mean_ms']:.1f} / {'-' if server is None else f'{server:.1f}'}"

    for number, pair in enumerate(zip(rounds["tritium_bench"], rounds["aiperf"], strict=True)):
        for tool, row in zip(("tritium bench", "aiperf"), pair, strict=True):
            lines.append(f"| {number + 1} | {tool} | {cell(row, 'ttft')} | {cell(row, 'tpot')} |")
    return "\n".join(lines) + "\n"


def cpu_list(text: str) -> set[int]:
    """`taskset -c` syntax: "1", "2,3", "4-7", "1,4-7"."""
    cpus: set[int] = set()
    try:
        for part in text.split(","):
            first, _, last = part.strip().partition("-")
            cpus.update(range(int(first), int(last or first) + 1))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a CPU list like 1 or 2-3: {text!r}") from None
    if not cpus:
        raise argparse.ArgumentTypeError("an empty CPU list")
    return cpus


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.aiperf_agreement", description=__doc__
    )
    parser.add_argument("--url", default="http://127.0.0.1:8000", help="the server, without /v1")
    parser.add_argument("--model", required=True)
    parser.add_argument("--tokenizer", type=Path, required=True, help="the model's directory")
    parser.add_argument("--aiperf", default=".venv-aiperf/bin/aiperf")
    parser.add_argument("--input-len", type=int, default=128)
    parser.add_argument("--output-len", type=int, default=32)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--num-prompts", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument(
        "--request-rate", type=float, default=None,
        help="Poisson arrivals at this rate, at most --concurrency in flight, in both tools "
        "(default: closed loop; aiperf's closed loop busy-polls a core, which a 2-core server feels)",
    )  # fmt: skip
    parser.add_argument(
        "--client-cpus", type=cpu_list, default=None,
        help="run both tools on these CPUs only (taskset -c syntax, e.g. 1 or 2-3); "
        "start the server on the others (default: wherever the OS puts them)",
    )  # fmt: skip
    parser.add_argument("--output-dir", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args(argv)
    if args.client_cpus is not None:
        os.sched_setaffinity(0, args.client_cpus)  # aiperf's processes inherit it
    ours, theirs = [], []
    seeds = [random.randrange(1 << 30) for _ in range(args.rounds)]  # fresh prompts per round
    for number in range(args.rounds):
        print(f"round {number + 1} of {args.rounds}: tritium bench", file=sys.stderr, flush=True)
        ours.append(
            with_server_clock(args.url, args.output_len, lambda n=number: run_ours(args, seeds[n]))
        )
        print(f"round {number + 1} of {args.rounds}: aiperf", file=sys.stderr, flush=True)
        theirs.append(with_server_clock(args.url, args.output_len, lambda: run_aiperf(args)))
    settings = {key: str(value) for key, value in vars(args).items()}
    result = {
        "settings": settings,
        "machine": machine_info(),
        "rounds": {"tritium_bench": ours, "aiperf": theirs},
        "tritium_bench_seeds": seeds,
        "agreement": agreement(ours, theirs),
    }
    args.output_dir.mkdir(parents=True, exist_ok=True)
    (args.output_dir / "aiperf.json").write_text(json.dumps(result, indent=1))
    (args.output_dir / "aiperf.md").write_text(markdown(result))
    print(markdown(result))
    return 0 if all(row["within_tolerance"] for row in result["agreement"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
