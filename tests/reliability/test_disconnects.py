"""Clients that leave (dropped streams, timed-out requests, cancellations at every stage)
leave nothing behind in the engine, on the session stack. The full 200-stream storm is
`python -m tests.stress.disconnect_storm` (docs/reliability.md)."""

from __future__ import annotations

import asyncio
import json
import socket
import time

import httpx
import pytest

from tests.stack import Stack
from tests.stress import load

pytestmark = pytest.mark.e2e

IDLE_WITHIN_S = 2.0


@pytest.fixture
def kv_baseline(stack: Stack) -> float:
    """KV blocks in use with no request running (a warm-up request exports the metric)."""
    assert load.completes_normally(stack)
    assert load.wait_engine_idle(stack, float("inf"), 10) is not None
    return stack.metric("tritium_kv_blocks_used")


def assert_idle_then_serving(stack: Stack, kv_baseline: float) -> float:
    idle_after = load.wait_engine_idle(stack, kv_baseline, IDLE_WITHIN_S)
    assert idle_after is not None, (
        f"after {IDLE_WITHIN_S} s: running {stack.metric('tritium_requests_running')}, waiting "
        f"{stack.metric('tritium_requests_waiting')}, KV {stack.metric('tritium_kv_blocks_used')}"
        f" (baseline {kv_baseline})"
    )
    assert load.completes_normally(stack)
    return idle_after


def test_disconnect_storm(stack: Stack, kv_baseline: float) -> None:
    result = asyncio.run(load.disconnect_storm(stack, num_streams=48, max_lines_before_drop=4))
    assert result.statuses == {200: 48} and result.dropped == 48, result
    assert_idle_then_serving(stack, kv_baseline)


def test_timed_out_non_streaming_requests(stack: Stack, kv_baseline: float) -> None:
    assert asyncio.run(load.time_out_requests(stack, num_requests=24, timeout_s=2.0)) == 24
    assert_idle_then_serving(stack, kv_baseline)


def raw_request(stack: Stack, body: dict) -> socket.socket:
    """A chat request written straight to a socket, so the test decides when it closes."""
    host, port = stack.base_url.removeprefix("http://").removesuffix("/v1").split(":")
    payload = json.dumps(body).encode()
    connection = socket.create_connection((host, int(port)), timeout=30)
    connection.sendall(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        + f"Content-Length: {len(payload)}\r\n\r\n".encode()
        + payload
    )
    return connection


def test_cancellation_races(stack: Stack, kv_baseline: float) -> None:
    """Close at admission, during prefill, mid-decode and just after the final token."""
    long_prompt = "Summarize this. " + "The sea is wide and deep. " * 120  # ~800 tokens
    prefill_body = load.chat_body(stack.model, max_tokens=32, stream=True)
    prefill_body["messages"] = [{"role": "user", "content": long_prompt}]
    for attempt in range(12):
        # Admission: the request is sent, the connection closes before any answer.
        raw_request(stack, load.chat_body(stack.model, 64, stream=True)).close()
        # Prefill: the long prompt is still being computed when the client leaves.
        during_prefill = raw_request(stack, prefill_body)
        time.sleep(0.02 * (attempt % 4))
        during_prefill.close()
    asyncio.run(load.disconnect_storm(stack, num_streams=12, max_lines_before_drop=6, seed=1))
    assert_idle_then_serving(stack, kv_baseline)
    # Just after the final token: read up to the finish_reason chunk, then hang up.
    body = load.chat_body(stack.model, max_tokens=4, stream=True)
    for _ in range(8):
        with (
            httpx.Client(timeout=60) as client,
            client.stream("POST", stack.base_url + "/chat/completions", json=body) as response,
        ):
            for line in response.iter_lines():
                if '"finish_reason":"length"' in line:
                    break
    assert_idle_then_serving(stack, kv_baseline)


def test_nothing_follows_the_final_response(stack: Stack) -> None:
    body = load.chat_body(stack.model, max_tokens=6, stream=True)
    body["stream_options"] = {"include_usage": True}
    for _ in range(4):
        response = httpx.post(stack.base_url + "/chat/completions", json=body, timeout=60)
        frames = [line for line in response.text.split("\n\n") if line.strip()]
        assert frames[-1] == "data: [DONE]"
        finals = [i for i, frame in enumerate(frames) if '"finish_reason":"length"' in frame]
        assert len(finals) == 1 and frames[finals[0] + 1 :][:-1] == [
            frame for frame in frames[finals[0] + 1 : -1] if '"usage"' in frame
        ]


def test_a_request_whose_consumer_leaves_is_cancelled_in_band(
    stack: Stack, kv_baseline: float
) -> None:
    """The adapter stops a request whose client left with a cancel request on its stream,
    never by cancelling the gRPC call (adapter/triton_call.py says why): the
    engine is idle at once, long before the request's 1,000 tokens, and no call was
    cancelled."""
    from adapter.contract import GenerateInputs
    from adapter.triton_client import TritonClient

    async def leave_early(rounds: int) -> int:
        client = TritonClient(stack.triton_grpc_url)
        cancelled_calls = 0
        open_call = client.client.stream_infer

        def spied(*args: object, **kwargs: object) -> object:
            nonlocal cancelled_calls
            call = open_call(*args, **kwargs)
            cancel = call.cancel

            def counted() -> bool:
                nonlocal cancelled_calls
                cancelled_calls += 1
                return cancel()

            call.cancel = counted
            return call

        client.client.stream_infer = spied
        try:
            assert stack.model in {info.id for info in await client.list_models()}
            assert client.cancels_in_band == {stack.model}
            body = {"max_tokens": 1000, "ignore_eos": True}
            for round_ in range(rounds):
                inputs = GenerateInputs(
                    f"leaves-{round_}", text_input="Hi", sampling_parameters=body
                )
                outputs = client.generate(stack.model, inputs)
                for _ in range(1 + round_ % 3):
                    await anext(outputs)
                await outputs.aclose()
            await client.wait_for_calls()
        finally:
            await client.close()
        return cancelled_calls

    assert asyncio.run(leave_early(6)) == 0
    assert_idle_then_serving(stack, kv_baseline)
