"""A real headless Chromium (Debian's `chromium` package) driven by playwright, and the
adapter on a paced fake backend (tests/playground/site.py).

`make test` installs chromium when it is missing and it runs as root (see the Makefile);
elsewhere the browser tests skip and say what to install. Playwright's own browser
download is never used: the browser is launched by its path.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import pytest

from adapter.config import AdapterConfig
from adapter.contract import GenerateInputs
from tests.playground.site import PacedFakeTriton, Site, serve_adapter

BROWSER_NAMES = ("chromium", "chromium-browser")
INSTALL_HINT = (
    "install Debian's chromium (`apt-get install -y chromium`, which `make test` does as root)"
    " and the test extra (`pip install -e '.[test]'`, for playwright)"
)
# Chromium resolves no host but the loopback: nothing a page does can leave this machine.
HERMETIC_ARGS = ["--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1"]


def chromium_path() -> str | None:
    configured = os.environ.get("TRITIUM_CHROMIUM")
    if configured:
        return configured
    return next(filter(None, (shutil.which(name) for name in BROWSER_NAMES)), None)


def skip_or_fail(reason: str) -> None:
    """Skip where the browser cannot be had; in CI as root, `make test` installed it, so its
    absence is a broken setup and fails."""
    if os.environ.get("CI") and os.geteuid() == 0:
        pytest.fail(f"{reason} (CI runs as root: make test should have installed it)")
    pytest.skip(reason)


# Module scope, not session: while playwright's sync API runs, its event loop is the
# thread's running loop, and the suite's asyncio tests in other modules could not start theirs.
@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    executable = chromium_path()
    if executable is None:
        skip_or_fail(f"no Chromium found: {INSTALL_HINT}")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        skip_or_fail(f"playwright is not installed: {INSTALL_HINT}")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=executable, headless=True, args=HERMETIC_ARGS
        )
        yield launched
        launched.close()


@dataclass
class PageWatch:
    """What a page did: every URL it asked for, uncaught errors, console errors."""

    urls: list[str] = field(default_factory=list)
    page_errors: list[str] = field(default_factory=list)
    console_errors: list[str] = field(default_factory=list)

    def foreign_urls(self) -> list[str]:
        return [
            url
            for url in self.urls
            if urlsplit(url).scheme != "data" and urlsplit(url).hostname != "127.0.0.1"
        ]


@pytest.fixture
def watched_page(browser: Any) -> Iterator[tuple[Any, PageWatch]]:
    """A fresh browser context (empty local storage) and its page; fails the test if the
    page threw, broke its Content-Security-Policy or asked for anything off 127.0.0.1."""
    context = browser.new_context()
    page = context.new_page()
    page.set_default_timeout(20_000)
    watch = PageWatch()
    context.on("request", lambda request: watch.urls.append(request.url))
    page.on("pageerror", lambda error: watch.page_errors.append(str(error)))
    page.on(
        "console",
        lambda message: (
            watch.console_errors.append(message.text) if message.type == "error" else None
        ),
    )
    yield page, watch
    context.close()
    assert not watch.page_errors, watch.page_errors
    assert not [text for text in watch.console_errors if "Content Security Policy" in text]
    assert not watch.foreign_urls(), watch.foreign_urls()


@pytest.fixture
def page(watched_page: tuple[Any, PageWatch]) -> Any:
    return watched_page[0]


StartSite = Callable[..., Site]


@pytest.fixture
def start_site() -> Iterator[StartSite]:
    """`start_site(script, pause_s=..., api_keys=...)`: an adapter on a paced fake."""
    with ExitStack() as running:

        def start(
            script: Callable[[GenerateInputs], list] | None = None,
            pause_s: float = 0.0,
            **config: Any,
        ) -> Site:
            fake = PacedFakeTriton(pause_s=pause_s)
            if script is not None:
                fake.respond = script
            url = running.enter_context(serve_adapter(AdapterConfig(**config), fake))
            return Site(url, fake)

        yield start
