"""The README's screenshot of the playground mid-answer, on the real stack:

    .venv/bin/python -m tests.playground.screenshot docs/playground.png

Starts the stack (tests/stack.py) on the default model, asks one question, asks a second
and takes the picture while that answer is still streaming, then stops it."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from tests.playground.browser import (
    answer_states,
    open_playground,
    send_message,
    set_parameters,
    wait_answer_stats,
    watch_answer,
)
from tests.playground.conftest import HERMETIC_ARGS, chromium_path
from tests.stack import default_weights_dir, running_stack, scratch_dir
from tests.stress import load

WORDS_BEFORE_THE_PICTURE = 40


def take(path: Path) -> None:
    from playwright.sync_api import sync_playwright

    executable = chromium_path()
    if executable is None:
        raise SystemExit("no chromium: apt-get install -y chromium")
    with (
        scratch_dir("tritium-screenshot-") as work_dir,
        running_stack(default_weights_dir(), work_dir) as stack,
        sync_playwright() as playwright,
    ):
        for _ in range(3):  # warm: the picture shows a served answer's speed, not the first's
            assert load.completes_normally(stack, max_tokens=16)
        browser = playwright.chromium.launch(
            executable_path=executable, headless=True, args=HERMETIC_ARGS
        )
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.set_default_timeout(180_000)  # a busy 2-core machine decodes slowly
        open_playground(page, stack.base_url)
        set_parameters(page, temperature=0, max_tokens=120)
        send_message(page, "What is the capital of France?")
        wait_answer_stats(page)
        watch_answer(page)
        send_message(page, "Write a short poem about the sea, with a title.")
        deadline = time.monotonic() + 120
        while len(" ".join(answer_states(page)[-1:]).split()) < WORDS_BEFORE_THE_PICTURE:
            if time.monotonic() > deadline:
                raise SystemExit("the answer did not come")
            time.sleep(0.05)
        page.screenshot(path=str(path))
        page.click("#chat-stop")
        wait_answer_stats(page, count=2)
        browser.close()
    print(f"wrote {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("path", type=Path, help="where the PNG goes")
    take(parser.parse_args().path)


if __name__ == "__main__":
    main()
