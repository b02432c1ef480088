"""Steps of a person using the playground, for playwright's sync `Page`."""

from __future__ import annotations

from typing import Any

# Records each distinct text of the newest answer, at every change of the conversation's
# DOM: more than one entry means the answer reached the page in several updates.
WATCH_ANSWER = """() => {
  window.__answerStates = [];
  const record = () => {
    const answers = document.querySelectorAll('#messages .message.assistant .content');
    const last = answers[answers.length - 1];
    const states = window.__answerStates;
    if (last && last.textContent && states[states.length - 1] !== last.textContent) {
      states.push(last.textContent);
    }
  };
  new MutationObserver(record).observe(document.getElementById('messages'),
    {childList: true, subtree: true, characterData: true});
}"""


def open_playground(page: Any, url: str) -> None:
    """Load the page at `url` (the server's root) and wait for its model list."""
    page.goto(url.removesuffix("/v1").rstrip("/") + "/")
    page.wait_for_selector("#model option", state="attached")


def set_parameters(page: Any, **values: object) -> None:
    """Type into the parameter fields (temperature=0.5, stop="END\\nSTOP", ...)."""
    for name, value in values.items():
        page.fill(f"#{name}", str(value))


def watch_answer(page: Any) -> None:
    page.evaluate(WATCH_ANSWER)


def answer_states(page: Any) -> list[str]:
    return page.evaluate("window.__answerStates")


def send_message(page: Any, text: str) -> None:
    page.fill("#chat-input", text)
    page.press("#chat-input", "Enter")


def wait_answer_stats(page: Any, count: int = 1) -> str:
    """The stats line of the `count`-th answer, once that answer has ended."""
    # Locators, not wait_for_function: the page's CSP forbids the eval that a string needs.
    stats = page.locator(".message.assistant .stats:not([hidden]) .numbers").nth(count - 1)
    stats.wait_for()
    return stats.inner_text()


def error_text(page: Any) -> str:
    page.wait_for_selector("#error:not([hidden])")
    return page.inner_text("#error-text")


def conversation(page: Any) -> list[tuple[str, str]]:
    """(role, text) of each message shown."""
    pairs = page.evaluate(
        """() => [...document.querySelectorAll('#messages .message')].map((node) =>
          [node.classList.contains('user') ? 'user' : 'assistant',
           node.querySelector('.content').textContent])"""
    )
    return [(role, text) for role, text in pairs]
