"""What `tritium serve` runs, decided from its flags and TRITIUM_* variables before anything starts.

Every flag of `tritium serve` also reads a variable (`--port` / `TRITIUM_PORT`, ...;
`--help` names each), through `adapter.settings`, the mechanism the adapter uses for
its own flags: defaults < variables < flags.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import adapter.cli
from adapter.settings import ConfigError, load, with_env
from engine.config import PARAMETER_HELP
from tritium import tritonserver

API_KEYS_ENV_VAR = "TRITIUM_API_KEYS"
DEFAULT_MODEL_REPOSITORY = "model_repository"


@dataclass(frozen=True)
class ServeOptions:
    """Everything `tritium serve` needs, built once from the command line and the environment."""

    # What to serve: a Hugging Face model directory, a .gguf file or `default`, packaged
    # into a repository of its own in the cache (tritium.model_cache); or else...
    model: str | None = None
    # ...a Triton model repository served as it is (default ./model_repository).
    model_repository: Path | None = None
    # The OpenAI model id of `model` (default: from its file or directory name).
    served_model_name: str | None = None
    # config.pbtxt parameters for `model` (engine.config's table), as given.
    engine_parameters: tuple[tuple[str, str], ...] = field(
        default=(),
        metadata={"env": None},  # read by `EngineParameters` one by one
    )
    tritonserver: str | None = None
    triton_host: str = "127.0.0.1"
    http_port: int = 8080
    grpc_port: int = 8001
    metrics_port: int = 8002
    triton_log_verbose: int = 0
    triton_args: tuple[str, ...] = field(default=(), metadata={"shell_words": True})
    # The adapter (OpenAI API) binds here.
    host: str = "127.0.0.1"
    port: int = 8000
    # Handed to the adapter through TRITIUM_API_KEYS, not argv, which `ps` shows; kept
    # out of repr so that printing or logging the options cannot leak them.
    # TRITIUM_API_KEYS is read by the adapter itself (it inherits the environment), so
    # that keys from it are never printed in the banner's example.
    api_keys: tuple[str, ...] = field(default=(), repr=False, metadata={"env": None})
    # More Triton gRPC endpoints for the adapter, after the one started here.
    extra_triton_urls: tuple[str, ...] = field(default=(), metadata={"env": "TRITIUM_TRITON_URLS"})
    # The adapter's other flags as given to `tritium serve` (--cors-origin, --max-n, ...);
    # their variables reach the adapter through the environment it inherits.
    adapter_flags: tuple[str, ...] = field(default=(), metadata={"env": None})
    log_dir: Path | None = None
    # A model's first start on CPU compiles its decode step (minutes on 2 cores).
    startup_timeout_seconds: float = field(
        default=600.0, metadata={"env": "TRITIUM_STARTUP_TIMEOUT"}
    )
    # Time each child gets between SIGTERM and SIGKILL; Triton is told to finish
    # in-flight requests a little sooner (see triton_exit_timeout_seconds).
    stop_grace_seconds: float = field(default=40.0, metadata={"env": None})
    # Restarts of a tritonserver that exited or cannot serve (a dead Python-backend stub,
    # unready past `unready_grace_seconds`); one more failure and serve exits non-zero.
    max_triton_restarts: int = 3
    unready_grace_seconds: float = field(default=10.0, metadata={"env": "TRITIUM_UNREADY_GRACE"})
    # False: serve the models that load, name the ones that do not. True: any model that
    # fails to load stops serve (and the Triton image's tritonserver) with its error.
    strict_models: bool = False
    # `python -m <adapter_module>`; tests put a stand-in here.
    adapter_module: str = field(default="adapter", metadata={"env": None})

    def __post_init__(self) -> None:
        if self.model_repository is not None:
            repository = Path(self.model_repository).expanduser().resolve()
            object.__setattr__(self, "model_repository", repository)
        elif self.model is None:
            repository = Path(DEFAULT_MODEL_REPOSITORY).resolve()
            object.__setattr__(self, "model_repository", repository)
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
    def from_args(
        cls, args: argparse.Namespace, environ: Mapping[str, str] | None = None
    ) -> ServeOptions:
        """Defaults, then TRITIUM_* variables of `environ` (default: the process's), then
        the flags that were given. ValueError names a bad value."""
        flags = {
            "model": args.model,
            "model_repository": args.model_repository,
            "served_model_name": args.served_model_name,
            "tritonserver": args.tritonserver,
            "triton_host": args.triton_host,
            "http_port": args.http_port,
            "grpc_port": args.grpc_port,
            "metrics_port": args.metrics_port,
            "triton_log_verbose": args.triton_log_verbose,
            "triton_args": args.triton_arg,
            "host": args.host,
            "port": args.port,
            "extra_triton_urls": args.triton_url,
            "log_dir": args.log_dir,
            "startup_timeout_seconds": args.startup_timeout,
            "max_triton_restarts": args.max_triton_restarts,
            "unready_grace_seconds": args.unready_grace,
            "strict_models": args.strict_models,
        }
        engine_flags = {name: _as_text(getattr(args, name)) for name in PARAMETER_HELP}
        engine = load(EngineParameters, engine_flags, environ)
        given = tuple((name, value) for name, value in vars(engine).items() if value is not None)
        options = load(
            cls,
            flags,
            environ,
            engine_parameters=given,
            api_keys=tuple(args.api_key or ()),
            adapter_flags=forwarded_adapter_flags(args),
        )
        _check_model_flags(options)
        return options


def _check_model_flags(options: ServeOptions) -> None:
    """MODEL's flags go with MODEL; a repository is served as it is."""
    if options.model is None:
        given = ["--served-model-name"] if options.served_model_name else []
        given += [f"--{name.replace('_', '-')}" for name, _ in options.engine_parameters]
        if given:
            raise ValueError(
                f"{', '.join(given)} apply to MODEL (tritium serve ./my-model ...); for a model "
                "repository, set them in each model's config.pbtxt"
            )
    elif options.model_repository is not None:
        raise ValueError(
            f"give MODEL ({options.model}) or --model-repository ({options.model_repository}), "
            "not both"
        )


# config.pbtxt parameters, each a setting (`--max-num-seqs` / TRITIUM_MAX_NUM_SEQS); kept as
# text: the engine's own parser (engine.config) checks them once the model is packaged.
EngineParameters = dataclasses.make_dataclass(
    "EngineParameters",
    [(name, str | None, field(default=None)) for name in PARAMETER_HELP],
    frozen=True,
)


def _as_text(value: object) -> object:
    """A config.pbtxt value from a flag (--no-enable-prefix-caching gives False)."""
    return str(value).lower() if isinstance(value, bool) else value


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser)
    add_triton_arguments(parser)
    add_adapter_arguments(parser)
    add_launcher_arguments(parser)


def _help(text: str, name: str) -> str:
    return with_env(text, ServeOptions, name)


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "model",
        nargs="?",
        metavar="MODEL",
        help=_help(
            "a Hugging Face model directory, a .gguf file or `default` (SmolLM2-135M-Instruct): "
            "packaged into the cache (reused while the source is unchanged) and served",
            "model",
        ),
    )
    model = parser.add_argument_group("MODEL and its engine (written into its config.pbtxt)")
    model.add_argument(
        "--served-model-name",
        metavar="NAME",
        help=_help(
            "the model id of the API (default: MODEL's file or directory name)", "served_model_name"
        ),
    )
    for name, text in PARAMETER_HELP.items():
        flag = "--" + name.replace("_", "-")
        help_text = with_env(text, EngineParameters, name)
        if name == "enable_prefix_caching":
            model.add_argument(flag, action=argparse.BooleanOptionalAction, help=help_text)
        else:
            model.add_argument(flag, metavar=name.split("_")[-1].upper(), help=help_text)


def add_triton_arguments(parser: argparse.ArgumentParser) -> None:
    triton = parser.add_argument_group("tritonserver")
    triton.add_argument(
        "--model-repository",
        metavar="DIR",
        help=_help(
            f"Triton model repository to serve as it is, instead of MODEL (default: ./{DEFAULT_MODEL_REPOSITORY})",
            "model_repository",
        ),
    )
    triton.add_argument(
        "--tritonserver",
        metavar="PATH",
        help=_help(
            "tritonserver binary (default: $TRITONSERVER, /opt/tritonserver/bin/tritonserver, "
            "then the one in the nvidia-pytriton wheel)",
            "tritonserver",
        ),
    )
    triton.add_argument(
        "--triton-host",
        help=_help(
            "address Triton's HTTP, gRPC and metrics endpoints bind to (default: 127.0.0.1)",
            "triton_host",
        ),
    )
    triton.add_argument("--http-port", help=_help("Triton HTTP port (default: 8080)", "http_port"))
    triton.add_argument("--grpc-port", help=_help("Triton gRPC port (default: 8001)", "grpc_port"))
    triton.add_argument(
        "--metrics-port",
        help=_help("Triton Prometheus metrics port (default: 8002)", "metrics_port"),
    )
    triton.add_argument(
        "--triton-log-verbose",
        metavar="LEVEL",
        help=_help("Triton --log-verbose level (default: 0)", "triton_log_verbose"),
    )
    triton.add_argument(
        "--triton-arg",
        action="append",
        metavar="ARG",
        help=_help(
            "extra tritonserver argument, e.g. --triton-arg=--log-info=false (repeatable)",
            "triton_args",
        ),
    )


def add_adapter_arguments(parser: argparse.ArgumentParser) -> None:
    address = parser.add_argument_group("OpenAI API address")
    address.add_argument(
        "--host", help=_help("address the OpenAI API binds to (default: 127.0.0.1)", "host")
    )
    address.add_argument("--port", help=_help("port of the OpenAI API (default: 8000)", "port"))
    # The adapter's own flags (--api-key, --cors-origin, limits, ...), forwarded as given.
    # --triton-url adds endpoints after the tritonserver started here.
    adapter.cli.add_arguments(parser, bind=False)


def add_launcher_arguments(parser: argparse.ArgumentParser) -> None:
    launcher = parser.add_argument_group("launcher")
    launcher.add_argument(
        "--log-dir",
        metavar="DIR",
        help=_help(
            "where tritonserver.log and adapter.log go "
            "(default: $XDG_STATE_HOME/tritium/logs/<time>-<pid>)",
            "log_dir",
        ),
    )
    launcher.add_argument(
        "--startup-timeout",
        metavar="SECONDS",
        help=_help(
            "how long Triton (and then the adapter) may take to become ready (default: 600; a "
            "model's first start on CPU compiles its decode step for minutes)",
            "startup_timeout_seconds",
        ),
    )
    launcher.add_argument(
        "--max-triton-restarts",
        metavar="N",
        help=_help(
            "restart Triton in place at most N times in all when it exits, a model's backend "
            "dies or Triton stays unready; one more failure and serve exits non-zero (default: 3)",
            "max_triton_restarts",
        ),
    )
    launcher.add_argument(
        "--strict-models",
        action=argparse.BooleanOptionalAction,
        help=_help(
            "refuse to serve unless every model of the repository loads (default: serve the "
            "models that load and name the others with their errors)",
            "strict_models",
        ),
    )
    launcher.add_argument(
        "--unready-grace",
        metavar="SECONDS",
        help=_help(
            "how long a running Triton may report unready before it is restarted (default: 10)",
            "unready_grace_seconds",
        ),
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


__all__ = ["ConfigError", "ServeOptions", "add_serve_arguments"]
