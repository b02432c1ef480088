"""Load helpers shared by the stress scripts and tests/reliability: streams dropped at a
chosen point, engine idleness, resident memory. Every loop is bounded in count and time."""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from tests.stack import Stack

ENGINE_BUSY_METRICS = ("tritium_requests_running", "tritium_requests_waiting")


def chat_body(model: str, max_tokens: int = 64, stream: bool = False, **fields: object) -> dict:
    return {
        "model": model,
        "messages": [{"role": "user", "content": "Tell me a long story about the sea."}],
        "max_tokens": max_tokens,
        "ignore_eos": True,
        "stream": stream,
        **fields,
    }


@dataclass
class StormResult:
    """What a batch of dropped streams saw."""

    statuses: dict[int, int] = field(default_factory=dict)  # HTTP status -> count
    dropped: int = 0  # streams the client closed on purpose
    errors: list[str] = field(default_factory=list)  # transport errors (not drops)
    last_drop_at: float = 0.0  # time.monotonic() of the last drop


async def drop_stream(
    client: httpx.AsyncClient, url: str, body: dict, lines_before_drop: int, result: StormResult
) -> None:
    """Open a stream, read `lines_before_drop` SSE lines, then close the connection."""
    try:
        async with client.stream("POST", url, json=body) as response:
            result.statuses[response.status_code] = result.statuses.get(response.status_code, 0) + 1
            if response.status_code != 200:
                await response.aread()
                return
            seen = 0
            async for line in response.aiter_lines():
                if line.startswith("data:"):
                    seen += 1
                if seen >= lines_before_drop:
                    break
        result.dropped += 1
        result.last_drop_at = time.monotonic()
    except httpx.HTTPError as error:
        result.errors.append(f"{type(error).__name__}: {error}")


async def disconnect_storm(
    stack: Stack, num_streams: int, max_lines_before_drop: int, seed: int = 0, max_tokens: int = 256
) -> StormResult:
    """`num_streams` concurrent chat streams, each dropped after 1..max lines (seeded)."""
    chooser = random.Random(seed)
    result = StormResult()
    limits = httpx.Limits(max_connections=num_streams + 8, max_keepalive_connections=0)
    timeout = httpx.Timeout(connect=30, read=300, write=30, pool=60)
    async with httpx.AsyncClient(limits=limits, timeout=timeout) as client:
        url = stack.base_url + "/chat/completions"
        body = chat_body(stack.model, max_tokens=max_tokens, stream=True)
        await asyncio.gather(
            *(
                drop_stream(client, url, body, chooser.randint(1, max_lines_before_drop), result)
                for _ in range(num_streams)
            )
        )
    return result


async def time_out_requests(stack: Stack, num_requests: int, timeout_s: float) -> int:
    """Non-streaming requests whose client gives up after `timeout_s`; returns how many did."""
    limits = httpx.Limits(max_connections=num_requests + 8, max_keepalive_connections=0)
    async with httpx.AsyncClient(limits=limits, timeout=timeout_s) as client:

        async def one() -> bool:
            try:
                await client.post(
                    stack.base_url + "/chat/completions", json=chat_body(stack.model, 1000)
                )
            except httpx.TimeoutException:
                return True
            return False

        return sum(await asyncio.gather(*(one() for _ in range(num_requests))))


def engine_busy(stack: Stack) -> float:
    return sum(stack.metric(name) for name in ENGINE_BUSY_METRICS)


def wait_engine_idle(stack: Stack, kv_baseline: float, timeout_s: float) -> float | None:
    """Seconds until no request runs or waits and the KV blocks are back to `kv_baseline`;
    None if that did not happen within `timeout_s`."""
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        if engine_busy(stack) == 0 and stack.metric("tritium_kv_blocks_used") <= kv_baseline:
            return time.monotonic() - started
        time.sleep(0.05)
    return None


def completes_normally(stack: Stack, max_tokens: int = 8) -> bool:
    body = chat_body(stack.model, max_tokens=max_tokens)
    response = httpx.post(stack.base_url + "/chat/completions", json=body, timeout=120)
    if response.status_code != 200:
        return False
    choice = response.json()["choices"][0]
    return choice["finish_reason"] == "length" and bool(choice["message"]["content"])


def resident_kib(pid: int) -> int:
    """VmRSS of a process, KiB (0 if it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def children_named(parent_pid: int, name: str) -> list[int]:
    """Descendants of `parent_pid` whose command name starts with `name` (from /proc)."""
    parents: dict[int, int] = {}
    names: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        pid = int(entry.name)
        names[pid] = stat[stat.find("(") + 1 : stat.rfind(")")]
        parents[pid] = int(stat[stat.rfind(")") + 2 :].split()[1])

    def descends(pid: int) -> bool:
        for _ in range(64):  # bounded walk up the tree
            pid = parents.get(pid, 0)
            if pid == parent_pid:
                return True
            if pid <= 1:
                return False
        return False

    return sorted(pid for pid, command in names.items() if command.startswith(name) and descends(pid))
