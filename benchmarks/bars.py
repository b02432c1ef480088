"""The issue's bars, computed from the suite's stage files (null.json, compare.json,
peer.json, hf.json) into bars.md and bars.json. The peer is llama.cpp's own llama-server
(parallel slots, continuous batching), measured in the same run as our stack (peer.json)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

OVERHEAD_BAR = 0.05  # adapter + Triton cost, share of the engine's offline tokens/s
NULL_TOKENS_PER_S_BAR = 5000.0  # through the adapter at concurrency 32
TTFT_P50_BAR_MS = 150.0  # at concurrency 1


def _load(directory: Path, stage: str) -> dict[str, Any] | None:
    path = directory / f"{stage}.json"
    return json.loads(path.read_text()) if path.is_file() else None


def overhead(compare: dict[str, Any]) -> dict[str, float]:
    """engine offline -> Triton direct -> adapter, as shares of the offline tokens/s."""
    offline = compare["engine_offline"]["output_tokens_per_s"]
    direct = compare["triton_direct"]["output_tokens_per_s"]
    adapter = compare["adapter"]["output_tokens_per_s"]
    return {
        "engine_offline_tokens_per_s": offline,
        "triton_direct_tokens_per_s": direct,
        "adapter_tokens_per_s": adapter,
        "triton_cost": (offline - direct) / offline,
        "adapter_cost": (direct - adapter) / offline,
        "total_cost": (offline - adapter) / offline,
    }


def _overhead_verdict(cost: dict[str, float]) -> bool | str:
    """A stack faster than the engine alone means the machine's load changed between the
    runs (the stack cannot add throughput): the comparison says nothing then."""
    if cost["total_cost"] < -OVERHEAD_BAR:
        return "not measurable: the offline run was slower than the stack (busy machine)"
    return cost["total_cost"] <= OVERHEAD_BAR


# Issue 15's bars against llama-server: output tokens/s at least this multiple of its rate
# per concurrency (1x where not named), and at the top level a TTFT p50 no worse than its.
PEER_RATIO = {"32": 2.0}
PEER_TTFT_LEVEL = "32"


def peer_bars(peer: dict[str, Any]) -> list[dict[str, Any]]:
    """Our full stack against llama-server at every level the peer stage measured (both in
    the same run): output tokens/s against PEER_RATIO x its rate (TTFT p50 shown beside),
    and TTFT p50 at PEER_TTFT_LEVEL."""
    ours, theirs = peer["tritium"]["levels"], peer["llama_server"]["levels"]
    bars = []
    for level in sorted(set(ours) & set(theirs), key=int):
        mine, peer_level = ours[level], theirs[level]
        rate, peer_rate = mine["output_tokens_per_s"], peer_level["output_tokens_per_s"]
        ratio = PEER_RATIO.get(level, 1.0)
        times = f"{ratio:g}x " if ratio != 1.0 else ""
        bars.append({
            "bar": f"full-stack output tokens/s >= {times}llama-server's (concurrency {level})",
            "measured": f"{rate:.1f} vs {peer_rate:.1f} tok/s ({rate / peer_rate:.2f}x); "
                        f"TTFT p50 {mine['ttft_p50_ms']:.0f} vs {peer_level['ttft_p50_ms']:.0f} ms",
            "met": rate >= ratio * peer_rate,
        })  # fmt: skip
        if level == PEER_TTFT_LEVEL:
            ttft, peer_ttft = mine["ttft_p50_ms"], peer_level["ttft_p50_ms"]
            bars.append({
                "bar": f"TTFT p50 <= llama-server's (concurrency {level})",
                "measured": f"{ttft:.0f} vs {peer_ttft:.0f} ms",
                "met": ttft <= peer_ttft,
            })  # fmt: skip
    return bars


def evaluate(
    null: dict[str, Any] | None,
    compare: dict[str, Any] | None,
    peer: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """One entry per bar: what was measured, the bar, met or not."""
    bars: list[dict[str, Any]] = []
    if compare is not None:
        results = compare["results"]
        cost = overhead(results)
        bars.append({"bar": "adapter + Triton overhead <= 5% of engine offline tokens/s",
                     "measured": f"{cost['total_cost']:.1%} (Triton {cost['triton_cost']:.1%}, "
                                 f"adapter {cost['adapter_cost']:.1%})",
                     "met": _overhead_verdict(cost), "details": cost})  # fmt: skip
        ttft = results["adapter_concurrency_1"]["ttft_p50_ms"]
        engine = results.get("engine_offline_first_token_ms")
        alone = f" (engine alone: {engine:.0f} ms)" if engine is not None else ""
        bars.append({"bar": "TTFT p50 at concurrency 1 <= 150 ms",
                     "measured": f"{ttft:.0f} ms{alone}", "met": ttft <= TTFT_P50_BAR_MS})  # fmt: skip
    if null is not None:
        adapter = {
            key: value for key, value in null["results"].items() if key.startswith("adapter")
        }
        shown = ", ".join(
            f"{key.split()[1]} tok/resp: {value['output_tokens_per_s']:.0f}"
            for key, value in adapter.items()
        )
        best = max(value["output_tokens_per_s"] for value in adapter.values())
        bars.append({"bar": "null model >= 5,000 tok/s through the adapter (concurrency 32)",
                     "measured": shown, "met": best >= NULL_TOKENS_PER_S_BAR,
                     "met_at_every_coalescing": all(v["output_tokens_per_s"] >= NULL_TOKENS_PER_S_BAR
                                                    for v in adapter.values())})  # fmt: skip
    if peer is not None and "llama_server" in peer["results"]:
        bars += peer_bars(peer["results"])
    return bars


def throughput_table(
    compare: dict[str, Any] | None, hf: dict[str, Any] | None, peer: dict[str, Any] | None = None
) -> list[str]:
    """Output tokens/s of every system on the same workload (128 in / 128 out)."""
    rows: list[tuple[str, float]] = []
    if compare is not None:
        results = compare["results"]
        rows.append(
            ("engine offline (32 running)", results["engine_offline"]["output_tokens_per_s"])
        )
        for key, name in (
            ("triton_direct", "Triton direct, gRPC (concurrency 32)"),
            ("adapter", "full stack, adapter (concurrency 32)"),
        ):
            if key in results:
                rows.append((name, results[key]["output_tokens_per_s"]))
    if peer is not None:
        for key, name in (
            ("tritium", "full stack, adapter, peer stage (concurrency 32)"),
            ("llama_server", "llama.cpp llama-server, 32 slots (concurrency 32)"),
            ("llama_cpp_python", "llama-cpp-python server, one request at a time (concurrency 32)"),
        ):
            level = peer["results"].get(key, {}).get("levels", {}).get("32")
            if level is not None:
                rows.append((name, level["output_tokens_per_s"]))
    if hf is not None:
        rows.append(
            ("transformers generate, batch 32", hf["results"]["hf_batched"]["output_tokens_per_s"])
        )
        rows.append(
            (
                "transformers generate, one at a time",
                hf["results"]["hf_sequential"]["output_tokens_per_s"],
            )
        )
    if not rows:
        return []
    lines = ["", "| system | output tok/s |", "|---|---|"]
    return lines + [f"| {name} | {value:.1f} |" for name, value in rows]


def side_by_side(directory: Path) -> list[str]:
    """The peer stage's sweeps (ours, llama-server's, and llama-cpp-python's when measured), all
    from one run, on the same axes: side-by-side-{throughput,latency}.png."""
    from benchmarks.report import markdown_table, read_json, write_plots

    path = directory / "peer-runs.json"
    runs = read_json(path) if path.is_file() else []
    if len(runs) < 2:
        return []
    paths = write_plots(runs, directory, "side-by-side")
    return ["", markdown_table(runs), *(f"![{path.stem}]({path.name})" for path in paths)]


def _verdict(met: bool | str) -> str:
    return met if isinstance(met, str) else ("yes" if met else "NO")


def write_bars(directory: Path) -> str:
    stages = {stage: _load(directory, stage) for stage in ("null", "compare", "peer", "hf")}
    compare, peer = stages["compare"], stages["peer"]
    bars = evaluate(stages["null"], compare, peer)
    lines = ["# Bars", "", "| bar | measured | met |", "|---|---|---|"]
    lines += [f"| {bar['bar']} | {bar['measured']} | {_verdict(bar['met'])} |" for bar in bars]
    lines += throughput_table(compare, stages["hf"], peer)
    lines += ["", "Load average (uptime) per stage:", ""]
    for stage, record in stages.items():
        if record is not None:
            lines.append(
                f"- {stage}: before `{record['uptime_before']}`, after `{record['uptime_after']}`"
            )
    lines += side_by_side(directory)
    text = "\n".join(lines) + "\n"
    (directory / "bars.md").write_text(text)
    (directory / "bars.json").write_text(json.dumps(bars, indent=1))
    return text
