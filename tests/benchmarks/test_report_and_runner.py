"""Load generation against a fake backend, SSE parsing, and the result writers."""

from __future__ import annotations

import asyncio
import csv
import json
import time
from pathlib import Path

import pytest

from benchmarks.clients import OpenAIBackend, sse_events
from benchmarks.metrics import RequestRecord, summarize
from benchmarks.report import LevelResult, RunResult, write_all
from benchmarks.runner import Load, Progress, run_load
from benchmarks.workloads import WorkloadSpec


class FakeBackend:
    """Streams max_tokens tokens in two chunks; remembers the most requests in flight."""

    def __init__(self) -> None:
        self.in_flight = 0
        self.most_in_flight = 0

    async def send(self, request, record: RequestRecord) -> None:  # noqa: ANN001
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        for _ in range(2):
            await asyncio.sleep(0.002)
            record.chunk_times.append(time.perf_counter() - record.sent_at)
        record.output_tokens, record.input_tokens = request.max_tokens, 3
        record.latency = time.perf_counter() - record.sent_at
        self.in_flight -= 1

    async def close(self) -> None:
        pass


@pytest.mark.parametrize("concurrency", [1, 3, 8])
def test_closed_loop_keeps_exactly_the_concurrency_in_flight(concurrency: int) -> None:
    backend = FakeBackend()
    requests = WorkloadSpec(input_len=4, output_len=5).build(16)
    progress = Progress(len(requests), "test", enabled=False)
    records, duration = asyncio.run(run_load(backend, requests, Load(concurrency), 0, progress))
    assert len(records) == 16 and all(record.ok for record in records)
    assert backend.most_in_flight == concurrency
    assert summarize(records, duration, None).mean_output_tokens == 5


def test_poisson_rate_sends_everything_under_the_cap() -> None:
    backend = FakeBackend()
    requests = WorkloadSpec(input_len=4, output_len=2).build(20)
    progress = Progress(len(requests), "test", enabled=False)
    records, _ = asyncio.run(run_load(backend, requests, Load(2, 2000.0), 0, progress))
    assert len(records) == 20 and backend.most_in_flight <= 2


def test_a_time_limit_cancels_what_is_still_running() -> None:
    class SlowBackend(FakeBackend):
        async def send(self, request, record: RequestRecord) -> None:  # noqa: ANN001
            await asyncio.sleep(0.01 if request.max_tokens == 1 else 10)
            await super().send(request, record)

    requests = WorkloadSpec(input_len=4, output_len=1).build(3)
    requests += WorkloadSpec(input_len=4, output_len=2).build(2)
    progress = Progress(len(requests), "test", enabled=False)
    records, duration = asyncio.run(
        run_load(SlowBackend(), requests, Load(5), 0, progress, time_limit_s=0.3)
    )
    assert duration < 1
    assert sorted(record.ok for record in records) == [False, False, True, True, True]


def test_a_load_needs_concurrency_or_rate() -> None:
    with pytest.raises(ValueError, match="concurrency or a request rate"):
        Load()
    assert Load(None, 4.0).label == "rate 4/s"


def test_sse_events_split_frames_and_keep_partial_ones() -> None:
    buffer = bytearray(b'data: {"a":1}\n\ndata: [DONE]\n\ndata: {"b"')
    assert sse_events(buffer) == [b'{"a":1}', b"[DONE]"]
    assert buffer == bytearray(b'data: {"b"')


def test_openai_tokens_come_from_usage_not_frames() -> None:
    async def run() -> RequestRecord:
        backend = OpenAIBackend("http://unused/v1", "m", chat=True, max_connections=1)
        record = RequestRecord(sent_at=time.perf_counter())
        for chunk in (
            {"choices": [{"delta": {"role": "assistant"}}]},  # no text: not a token time
            {"choices": [{"delta": {"content": "Hello there"}}]},  # one frame, several tokens
            {"choices": [{"delta": {"content": "!"}}]},
            {"choices": [], "usage": {"prompt_tokens": 7, "completion_tokens": 4}},
        ):
            backend._on_event(json.dumps(chunk).encode(), record)
        backend._on_event(b"[DONE]", record)
        await backend.close()
        return record

    record = asyncio.run(run())
    assert len(record.chunk_times) == 2
    assert (record.input_tokens, record.output_tokens) == (7, 4)


def test_writers_produce_json_csv_markdown_and_plots(tmp_path: Path) -> None:
    records = [
        RequestRecord(
            sent_at=0.0, input_tokens=8, output_tokens=4, chunk_times=[0.1, 0.2], latency=0.4
        )
    ]
    runs = []
    for label in ("ours", "peer"):
        levels = [
            LevelResult(f"concurrency {c}", c, None, summarize(records, 1.0, None), records)
            for c in (1, 4)
        ]
        runs.append(RunResult(label, {"backend": "x"}, levels, {"load_average": [0.5, 0.4, 0.3]}))
    paths = write_all(runs, tmp_path, "result", "Test")
    assert {path.name for path in paths} == {
        "result.json", "result.csv", "result.md", "result-throughput.png", "result-latency.png",
    }  # fmt: skip
    rows = list(csv.DictReader((tmp_path / "result.csv").open()))
    assert [(row["label"], row["concurrency"]) for row in rows] == [
        ("ours", "1"), ("ours", "4"), ("peer", "1"), ("peer", "4"),
    ]  # fmt: skip
    assert rows[0]["output_tokens_per_s"] == "4.0"
    saved = json.loads((tmp_path / "result.json").read_text())
    assert saved[0]["levels"][0]["records"][0]["output_tokens"] == 4
    assert "| ours | concurrency 1 |" in (tmp_path / "result.md").read_text()
    assert (tmp_path / "result-throughput.png").read_bytes()[:4] == b"\x89PNG"


def test_rate_inf_sends_everything_at_once_or_up_to_the_cap() -> None:
    requests = WorkloadSpec(input_len=4, output_len=2).build(12)
    for load, most in ((Load(None, float("inf")), 12), (Load(5, float("inf")), 5)):
        backend = FakeBackend()
        progress = Progress(len(requests), "test", enabled=False)
        records, _ = asyncio.run(run_load(backend, requests, load, 0, progress))
        assert len(records) == 12 and backend.most_in_flight == most


def test_the_progress_bar_is_tqdm() -> None:
    import io

    stream = io.StringIO()
    progress = Progress(4, "level", enabled=True, stream=stream)
    for _ in range(4):
        progress.advance()
    progress.close()
    assert "level: 100%" in stream.getvalue() and "4/4" in stream.getvalue()


def test_plots_give_each_run_one_colour_and_a_log_axis_over_decades(tmp_path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from benchmarks import report

    def level(concurrency: int, ttft_s: float) -> LevelResult:
        record = RequestRecord(
            sent_at=0.0, input_tokens=8, output_tokens=4, chunk_times=[ttft_s], latency=ttft_s + 0.3
        )
        summary = summarize([record], 1.0, None)
        return LevelResult(f"concurrency {concurrency}", concurrency, None, summary, [record])

    runs = [
        RunResult("ours", {}, [level(1, 0.01), level(32, 2.0)]),  # TTFT spans 200x
        RunResult("peer", {}, [level(1, 0.02), level(32, 3.0)]),
    ]
    seen: list = []
    original = report._save

    def keep(figure, path):  # noqa: ANN001, ANN202
        seen.append(figure)
        figure.savefig(path)
        return path

    report._save = keep
    try:
        report.write_plots(runs, tmp_path, "x")
    finally:
        report._save = original
    ttft_axis = seen[1].axes[0]
    colours = {}
    for line in ttft_axis.get_lines():
        run_label = line.get_label().rsplit(" ", 1)[0]
        colours.setdefault(run_label, set()).add(line.get_color())
    assert all(len(found) == 1 for found in colours.values())  # p50 and p99: one colour
    assert len({next(iter(found)) for found in colours.values()}) == 2  # runs differ
    assert ttft_axis.get_yscale() == "log"
    assert seen[0].axes[1].get_yscale() == "linear"  # requests/s: 1 and 1, no decades
    for figure in seen:
        plt.close(figure)


def test_without_matplotlib_the_other_files_are_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    records = [RequestRecord(sent_at=0.0, output_tokens=2, chunk_times=[0.1], latency=0.2)]
    levels = [LevelResult("concurrency 1", 1, None, summarize(records, 1.0, None), records)]
    paths = write_all([RunResult("ours", {}, levels)], tmp_path, "r", "T")
    assert {path.name for path in paths} == {"r.json", "r.csv", "r.md"}
    assert "matplotlib is not installed" in capsys.readouterr().err


def test_each_load_of_a_run_sends_prompts_of_its_own(monkeypatch: pytest.MonkeyPatch) -> None:
    """A server's prefix cache keeps what an earlier load sent: a later load repeating those
    prompts would be prefilled from it, and measure the cache rather than the server."""
    from benchmarks import bench

    class Recording(FakeBackend):
        def __init__(self) -> None:
            super().__init__()
            self.prompts: list[str] = []

        async def send(self, request, record: RequestRecord) -> None:  # noqa: ANN001
            self.prompts.append(request.as_text())
            await super().send(request, record)

    backend = Recording()
    monkeypatch.setattr(bench, "make_backend", lambda config, model: backend)
    config = bench.BenchConfig(
        backend="openai-chat", url="http://unused", model="m",
        workload=WorkloadSpec(input_len=8, output_len=2),
        loads=(Load(2), Load(4)), num_prompts=6, warmup_requests=0, progress=False,
    )  # fmt: skip
    run = asyncio.run(bench.run_bench(config))
    assert [level.summary.completed for level in run.levels] == [6, 6]
    first, second = set(backend.prompts[:6]), set(backend.prompts[6:])
    assert len(first) == len(second) == 6 and not first & second
