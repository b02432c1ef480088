"""Container health checks: `python3 healthcheck.py triton|triton-live|adapter` exits 0 when well.

- `triton`: ready (`/v2/health/ready`: every model loaded); the readiness probe.
- `triton-live`: the liveness probe. Live (`/v2/health/live`), and every Python-backend
  stub that Triton's ready models need is alive. Triton 2.51 does not notice a dead stub
  (killed, out of memory): it keeps reporting live and ready while that model serves
  nothing, so the probe counts the stubs in tritonserver's process group (found through
  the pid file exec_tritonserver.py writes) against the instances of the ready Python
  models (their configs' `instance_group` counts). `tritium serve` watches the same way
  (tritium/supervision.py).
- `adapter`: ready (`/health/ready`).

Images have no curl; HTTP uses the standard library only. Ports come from the same
variables the entrypoints read, with the same defaults.
"""

from __future__ import annotations

import json
import os
import sys
import urllib.request
from collections.abc import Mapping
from pathlib import Path

# what -> (port variable, default port, readiness path)
PROBES = {
    "triton": ("TRITIUM_HTTP_PORT", 8080, "/v2/health/ready"),
    "triton-live": ("TRITIUM_HTTP_PORT", 8080, "/v2/health/live"),
    "adapter": ("TRITIUM_PORT", 8000, "/health/ready"),
}
# Where exec_tritonserver.py writes tritonserver's pid (its own, kept across exec).
PID_FILE_VAR = "TRITIUM_TRITON_PID_FILE"
DEFAULT_PID_FILE = "/tmp/tritium-tritonserver.pid"
# /proc comm of the Python backend stub (cut at 15 characters).
STUB_NAME_PREFIX = "triton_python_b"


def ready_url(what: str, environ: Mapping[str, str] = os.environ) -> str:
    variable, default_port, path = PROBES[what]
    return f"http://127.0.0.1:{environ.get(variable) or default_port}{path}"


def pid_file(environ: Mapping[str, str] = os.environ) -> Path:
    return Path(environ.get(PID_FILE_VAR) or DEFAULT_PID_FILE)


def _get_json(url: str, data: bytes | None = None) -> object:
    with urllib.request.urlopen(url, data=data, timeout=5) as response:
        return json.load(response)


def expected_stubs(base_url: str) -> int:
    """Python-backend instances of the ready models: one stub each."""
    index = _get_json(f"{base_url}/v2/repository/index", data=b"{}")
    total = 0
    for entry in index if isinstance(index, list) else []:
        if entry.get("state") != "READY":
            continue
        config = _get_json(f"{base_url}/v2/models/{entry['name']}/config")
        assert isinstance(config, dict)
        if config.get("backend") == "python":
            groups = config.get("instance_group") or [{"count": 1}]
            total += sum(int(group.get("count", 1)) for group in groups)
    return total


def live_stubs(triton_pid: int) -> int:
    """Stubs alive (not zombies) in tritonserver's process group, from /proc."""
    group = os.getpgid(triton_pid)
    alive = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue  # exited while we looked
        name = stat[stat.find("(") + 1 : stat.rfind(")")]
        fields = stat[stat.rfind(")") + 2 :].split()
        if name.startswith(STUB_NAME_PREFIX) and int(fields[2]) == group and fields[0] not in "ZX":
            alive += 1
    return alive


def stub_problem(environ: Mapping[str, str] = os.environ) -> str | None:
    """Why the stubs say Triton cannot serve, or None."""
    base_url = ready_url("triton-live", environ).rsplit("/v2/", 1)[0]
    try:
        triton_pid = int(pid_file(environ).read_text().strip())
        alive = live_stubs(triton_pid)
    except (OSError, ValueError) as error:
        return f"cannot find tritonserver's process ({pid_file(environ)}: {error})"
    expected = expected_stubs(base_url)
    if alive < expected:
        return (
            f"a Python backend stub died ({alive} of {expected} alive): "
            "its model serves nothing until tritonserver restarts"
        )
    return None


def main(argv: list[str]) -> int:
    if len(argv) != 1 or argv[0] not in PROBES:
        print(f"usage: healthcheck.py {'|'.join(PROBES)}", file=sys.stderr)
        return 2
    url = ready_url(argv[0])
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            if response.status != 200:
                return 1
        problem = stub_problem() if argv[0] == "triton-live" else None
    except OSError as error:  # refused, timeout, or an HTTP error status (not ready)
        print(f"{url}: {error}", file=sys.stderr)
        return 1
    if problem is not None:
        print(f"healthcheck: {problem}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
