"""Benchmark results and their writers: JSON (everything, per-request records included),
CSV (one row per load level), a markdown summary, and PNG plots."""

from __future__ import annotations

import csv
import json
import math
import os
import platform
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.metrics import Distribution, RequestRecord, Summary

LATENCY_METRICS = ("ttft", "tpot", "itl", "e2e")


@dataclass
class LevelResult:
    """One load level of one run."""

    load: str  # "concurrency 32", "rate 4/s"
    concurrency: int | None
    request_rate: float | None
    summary: Summary
    records: list[RequestRecord] = field(default_factory=list)

    @property
    def closed_loop(self) -> bool:
        """A concurrency level (rate inf with a concurrency counts): what the plots show."""
        rate = self.request_rate
        return self.concurrency is not None and (rate is None or math.isinf(rate))


@dataclass
class RunResult:
    """One `tritium bench` run against one endpoint."""

    label: str  # what was measured: "tritium (adapter)", "llama.cpp server", ...
    config: dict[str, Any]  # the command line's settings
    levels: list[LevelResult] = field(default_factory=list)
    machine: dict[str, Any] = field(default_factory=dict)


def machine_info() -> dict[str, Any]:
    """Where and when: what the numbers depend on, including how busy the machine was."""
    return {
        "cpu_count": os.cpu_count(),
        "processor": _cpu_model(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "load_average": list(os.getloadavg()),
        "time": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def summary_row(run: RunResult, level: LevelResult) -> dict[str, Any]:
    """The flat CSV / table row of one level."""
    summary = level.summary
    row: dict[str, Any] = {
        "label": run.label,
        "load": level.load,
        "concurrency": level.concurrency,
        "request_rate": level.request_rate,
        "completed": summary.completed,
        "failed": summary.failed,
        "duration_s": round(summary.duration_s, 3),
        "requests_per_s": round(summary.requests_per_s, 3),
        "output_tokens_per_s": round(summary.output_tokens_per_s, 2),
        "total_tokens_per_s": round(summary.total_tokens_per_s, 2),
        "mean_input_tokens": round(summary.mean_input_tokens, 1),
        "mean_output_tokens": round(summary.mean_output_tokens, 1),
        "goodput_requests_per_s": summary.goodput_requests_per_s,
    }
    for metric in LATENCY_METRICS:
        for stat, value in asdict(getattr(summary, metric)).items():
            row[f"{metric}_{stat}"] = round(value, 2)
    return row


def write_json(runs: list[RunResult], path: Path) -> None:
    payload = [
        {
            "label": run.label,
            "config": run.config,
            "machine": run.machine,
            "levels": [
                {
                    "load": level.load,
                    "concurrency": level.concurrency,
                    "request_rate": level.request_rate,
                    "summary": level.summary.as_dict(),
                    "records": [asdict(record) for record in level.records],
                }
                for level in run.levels
            ],
        }
        for run in runs
    ]
    path.write_text(json.dumps(payload, indent=1, default=str))


def read_json(path: Path) -> list[RunResult]:
    """Runs written by write_json, without their per-request records (for plots and tables)."""
    runs = []
    for saved in json.loads(path.read_text()):
        levels = []
        for level in saved["levels"]:
            fields = dict(level["summary"])
            for metric in LATENCY_METRICS:
                fields[metric] = Distribution(**fields[metric])
            levels.append(
                LevelResult(
                    level["load"], level["concurrency"], level["request_rate"], Summary(**fields)
                )
            )
        runs.append(RunResult(saved["label"], saved["config"], levels, saved["machine"]))
    return runs


def write_csv(runs: list[RunResult], path: Path) -> None:
    rows = [summary_row(run, level) for run in runs for level in run.levels]
    if not rows:
        return
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def markdown_table(runs: list[RunResult]) -> str:
    header = (
        "| run | load | done / failed | req/s | output tok/s | TTFT p50 / p90 / p99 ms "
        "| TPOT p50 / p90 / p99 ms | ITL p50 / p99 ms | E2E p50 / p99 s | goodput req/s |"
    )
    lines = [header, "|" + "---|" * 10]
    for run in runs:
        for level in run.levels:
            s = level.summary
            goodput = "-" if s.goodput_requests_per_s is None else f"{s.goodput_requests_per_s:.2f}"
            lines.append(
                f"| {run.label} | {level.load} | {s.completed} / {s.failed} | {s.requests_per_s:.2f} "
                f"| {s.output_tokens_per_s:.1f} "
                f"| {s.ttft.p50_ms:.0f} / {s.ttft.p90_ms:.0f} / {s.ttft.p99_ms:.0f} "
                f"| {s.tpot.p50_ms:.1f} / {s.tpot.p90_ms:.1f} / {s.tpot.p99_ms:.1f} "
                f"| {s.itl.p50_ms:.1f} / {s.itl.p99_ms:.1f} "
                f"| {s.e2e.p50_ms / 1000:.2f} / {s.e2e.p99_ms / 1000:.2f} | {goodput} |"
            )
    return "\n".join(lines) + "\n"


def markdown_summary(runs: list[RunResult], title: str) -> str:
    parts = [f"# {title}", ""]
    for run in runs:
        load_average = run.machine.get("load_average")
        parts.append(f"- **{run.label}**: `{json.dumps(run.config, default=str)}`")
        if load_average:
            parts.append(
                f"  (load average at the start: {', '.join(f'{v:.2f}' for v in load_average)})"
            )
    parts += ["", markdown_table(runs)]
    return "\n".join(parts)


def write_plots(runs: list[RunResult], directory: Path, stem: str) -> list[Path]:
    """Throughput vs concurrency and latency percentiles vs concurrency: one colour per run
    (p50 solid, p99 dashed in that colour), a log scale on an axis whose values span more
    than a decade. Only levels with a concurrency (not request rates) are plotted. Without
    matplotlib (the bench extra), no plots: the other files are written all the same."""
    try:
        import matplotlib
    except ImportError:
        print(
            "tritium bench: no plots: matplotlib is not installed (pip install 'tritium[bench]')",
            file=sys.stderr,
        )
        return []
    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    plotted = [run for run in runs if any(level.closed_loop for level in run.levels)]
    if not plotted:
        return []
    colours = {run.label: f"C{index % 10}" for index, run in enumerate(plotted)}
    paths = []
    figure, axes = plt.subplots(1, 2, figsize=(11, 4))
    for axis, value in zip(
        axes, (lambda s: s.output_tokens_per_s, lambda s: s.requests_per_s), strict=True
    ):
        for run in plotted:
            levels = [level for level in run.levels if level.closed_loop]
            x = [level.concurrency for level in levels]
            y = [value(level.summary) for level in levels]
            axis.plot(x, y, marker="o", color=colours[run.label], label=run.label)
    for axis, ylabel in zip(axes, ("output tokens/s", "requests/s"), strict=True):
        _style(axis, ylabel)
    figure.suptitle("Throughput vs concurrency")
    paths.append(_save(figure, directory / f"{stem}-throughput.png"))

    figure, axes = plt.subplots(1, 3, figsize=(15, 4))
    for axis, metric in zip(axes, ("ttft", "tpot", "e2e"), strict=True):
        for run in plotted:
            levels = [level for level in run.levels if level.closed_loop]
            x = [level.concurrency for level in levels]
            for stat, style in (("p50_ms", "-"), ("p99_ms", "--")):
                values = [getattr(getattr(lv.summary, metric), stat) for lv in levels]
                axis.plot(
                    x, values, style, marker="o", color=colours[run.label],
                    label=f"{run.label} {stat[:3]}",
                )  # fmt: skip
        _style(axis, f"{metric.upper()} ms")
    figure.suptitle("Latency percentiles vs concurrency (solid p50, dashed p99)")
    paths.append(_save(figure, directory / f"{stem}-latency.png"))
    return paths


def spans_decades(values: list[float]) -> bool:
    """True when the positive values differ by more than 10x: a log axis shows them."""
    positive = [value for value in values if value > 0 and math.isfinite(value)]
    return bool(positive) and max(positive) > 10 * min(positive)


def _style(axis: Any, ylabel: str) -> None:
    axis.set_xscale("log", base=2)
    values = [y for line in axis.get_lines() for y in line.get_ydata()]
    if spans_decades(values):
        axis.set_yscale("log")
    axis.set_xlabel("concurrency")
    axis.set_ylabel(ylabel)
    axis.grid(True, which="both", alpha=0.3)
    axis.legend(fontsize=7)


def _save(figure: Any, path: Path) -> Path:
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    import matplotlib.pyplot as plt

    plt.close(figure)
    return path


def write_all(runs: list[RunResult], directory: Path, stem: str, title: str) -> list[Path]:
    """Every format into ``directory``; returns the files written."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = [directory / f"{stem}.json", directory / f"{stem}.csv", directory / f"{stem}.md"]
    write_json(runs, paths[0])
    write_csv(runs, paths[1])
    paths[2].write_text(markdown_summary(runs, title))
    return paths + write_plots(runs, directory, stem)
