"""Replace this process with tritonserver, run the way `tritium serve` runs it.

The Triton image's entrypoint (entrypoint-triton.sh) ends here. Flags, the backend
directory and the environment come from `tritium.tritonserver`, the code behind
`tritium serve`; only the values below come from environment variables, each named
after the `tritium serve` flag it mirrors. Unset variables keep `tritium serve`'s
defaults. Extra arguments are passed on to tritonserver.

    TRITONSERVER                 tritonserver binary (else /opt/tritonserver, else the wheel's)
    TRITIUM_MODEL_REPOSITORY     --model-repository    (default: model_repository)
    TRITIUM_TRITON_HOST          --triton-host         (default: 127.0.0.1; the images set 0.0.0.0)
    TRITIUM_HTTP_PORT            --http-port           (default: 8080)
    TRITIUM_GRPC_PORT            --grpc-port           (default: 8001)
    TRITIUM_METRICS_PORT         --metrics-port        (default: 8002)
    TRITIUM_TRITON_LOG_VERBOSE   --triton-log-verbose  (default: 0)
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import fields
from pathlib import Path

from tritium import tritonserver
from tritium.cli import DEFAULT_MODEL_REPOSITORY

# environment variable -> TritonServerOptions field (its `tritium serve` flag in the doc above)
ENVIRONMENT = {
    "TRITIUM_TRITON_HOST": "host",
    "TRITIUM_HTTP_PORT": "http_port",
    "TRITIUM_GRPC_PORT": "grpc_port",
    "TRITIUM_METRICS_PORT": "metrics_port",
    "TRITIUM_TRITON_LOG_VERBOSE": "log_verbose",
}
MODEL_REPOSITORY_VAR = "TRITIUM_MODEL_REPOSITORY"


def options_from_environment(
    environ: Mapping[str, str], extra_args: Sequence[str] = ()
) -> tritonserver.TritonServerOptions:
    """TritonServerOptions from the variables above; ValueError names a bad one."""
    types = {field.name: field.type for field in fields(tritonserver.TritonServerOptions)}
    overrides: dict[str, object] = {}
    for variable, name in ENVIRONMENT.items():
        text = environ.get(variable, "").strip()
        if not text:
            continue
        if types[name] in (int, "int"):
            try:
                overrides[name] = int(text)
            except ValueError:
                raise ValueError(f"{variable}: expected an integer, got {text!r}") from None
        else:
            overrides[name] = text
    repository = environ.get(MODEL_REPOSITORY_VAR) or DEFAULT_MODEL_REPOSITORY
    executable = tritonserver.find_tritonserver(None, environ)
    return tritonserver.TritonServerOptions(
        executable=executable,
        model_repository=Path(repository).expanduser().resolve(),
        backend_directory=tritonserver.prepare_backend_dir(executable),
        # Unique per server: leftovers of a killed one can be found and removed.
        shm_region_prefix=f"tritium_{os.getpid()}_",
        extra_args=tuple(extra_args),
        **overrides,  # type: ignore[arg-type]
    )


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
    print(f"# {tritonserver.format_command(command)}", flush=True)
    os.execve(command[0], command, environment)  # signals now go to tritonserver itself
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
