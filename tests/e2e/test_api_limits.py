"""Errors, auth, limits, cancellation, observability and several Triton endpoints, on the
real stack. Cases that need other adapter flags run a second adapter process in front
of the same Triton (`start_adapter`)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator

import httpx
import openai
import pytest

from tests.e2e.conftest import Adapter, Stack, StartAdapter, free_port

pytestmark = pytest.mark.e2e

KEY = "sk-test-key"
HoldStream = Callable[..., None]  # (base_url, headers=None)
LONG = {
    "messages": [{"role": "user", "content": "Write a very long essay about the ocean."}],
    "max_tokens": 1500,
    "ignore_eos": True,
}


@pytest.fixture(scope="module")
def guarded(start_adapter: StartAdapter) -> Adapter:
    """API key, a 2 KiB body limit and room for one generation request at a time."""
    return start_adapter(
        "--api-key", KEY, "--max-body-bytes", "2048",
        "--max-concurrent-requests", "1", "--retry-after-s", "3",
    )  # fmt: skip


def assert_envelope(response: httpx.Response, status: int, code: str) -> dict[str, object]:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    assert error["code"] == code, error
    return error


def chat_body(model: str, **fields: object) -> dict[str, object]:
    return {
        "model": model,
        "messages": [{"role": "user", "content": "Hi"}],
        "max_tokens": 4,
        **fields,
    }


@pytest.fixture
def held_stream(stack: Stack) -> Iterator[HoldStream]:
    """`hold(base_url, headers)` starts a long streamed chat and keeps it running."""
    clients: list[httpx.Client] = []
    streams = []
    iterators: list[Iterator[str]] = []

    def hold(base_url: str, headers: dict[str, str] | None = None) -> None:
        client = httpx.Client(timeout=60, headers=headers or {})
        clients.append(client)
        stream = client.stream(
            "POST",
            base_url + "/chat/completions",
            json={"model": stack.model, "stream": True, **LONG},
        )
        response = stream.__enter__()
        streams.append(stream)
        assert response.status_code == 200
        lines = response.iter_lines()
        next(lines)  # the request runs in the engine now
        # Keep the iterator: dropping it would close the connection (and cancel the request).
        iterators.append(lines)

    yield hold
    for stream in streams:
        stream.__exit__(None, None, None)
    for client in clients:
        client.close()


def wait_until_idle(stack: Stack, timeout_s: float = 10) -> None:
    deadline = time.monotonic() + timeout_s
    while stack.metric("tritium_requests_running") > 0:
        assert time.monotonic() < deadline, "the engine still runs a request nobody waits for"
        time.sleep(0.2)


# --- errors ---------------------------------------------------------------------------


def test_401_without_or_with_a_wrong_key(stack: Stack, guarded: Adapter) -> None:
    url = guarded.base_url + "/models"
    assert_envelope(httpx.get(url), 401, "invalid_api_key")
    wrong = httpx.get(url, headers={"Authorization": "Bearer sk-wrong"})
    assert_envelope(wrong, 401, "invalid_api_key")
    assert KEY not in wrong.text
    sdk = openai.OpenAI(base_url=guarded.base_url, api_key=KEY, max_retries=0)
    assert stack.model in [model.id for model in sdk.models.list().data]
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=guarded.base_url, api_key="sk-wrong", max_retries=0).models.list()
    assert httpx.get(guarded.base_url.removesuffix("/v1") + "/health/ready").status_code == 200


def test_404_unknown_model_and_route(stack: Stack) -> None:
    for path, body in (
        ("/completions", {"model": "nope", "prompt": "x"}),
        ("/chat/completions", chat_body("nope")),
    ):
        error = assert_envelope(
            httpx.post(stack.base_url + path, json=body), 404, "model_not_found"
        )
        assert error["param"] == "model" and stack.model in error["message"]
    assert_envelope(httpx.get(stack.base_url + "/models/nope"), 404, "model_not_found")
    assert_envelope(httpx.get(stack.base_url + "/nowhere"), 404, "unknown_url")


def test_413_by_content_length_and_chunked(stack: Stack, guarded: Adapter) -> None:
    headers = {"Authorization": f"Bearer {KEY}"}
    big = chat_body(stack.model, stop="x" * 4000)
    url = guarded.base_url + "/chat/completions"
    assert_envelope(httpx.post(url, json=big, headers=headers), 413, "request_too_large")

    def chunks() -> Iterator[bytes]:  # no Content-Length: Transfer-Encoding: chunked
        data = json.dumps(big).encode()
        for start in range(0, len(data), 512):
            yield data[start : start + 512]

    assert_envelope(httpx.post(url, content=chunks(), headers=headers), 413, "request_too_large")


def test_429_with_retry_after_over_the_concurrency_limit(
    stack: Stack, guarded: Adapter, held_stream: HoldStream
) -> None:
    headers = {"Authorization": f"Bearer {KEY}"}
    held_stream(guarded.base_url, headers)
    refused = httpx.post(
        guarded.base_url + "/chat/completions", json=chat_body(stack.model), headers=headers
    )
    assert_envelope(refused, 429, "rate_limit_exceeded")
    assert refused.headers["Retry-After"] == "3"
    sdk = openai.OpenAI(base_url=guarded.base_url, api_key=KEY, max_retries=0)
    with pytest.raises(openai.RateLimitError):
        sdk.chat.completions.create(model=stack.model, messages=[{"role": "user", "content": "Hi"}])


def test_503_when_triton_is_unreachable(stack: Stack, start_adapter: StartAdapter) -> None:
    orphan = start_adapter("--triton-url", f"127.0.0.1:{free_port()}")
    response = httpx.post(orphan.base_url + "/chat/completions", json=chat_body(stack.model))
    assert "unreachable" in assert_envelope(response, 503, "service_unavailable")["message"]
    ready = httpx.get(orphan.base_url.removesuffix("/v1") + "/health/ready")
    assert_envelope(ready, 503, "service_unavailable")


# --- cancellation -----------------------------------------------------------------------


def test_non_streaming_request_is_aborted_when_the_client_gives_up(stack: Stack) -> None:
    wait_until_idle(stack)
    body = {"model": stack.model, **LONG}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(stack.base_url + "/chat/completions", json=body, timeout=3)
    # The engine was running it when the client left; now it must stop within a few steps.
    wait_until_idle(stack, timeout_s=5)
    assert stack.metric("tritium_requests_waiting") == 0


# --- observability ----------------------------------------------------------------------


def test_access_log_and_metrics(stack: Stack, guarded: Adapter) -> None:
    headers = {"Authorization": f"Bearer {KEY}", "X-Request-ID": "e2e-log-check-1"}
    response = httpx.post(
        guarded.base_url + "/chat/completions", json=chat_body(stack.model), headers=headers
    )
    assert response.status_code == 200 and response.headers["X-Request-ID"] == "e2e-log-check-1"
    time.sleep(0.2)
    lines = [
        json.loads(line)
        for line in guarded.log_path.read_text().splitlines()
        if line.startswith("{")
    ]
    access = [line for line in lines if line.get("request_id") == "e2e-log-check-1"]
    assert access and access[0]["event"] == "access" and access[0]["status"] == 200
    assert access[0]["path"] == "/v1/chat/completions" and access[0]["duration_ms"] > 0
    metrics = httpx.get(guarded.base_url.removesuffix("/v1") + "/metrics", headers=headers).text
    assert (
        'tritium_adapter_requests_total{method="POST",route="/v1/chat/completions",status="200"}'
        in metrics
    )
    assert f'tritium_adapter_completion_tokens_total{{model="{stack.model}"}}' in metrics
    assert "tritium_time_to_first_token_seconds" in httpx.get(stack.triton_metrics_url).text


# --- several Triton endpoints -------------------------------------------------------------


def endpoint_metric(adapter: Adapter, name: str) -> dict[str, float]:
    text = httpx.get(adapter.base_url.removesuffix("/v1") + "/metrics").text
    prefix = f'tritium_adapter_{name}{{url="'
    return {
        line[len(prefix) :].split('"', 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(prefix)
    }


def test_least_outstanding_routing_among_healthy_endpoints(
    stack: Stack, start_adapter: StartAdapter, held_stream: HoldStream
) -> None:
    """Two live endpoints (the same Triton reached by two names) and a dead one."""
    port = stack.triton_grpc_url.rsplit(":", 1)[1]
    live = [stack.triton_grpc_url, f"localhost:{port}"]
    dead = f"127.0.0.1:{free_port()}"
    routed = start_adapter("--triton-url", live[0], "--triton-url", dead, "--triton-url", live[1])
    models = httpx.get(routed.base_url + "/models").json()["data"]
    assert [(m["id"], m["max_model_len"]) for m in models] == [(stack.model, 2048)]
    assert endpoint_metric(routed, "triton_endpoint_healthy") == {live[0]: 1, dead: 0, live[1]: 1}
    held_stream(routed.base_url)
    held_stream(routed.base_url)
    # Each live endpoint got one of the two running requests; the dead one none.
    assert endpoint_metric(routed, "triton_requests_in_flight") == {live[0]: 1, dead: 0, live[1]: 1}
    replies: list[int] = []

    def ask() -> None:
        response = httpx.post(
            routed.base_url + "/chat/completions", json=chat_body(stack.model), timeout=60
        )
        replies.append(response.status_code)

    threads = [threading.Thread(target=ask) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert replies == [200] * 4
    sent = endpoint_metric(routed, "triton_requests_total")
    assert sent == {live[0]: sent[live[0]], dead: 0, live[1]: sent[live[1]]}
    assert sent[live[0]] + sent[live[1]] == 6
