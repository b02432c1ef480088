"""What `tritium serve` runs, decided from its flags before anything starts."""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import adapter.cli
from tritium import tritonserver

API_KEYS_ENV_VAR = "TRITIUM_API_KEYS"


@dataclass(frozen=True)
class ServeOptions:
    """Everything `tritium serve` needs, built once from the command line."""

    model_repository: Path
    tritonserver: str | None = None
    triton_host: str = "127.0.0.1"
    http_port: int = 8080
    grpc_port: int = 8001
    metrics_port: int = 8002
    triton_log_verbose: int = 0
    triton_args: tuple[str, ...] = ()
    # The adapter (OpenAI API) binds here.
    host: str = "127.0.0.1"
    port: int = 8000
    # Handed to the adapter through TRITIUM_API_KEYS, not argv, which `ps` shows; kept
    # out of repr so that printing or logging the options cannot leak them.
    api_keys: tuple[str, ...] = field(default=(), repr=False)
    # More Triton gRPC endpoints for the adapter, after the one started here.
    extra_triton_urls: tuple[str, ...] = ()
    # The adapter's other flags as given to `tritium serve` (--cors-origin, --max-n, ...).
    adapter_flags: tuple[str, ...] = ()
    log_dir: Path | None = None
    startup_timeout_seconds: float = 300.0
    # Time each child gets between SIGTERM and SIGKILL; Triton is told to finish
    # in-flight requests a little sooner (see triton_exit_timeout_seconds).
    stop_grace_seconds: float = 40.0
    # Restarts of a tritonserver that exited or cannot serve (a dead Python-backend stub,
    # unready past `unready_grace_seconds`); one more failure and serve exits non-zero.
    max_triton_restarts: int = 3
    unready_grace_seconds: float = 10.0
    # `python -m <adapter_module>`; tests put a stand-in here.
    adapter_module: str = "adapter"

    def __post_init__(self) -> None:
        ports = {
            "--http-port": self.http_port,
            "--grpc-port": self.grpc_port,
            "--metrics-port": self.metrics_port,
            "--port": self.port,
        }
        for flag, port in ports.items():
            if not 0 < port < 65536:
                raise ValueError(f"{flag} must be between 1 and 65535, got {port}")
        if len(set(ports.values())) != len(ports):
            raise ValueError(f"ports must differ, got {ports}")
        if self.max_triton_restarts < 0:
            raise ValueError(f"--max-triton-restarts must be >= 0, got {self.max_triton_restarts}")
        if self.unready_grace_seconds <= 0:
            raise ValueError(f"--unready-grace must be positive, got {self.unready_grace_seconds}")
        if self.startup_timeout_seconds <= 0:
            raise ValueError(
                f"--startup-timeout must be positive, got {self.startup_timeout_seconds}"
            )

    @property
    def triton_exit_timeout_seconds(self) -> int:
        return max(1, int(self.stop_grace_seconds) - 10)

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> ServeOptions:
        return cls(
            model_repository=Path(args.model_repository).expanduser().resolve(),
            tritonserver=args.tritonserver,
            triton_host=args.triton_host,
            http_port=args.http_port,
            grpc_port=args.grpc_port,
            metrics_port=args.metrics_port,
            triton_log_verbose=args.triton_log_verbose,
            triton_args=tuple(args.triton_arg),
            host=args.host,
            port=args.port,
            api_keys=tuple(args.api_key or ()),
            extra_triton_urls=tuple(args.triton_url or ()),
            adapter_flags=forwarded_adapter_flags(args),
            log_dir=Path(args.log_dir).expanduser() if args.log_dir else None,
            startup_timeout_seconds=args.startup_timeout,
            max_triton_restarts=args.max_triton_restarts,
            unready_grace_seconds=args.unready_grace,
        )


def default_log_dir() -> Path:
    state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return Path(state) / "tritium" / "logs" / f"{stamp}-{os.getpid()}"


def adapter_flag_names() -> list[str]:
    """Destinations of the flags `adapter.cli` defines (without --host/--port, which
    `tritium serve` owns). Read from a scratch parser so that flags the adapter adds
    later are forwarded without changes here."""
    scratch = argparse.ArgumentParser(add_help=False)
    adapter.cli.add_arguments(scratch, bind=False)
    return list(vars(scratch.parse_args([])))


def forwarded_adapter_flags(args: argparse.Namespace) -> tuple[str, ...]:
    """The adapter flags given to `tritium serve`, as argv for `python -m adapter`.
    API keys and Triton URLs are left out: run() passes those itself."""
    flags: list[str] = []
    for name in adapter_flag_names():
        value = getattr(args, name, None)
        if name in ("api_key", "triton_url") or value is None:
            continue
        for item in value if isinstance(value, list) else [value]:
            flags += [f"--{name.replace('_', '-')}", str(item)]
    return tuple(flags)


def adapter_command(options: ServeOptions) -> list[str]:
    local_triton = f"{tritonserver.connect_host(options.triton_host)}:{options.grpc_port}"
    command = [sys.executable, "-m", options.adapter_module]
    command += ["--host", options.host, "--port", str(options.port)]
    for triton_url in (local_triton, *options.extra_triton_urls):
        command += ["--triton-url", triton_url]
    return command + list(options.adapter_flags)


def adapter_environment(options: ServeOptions) -> dict[str, str]:
    # Unbuffered, so a crash leaves its last words in the log we show.
    environment = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if options.api_keys:
        environment[API_KEYS_ENV_VAR] = ",".join(options.api_keys)
    return environment


def example_api_key(options: ServeOptions) -> str | None:
    """The key for the example request: one given as a flag (already on the user's
    screen), else a placeholder when keys come from the environment, which logs
    should not repeat; None when no key is required."""
    if options.api_keys:
        return options.api_keys[0]
    if os.environ.get(API_KEYS_ENV_VAR, "").strip(","):
        return f"<a key from ${API_KEYS_ENV_VAR}>"
    return None
