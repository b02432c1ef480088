"""Security properties that need no server: derived from the code, so they hold for new code too.

- Every route but the public probes needs a key; the list comes from `app.routes`.
- Keys never reach a log line; CORS answers no origin unless configured.
- Chat templates render in jinja2's sandbox and come only from the model directory.
- Triton binds loopback with model control off; nothing on the wire is unpickled.
"""

from __future__ import annotations

import ast
import logging
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import jinja2.exceptions
import pytest
from fastapi import FastAPI
from starlette.routing import BaseRoute, Route
from transformers.utils.chat_template_utils import render_jinja_template

from adapter.app import create_app
from adapter.config import AdapterConfig
from adapter.schemas import ChatCompletionRequest, CompletionRequest
from tests.adapter.fake_triton import FakeTriton
from tests.conftest import REPO_ROOT
from tritium import tritonserver
from tritium.serve_options import ServeOptions

KEY = "sk-reliability-secret-7f3a"
PUBLIC_PATHS = {
    "/health",  # Kubernetes probes carry no key
    "/health/ready",
    "/metrics",  # Prometheus scrapes without a key (counts and latencies only)
    "/",  # the playground's static pages and files: no data; the page asks for a key on a 401
    "/docs",
    "/playground/{name}",
}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def keyed_app(**settings: object) -> FastAPI:
    config = AdapterConfig(api_keys=(KEY,), **settings)  # type: ignore[arg-type]
    return create_app(config, triton_factory=lambda _config: FakeTriton())


@pytest.fixture
async def keyed_client() -> Iterator[httpx.AsyncClient]:
    app = keyed_app()
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://adapter") as http,
    ):
        yield http


def api_routes(app: FastAPI) -> list[tuple[str, str]]:
    """(method, path) of every route the app serves (HEAD aside), walking included routers."""
    pairs: list[tuple[str, str]] = []

    def walk(routes: list[BaseRoute]) -> None:
        for route in routes:
            if hasattr(route, "original_router"):  # FastAPI's included router: look inside
                walk(route.original_router.routes)
            elif isinstance(route, Route):  # APIRoute and plain routes (/openapi.json)
                path = re.sub(r":\w+}", "}", route.path)  # {model_id:path} -> {model_id}
                pairs.extend((method, path) for method in sorted(route.methods - {"HEAD"}))
            else:  # a mount or websocket would escape this test: make it fail instead
                raise AssertionError(f"unexpected route type {type(route).__name__}")

    walk(app.routes)
    return pairs


@pytest.mark.anyio
async def test_every_route_but_the_probes_needs_a_key(keyed_client: httpx.AsyncClient) -> None:
    app = keyed_app()
    routes = api_routes(app)
    assert ("POST", "/v1/chat/completions") in routes and ("GET", "/metrics") in routes
    # The walk sees at least what the OpenAPI schema documents.
    assert set(app.openapi()["paths"]) <= {path for _method, path in routes}
    for method, path in routes:
        concrete = path.replace("{model}", "tiny-chat").replace("{model_id}", "tiny-chat")
        response = await keyed_client.request(method, concrete, json={})
        if path in PUBLIC_PATHS:
            assert response.status_code != 401, path
            continue
        if path == "/openapi.json":  # public like FastAPI's default: it holds no data or keys
            continue
        assert response.status_code == 401, f"{method} {path} answered {response.status_code}"
        assert response.json()["error"]["code"] == "invalid_api_key"
        wrong = await keyed_client.request(
            method, concrete, json={}, headers={"Authorization": "Bearer sk-wrong"}
        )
        assert wrong.status_code == 401, f"{method} {path} took a wrong key"


@pytest.mark.anyio
async def test_keys_never_reach_the_logs(
    keyed_client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    headers = {"Authorization": f"Bearer {KEY}"}
    body = {"model": "tiny-chat", "messages": [{"role": "user", "content": "hi"}]}
    assert (await keyed_client.post("/v1/chat/completions", json=body, headers=headers)).is_success
    wrong = {"Authorization": f"Bearer {KEY}-wrong"}
    refused = await keyed_client.post("/v1/chat/completions", json=body, headers=wrong)
    assert refused.status_code == 401
    assert (await keyed_client.get("/v1/models", headers=headers)).is_success
    logged = "\n".join(record.getMessage() for record in caplog.records)
    assert "access" in logged and KEY not in logged
    assert KEY not in repr(AdapterConfig(api_keys=(KEY,)))
    assert KEY not in repr(ServeOptions(model_repository=Path("m"), api_keys=(KEY,)))


@pytest.mark.anyio
async def test_cors_denies_by_default() -> None:
    app = create_app(AdapterConfig(), triton_factory=lambda _config: FakeTriton())
    transport = httpx.ASGITransport(app=app)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://adapter") as http,
    ):
        origin = {"Origin": "https://evil.example"}
        preflight = await http.options(
            "/v1/chat/completions",
            headers={**origin, "Access-Control-Request-Method": "POST"},
        )
        models = await http.get("/v1/models", headers=origin)
    for response in (preflight, models):
        assert "access-control-allow-origin" not in response.headers


def test_chat_templates_render_in_a_sandbox() -> None:
    """engine/tokenizer.py renders through transformers' apply_chat_template: its
    environment is the immutable sandbox (checked here, so a transformers that dropped it
    would fail this test)."""
    escape = "{{ ''.__class__.__mro__[1].__subclasses__() }}"
    with pytest.raises(jinja2.exceptions.SecurityError):
        render_jinja_template([[]], chat_template=escape)
    mutate = "{% set items = [] %}{{ items.append(1) }}"
    with pytest.raises(jinja2.exceptions.SecurityError):
        render_jinja_template([[]], chat_template=mutate)
    source = (REPO_ROOT / "engine" / "tokenizer.py").read_text()
    assert "chat_template=self.chat_template" in source  # the model's template, never another


def test_no_request_field_carries_a_template() -> None:
    """The request schemas reject unknown fields; the one field named for the template
    carries variables only, and the engine refuses one that would replace the template
    (tests/engine/test_tokenizer.py::test_chat_template_kwargs_cannot_replace_the_template_or_its_inputs)."""
    for schema in (ChatCompletionRequest, CompletionRequest):
        assert schema.model_config.get("extra") == "forbid"
        named = [name for name in schema.model_fields if "template" in name]
        assert named == (["chat_template_kwargs"] if schema is ChatCompletionRequest else []), (
            schema
        )
    from engine.tokenizer import _RESERVED_TEMPLATE_VARIABLES

    assert {"chat_template", "messages", "tools"} <= _RESERVED_TEMPLATE_VARIABLES


def test_triton_binds_loopback_with_model_control_off() -> None:
    options = ServeOptions(model_repository=Path("m"))
    assert options.triton_host == "127.0.0.1" and options.host == "127.0.0.1"
    command = tritonserver.build_command(
        tritonserver.TritonServerOptions(
            executable=Path("tritonserver"), model_repository=Path("m"), backend_directory=Path("b")
        )
    )
    for flag in ("--http-address", "--grpc-address", "--metrics-address"):
        assert f"{flag}=127.0.0.1" in command
    assert "--model-control-mode=none" in command


def test_nothing_on_the_wire_is_unpickled() -> None:
    """No module that handles requests imports pickle-like deserializers."""
    forbidden = {"pickle", "cPickle", "dill", "marshal", "shelve", "joblib", "cloudpickle"}
    offenders = []
    for package in ("adapter", "engine", "tritium"):
        for path in sorted((REPO_ROOT / package).rglob("*.py")):
            tree = ast.parse(path.read_text(), str(path))
            for node in ast.walk(tree):
                names = []
                if isinstance(node, ast.Import):
                    names = [alias.name.split(".")[0] for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.module:
                    names = [node.module.split(".")[0]]
                elif isinstance(node, ast.Attribute) and node.attr in ("loads", "load"):
                    value = node.value
                    if isinstance(value, ast.Name) and value.id in ("torch", "numpy", "np"):
                        names = [f"{value.id}.{node.attr}"]
                unsafe = forbidden | {"torch.load", "np.load", "numpy.load"}
                offenders += [f"{path.relative_to(REPO_ROOT)}: {n}" for n in names if n in unsafe]
    assert not offenders


@pytest.mark.anyio
async def test_metrics_are_scraped_without_a_key_when_keys_are_set(
    keyed_client: httpx.AsyncClient,
) -> None:
    """The scrape annotations and PodMonitors carry no key: /metrics must answer them."""
    headers = {"Authorization": f"Bearer {KEY}"}
    body = {"model": "tiny-chat", "messages": [{"role": "user", "content": "hi"}]}
    assert (await keyed_client.post("/v1/chat/completions", json=body, headers=headers)).is_success
    response = await keyed_client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    assert 'tritium_adapter_completion_tokens_total{model="tiny-chat"}' in response.text
    assert KEY not in response.text
