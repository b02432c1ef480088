"""Soak: mixed load for N minutes (chat and completions, streamed and not, 10% of the
clients hanging up early), reporting resident memory growth per minute of the adapter,
tritonserver and the Python-backend stub, stuck requests at the end, and whether the
model unloads cleanly when the stack stops.

    python -m tests.stress.soak [--minutes 10] [--clients 8] [--keep DIR]

With ``--keep DIR`` the stack runs in DIR and its logs (``DIR/logs``: serve.log,
tritonserver.log, adapter.log) stay there afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import time
from pathlib import Path

import httpx

from tests.stack import Stack, default_weights_dir, running_stack, scratch_dir
from tests.stress import load


async def client_loop(
    stack: Stack, seed: int, deadline: float, counts: dict[str, int], drop_fraction: float
) -> None:
    chooser = random.Random(seed)
    async with httpx.AsyncClient(timeout=120) as client:
        while time.monotonic() < deadline:
            stream = chooser.random() < 0.5
            drop = chooser.random() < drop_fraction
            body = load.chat_body(stack.model, max_tokens=chooser.randint(8, 48), stream=stream)
            path = "/chat/completions"
            if chooser.random() < 0.3:
                path = "/completions"
                body.pop("messages")
                body["prompt"] = "Once upon a time"
            try:
                if stream:
                    async with client.stream("POST", stack.base_url + path, json=body) as response:
                        status = response.status_code
                        async for line in response.aiter_lines():
                            if drop and line.startswith("data:"):
                                break  # hang up after the first event
                else:
                    response = await client.post(
                        stack.base_url + path, json=body, timeout=0.5 if drop else 120
                    )
                    status = response.status_code
                counts[str(status)] = counts.get(str(status), 0) + 1
            except httpx.TimeoutException:
                counts["dropped"] = counts.get("dropped", 0) + 1
            except httpx.TransportError:  # the stack is not answering: a failure, with logs below
                counts["unreachable"] = counts.get("unreachable", 0) + 1
                await asyncio.sleep(1.0)
            if drop and stream:
                counts["dropped"] = counts.get("dropped", 0) + 1


def processes(stack: Stack) -> dict[str, int]:
    return {
        "adapter": load.children_named(stack.serve_pid, "python")[0],
        "tritonserver": load.children_named(stack.serve_pid, "tritonserver")[0],
        "stub": load.children_named(stack.serve_pid, "triton_python")[0],
    }


async def soak(
    stack: Stack, minutes: float, clients: int, drop_fraction: float
) -> dict[str, int]:
    deadline = time.monotonic() + minutes * 60
    counts: dict[str, int] = {}
    pids = processes(stack)
    print("minute " + " ".join(f"{name + ' MiB':>16}" for name in pids), flush=True)

    async def sample() -> None:
        minute = 0
        while True:
            sizes = [load.resident_kib(pid) / 1024 for pid in pids.values()]
            print(f"{minute:>6} " + " ".join(f"{size:>16.1f}" for size in sizes), flush=True)
            if time.monotonic() >= deadline:
                return
            minute += 1
            await asyncio.sleep(min(60.0, max(0.0, deadline - time.monotonic())))

    await asyncio.gather(
        sample(),
        *(client_loop(stack, seed, deadline, counts, drop_fraction) for seed in range(clients)),
    )
    return counts


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--drop-fraction", type=float, default=0.10, help="clients that hang up")
    parser.add_argument(
        "--keep", type=Path, metavar="DIR", help="run the stack in DIR and keep its logs there"
    )
    args = parser.parse_args()
    with scratch_dir("tritium-soak-", keep=args.keep) as work:
        with running_stack(default_weights_dir(), work) as stack:
            assert load.completes_normally(stack)
            counts = asyncio.run(soak(stack, args.minutes, args.clients, args.drop_fraction))
            print(f"answers: {dict(sorted(counts.items()))}")
            try:
                idle_after = load.wait_engine_idle(stack, 0.0, 10)
                stuck = load.engine_busy(stack)
            except httpx.TransportError as error:  # Triton is gone too: fail, with the logs
                counts["unreachable"] = counts.get("unreachable", 0) + 1
                idle_after, stuck = None, float("nan")
                print(f"Triton's metrics did not answer: {error}")
            print(f"stuck requests after the load: {stuck:g} (idle after {idle_after} s)")
            log_dir = stack.log_path.parent
        triton_log = (log_dir / "tritonserver.log").read_text(errors="replace")
        unloaded = "successfully unloaded" in triton_log
        serve_log = stack.log_path.read_text(errors="replace")
        print(f"model unloaded cleanly at stop: {unloaded}; serve said: {serve_log.splitlines()[-1]}")
        if not unloaded:
            print("tritonserver log tail:\n" + "\n".join(triton_log.splitlines()[-4:]))
            notable = [line for line in triton_log.splitlines() if line[:2] in ("W1", "E1")]
            print("warnings and errors:\n" + "\n".join(line[:300] for line in notable[:12]))
        server_errors = sum(count for status, count in counts.items() if status.startswith("5"))
        unreachable = counts.get("unreachable", 0)
        failed = stuck != 0 or not unloaded or server_errors != 0 or unreachable != 0
        if unreachable:
            for name in ("serve.log", "adapter.log"):
                lines = (log_dir / name).read_text(errors="replace").splitlines()
                print(f"{name} tail:\n" + "\n".join(line[:300] for line in lines[-8:]))
    print("FAIL" if failed else "PASS")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
