"""The `tritium` command line: `serve`, `package`, `bench`, and `chat` / `generate`.

Subcommands import their heavy dependencies lazily, so `tritium serve --help` and
`tritium serve` itself never import torch.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from tritium import __version__
from tritium import chat as chat_client
from tritium.serve_options import DEFAULT_MODEL_REPOSITORY, add_serve_arguments


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
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    subcommands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = subcommands.add_parser(
        "serve",
        help="serve a model (or a model repository) through the OpenAI API",
        description="Serve MODEL (a Hugging Face directory, a .gguf file or `default`), or a "
        "Triton model repository: start tritonserver, then the OpenAI-compatible adapter, and "
        "supervise both until Ctrl-C or SIGTERM. Every flag also reads the TRITIUM_* variable "
        "named in its help; flags win over variables.",
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
