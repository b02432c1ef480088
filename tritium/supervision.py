"""Is a running tritonserver still able to serve? What `tritium serve` watches besides exits.

Triton 2.51 does not notice that a Python-backend stub died (killed, out of memory)
until the next request arrives: it keeps answering ready, requests already in flight
wait forever, and new ones fail with "Stub process ... is not healthy". A server in that
state looks healthy from outside and serves nothing, so the launcher watches for it:

- the stubs in Triton's process group: fewer alive than once Triton was ready means a
  model instance is dead;
- Triton's own readiness (``/v2/health/ready``, strict: every model ready): unready
  for longer than a grace period means the server cannot recover by itself.

`TritonWatch.problem()` names what is wrong (or None); `tritium.serve` then restarts
Triton, within a budget of restarts, or exits non-zero for an orchestrator to act.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from tritium.process import ChildProcess, group_processes

PYTHON_BACKEND_STUB_PREFIX = "triton_python_b"  # /proc comm is cut at 15 characters


def live_stubs(triton: ChildProcess) -> list[int]:
    """Python-backend stubs of this Triton still alive (zombies do not count)."""
    members = group_processes(triton.process_group)
    return sorted(pid for pid, name in members.items() if name.startswith(PYTHON_BACKEND_STUB_PREFIX))


class TritonWatch:
    """Health of one started tritonserver; `arm()` once it is ready, then poll `problem()`."""

    def __init__(
        self,
        triton: ChildProcess,
        is_ready: Callable[[], bool],
        unready_grace_seconds: float,
        readiness_interval_seconds: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.triton = triton
        self.is_ready = is_ready
        self.unready_grace_seconds = unready_grace_seconds
        self.readiness_interval_seconds = readiness_interval_seconds
        self.clock = clock
        self.expected_stubs = 0
        self.unready_since: float | None = None
        self.next_readiness_check = 0.0

    def arm(self) -> None:
        """Remember how many stubs a healthy server has (one per Python model instance)."""
        self.expected_stubs = len(live_stubs(self.triton))
        self.unready_since = None

    def problem(self) -> str | None:
        """What is wrong with the server now, or None while it can serve."""
        if self.triton.exit_code() is not None:
            return None  # an exit is the launcher's own business (it stops everything)
        alive = len(live_stubs(self.triton))
        if alive < self.expected_stubs:
            return (
                f"a Python backend stub died ({alive} of {self.expected_stubs} alive):"
                " its model serves nothing until tritonserver restarts"
            )
        now = self.clock()
        if now < self.next_readiness_check:
            return None
        self.next_readiness_check = now + self.readiness_interval_seconds
        if self.is_ready():
            self.unready_since = None
            return None
        if self.unready_since is None:
            self.unready_since = now
        if now - self.unready_since >= self.unready_grace_seconds:
            return f"tritonserver was not ready for {now - self.unready_since:.0f} s"
        return None
