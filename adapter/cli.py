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
from dataclasses import replace

from adapter.config import LOG_LEVELS, AdapterConfig, parse_value

# flag dest -> AdapterConfig field (list flags are repeatable and also take commas)
_LIST_FLAGS = {"triton_url": "triton_urls", "api_key": "api_keys", "cors_origin": "cors_origins"}
_SCALAR_FLAGS = (
    "max_body_bytes",
    "max_concurrent_requests",
    "max_n",
    "max_tokens",
    "request_timeout_s",
    "retry_after_s",
    "log_level",
    "host",
    "port",
)


def add_arguments(parser: argparse.ArgumentParser, *, bind: bool = True) -> None:
    """Add the adapter's flags to `parser` (bind=False leaves out --host/--port)."""
    group = parser.add_argument_group("OpenAI adapter")
    group.add_argument(
        "--triton-url",
        action="append",
        metavar="HOST:PORT",
        help="Triton gRPC endpoint; repeat for several (env TRITIUM_TRITON_URLS, default 127.0.0.1:8001)",
    )
    group.add_argument(
        "--api-key",
        action="append",
        metavar="KEY",
        help="accepted Bearer key; repeat for several. Prefer TRITIUM_API_KEYS: flags show in ps",
    )
    group.add_argument(
        "--cors-origin",
        action="append",
        metavar="ORIGIN",
        help="allowed CORS origin; repeat for several (env TRITIUM_CORS_ORIGINS; none = CORS off)",
    )
    group.add_argument("--max-body-bytes", help="largest request body, else 413 (default 4 MiB)")
    group.add_argument(
        "--max-concurrent-requests", help="generation requests in flight, else 429 (default 256)"
    )
    group.add_argument("--max-n", help="most choices per request (default 16)")
    group.add_argument("--max-tokens", help="cap on max_tokens (default: the model's context)")
    group.add_argument(
        "--request-timeout-s", help="deadline per generation request ('none' = no deadline)"
    )
    group.add_argument("--retry-after-s", help="Retry-After seconds sent with 429 (default 1)")
    group.add_argument("--log-level", choices=LOG_LEVELS, help="log level (default info)")
    if bind:
        group.add_argument("--host", help="address to listen on (default 0.0.0.0)")
        group.add_argument("--port", help="port to listen on (default 8000)")


def config_from_args(
    args: argparse.Namespace, environ: Mapping[str, str] | None = None
) -> AdapterConfig:
    """Defaults, then TRITIUM_* variables, then the flags that were given."""
    config = AdapterConfig.from_env(environ)
    overrides: dict[str, object] = {}
    for dest, name in _LIST_FLAGS.items():
        values = getattr(args, dest, None)
        if values:
            overrides[name] = parse_value(name, ",".join(values))
    for name in _SCALAR_FLAGS:
        value = getattr(args, name, None)
        if value is not None:
            overrides[name] = parse_value(name, str(value))
    return replace(config, **overrides) if overrides else config


def main(argv: list[str] | None = None) -> None:
    """`python -m adapter`: run the adapter alone under uvicorn."""
    import uvicorn

    from adapter.app import create_app
    from adapter.logs import configure_logging

    parser = argparse.ArgumentParser(prog="python -m adapter", description=__doc__.split("\n")[0])
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
