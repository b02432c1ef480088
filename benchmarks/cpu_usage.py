"""Where the CPU goes during a benchmark: CPU seconds per process (from /proc), for the
server's process tree and the benchmark client itself.

On a 2-core machine the client, the adapter, tritonserver and the model share the
cores, so "who used how many core-seconds" is the profile that explains a throughput
ceiling. Linux only; elsewhere the meter reports nothing.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100

# (substring of the command line, role); the first match names the process.
ROLES = (
    ("triton_python_backend_stub", "model (Python backend stub)"),
    ("tritonserver", "tritonserver"),
    ("-m adapter", "adapter"),
    ("llama_cpp.server", "llama-cpp-python server"),
    ("tritium serve", "launcher"),
)


def _stat_fields(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name is in parentheses and may hold spaces: split after the last ')'.
    return text[text.rindex(")") + 2 :].split()


def descendants(root: int) -> list[int]:
    """``root`` and every process below it."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            fields = _stat_fields(int(entry.name))
            if fields is not None:
                children.setdefault(int(fields[1]), []).append(int(entry.name))
    found, stack = [], [root]
    while stack:
        pid = stack.pop()
        found.append(pid)
        stack.extend(children.get(pid, []))
    return found


def role(pid: int) -> str:
    if pid == os.getpid():
        return "bench client"
    try:
        command = (
            Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        )
    except OSError:
        return "gone"
    for needle, name in ROLES:
        if needle in command:
            return name
    return command.split(" ", 1)[0].rsplit("/", 1)[-1] or str(pid)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of one process (its threads included)."""
    fields = _stat_fields(pid)
    if fields is None:
        return 0.0
    # Fields 14 and 15 of /proc/PID/stat (utime, stime), counted after the command name.
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def machine_busy_seconds() -> float:
    """Non-idle CPU time of the whole machine (every core, every process) from /proc/stat:
    compared with the processes measured, it shows how busy the rest of the machine was."""
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    except OSError:
        return 0.0
    ticks = [int(value) for value in fields[:8]]
    idle = ticks[3] + ticks[4]  # idle + iowait
    return (sum(ticks) - idle) / CLOCK_TICKS


@dataclass
class CpuMeter:
    """CPU seconds per role between start() and stop(), for ``roots``' process trees and
    this process."""

    roots: list[int]
    started_at: float = 0.0
    before: dict[int, float] = field(default_factory=dict)
    machine_before: float = 0.0

    def _pids(self) -> list[int]:
        pids = {os.getpid()}
        for root in self.roots:
            pids.update(descendants(root))
        return sorted(pids)

    def start(self) -> None:
        self.started_at = time.perf_counter()
        self.before = {pid: cpu_seconds(pid) for pid in self._pids()}
        self.machine_before = machine_busy_seconds()

    def stop(self) -> dict[str, float]:
        """Core-seconds per role, plus "whole machine" (every process, ours included),
        "wall_s" and "cores_available" for scale."""
        wall = time.perf_counter() - self.started_at
        machine = machine_busy_seconds() - self.machine_before
        usage: dict[str, float] = {}
        for pid in self._pids():
            used = cpu_seconds(pid) - self.before.get(pid, 0.0)
            name = role(pid)
            usage[name] = round(usage.get(name, 0.0) + used, 2)
        usage["whole machine"] = round(machine, 2)
        usage["wall_s"] = round(wall, 2)
        usage["cores_available"] = float(os.cpu_count() or 1)
        return usage
