"""The playground's files as the adapter serves them (no browser): caching, the page's
security headers, no key needed, nothing fetched from another host."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from adapter.app import create_app
from adapter.config import AdapterConfig
from adapter.playground import PAGES, STATIC_DIR, load_assets, render_page
from tests.adapter.fake_triton import FakeTriton

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(AdapterConfig(api_keys=("secret",)), triton_factory=lambda _: FakeTriton())
    transport = httpx.ASGITransport(app=app)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://adapter") as http,
    ):
        yield http


def asset_urls(page: str) -> list[str]:
    return re.findall(r'(?:src|href)="(/playground/[^"]+)"', page)


async def test_the_page_needs_no_key_and_names_every_asset_by_version(
    client: httpx.AsyncClient,
) -> None:
    response = await client.get("/")
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/html; charset=utf-8"
    assert response.headers["cache-control"] == "no-cache"
    policy = response.headers["content-security-policy"]
    assert "script-src 'self'" in policy and "connect-src 'self'" in policy
    assert "unsafe-inline" not in policy
    urls = asset_urls(response.text)
    docs = await client.get("/docs")
    assert docs.headers["content-security-policy"] == policy
    named = {url.split("?")[0].removeprefix("/playground/") for url in urls}
    named |= {url.split("?")[0].removeprefix("/playground/") for url in asset_urls(docs.text)}
    assert named == set(load_assets())  # every file is used, and every one used exists
    for url in urls:
        asset = await client.get(url)
        assert asset.status_code == 200, url
        assert asset.headers["cache-control"] == "public, max-age=31536000, immutable"
        assert asset.headers["etag"].strip('"') == url.split("?v=")[1]
    # The API itself still wants the key.
    assert (await client.get("/v1/models")).status_code == 401


async def test_unchanged_files_answer_304(client: httpx.AsyncClient) -> None:
    page = await client.get("/")
    again = await client.get("/", headers={"If-None-Match": page.headers["etag"]})
    assert again.status_code == 304 and again.content == b""
    script = await client.get("/playground/playground.js")  # no version: revalidated
    assert script.headers["cache-control"] == "no-cache"
    assert script.headers["content-type"] == "text/javascript; charset=utf-8"
    assert (
        await client.get(
            "/playground/playground.js", headers={"If-None-Match": script.headers["etag"]}
        )
    ).status_code == 304


async def test_unknown_files_are_a_404_envelope(client: httpx.AsyncClient) -> None:
    for path in ("/playground/nope.js", "/playground/../app.py", "/index.html"):
        response = await client.get(path)
        assert response.status_code == 404, path
        assert set(response.json()["error"]) == {"message", "type", "param", "code"}


async def test_the_openapi_schema_is_served_and_leaves_the_page_out(
    client: httpx.AsyncClient,
) -> None:
    schema = (await client.get("/openapi.json")).json()
    assert "/v1/chat/completions" in schema["paths"]
    assert "/" not in schema["paths"]
    assert not any(path.startswith("/playground") for path in schema["paths"])
    # FastAPI's Swagger UI and ReDoc load their scripts from a CDN: /docs is our own page.
    assert PAGES["/docs"] == "docs.html"
    assert "cdn" not in (await client.get("/docs")).text.lower()
    assert (await client.get("/redoc")).status_code == 404


def test_no_file_points_at_another_host() -> None:
    for path in STATIC_DIR.iterdir():
        text = path.read_text(encoding="utf-8")
        assert not re.search(r"""(src|href|url)\s*[=(]\s*["']?(https?:)?//""", text), path.name
        assert not re.search(r"\.(inner|outer)HTML\s*=|insertAdjacentHTML", text), path.name
        assert "eval(" not in text and "document.write" not in text, path.name


def test_an_unknown_placeholder_fails_at_startup(tmp_path: Path) -> None:
    (tmp_path / "index.html").write_text('<script src="{{missing.js}}"></script>')
    with pytest.raises(ValueError, match=r"missing\.js"):
        render_page("index.html", {}, tmp_path)
