"""The playground in a real headless Chromium against the real stack (tritonserver, the
engine, the default model): the page loads with nothing fetched off 127.0.0.1, an answer
streams token by token, Stop leaves the engine idle, a 400 is shown, the generate tab works.
The same page on a fake backend (HTML in the output, keys, history) is tests/playground/test_page.py."""

from __future__ import annotations

import time
from typing import Any

import pytest

from tests.playground.browser import (
    answer_states,
    error_text,
    open_playground,
    send_message,
    set_parameters,
    wait_answer_stats,
    watch_answer,
)
from tests.playground.conftest import PageWatch
from tests.reliability.test_disconnects import IDLE_WITHIN_S
from tests.stack import Stack
from tests.stress import load

pytestmark = pytest.mark.e2e

LONG_ANSWER_PROMPT = "Write a long story about a lighthouse keeper and the sea, in ten chapters."


@pytest.fixture(autouse=True)
def patient_page(page: Any) -> None:
    """The real model on a busy 2-core machine can take tens of seconds for an answer."""
    page.set_default_timeout(90_000)


def test_the_page_loads_from_the_server_alone(
    stack: Stack, watched_page: tuple[Any, PageWatch]
) -> None:
    page, watch = watched_page
    open_playground(page, stack.base_url)
    assert page.input_value("#model") == stack.model
    origin = stack.base_url.removesuffix("/v1")
    assert watch.urls and all(url.startswith(origin + "/") for url in watch.urls), watch.urls
    assert not watch.foreign_urls()


def test_an_answer_streams_into_the_page_token_by_token(stack: Stack, page: Any) -> None:
    open_playground(page, stack.base_url)
    set_parameters(page, temperature=0, max_tokens=24)
    watch_answer(page)
    send_message(page, "Name three colors of the sea.")
    stats = wait_answer_stats(page)
    states = answer_states(page)
    assert len(states) > 1, states  # several DOM updates, not one at the end
    assert "finish: stop" in stats or "finish: length" in stats, stats
    completion_tokens = int(stats.split(" out")[0].rsplit(" ", 1)[1])
    assert 0 < completion_tokens <= 24, stats


@pytest.fixture
def kv_baseline(stack: Stack) -> float:
    """KV blocks in use with no request running (as in tests/reliability/test_disconnects.py)."""
    assert load.completes_normally(stack)
    assert load.wait_engine_idle(stack, float("inf"), 10) is not None
    return stack.metric("tritium_kv_blocks_used")


def test_stop_ends_the_answer_and_the_engine_goes_idle(
    stack: Stack, page: Any, kv_baseline: float
) -> None:
    open_playground(page, stack.base_url)
    set_parameters(page, temperature=0, max_tokens=1500)
    page.fill("#extra-fields", '{"ignore_eos": true}')  # it would go on for 1,500 tokens
    watch_answer(page)
    send_message(page, LONG_ANSWER_PROMPT)
    answer = page.locator(".message.assistant .content")
    deadline = time.monotonic() + 60
    while len(answer_states(page)) < 3:  # a few tokens in: the engine is decoding
        assert time.monotonic() < deadline, "no tokens arrived"
        time.sleep(0.02)
    assert load.engine_busy(stack) >= 1
    page.click("#chat-stop")
    idle_after = load.wait_engine_idle(stack, kv_baseline, IDLE_WITHIN_S)
    assert idle_after is not None, (
        f"after {IDLE_WITHIN_S} s: running {stack.metric('tritium_requests_running')}, "
        f"KV {stack.metric('tritium_kv_blocks_used')} (baseline {kv_baseline})"
    )
    assert "finish: stopped" in wait_answer_stats(page)
    assert answer.text_content()  # what came before Stop stays
    assert load.completes_normally(stack)


def test_a_rejected_request_is_shown(stack: Stack, page: Any) -> None:
    open_playground(page, stack.base_url)
    set_parameters(page, max_tokens=100_000)  # more than the model's context length
    send_message(page, "Hi")
    shown = error_text(page)
    assert shown.startswith("400 ") and "max_tokens" in shown, shown


def test_the_generate_tab_completes_a_prompt(stack: Stack, page: Any) -> None:
    open_playground(page, stack.base_url)
    page.click("#tab-generate")
    set_parameters(page, temperature=0, max_tokens=8)
    page.fill("#generate-prompt", "The capital of France is")
    page.press("#generate-prompt", "Enter")
    page.wait_for_selector("#generate-result .stats:not([hidden])")
    assert page.locator("#generate-output").text_content().strip()
    assert "8 out" in page.inner_text("#generate-result .stats")
