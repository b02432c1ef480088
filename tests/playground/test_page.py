"""The playground in a real headless Chromium, against the adapter on a fake backend:
streaming, Stop, the keyboard, history, errors, safe rendering, the generate tab and
the copied requests. tests/playground/test_stack.py runs the same page on the real stack."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from typing import Any

import httpx

from adapter.errors import ServiceUnavailable
from tests.adapter.fake_triton import HANG, choice, out
from tests.playground.browser import (
    answer_states,
    conversation,
    error_text,
    open_playground,
    send_message,
    set_parameters,
    wait_answer_stats,
    watch_answer,
)
from tests.playground.conftest import StartSite
from tests.playground.site import Site, pieces_script


def wait_until(condition: Any, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


def sent_messages(site: Site, call: int = -1) -> list[dict[str, str]]:
    return site.fake.calls[call][1].messages


def thinking_then_hang(inputs: object) -> list:
    return [out(choice(0, "Thinking", None, 1)), HANG]


def test_an_answer_streams_into_the_page_piece_by_piece(page: Any, start_site: StartSite) -> None:
    pieces = [f"word{number} " for number in range(12)]
    site = start_site(pieces_script(pieces), pause_s=0.04)
    open_playground(page, site.url)
    page.fill("#system-prompt", "Be brief.")
    watch_answer(page)
    send_message(page, "Hi")
    stats = wait_answer_stats(page)
    states = answer_states(page)
    assert len(states) > 1, states
    assert states[-1].strip() == "".join(pieces).strip()
    assert all(states[-1].startswith(state.strip()) for state in states), states
    assert "finish: stop" in stats and "5 in / 12 out" in stats and "tokens/s" in stats
    assert sent_messages(site) == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
    ]
    assert site.fake.calls[-1][1].stream


def test_shift_enter_breaks_a_line_and_escape_stops_the_answer(
    page: Any, start_site: StartSite
) -> None:
    site = start_site(thinking_then_hang)
    open_playground(page, site.url)
    page.click("#chat-input")
    page.keyboard.type("line one")
    page.keyboard.press("Shift+Enter")
    page.keyboard.type("line two")
    assert page.input_value("#chat-input") == "line one\nline two"
    assert not site.fake.calls
    page.keyboard.press("Enter")
    page.wait_for_selector(".message.assistant .content:has-text('Thinking')")
    assert page.is_enabled("#chat-stop") and page.is_disabled("#chat-send")
    page.keyboard.press("Escape")
    assert "finish: stopped" in wait_answer_stats(page)
    wait_until(lambda: site.fake.cancelled == 1, timeout_s=2)  # the server cancelled it
    assert page.is_enabled("#chat-send") and page.is_disabled("#chat-stop")
    assert sent_messages(site)[0]["content"] == "line one\nline two"


def test_history_survives_a_reload_and_regenerate_edit_clear(
    page: Any, start_site: StartSite
) -> None:
    site = start_site()  # every answer is "Hello world"
    open_playground(page, site.url)
    send_message(page, "First question")
    wait_answer_stats(page)
    page.reload()
    page.wait_for_selector("#model option", state="attached")
    assert conversation(page) == [("user", "First question"), ("assistant", "Hello world")]

    page.click("#chat-regenerate")
    wait_until(lambda: len(site.fake.calls) == 2)
    wait_answer_stats(page)
    assert sent_messages(site, 1) == sent_messages(site, 0)
    assert len(conversation(page)) == 2

    page.click(".message.user button:has-text('Edit')")
    page.fill(".message.user textarea", "Second try")
    page.click("button:has-text('Send edited')")
    wait_until(lambda: len(site.fake.calls) == 3)
    wait_answer_stats(page)
    assert sent_messages(site) == [{"role": "user", "content": "Second try"}]
    assert conversation(page) == [("user", "Second try"), ("assistant", "Hello world")]

    page.click("#chat-clear")
    assert conversation(page) == []
    page.reload()
    page.wait_for_selector("#model option", state="attached")
    assert conversation(page) == []


def test_api_errors_are_shown_with_their_message(page: Any, start_site: StartSite) -> None:
    site = start_site(thinking_then_hang, max_concurrent_requests=1)
    open_playground(page, site.url)
    set_parameters(page, top_k=-5)
    send_message(page, "Hi")
    shown = error_text(page)
    assert shown.startswith("400 invalid_value:") and "top_k" in shown, shown
    assert conversation(page) == [("user", "Hi")]  # no empty answer left behind
    page.click("#error-close")

    set_parameters(page, top_k="")
    page.fill("#extra-fields", "[1, 2]")
    page.click("#chat-regenerate")
    assert error_text(page) == 'More fields must be a JSON object, e.g. {"min_p": 0.05}'
    page.fill("#extra-fields", "")
    body = {"model": "tiny-chat", "messages": [{"role": "user", "content": "x"}], "stream": True}
    with (
        httpx.Client() as client,
        client.stream("POST", site.url + "/v1/chat/completions", json=body),
    ):
        # The one place under the limit is taken: the page's request is refused.
        page.click("#chat-regenerate")
        shown = error_text(page)
    assert shown.startswith("429 rate_limit_exceeded:") and "retry after 1 s" in shown, shown

    site.fake.list_error = ServiceUnavailable("Triton is not reachable")
    page.reload()
    assert error_text(page) == "503 service_unavailable: Triton is not reachable"


def test_the_page_asks_for_an_api_key_and_keeps_it_in_the_browser(
    page: Any, start_site: StartSite
) -> None:
    site = start_site(api_keys=("sesame",))
    page.goto(site.url + "/")
    assert error_text(page).startswith("401 invalid_api_key:")
    assert page.is_visible("#api-key")
    page.fill("#api-key", "sesame")
    page.press("#api-key", "Tab")  # a change event: the models load with the key
    page.wait_for_selector("#model option", state="attached")
    assert page.is_hidden("#error")
    send_message(page, "Hi")
    wait_answer_stats(page)
    assert (
        page.evaluate("JSON.parse(localStorage.getItem('tritium.playground.apiKey'))") == "sesame"
    )
    page.click("button:has-text('Copy as curl')")
    snippet = page.input_value("#snippet-text")
    assert '"Authorization: Bearer $TRITIUM_API_KEY"' in snippet and "sesame" not in snippet


PAYLOAD = [
    '<img src=x onerror="window.__pwned=1">',
    " <script>window.__pwned=2</script>",
    "\n\n**bold** [js](javascript:window.__pwned=3) [docs](https://example.com/x)\n\n",
    "```html\n<b>tag</b>\n```\n",
    '<iframe srcdoc="<script>parent.__pwned=4</script>"></iframe>',
]
ELEMENTS_A_PAYLOAD_COULD_MAKE = "img, script, iframe, b"


def test_html_and_scripts_in_the_output_are_shown_as_text(page: Any, start_site: StartSite) -> None:
    site = start_site(pieces_script(PAYLOAD), pause_s=0.02)
    open_playground(page, site.url)
    send_message(page, "Say something dangerous")
    wait_answer_stats(page)
    answer = page.locator(".message.assistant .content")
    assert answer.locator(ELEMENTS_A_PAYLOAD_COULD_MAKE).count() == 0
    assert page.evaluate("window.__pwned") is None
    text = answer.text_content()
    assert PAYLOAD[0] in text and "<script>window.__pwned=2</script>" in text
    assert answer.locator("strong").inner_text() == "bold"
    assert answer.locator("pre code").inner_text() == "<b>tag</b>"
    links = answer.locator("a")
    assert links.count() == 1 and links.get_attribute("href") == "https://example.com/x"

    page.uncheck("#render-markdown")  # plain text: the characters as they came
    assert answer.locator("p.plain").text_content() == "".join(PAYLOAD)

    page.click("#tab-generate")
    page.fill("#generate-prompt", "<i>prompt</i>")
    page.press("#generate-prompt", "Enter")
    page.wait_for_selector("#generate-result .stats:not([hidden])")
    assert page.locator("#generate-output").text_content() == "".join(PAYLOAD)
    assert page.locator("#generate-result .completion *:not(span)").count() == 0
    assert page.locator("#generate-prompt-echo").text_content() == "<i>prompt</i>"
    assert page.evaluate("window.__pwned") is None


def test_the_generate_tab_completes_a_prompt(page: Any, start_site: StartSite) -> None:
    site = start_site(pieces_script(["Once", " upon", " a", " time"]), pause_s=0.02)
    open_playground(page, site.url)
    page.click("#tab-generate")
    assert page.is_visible("#panel-generate") and page.is_hidden("#panel-chat")
    set_parameters(page, max_tokens=7)
    page.fill("#generate-prompt", "Tell me")
    page.click("#generate-send")
    page.wait_for_selector("#generate-result .stats:not([hidden])")
    assert page.locator("#generate-output").text_content() == "Once upon a time"
    assert "finish: stop" in page.inner_text("#generate-result .stats")
    inputs = site.fake.calls[-1][1]
    assert inputs.text_input == "Tell me" and inputs.sampling_parameters["max_tokens"] == 7


def test_copied_requests_run_as_the_page_sent_them(page: Any, start_site: StartSite) -> None:
    site = start_site()
    open_playground(page, site.url)
    set_parameters(page, temperature=0.5, top_p=0.9, top_k=7, seed=3, max_tokens=20)
    page.fill("#stop", "END\nSTOP")
    page.fill("#extra-fields", '{"min_p": 0.05, "ignore_eos": true}')
    send_message(page, 'It\'s a "quoted" question')
    wait_answer_stats(page)
    sent = site.fake.calls[-1][1]
    assert sent.sampling_parameters["top_k"] == 7 and sent.sampling_parameters["stop"] == [
        "END",
        "STOP",
    ]
    assert sent.sampling_parameters["min_p"] == 0.05

    page.click("button:has-text('Copy as Python')")
    python = page.input_value("#snippet-text")
    assert 'extra_body={"top_k": 7, "min_p": 0.05, "ignore_eos": True}' in python
    run = subprocess.run(
        [sys.executable, "-c", python], capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith("Hello world"), run.stdout
    page.click("#snippet-close")

    snippets = [site.fake.calls[-1][1]]
    if shutil.which("curl"):
        page.click("button:has-text('Copy as curl')")
        curl = page.input_value("#snippet-text")
        run = subprocess.run(["bash", "-c", curl], capture_output=True, text=True, timeout=60)
        assert run.returncode == 0 and "data: [DONE]" in run.stdout, run.stderr
        snippets.append(site.fake.calls[-1][1])
    for copied in snippets:
        assert copied.messages == sent.messages
        assert copied.sampling_parameters == sent.sampling_parameters
        assert copied is not sent


def test_the_output_format_box_shows_only_what_the_server_accepts(
    page: Any, start_site: StartSite
) -> None:
    site = start_site()
    probe = {
        "model": "no-such-model",
        "messages": [{"role": "user", "content": "{}"}],
        "response_format": {"type": "json_object"},
    }
    status = httpx.post(site.url + "/v1/chat/completions", json=probe).status_code
    accepted = status == 404  # the field passed; only the model is unknown
    open_playground(page, site.url)
    page.wait_for_selector("#json-mode-field[data-probed]", state="attached")
    assert page.is_visible("#json-mode-field") == accepted
    if accepted:
        page.select_option("#response-format", "json_schema")
        page.fill("#json-schema", '{"type": "object"}')
    send_message(page, "Hi")
    wait_answer_stats(page)
    page.click("button:has-text('Copy as curl')")
    asked = json.loads(page.input_value("#snippet-text").split("-d '", 1)[1].rstrip("'"))
    if accepted:
        assert asked["response_format"] == {
            "type": "json_schema",
            "json_schema": {"name": "playground", "schema": {"type": "object"}},
        }
    else:  # nothing that would be refused reaches the request
        assert "response_format" not in asked


def test_the_api_reference_at_docs_works_offline(page: Any, start_site: StartSite) -> None:
    site = start_site(api_keys=("sesame",))  # the reference needs no key, like the schema
    page.goto(site.url + "/docs")
    page.wait_for_selector("#reference[aria-busy='false']", state="attached")
    assert page.is_hidden("#error")
    titles = page.locator(".operation h2").all_inner_texts()
    assert "POST /v1/chat/completions" in titles and "GET /v1/models" in titles
    chat = page.locator("section.operation", has_text="POST /v1/chat/completions")
    assert chat.locator("h3 a").inner_text() == "ChatCompletionRequest"
    assert "422" not in chat.inner_text()  # FastAPI lists it; the adapter never sends it
    request = page.locator(
        "#schema-ChatCompletionRequest + p + table, #schema-ChatCompletionRequest + table"
    )
    temperature = request.locator("tr", has=page.locator("code", has_text="temperature"))
    assert "≥ 0" in temperature.inner_text() and "≤ 2" in temperature.inner_text()
    messages = request.locator("tr", has=page.locator("code", has_text="messages")).first
    assert "required" in messages.inner_text()
    assert messages.locator("a").get_attribute("href") == "#schema-ChatMessage"
    assert page.locator("#schema-ChatMessage").count() == 1


MARKDOWN_CASES = [
    ("Hello **bold** and *it*", "<p>Hello <strong>bold</strong> and <em>it</em></p>"),
    ("snake_case_name and __init__", "<p>snake_case_name and <strong>init</strong></p>"),
    ("a `<b>` b", "<p>a <code>&lt;b&gt;</code> b</p>"),
    ("# Title\ntext", "<h3>Title</h3><p>text</p>"),
    ("- one\n- two\n  more", "<ul><li>one</li><li>two<br>more</li></ul>"),
    ("3. three\n4. four", '<ol start="3"><li>three</li><li>four</li></ol>'),
    ("> quoted", "<blockquote>quoted</blockquote>"),
    ("```py\nx = 1\n```", '<pre><code data-language="py">x = 1</code></pre>'),
    ("```\nstill streaming", "<pre><code>still streaming</code></pre>"),
    ("[a](https://x.org/y) [b](data:text/html,x)", '<p><a href="https://x.org/y" '
     'rel="noopener noreferrer nofollow" target="_blank">a</a> [b](data:text/html,x)</p>'),
    ("line one\nline two\n\n---\n", "<p>line one<br>line two</p><hr>"),
]  # fmt: skip


def test_markdown_covers_what_models_write(page: Any, start_site: StartSite) -> None:
    site = start_site()
    open_playground(page, site.url)
    for text, html in MARKDOWN_CASES:
        rendered = page.evaluate(
            """(text) => { const box = document.createElement('div');
                           TritiumMarkdown.render(text, box); return box.innerHTML; }""",
            text,
        )
        assert rendered == html, text


UNLABELLED = """() => [...document.querySelectorAll('input, select, textarea, button')]
  .filter((node) => !(node.labels && node.labels.length) && !node.getAttribute('aria-label')
    && !node.getAttribute('aria-labelledby') && !(node.tagName === 'BUTTON' && node.textContent.trim()))
  .map((node) => node.outerHTML)"""


def test_every_control_has_a_label_and_the_tabs_follow_the_keyboard(
    page: Any, start_site: StartSite
) -> None:
    site = start_site()
    open_playground(page, site.url)
    send_message(page, "Hi")  # an answer adds its own buttons
    wait_answer_stats(page)
    page.click(".message.user button:has-text('Edit')")  # and an editor
    assert page.evaluate(UNLABELLED) == []
    page.focus("#tab-chat")
    page.keyboard.press("ArrowRight")
    assert page.get_attribute("#tab-generate", "aria-selected") == "true"
    assert page.is_visible("#panel-generate") and page.is_hidden("#panel-chat")
    page.keyboard.press("ArrowLeft")
    assert page.is_visible("#panel-chat")
