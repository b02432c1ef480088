"""`tritium chat` and `tritium generate` in a pseudo-terminal (pexpect), against the adapter
on a paced fake backend: a streamed answer, Ctrl-C stops only the answer, multi-turn,
/reset, /exit, readline history; and the pieces without a terminal. The same client on
the real stack (the engine goes idle after Ctrl-C) is tests/tritium/test_chat_stack.py."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.adapter.fake_triton import HANG, choice, out
from tests.playground.site import PacedFakeTriton, pieces_script, serve_adapter
from tests.stack import REPO_ROOT
from tritium.chat import Answer, Conversation, generate_config, repl, stream_answer
from tritium.cli import build_parser

pexpect = pytest.importorskip("pexpect", reason="pexpect is in the test extra")

PROMPT = ">>> "


@pytest.fixture
def fake() -> PacedFakeTriton:
    return PacedFakeTriton(pause_s=0.05)


@pytest.fixture
def url(fake: PacedFakeTriton) -> Iterator[str]:
    from adapter.config import AdapterConfig

    with serve_adapter(AdapterConfig(), fake) as running:
        yield running


def terminal(tmp_path: Path, *arguments: str) -> pexpect.spawn:
    """`python -m tritium ARGUMENTS` in a pseudo-terminal, its history under tmp_path."""
    environment = {**os.environ, "XDG_STATE_HOME": str(tmp_path), "TERM": "dumb"}
    environment.pop("TRITIUM_API_KEY", None)
    return pexpect.spawn(
        sys.executable,
        ["-m", "tritium", *arguments],
        cwd=str(REPO_ROOT),
        env=environment,
        encoding="utf-8",
        timeout=30,
        dimensions=(40, 200),
    )


def wait_until(condition: object, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


def test_a_conversation_streams_and_ctrl_c_stops_only_the_answer(
    tmp_path: Path, fake: PacedFakeTriton, url: str
) -> None:
    words = [f"w{number} " for number in range(10)]
    fake.respond = pieces_script(words)
    chat = terminal(tmp_path, "chat", "--url", url, "--system", "Be brief.", "--temperature", "0")
    chat.expect("Chatting with tiny-chat")
    chat.expect_exact(PROMPT)
    chat.sendline("First question")
    chat.expect_exact("w0 ")
    first_piece_at = time.monotonic()
    chat.expect_exact("w9 ")
    assert time.monotonic() - first_piece_at > 0.3  # the pieces came one by one
    chat.expect(r"\[5 in / 10 out · [0-9.]+ tokens/s · TTFT \d+ ms · finish: stop\]")
    chat.expect_exact(PROMPT)

    fake.respond = lambda inputs: [out(choice(0, "Thinking", None, 1)), HANG]
    chat.sendline("Second question")
    chat.expect_exact("Thinking")
    chat.sendintr()  # Ctrl-C
    chat.expect(r"finish: stopped\]")
    chat.expect_exact(PROMPT)  # still running
    wait_until(lambda: fake.cancelled == 1, timeout_s=2)  # the server cancelled the request
    assert chat.isalive()
    second = fake.calls[-1][1]
    assert second.messages == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "First question"},
        {"role": "assistant", "content": "".join(words)},
        {"role": "user", "content": "Second question"},
    ]
    assert second.sampling_parameters["temperature"] == 0

    fake.respond = pieces_script(["Fresh"])
    chat.sendline("/reset")
    chat.expect("forgotten")
    chat.sendline("Third")
    chat.expect_exact("Fresh")
    chat.expect_exact(PROMPT)
    assert fake.calls[-1][1].messages[1:] == [{"role": "user", "content": "Third"}]

    chat.sendline("/exit")
    chat.expect(pexpect.EOF)
    chat.close()
    assert chat.exitstatus == 0
    history = (tmp_path / "tritium" / "chat_history").read_text()
    assert "First question" in history and "/reset" in history


def test_ctrl_c_at_the_prompt_and_ctrl_d_leave_cleanly(tmp_path: Path, url: str) -> None:
    chat = terminal(tmp_path, "chat", "--url", url, "--model", "tiny-chat", "--no-stats")
    chat.expect_exact(PROMPT)
    chat.sendintr()  # at the prompt: a new prompt, not an exit
    chat.expect_exact(PROMPT)
    chat.sendline("Hi")
    chat.expect_exact("Hello world")
    chat.expect_exact(PROMPT)
    assert "finish:" not in chat.before
    chat.sendeof()
    chat.expect(pexpect.EOF)
    chat.close()
    assert chat.exitstatus == 0


def test_errors_are_reported_and_the_chat_goes_on(tmp_path: Path, url: str) -> None:
    chat = terminal(tmp_path, "chat", "--url", url, "--top-k", "-5")
    chat.expect_exact(PROMPT)
    chat.sendline("Hi")
    chat.expect(r"error: 400 invalid_value: .*top_k")
    chat.expect_exact(PROMPT)
    chat.sendline("/exit")
    chat.expect(pexpect.EOF)


def run_tritium(*arguments: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tritium", *arguments],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_generate_completes_one_prompt(fake: PacedFakeTriton, url: str) -> None:
    fake.respond = pieces_script(["Once", " upon", " a time"])
    done = run_tritium("generate", "Tell me", "--url", url, "--max-tokens", "5", "--stop", "END")
    assert done.returncode == 0, done.stderr
    assert done.stdout == "Once upon a time\n"
    assert "finish: stop" in done.stderr
    inputs = fake.calls[-1][1]
    assert inputs.text_input == "Tell me"
    assert inputs.sampling_parameters["max_tokens"] == 5
    assert inputs.sampling_parameters["stop"] == ["END"]


def test_unknown_model_and_unreachable_server_fail_in_one_line(url: str) -> None:
    missing = run_tritium("chat", "--url", url, "--model", "nope")
    assert missing.returncode == 1
    assert "404 model_not_found" in missing.stderr and "Traceback" not in missing.stderr
    from tests.stack import free_port

    nobody = run_tritium("generate", "x", "--url", f"http://127.0.0.1:{free_port()}")
    assert nobody.returncode == 1 and "cannot reach" in nobody.stderr, nobody.stderr


# --- without a terminal --------------------------------------------------------------------


def test_flags_become_request_fields() -> None:
    args = build_parser().parse_args(
        ["chat", "--top-p", "0.9", "--seed", "3", "--stop", "a", "--stop", "b"]
        + ["--extra-body", '{"ignore_eos": true}']
    )
    assert generate_config(args) == {
        "top_p": 0.9,
        "seed": 3,
        "stop": ["a", "b"],
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    with pytest.raises(SystemExit):
        build_parser().parse_args(["chat", "--extra-body", "[1]"])


def chunks_then_interrupt() -> Iterator[dict]:
    yield {"choices": [{"index": 0, "delta": {"content": "Partial"}, "finish_reason": None}]}
    raise KeyboardInterrupt


def test_an_interrupted_answer_is_kept_as_far_as_it_went() -> None:
    shown = io.StringIO()
    answer = stream_answer(chunks_then_interrupt(), shown)
    assert shown.getvalue() == "Partial" and answer.stopped and answer.finish_reason is None
    assert "~1 out" in answer.stats() and "finish: stopped" in answer.stats()

    class Model:
        model_uid = "m"

        def chat(self, messages: list, config: dict) -> Iterator[dict]:
            return chunks_then_interrupt()

    conversation = Conversation(Model(), None, {})  # type: ignore[arg-type]
    conversation.ask("Go", io.StringIO())
    assert conversation.messages == [
        {"role": "user", "content": "Go"},
        {"role": "assistant", "content": "Partial"},
    ]


def test_stats_use_the_servers_counts() -> None:
    answer = Answer(
        "text", "length", {"prompt_tokens": 7, "completion_tokens": 11}, 0.1, 1.1, 9, False
    )
    assert answer.stats() == "[7 in / 11 out · 10.0 tokens/s · TTFT 100 ms · finish: length]"


def test_repl_commands(capsys: pytest.CaptureFixture[str]) -> None:
    lines = iter(["", "  ", "/help", "hello", "/reset", "/exit now", "/usr is", "/exit", "never"])
    asked: list[str] = []
    resets: list[bool] = []
    assert repl(PROMPT, asked.append, lambda: resets.append(True), read=lambda _: next(lines)) == 0
    assert asked == ["hello", "/usr is"] and resets == [True]
    shown = capsys.readouterr().out
    assert "/reset" in shown and "'/exit now' is not a command here" in shown

    lines = iter(["/reset", "/help"])  # generate: no conversation to forget
    assert repl(PROMPT, asked.append, None, read=lambda _: next(lines, "/exit")) == 0
    shown = capsys.readouterr().out
    assert "'/reset' is not a command here" in shown and "/reset" not in shown.split("\n", 1)[1]


def test_the_serve_banner_points_to_the_playground_and_the_terminal_chat() -> None:
    from tritium.serve import usage_banner
    from tritium.serve_options import ServeOptions

    options = ServeOptions.from_args(build_parser().parse_args(["serve", "--port", "9000"]))
    lines = usage_banner(options, ["smollm2"]).splitlines()
    assert (
        "Playground (chat in the browser): http://127.0.0.1:9000/"
        "  API reference: http://127.0.0.1:9000/docs"
    ) in lines
    assert any(
        line.startswith("Terminal chat: ") and line.endswith(" chat --url http://127.0.0.1:9000")
        for line in lines
    ), lines
