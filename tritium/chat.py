"""`tritium chat` and `tritium generate`: a terminal client for a running server.

    tritium chat --url http://127.0.0.1:8000 --system "Be brief." --temperature 0.7
    tritium generate "Once upon a time" --max-tokens 64

Answers stream as they arrive. Ctrl-C stops the answer, not the program: the HTTP
stream is closed, so the server cancels the request, and the prompt comes back.
`/reset` forgets the conversation, `/exit` (or Ctrl-D) leaves; typed lines are kept in
readline history. Built on `tritium.client` (httpx only): no adapter, engine or torch.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:  # httpx loads when a command runs, not when `tritium --help` lists it
    from tritium.client import Client, Model

DEFAULT_URL = "http://127.0.0.1:8000"
HISTORY_LENGTH = 1000
COMMANDS = {
    "/reset": "forget the conversation (the system prompt stays)",
    "/exit": "leave (Ctrl-D too)",
    "/help": "this list",
}


def add_client_arguments(parser: argparse.ArgumentParser) -> None:
    server = parser.add_argument_group("server")
    server.add_argument(
        "--url", default=DEFAULT_URL, help="the server's address (default: %(default)s)"
    )
    server.add_argument("--model", help="model id (default: the server's first model)")
    server.add_argument(
        "--api-key",
        default=os.environ.get("TRITIUM_API_KEY"),
        help="Bearer key, if the server wants one (default: $TRITIUM_API_KEY)",
    )
    sampling = parser.add_argument_group("sampling (omitted: the model's defaults)")
    sampling.add_argument("--temperature", type=float, metavar="T")
    sampling.add_argument("--top-p", type=float, metavar="P")
    sampling.add_argument("--top-k", type=int, metavar="K")
    sampling.add_argument("--max-tokens", type=int, metavar="N")
    sampling.add_argument("--seed", type=int, metavar="N")
    sampling.add_argument(
        "--stop", action="append", metavar="TEXT", help="stop string (repeatable)"
    )
    sampling.add_argument(
        "--extra-body",
        type=_json_object,
        metavar="JSON",
        help='more request fields, e.g. \'{"ignore_eos": true, "min_p": 0.05}\'',
    )
    parser.add_argument(
        "--no-stats",
        action="store_true",
        help="do not print tokens, tokens/s, TTFT and the finish reason after each answer",
    )


def add_chat_arguments(parser: argparse.ArgumentParser) -> None:
    add_client_arguments(parser)
    parser.add_argument("--system", metavar="TEXT", help="system prompt")


def add_generate_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "prompt", nargs="?", help="complete this prompt and exit (none: prompt after prompt)"
    )
    add_client_arguments(parser)


def _json_object(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"not JSON: {error}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("expected a JSON object, e.g. '{\"ignore_eos\": true}'")
    return value


def generate_config(args: argparse.Namespace) -> dict[str, Any]:
    """The request fields the flags set, streamed with usage."""
    fields = {
        "temperature": args.temperature,
        "top_p": args.top_p,
        "top_k": args.top_k,
        "max_tokens": args.max_tokens,
        "seed": args.seed,
        "stop": args.stop,
    }
    config = {name: value for name, value in fields.items() if value is not None}
    config.update(args.extra_body or {})
    config.update(stream=True, stream_options={"include_usage": True})
    return config


@dataclass
class Answer:
    text: str
    finish_reason: str | None  # None when stopped or cut off
    usage: dict[str, int] | None  # the server's counts; None when stopped
    ttft_s: float | None  # until the first piece of text
    elapsed_s: float
    pieces: int  # text chunks received
    stopped: bool  # Ctrl-C

    def stats(self) -> str:
        output = self.usage["completion_tokens"] if self.usage else None
        counted = output if output is not None else self.pieces
        decode_s = self.elapsed_s - (self.ttft_s or 0.0)
        speed = f"{(counted - 1) / decode_s:.1f}" if counted > 1 and decode_s > 0 else "-"
        prompt = self.usage["prompt_tokens"] if self.usage else "-"
        shown = output if output is not None else f"~{self.pieces}"
        ttft = f"{self.ttft_s * 1000:.0f} ms" if self.ttft_s is not None else "-"
        finish = "stopped" if self.stopped else self.finish_reason or "-"
        return f"[{prompt} in / {shown} out · {speed} tokens/s · TTFT {ttft} · finish: {finish}]"


def stream_answer(chunks: Iterator[dict[str, Any]], out: TextIO) -> Answer:
    """Write each piece of text as it arrives; Ctrl-C ends the answer early (closing the
    stream, which cancels the request on the server) instead of the program."""
    started = time.perf_counter()
    pieces: list[str] = []
    finish_reason = usage = ttft_s = None
    stopped = False
    try:
        for chunk in chunks:
            usage = chunk.get("usage") or usage
            for choice in chunk.get("choices", []):
                delta = choice.get("delta")
                text = (delta or {}).get("content") if delta is not None else choice.get("text")
                if text:
                    if ttft_s is None:
                        ttft_s = time.perf_counter() - started
                    pieces.append(text)
                    out.write(text)
                    out.flush()
                finish_reason = choice.get("finish_reason") or finish_reason
    except KeyboardInterrupt:
        stopped = True
    finally:
        close = getattr(chunks, "close", None)
        if close is not None:
            close()  # closes the HTTP stream: the server cancels the request
    return Answer(
        text="".join(pieces),
        finish_reason=None if stopped else finish_reason,
        usage=None if stopped else usage,
        ttft_s=ttft_s,
        elapsed_s=time.perf_counter() - started,
        pieces=len(pieces),
        stopped=stopped,
    )


class Conversation:
    """The messages of one chat; each answer is added as it was shown, stopped or not."""

    def __init__(self, model: Model, system: str | None, config: dict[str, Any]) -> None:
        self.model = model
        self.system = system
        self.config = config
        self.messages: list[dict[str, str]] = []

    def reset(self) -> None:
        self.messages = []

    def request_messages(self) -> list[dict[str, str]]:
        system = [{"role": "system", "content": self.system}] if self.system else []
        return system + self.messages

    def ask(self, text: str, out: TextIO) -> Answer:
        self.messages.append({"role": "user", "content": text})
        try:
            chunks = self.model.chat(self.request_messages(), self.config)
            answer = stream_answer(chunks, out)  # type: ignore[arg-type]
        except BaseException:
            self.messages.pop()  # refused or unreachable: as if never asked
            raise
        if answer.text:
            self.messages.append({"role": "assistant", "content": answer.text})
        else:
            self.messages.pop()  # stopped before any text: nothing to answer to
        return answer


# --- the terminal --------------------------------------------------------------------------


def history_path() -> Path:
    state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state) / "tritium" / "chat_history"


@contextmanager
def readline_history(path: Path) -> Iterator[None]:
    """Arrow-key editing and history across runs, where Python has readline."""
    try:
        import readline
    except ImportError:
        yield
        return
    readline.set_history_length(HISTORY_LENGTH)
    with suppress(OSError):  # none yet: the first run
        readline.read_history_file(path)
    try:
        yield
    finally:
        with suppress(OSError):  # a read-only home must not break leaving
            path.parent.mkdir(parents=True, exist_ok=True)
            readline.write_history_file(path)


def dim(text: str, stream: TextIO) -> str:
    return f"\x1b[2m{text}\x1b[0m" if stream.isatty() else text


def open_model(args: argparse.Namespace) -> tuple[Client, Model]:
    from tritium.client import Client, ClientError

    client = Client(args.url, api_key=args.api_key)
    try:
        model_id = args.model
        if model_id is None:
            models = list(client.list_models())  # in the server's order
            if not models:
                raise ClientError(None, {"message": f"{args.url} serves no model"})
            model_id = models[0]
        return client, client.get_model(model_id)
    except BaseException:
        client.close()
        raise


def repl(
    prompt: str,
    on_line: Callable[[str], None],
    on_reset: Callable[[], None] | None,
    read: Callable[[str], str] = input,
) -> int:
    """Read lines until /exit or end of input; Ctrl-C at the prompt clears the line."""
    while True:
        try:
            line = read(prompt)
        except EOFError:
            print()
            return 0
        except KeyboardInterrupt:
            print()
            continue
        command = line.strip()
        if not command:
            continue
        if command in ("/exit", "/quit"):
            return 0
        if command == "/reset" and on_reset is not None:
            on_reset()
            print(dim("(conversation forgotten)", sys.stdout))
            continue
        if command == "/help":
            for name, meaning in COMMANDS.items():
                if name != "/reset" or on_reset is not None:
                    print(f"  {name:8} {meaning}")
            print("  Ctrl-C   stop the answer being written")
            continue
        if command.split()[0] in (*COMMANDS, "/quit"):  # with arguments, or /reset in generate
            print(f"{command!r} is not a command here (/help lists them)")
            continue
        try:
            on_line(line)
        except KeyboardInterrupt:  # between two answers' pieces of work: still not an exit
            print()


def _run(args: argparse.Namespace, work: Callable[[Model], int]) -> int:
    import httpx

    from tritium.client import ClientError

    try:
        client, model = open_model(args)
    except KeyboardInterrupt:  # while connecting
        return 130
    except ClientError as error:
        print(f"tritium: error: {error}", file=sys.stderr)
        return 1
    except httpx.HTTPError as error:
        print(f"tritium: error: cannot reach {args.url}: {error}", file=sys.stderr)
        return 1
    try:
        return work(model)
    finally:
        client.close()


def _answer_or_report(ask: Callable[[], Answer], args: argparse.Namespace) -> Answer | None:
    import httpx

    from tritium.client import ClientError

    try:
        answer = ask()
    except ClientError as error:
        print(f"\nerror: {error}", file=sys.stderr)
        return None
    except httpx.HTTPError as error:
        print(f"\nerror: cannot reach {args.url}: {error}", file=sys.stderr)
        return None
    print()
    if not args.no_stats:
        print(dim(answer.stats(), sys.stderr), file=sys.stderr)
    return answer


def run_chat(args: argparse.Namespace) -> int:
    def chat(model: Model) -> int:
        conversation = Conversation(model, args.system, generate_config(args))
        print(
            f"Chatting with {model.model_uid} at {args.url}. "
            "Ctrl-C stops an answer, /reset forgets, /exit leaves, /help lists commands."
        )
        with readline_history(history_path()):
            return repl(
                ">>> ",
                lambda line: _answer_or_report(lambda: conversation.ask(line, sys.stdout), args),
                conversation.reset,
            )

    return _run(args, chat)


def run_generate(args: argparse.Namespace) -> int:
    config = generate_config(args)

    def complete(model: Model, prompt: str) -> Answer:
        return stream_answer(model.generate(prompt, config), sys.stdout)  # type: ignore[arg-type]

    def generate(model: Model) -> int:
        if args.prompt is not None:
            answer = _answer_or_report(lambda: complete(model, args.prompt), args)
            return 1 if answer is None else 130 if answer.stopped else 0
        print(f"Completing prompts with {model.model_uid} at {args.url}. /exit leaves.")
        with readline_history(history_path()):
            return repl(
                "... ", lambda line: _answer_or_report(lambda: complete(model, line), args), None
            )

    return _run(args, generate)
