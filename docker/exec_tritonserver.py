"""Replace this process with tritonserver, run the way `tritium serve` runs it.

The Triton image's entrypoint (entrypoint-triton.sh) ends here. Flags, the backend
directory and the environment come from `tritium.serve`, the code behind `tritium serve`;
the values come from the same TRITIUM_* variables that `tritium serve` reads for its
flags (`tritium serve --help` names them), through the same `adapter.settings`. Unset
variables keep `tritium serve`'s defaults. Extra arguments are passed on to tritonserver.

    TRITONSERVER                 tritonserver binary (else /opt/tritonserver, else the wheel's)
    TRITIUM_MODEL_REPOSITORY     --model-repository    (default: model_repository)
    TRITIUM_TRITON_HOST          --triton-host         (default: 127.0.0.1; the images set 0.0.0.0)
    TRITIUM_HTTP_PORT            --http-port           (default: 8080)
    TRITIUM_GRPC_PORT            --grpc-port           (default: 8001)
    TRITIUM_METRICS_PORT         --metrics-port        (default: 8002)
    TRITIUM_TRITON_LOG_VERBOSE   --triton-log-verbose  (default: 0)
    TRITIUM_TRITON_ARGS          --triton-arg          (words, as a shell splits them; before the arguments)
    TRITIUM_STRICT_MODELS        --strict-models       (default: false, the models that load serve)
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path

from adapter.settings import load
from tritium import tritonserver
from tritium.serve import triton_options
from tritium.serve_options import ServeOptions


def options_from_environment(
    environ: Mapping[str, str], extra_args: Sequence[str] = ()
) -> tritonserver.TritonServerOptions:
    """TritonServerOptions from the variables above; ValueError names a bad one."""
    options = load(ServeOptions, environ=environ)
    options = replace(options, triton_args=(*options.triton_args, *extra_args))
    # Unique per server: leftovers of a killed one can be found and removed.
    return triton_options(options, shm_prefix=f"tritium_{os.getpid()}_", environ=environ)


def main(argv: Sequence[str]) -> int:
    try:
        options = options_from_environment(os.environ, argv)
    except (ValueError, tritonserver.TritonServerNotFoundError) as error:
        print(f"exec_tritonserver: error: {error}", file=sys.stderr)
        return 2
    if not options.model_repository.is_dir():
        print(
            f"exec_tritonserver: error: model repository {options.model_repository} does not "
            f"exist; mount one, or set TRITIUM_PACKAGE_MODEL to package the default model",
            file=sys.stderr,
        )
        return 2
    command = tritonserver.build_command(options)
    environment = tritonserver.server_environment(options.executable)
    # exec keeps the pid: the liveness probe finds tritonserver (and its stubs) by it.
    pid_path = Path(os.environ.get("TRITIUM_TRITON_PID_FILE") or "/tmp/tritium-tritonserver.pid")
    try:
        pid_path.write_text(f"{os.getpid()}\n")
    except OSError as error:
        print(f"exec_tritonserver: cannot write {pid_path} ({error}); liveness cannot see stubs")
    print(f"# {tritonserver.format_command(command)}", flush=True)
    os.execve(command[0], command, environment)  # signals now go to tritonserver itself
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
