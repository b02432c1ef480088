"""Command-line flags of the adapter, shared with `tritium serve`.

    parser = argparse.ArgumentParser()
    adapter.cli.add_arguments(parser)            # --triton-url, --api-key, ...
    config = adapter.cli.config_from_args(parser.parse_args())

Precedence: built-in defaults < TRITIUM_* environment variables < flags. Flags
default to None so that "not given" can be told apart from "given the default".
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from dataclasses import fields

from adapter.config import LOG_LEVELS, AdapterConfig
from adapter.settings import load, with_env

# flag dest -> AdapterConfig field, where they differ (list flags are repeatable and also
# take commas, like their variables)
_LIST_FLAGS = {"triton_url": "triton_urls", "api_key": "api_keys", "cors_origin": "cors_origins"}


def _help(text: str, name: str) -> str:
    return with_env(text, AdapterConfig, name)


def add_arguments(parser: argparse.ArgumentParser, *, bind: bool = True) -> None:
    """Add the adapter's flags to `parser` (bind=False leaves out --host/--port)."""
    group = parser.add_argument_group("OpenAI adapter")
    group.add_argument(
        "--triton-url",
        action="append",
        metavar="HOST:PORT",
        help=_help(
            "Triton gRPC endpoint; repeat for several (default 127.0.0.1:8001)", "triton_urls"
        ),
    )
    group.add_argument(
        "--api-key",
        action="append",
        metavar="KEY",
        help=_help(
            "accepted Bearer key; repeat for several. Prefer the variable: flags show in ps",
            "api_keys",
        ),
    )
    group.add_argument(
        "--cors-origin",
        action="append",
        metavar="ORIGIN",
        help=_help("allowed CORS origin; repeat for several (none = CORS off)", "cors_origins"),
    )
    group.add_argument(
        "--max-body-bytes",
        help=_help("largest request body, else 413 (default 4 MiB)", "max_body_bytes"),
    )
    group.add_argument(
        "--max-concurrent-requests",
        help=_help(
            "generation requests in flight, else 429 (default 256)", "max_concurrent_requests"
        ),
    )
    group.add_argument("--max-n", help=_help("most choices per request (default 16)", "max_n"))
    group.add_argument(
        "--max-tokens", help=_help("cap on max_tokens (default: the model's context)", "max_tokens")
    )
    group.add_argument(
        "--request-timeout-s",
        help=_help(
            "deadline per generation request ('none' = no deadline; default 600)",
            "request_timeout_s",
        ),
    )
    group.add_argument(
        "--retry-after-s",
        help=_help("Retry-After seconds sent with 429 (default 1)", "retry_after_s"),
    )
    group.add_argument(
        "--log-level", choices=LOG_LEVELS, help=_help("log level (default info)", "log_level")
    )
    if bind:
        group.add_argument("--host", help=_help("address to listen on (default 0.0.0.0)", "host"))
        group.add_argument("--port", help=_help("port to listen on (default 8000)", "port"))


def config_from_args(
    args: argparse.Namespace, environ: Mapping[str, str] | None = None
) -> AdapterConfig:
    """Defaults, then TRITIUM_* variables, then the flags that were given."""
    flags = {_LIST_FLAGS.get(dest, dest): value for dest, value in vars(args).items()}
    known = {name: value for name, value in flags.items() if name in _FIELDS}
    return load(AdapterConfig, known, environ)


_FIELDS = {f.name for f in fields(AdapterConfig)}


def main(argv: list[str] | None = None) -> None:
    """`python -m adapter`: run the adapter alone under uvicorn."""
    from importlib.metadata import version

    import uvicorn

    from adapter.app import create_app
    from adapter.logs import configure_logging

    parser = argparse.ArgumentParser(prog="python -m adapter", description=__doc__.split("\n")[0])
    parser.add_argument("--version", action="version", version=f"%(prog)s {version('tritium')}")
    add_arguments(parser)
    config = config_from_args(parser.parse_args(argv))
    configure_logging(config.log_level)
    uvicorn.run(
        create_app(config),
        host=config.host,
        port=config.port,
        log_level=config.log_level,
        access_log=False,  # the adapter writes its own JSON access log
    )
