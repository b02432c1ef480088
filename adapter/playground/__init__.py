"""The web playground: a static page at `/` that talks to this server's own `/v1` API,
and an API reference at `/docs` drawn from `/openapi.json`.

The files in `static/` are read once, when the app is built, and served from memory.
Each script and stylesheet URL in the page carries a hash of the file
(`/playground/playground.js?v=<hash>`), so a browser caches them for good and asks
again only after an upgrade; the page itself is revalidated by its ETag (a 304 when
unchanged). The page polls nothing: when it loads it asks for `/v1/models` and sends one
request that checks whether `response_format` is accepted (it generates nothing); then a
request when the user sends one.

The page is served with a Content-Security-Policy that allows scripts, styles and
connections from this origin only: no CDN, nothing leaves the server's address, and
a model's output that slipped into the DOM as HTML still could not run a script.
Neither the page nor its assets need an API key (the page asks for one when the API
answers 401).
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import Response

from adapter.errors import NotFound

STATIC_DIR = Path(__file__).resolve().parent / "static"
# URL -> page: the playground, and an API reference drawn from /openapi.json (FastAPI's own
# Swagger UI and ReDoc pages load their scripts from a CDN, so they stay off).
PAGES = {"/": "index.html", "/docs": "docs.html"}
ASSET_MEDIA_TYPES = {".css": "text/css; charset=utf-8", ".js": "text/javascript; charset=utf-8"}
ASSET_PREFIX = "/playground/"

CONTENT_SECURITY_POLICY = "; ".join(
    [
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",
        "connect-src 'self'",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
    ]
)
PAGE_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
REVALIDATE = "no-cache"  # keep it, but ask (ETag) before each use
FOREVER = "public, max-age=31536000, immutable"


@dataclass(frozen=True)
class StaticFile:
    body: bytes
    media_type: str
    etag: str  # quoted, as in the ETag header

    @classmethod
    def of(cls, body: bytes, media_type: str) -> StaticFile:
        return cls(body, media_type, f'"{hashlib.sha256(body).hexdigest()[:16]}"')

    @property
    def version(self) -> str:
        return self.etag.strip('"')


def load_assets(static_dir: Path = STATIC_DIR) -> dict[str, StaticFile]:
    """Every .css and .js file of the playground, by file name."""
    return {
        path.name: StaticFile.of(path.read_bytes(), ASSET_MEDIA_TYPES[path.suffix])
        for path in sorted(static_dir.iterdir())
        if path.suffix in ASSET_MEDIA_TYPES
    }


def render_page(
    name: str, assets: dict[str, StaticFile], static_dir: Path = STATIC_DIR
) -> StaticFile:
    """The page `name` with each `{{asset}}` placeholder replaced by its versioned URL."""
    page = (static_dir / name).read_text(encoding="utf-8")
    for asset_name, asset in assets.items():
        page = page.replace(
            "{{" + asset_name + "}}", f"{ASSET_PREFIX}{asset_name}?v={asset.version}"
        )
    if "{{" in page:
        unknown = page[page.index("{{") :].split("}}", 1)[0] + "}}"
        raise ValueError(f"{name} names an asset that is not in {static_dir}: {unknown}")
    return StaticFile.of(page.encode(), "text/html; charset=utf-8")


def _answer(request: Request, file: StaticFile, cache_control: str, **headers: str) -> Response:
    headers = {"ETag": file.etag, "Cache-Control": cache_control, **headers}
    if file.etag in request.headers.get("if-none-match", ""):
        return Response(status_code=304, headers=headers)
    return Response(file.body, media_type=file.media_type, headers=headers)


def _page(file: StaticFile) -> Callable[[Request], Awaitable[Response]]:
    async def page(request: Request) -> Response:
        return _answer(request, file, REVALIDATE, **PAGE_HEADERS)

    return page


def playground_router(static_dir: Path = STATIC_DIR) -> APIRouter:
    assets = load_assets(static_dir)
    router = APIRouter(include_in_schema=False)

    for url, name in PAGES.items():
        router.add_api_route(url, _page(render_page(name, assets, static_dir)), methods=["GET"])

    @router.get(ASSET_PREFIX + "{name}")
    async def asset(name: str, request: Request) -> Response:
        file = assets.get(name)
        if file is None:
            raise NotFound(f"Unknown playground file: {name}", code="unknown_url")
        # A URL with the current hash never changes; any other is answered but revalidated.
        fresh = request.query_params.get("v") == file.version
        return _answer(request, file, FOREVER if fresh else REVALIDATE, **PAGE_HEADERS)

    return router


def mount_playground(app: FastAPI) -> None:
    app.include_router(playground_router())
