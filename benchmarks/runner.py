"""Load generation: a fixed concurrency (closed loop) or a Poisson request rate (open
loop), with warm-up and a progress bar."""

from __future__ import annotations

import asyncio
import random
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TextIO

from benchmarks.clients import Backend
from benchmarks.metrics import RequestRecord
from benchmarks.workloads import BenchRequest


@dataclass(frozen=True)
class Load:
    """How requests are sent: `concurrency` requests always in flight, or Poisson
    arrivals at `request_rate` per second (at most `concurrency` in flight when set)."""

    concurrency: int | None = None
    request_rate: float | None = None

    def __post_init__(self) -> None:
        if self.concurrency is None and self.request_rate is None:
            raise ValueError("a load needs a concurrency or a request rate")
        if self.concurrency is not None and self.concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, got {self.concurrency}")
        if self.request_rate is not None and self.request_rate <= 0:
            raise ValueError(f"request rate must be > 0, got {self.request_rate}")

    @property
    def label(self) -> str:
        if self.request_rate is None:
            return f"concurrency {self.concurrency}"
        cap = f", max concurrency {self.concurrency}" if self.concurrency else ""
        return f"rate {self.request_rate:g}/s{cap}"


class Progress:
    """A one-line progress bar on stderr, redrawn at most ten times a second."""

    def __init__(self, total: int, label: str, enabled: bool, stream: TextIO = sys.stderr) -> None:
        self.total, self.label, self.enabled, self.stream = total, label, enabled, stream
        self.done = 0
        self.started = time.perf_counter()
        self.drawn_at = 0.0

    def advance(self) -> None:
        self.done += 1
        now = time.perf_counter()
        if self.enabled and (now - self.drawn_at > 0.1 or self.done == self.total):
            self.drawn_at = now
            width = 30
            filled = width * self.done // max(self.total, 1)
            rate = self.done / max(now - self.started, 1e-9)
            bar = "#" * filled + "." * (width - filled)
            self.stream.write(f"\r{self.label}: [{bar}] {self.done}/{self.total} {rate:.1f} req/s")
            if self.done == self.total:
                self.stream.write("\n")
            self.stream.flush()


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
            if load.request_rate is None:
                await _closed_loop(backend, requests, load.concurrency or 1, records, progress)
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

    tasks = []
    for request in requests:
        tasks.append(asyncio.create_task(limited(request)))
        await asyncio.sleep(rng.expovariate(load.request_rate))  # Poisson arrivals
    await asyncio.gather(*tasks)


async def warm_up(
    backend: Backend, requests: Sequence[BenchRequest], concurrency: int
) -> list[RequestRecord]:
    """Send requests that are not measured (connections, caches, first-call allocations)."""
    records: list[RequestRecord] = []
    progress = Progress(len(requests), "warm-up", enabled=False)
    await _closed_loop(backend, requests, concurrency, records, progress)
    return records
