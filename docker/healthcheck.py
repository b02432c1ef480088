"""Container health check: `python3 healthcheck.py triton|adapter` exits 0 when ready.

Images have no curl; this uses the standard library only. Ports come from the same
variables the entrypoints read, with the same defaults.
"""

from __future__ import annotations

import os
import sys
import urllib.request

# what -> (port variable, default port, readiness path)
PROBES = {
    "triton": ("TRITIUM_HTTP_PORT", 8080, "/v2/health/ready"),
    "adapter": ("TRITIUM_PORT", 8000, "/health/ready"),
}


def ready_url(what: str, environ: dict[str, str] | os._Environ[str] = os.environ) -> str:
    variable, default_port, path = PROBES[what]
    return f"http://127.0.0.1:{environ.get(variable) or default_port}{path}"


def main(argv: list[str]) -> int:
    if len(argv) != 1 or argv[0] not in PROBES:
        print(f"usage: healthcheck.py {'|'.join(PROBES)}", file=sys.stderr)
        return 2
    url = ready_url(argv[0])
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return 0 if response.status == 200 else 1
    except OSError as error:  # refused, timeout, or an HTTP error status (not ready)
        print(f"{url}: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
