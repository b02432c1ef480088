"""Load generation: a fixed concurrency (closed loop) or a request rate (open loop: Poisson
arrivals, or gamma with `burstiness` as vLLM's benchmark does), with warm-up and tqdm's
progress bar."""

from __future__ import annotations

import asyncio
import math
import random
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TextIO

from tqdm import tqdm

from benchmarks.clients import Backend
from benchmarks.metrics import RequestRecord
from benchmarks.workloads import BenchRequest


@dataclass(frozen=True)
class Load:
    """How requests are sent: `concurrency` requests always in flight (closed loop), or
    arrivals at `request_rate` per second (at most `concurrency` in flight when set). A rate
    of inf sends everything at once, which with a concurrency is the closed loop again:
    what vLLM's `--request-rate inf --max-concurrency N` means."""

    concurrency: int | None = None
    request_rate: float | None = None
    # Gamma-distributed gaps with this shape; 1.0 = Poisson (exponential gaps), lower =
    # burstier, higher = more even (vLLM's --burstiness).
    burstiness: float = 1.0

    def __post_init__(self) -> None:
        if self.concurrency is None and self.request_rate is None:
            raise ValueError("a load needs a concurrency or a request rate")
        if self.concurrency is not None and self.concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, got {self.concurrency}")
        if self.request_rate is not None and self.request_rate <= 0:
            raise ValueError(f"request rate must be > 0, got {self.request_rate}")
        if self.burstiness <= 0:
            raise ValueError(f"burstiness must be > 0, got {self.burstiness}")

    @property
    def closed_loop(self) -> bool:
        return self.request_rate is None or math.isinf(self.request_rate)

    @property
    def label(self) -> str:
        if self.request_rate is None:
            return f"concurrency {self.concurrency}"
        cap = f", max concurrency {self.concurrency}" if self.concurrency else ""
        return f"rate {self.request_rate:g}/s{cap}"


class Progress:
    """tqdm's bar on stderr, one tick per finished request."""

    def __init__(self, total: int, label: str, enabled: bool, stream: TextIO = sys.stderr) -> None:
        self.bar = tqdm(total=total, desc=label, unit="req", disable=not enabled, file=stream)

    def advance(self) -> None:
        self.bar.update(1)

    def close(self) -> None:
        self.bar.close()


async def _one(
    backend: Backend, request: BenchRequest, records: list[RequestRecord], progress: Progress
) -> None:
    record = RequestRecord(sent_at=time.perf_counter())
    try:
        await backend.send(request, record)
    except Exception as error:  # a parsing bug or a server's odd answer: record, go on
        record.error = record.error or f"{type(error).__name__}: {error}"[:300]
        record.latency = record.latency or time.perf_counter() - record.sent_at
    records.append(record)
    progress.advance()


DEADLINE_ERROR = "not finished before the level's time limit"


async def run_load(
    backend: Backend,
    requests: Sequence[BenchRequest],
    load: Load,
    seed: int,
    progress: Progress,
    time_limit_s: float | None = None,
) -> tuple[list[RequestRecord], float]:
    """Send every request under ``load``; returns the records and the measured duration
    (first send to last completion). Past ``time_limit_s`` the requests still running are
    cancelled and recorded as failed, so a slow server bounds the run's length."""
    records: list[RequestRecord] = []
    started = time.perf_counter()
    try:
        async with asyncio.timeout(time_limit_s):
            if load.closed_loop:
                in_flight = load.concurrency or len(requests)  # rate inf, no cap: all at once
                await _closed_loop(backend, requests, in_flight, records, progress)
            else:
                await _open_loop(backend, requests, load, random.Random(seed), records, progress)
    except TimeoutError:
        unfinished = len(requests) - len(records)
        records += [RequestRecord(sent_at=started, error=DEADLINE_ERROR) for _ in range(unfinished)]
    return records, time.perf_counter() - started


async def _closed_loop(
    backend: Backend,
    requests: Sequence[BenchRequest],
    concurrency: int,
    records: list[RequestRecord],
    progress: Progress,
) -> None:
    pending = iter(requests)

    async def worker() -> None:
        for request in pending:  # the workers share one iterator: each takes the next
            await _one(backend, request, records, progress)

    await asyncio.gather(*(worker() for _ in range(min(concurrency, len(requests)))))


async def _open_loop(
    backend: Backend,
    requests: Sequence[BenchRequest],
    load: Load,
    rng: random.Random,
    records: list[RequestRecord],
    progress: Progress,
) -> None:
    assert load.request_rate is not None
    limit = asyncio.Semaphore(load.concurrency) if load.concurrency else None

    async def limited(request: BenchRequest) -> None:
        if limit is None:
            await _one(backend, request, records, progress)
            return
        async with limit:
            await _one(backend, request, records, progress)

    # Gamma gaps of mean 1 / rate; shape 1 is the exponential (Poisson arrivals).
    shape = load.burstiness
    scale = 1 / (load.request_rate * shape)
    tasks = []
    for request in requests:
        tasks.append(asyncio.create_task(limited(request)))
        await asyncio.sleep(rng.gammavariate(shape, scale))
    await asyncio.gather(*tasks)


async def warm_up(
    backend: Backend, requests: Sequence[BenchRequest], concurrency: int
) -> list[RequestRecord]:
    """Send requests that are not measured (connections, caches, first-call allocations)."""
    records: list[RequestRecord] = []
    progress = Progress(len(requests), "warm-up", enabled=False)
    await _closed_loop(backend, requests, concurrency, records, progress)
    return records
