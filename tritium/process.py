"""Child processes that can be stopped without leaving anything behind.

Each child runs in its own session, hence its own process group: a Ctrl-C in the
terminal reaches only the launcher, which then stops the children in order, and the
whole group (tritonserver plus its Python backend stubs) can be signalled at once.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

# Loaded before any fork: the pre-exec hook must not load libraries in the child.
_LIBC = (
    ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True) if sys.platform == "linux" else None
)
_PR_SET_PDEATHSIG = 1


def _terminate_with_parent() -> None:
    """Runs in the child between fork and exec: ask the kernel for SIGTERM if the
    launcher dies (even by SIGKILL), so a crashed launcher leaves no orphan server.
    The signal follows the thread that forked, which is why children are started
    from the launcher's main thread."""
    if _LIBC is not None:
        _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


@dataclass
class ChildProcess:
    """A started child: its name for messages, the process, and where its output goes."""

    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path

    @property
    def process_group(self) -> int:
        # start_new_session makes the child its group's leader: group id == pid.
        return self.popen.pid

    def exit_code(self) -> int | None:
        return self.popen.poll()

    def log_tail(self, max_lines: int = 40) -> str:
        return tail_lines(self.log_path, max_lines)


def start_child(
    name: str,
    command: Sequence[str],
    log_path: Path,
    environment: Mapping[str, str] | None = None,
) -> ChildProcess:
    """Start ``command`` in a new session with stdout and stderr appended to ``log_path``."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log_file:
        popen = subprocess.Popen(
            list(command),
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env=None if environment is None else dict(environment),
            start_new_session=True,
            preexec_fn=_terminate_with_parent,
        )
    return ChildProcess(name=name, popen=popen, log_path=log_path)


def stop_child(child: ChildProcess, grace_seconds: float) -> int:
    """SIGTERM the child, SIGKILL its process group after ``grace_seconds``, and wait
    until no member of the group is left. Returns the child's exit code.

    SIGTERM goes to the child alone: tritonserver finalizes its Python backend stubs
    itself, and a stub that got the signal too could die before Triton asked it to
    unload its model, leaving Triton waiting for it until its exit timeout. The final
    SIGKILL sweep catches whatever is left, e.g. stubs of a tritonserver that crashed.
    """
    if child.popen.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            child.popen.send_signal(signal.SIGTERM)
        try:
            child.popen.wait(timeout=grace_seconds)
        except subprocess.TimeoutExpired:
            signal_group(child.process_group, signal.SIGKILL)
            child.popen.wait()
    signal_group(child.process_group, signal.SIGKILL)
    wait_until(lambda: not group_members(child.process_group), timeout_seconds=5.0)
    return child.popen.returncode


def signal_group(process_group: int, signal_number: int) -> None:
    # An empty group is already what we want.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process_group, signal_number)


def group_members(process_group: int) -> list[int]:
    """Live (non-zombie) processes in ``process_group``, read from /proc."""
    return sorted(group_processes(process_group))


def group_processes(process_group: int) -> dict[int, str]:
    """Live (non-zombie) processes in ``process_group`` -> their command names, from /proc."""
    members: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue  # exited while we looked
        # The command name (field 2) may contain spaces; fields after it are fixed.
        fields = stat[stat.rfind(")") + 2 :].split()
        state, group = fields[0], int(fields[2])
        if group == process_group and state not in ("Z", "X"):
            members[int(entry.name)] = stat[stat.find("(") + 1 : stat.rfind(")")]
    return members


def wait_until(
    predicate: Callable[[], bool],
    timeout_seconds: float,
    interval_seconds: float = 0.05,
    stop_event: threading.Event | None = None,
) -> bool:
    """Poll ``predicate`` until it holds (True), time runs out or ``stop_event`` is set (False)."""
    deadline = time.monotonic() + timeout_seconds
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline or (stop_event is not None and stop_event.is_set()):
            return False
        time.sleep(interval_seconds)


def tail_lines(path: Path, max_lines: int = 40, max_bytes: int = 64 * 1024) -> str:
    """The last ``max_lines`` lines of a log file, reading at most its last ``max_bytes``."""
    try:
        with open(path, "rb") as log_file:
            log_file.seek(0, os.SEEK_END)
            size = log_file.tell()
            log_file.seek(max(0, size - max_bytes))
            data = log_file.read()
    except OSError:
        return ""
    lines = data.decode("utf-8", errors="replace").splitlines()
    return "\n".join(lines[-max_lines:])


def describe_exit(exit_code: int) -> str:
    """'exit code 3' or 'signal SIGKILL' (Popen reports death by signal N as -N)."""
    if exit_code < 0:
        try:
            return f"signal {signal.Signals(-exit_code).name}"
        except ValueError:
            return f"signal {-exit_code}"
    return f"exit code {exit_code}"
