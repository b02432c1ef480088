"""App-level behavior: isolation from torch/engine, metrics, request ids, CORS, logs."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from adapter.app import create_app
from adapter.config import AdapterConfig
from tests.adapter.fake_triton import FakeTriton

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_importing_the_adapter_pulls_in_neither_torch_nor_engine() -> None:
    code = (
        "import sys, adapter.app, adapter.triton_client, adapter.cli;"
        "adapter.app.create_app();"
        "import adapter, contract;"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'engine', 'tritium_kernels'));"
        "print(adapter.__file__); print(contract.__file__); print(bad)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, check=True
    )
    adapter_file, contract_file, bad = result.stdout.splitlines()
    for ours in (adapter_file, contract_file):  # ours, not a namesake
        assert Path(ours).resolve().is_relative_to(REPO_ROOT)
    assert bad == "[]"


def test_the_contract_imports_only_the_standard_library_and_numpy() -> None:
    code = (
        "import sys; before = set(sys.modules);"
        "import contract.tensors, contract.sampling, contract.errors, contract.outputs;"
        "new = [sys.modules[m] for m in set(sys.modules) - before];"
        "print(sorted({m.__name__.split('.')[0] for m in new"
        " if 'site-packages' in (getattr(m, '__file__', None) or '')}))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "['numpy']"


@pytest.mark.anyio
async def test_metrics_count_requests_and_tokens(client: httpx.AsyncClient) -> None:
    chat = {"model": "tiny-chat", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    await client.post("/v1/chat/completions", json=chat)
    await client.get("/v1/nothing")
    text = (await client.get("/metrics")).text
    assert "# TYPE tritium_adapter_requests_total counter" in text
    assert (
        'tritium_adapter_requests_total{method="POST",route="/v1/chat/completions",status="200"} 1.0'
        in text
    )
    assert 'tritium_adapter_requests_total{method="GET",route="unmatched",status="404"} 1.0' in text
    assert 'tritium_adapter_completion_tokens_total{model="tiny-chat"} 2.0' in text
    assert 'tritium_adapter_prompt_tokens_total{model="tiny-chat"} 5.0' in text
    assert 'tritium_adapter_time_to_first_token_seconds_count{model="tiny-chat"} 1.0' in text
    assert (
        'tritium_adapter_time_to_first_token_seconds_bucket{le="+Inf",model="tiny-chat"} 1.0'
        in text
    )
    assert "tritium_adapter_generation_requests_in_flight 0.0" in text
    # The process, as every Prometheus client exports it.
    assert "# TYPE process_cpu_seconds_total counter" in text
    assert "process_resident_memory_bytes " in text and "python_info{" in text


@pytest.mark.anyio
async def test_request_id_is_echoed_and_logged(
    client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="adapter.access"):
        response = await client.get("/health", headers={"X-Request-ID": "abc-123"})
    assert response.headers["x-request-id"] == "abc-123"
    entries = [json.loads(r.getMessage()) for r in caplog.records if r.name == "adapter.access"]
    assert entries[-1]["request_id"] == "abc-123"
    assert entries[-1]["method"] == "GET" and entries[-1]["path"] == "/health"
    assert entries[-1]["status"] == 200 and entries[-1]["duration_ms"] >= 0
    unsafe = await client.get("/health", headers={"X-Request-ID": "a b\tc"})  # not log-safe
    assert unsafe.headers["x-request-id"] != "a b\tc"


@pytest.mark.anyio
@pytest.mark.parametrize("origins", [(), ("http://ui.example",)])
async def test_cors_only_when_configured(origins: tuple[str, ...]) -> None:
    app = create_app(AdapterConfig(cors_origins=origins), triton_factory=lambda _c: FakeTriton())
    transport = httpx.ASGITransport(app=app)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://adapter") as http,
    ):
        response = await http.get("/v1/models", headers={"Origin": "http://ui.example"})
    allowed = response.headers.get("access-control-allow-origin")
    assert allowed == (origins[0] if origins else None)


@pytest.mark.anyio
async def test_lifespan_closes_the_backend() -> None:
    fake = FakeTriton()
    app = create_app(AdapterConfig(), triton_factory=lambda _c: fake)
    async with app.router.lifespan_context(app):
        assert app.state.adapter.backend is fake
    assert fake.closed and app.state.adapter is None
