"""`tritium chat` in a pseudo-terminal against the real stack: an answer streams, and Ctrl-C
stops it (only it) with the engine idle within 2 s."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.reliability.test_disconnects import IDLE_WITHIN_S
from tests.stack import Stack
from tests.stress import load
from tests.tritium.test_chat import PROMPT, pexpect, terminal

pytestmark = pytest.mark.e2e


@pytest.fixture
def kv_baseline(stack: Stack) -> float:
    """KV blocks in use with no request running (as in tests/reliability/test_disconnects.py)."""
    assert load.completes_normally(stack)
    assert load.wait_engine_idle(stack, float("inf"), 10) is not None
    return stack.metric("tritium_kv_blocks_used")


def test_tritium_chat_streams_and_ctrl_c_stops_only_the_answer(
    stack: Stack, kv_baseline: float, tmp_path: Path
) -> None:
    chat = terminal(
        tmp_path, "chat", "--url", stack.base_url, "--temperature", "0", "--max-tokens", "12"
    )
    chat.timeout = 90  # the real model on a busy 2-core machine
    chat.expect(f"Chatting with {stack.model}")
    chat.expect_exact(PROMPT)
    chat.sendline("What is the capital of France?")
    chat.expect(r"\[\d+ in / (\d+) out · [0-9.]+ tokens/s · TTFT \d+ ms · finish: (stop|length)\]")
    assert 0 < int(chat.match.group(1)) <= 12
    chat.expect_exact(PROMPT)

    chat.sendline("/exit")
    chat.expect(pexpect.EOF)

    # Now an answer that goes on for 1,000 tokens unless stopped.
    question = "Tell me a long story about the sea."
    chat = terminal(
        tmp_path, "chat", "--url", stack.base_url, "--max-tokens", "1000",
        "--extra-body", '{"ignore_eos": true}',
    )  # fmt: skip
    chat.timeout = 90
    chat.expect_exact(PROMPT)
    chat.sendline(question)
    chat.expect_exact(question + "\r\n")  # the terminal's echo
    chat.expect(r"\w+\W+\w+\W+\w+")  # a few words of the answer
    assert load.engine_busy(stack) >= 1
    chat.sendintr()
    idle_after = load.wait_engine_idle(stack, kv_baseline, IDLE_WITHIN_S)
    assert idle_after is not None, f"the engine was still busy {IDLE_WITHIN_S} s after Ctrl-C"
    chat.expect(r"finish: stopped\]")
    chat.expect_exact(PROMPT)
    chat.sendline("/exit")
    chat.expect(pexpect.EOF)
    chat.close()
    assert chat.exitstatus == 0
    assert load.completes_normally(stack)
