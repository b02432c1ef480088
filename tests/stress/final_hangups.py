"""Hang-ups as the final response comes: does any reach Triton as a gRPC cancellation,
and does the model still unload?

The null model streams 2 tokens, one per response, so the final response follows the
first event by a fraction of a millisecond; each client hangs up right after the first
event. The stack runs with Triton's verbose log, whose "Cancellation notification
received" lines count the calls Triton saw cancelled (why those must be none:
adapter/triton_call.py).

    python -m tests.stress.final_hangups [--requests 400] [--concurrency 16] [--runs 3]
"""

from __future__ import annotations

import argparse
import asyncio
import time
from pathlib import Path

import httpx

from benchmarks.null_model import write_null_repository
from benchmarks.stack import tritium_stack
from tests.stack import scratch_dir

MODEL = "null-1"


async def hang_up_after_first_event(url: str, count: int, concurrency: int) -> int:
    """`count` streamed 2-token completions, each dropped after its first event;
    returns how many were answered 200."""
    body = {"model": MODEL, "prompt": "a", "max_tokens": 2, "stream": True}
    gate = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(timeout=30) as client:

        async def one() -> int:
            async with gate, client.stream("POST", url, json=body) as response:
                async for line in response.aiter_lines():
                    if line.startswith("data:"):
                        break
                return response.status_code

        statuses = await asyncio.gather(*(one() for _ in range(count)))
    return sum(status == 200 for status in statuses)


def one_run(work: Path, requests: int, concurrency: int) -> tuple[int, int, bool, float]:
    """(answered 200, cancellations Triton saw, model unloaded at stop, seconds to stop)."""
    repository = write_null_repository(work / "repository", {MODEL: 1})
    flags = ("--triton-log-verbose", "1")
    with tritium_stack(repository, work / "logs", startup_timeout_s=120, serve_flags=flags) as stack:
        answered = asyncio.run(
            hang_up_after_first_event(f"{stack.openai_url}/completions", requests, concurrency)
        )
        stopping = time.monotonic()
    stop_s = time.monotonic() - stopping
    log = (work / "logs" / "tritonserver.log").read_text(errors="replace")
    cancellations = log.count("Cancellation notification received")
    return answered, cancellations, "successfully unloaded" in log, stop_s


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    failed = False
    for run in range(1, args.runs + 1):
        with scratch_dir("tritium-hangups-") as work:
            answered, cancellations, unloaded, stop_s = one_run(
                work, args.requests, args.concurrency
            )
        print(
            f"run {run}: {answered} of {args.requests} answered 200, {cancellations} calls"
            f" cancelled (Triton's log), model unloaded at stop: {unloaded} ({stop_s:.1f} s)",
            flush=True,
        )
        failed |= answered != args.requests or cancellations != 0 or not unloaded
    print("FAIL" if failed else "PASS")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
