"""The `tritium` command line: `serve`, `package`, `bench`, and `chat` / `generate`.

Subcommands import their heavy dependencies lazily, so `tritium serve --help` and
`tritium serve` itself never import torch.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import adapter.cli
from tritium import chat as chat_client

DEFAULT_MODEL_REPOSITORY = "model_repository"


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    add_triton_arguments(parser)
    add_adapter_arguments(parser)
    add_launcher_arguments(parser)


def add_triton_arguments(parser: argparse.ArgumentParser) -> None:
    triton = parser.add_argument_group("tritonserver")
    triton.add_argument(
        "--model-repository",
        default=DEFAULT_MODEL_REPOSITORY,
        help="Triton model repository to serve (default: ./%(default)s)",
    )
    triton.add_argument(
        "--tritonserver",
        metavar="PATH",
        help="tritonserver binary (default: $TRITONSERVER, /opt/tritonserver/bin/tritonserver, "
        "then the one in the nvidia-pytriton wheel)",
    )
    triton.add_argument(
        "--triton-host",
        default="127.0.0.1",
        help="address Triton's HTTP, gRPC and metrics endpoints bind to (default: %(default)s)",
    )
    triton.add_argument(
        "--http-port", type=int, default=8080, help="Triton HTTP port (default: %(default)s)"
    )
    triton.add_argument(
        "--grpc-port", type=int, default=8001, help="Triton gRPC port (default: %(default)s)"
    )
    triton.add_argument(
        "--metrics-port",
        type=int,
        default=8002,
        help="Triton Prometheus metrics port (default: %(default)s)",
    )
    triton.add_argument(
        "--triton-log-verbose",
        type=int,
        default=0,
        metavar="LEVEL",
        help="Triton --log-verbose level (default: 0)",
    )
    triton.add_argument(
        "--triton-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="extra tritonserver argument, e.g. --triton-arg=--log-info=false (repeatable)",
    )


def add_adapter_arguments(parser: argparse.ArgumentParser) -> None:
    address = parser.add_argument_group("OpenAI API address")
    address.add_argument(
        "--host",
        default="127.0.0.1",
        help="address the OpenAI API binds to (default: %(default)s)",
    )
    address.add_argument(
        "--port", type=int, default=8000, help="port of the OpenAI API (default: %(default)s)"
    )
    # The adapter's own flags (--api-key, --cors-origin, limits, ...), forwarded as given.
    # --triton-url adds endpoints after the tritonserver started here.
    adapter.cli.add_arguments(parser, bind=False)


def add_launcher_arguments(parser: argparse.ArgumentParser) -> None:
    launcher = parser.add_argument_group("launcher")
    launcher.add_argument(
        "--log-dir",
        metavar="DIR",
        help="where tritonserver.log and adapter.log go "
        "(default: $XDG_STATE_HOME/tritium/logs/<time>-<pid>)",
    )
    launcher.add_argument(
        "--startup-timeout",
        type=float,
        default=300.0,
        metavar="SECONDS",
        help="how long Triton (and then the adapter) may take to become ready (default: %(default)g)",
    )
    launcher.add_argument(
        "--max-triton-restarts",
        type=int,
        default=3,
        metavar="N",
        help="restart Triton in place at most N times in all when it exits, a model's backend "
        "dies or Triton stays unready; one more failure and serve exits non-zero "
        "(default: %(default)d)",
    )
    launcher.add_argument(
        "--unready-grace",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="how long a running Triton may report unready before it is restarted "
        "(default: %(default)g)",
    )


def add_package_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "source",
        metavar="SOURCE",
        help="a Hugging Face model directory, a .gguf file, or `default` (the bundled SmolLM2-135M-Instruct)",
    )
    parser.add_argument("--name", required=True, help="model name in the repository and in the API")
    parser.add_argument(
        "--repository",
        default=DEFAULT_MODEL_REPOSITORY,
        metavar="DIR",
        help="Triton model repository to write into (default: ./%(default)s)",
    )
    parser.add_argument(
        "--force", action="store_true", help="replace an existing model of that name"
    )


def run_serve(args: argparse.Namespace) -> int:
    from tritium.serve import serve

    return serve(args)


def run_package(args: argparse.Namespace) -> int:
    try:
        from engine.package import package_model
    except ImportError as error:
        print(
            f"tritium package: cannot import the packaging code ({error}); "
            "install the engine extras: pip install -e '.[engine]'",
            file=sys.stderr,
        )
        return 1
    repository = Path(args.repository).expanduser().resolve()
    try:
        model_dir = package_model(
            source=args.source, name=args.name, repository=repository, force=args.force
        )
    except (ValueError, OSError) as error:
        print(f"tritium package: error: {error}", file=sys.stderr)
        return 1
    print(f"packaged {args.name} into {model_dir}")
    print(f"serve it with: tritium serve --model-repository {repository}")
    return 0


def add_bench_parser(subcommands: argparse._SubParsersAction) -> None:
    # Listed here for `tritium --help`; main() hands `tritium bench ...` to the benchmark's
    # own parser, so its imports (httpx, the clients) load only when it runs.
    subcommands.add_parser(
        "bench",
        add_help=False,
        help="benchmark an OpenAI-compatible or Triton endpoint (see tritium bench --help)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tritium",
        description="OpenAI-compatible LLM serving on NVIDIA Triton Inference Server.",
    )
    subcommands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = subcommands.add_parser(
        "serve",
        help="start tritonserver and the OpenAI API in front of it",
        description="Start tritonserver on a model repository, then the OpenAI-compatible "
        "adapter, and supervise both until Ctrl-C or SIGTERM.",
    )
    add_serve_arguments(serve)
    serve.set_defaults(handler=run_serve)

    package = subcommands.add_parser(
        "package",
        help="turn a model into a Triton model repository entry",
        description="Write <repository>/<name>/ (config.pbtxt, model.py shim, weights, "
        "tokenizer) from a Hugging Face model directory, a .gguf file, or `default`.",
    )
    add_package_arguments(package)
    package.set_defaults(handler=run_package)
    add_bench_parser(subcommands)

    chat = subcommands.add_parser(
        "chat",
        help="chat with a running server in the terminal",
        description="Chat with a model of a running server: answers stream as they arrive; "
        "Ctrl-C stops an answer (the server cancels it), /reset forgets the conversation, "
        "/exit or Ctrl-D leaves.",
    )
    chat_client.add_chat_arguments(chat)
    chat.set_defaults(handler=chat_client.run_chat)

    generate = subcommands.add_parser(
        "generate",
        help="complete prompts with a running server (/v1/completions)",
        description="Complete PROMPT and exit, or prompt after prompt without one; Ctrl-C "
        "stops a completion.",
    )
    chat_client.add_generate_arguments(generate)
    generate.set_defaults(handler=chat_client.run_generate)
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    arguments = list(sys.argv[1:] if argv is None else argv)
    if arguments[:1] == ["bench"]:
        from benchmarks.bench import main as bench_main

        sys.exit(bench_main(arguments[1:]))
    args = build_parser().parse_args(arguments)
    sys.exit(args.handler(args))
