"""The endpoints `tritium bench` drives, one streaming request at a time per call.

- `OpenAIBackend`: any OpenAI-compatible server, `/chat/completions` or `/completions`,
  SSE parsed here (no SDK in the timing path), HTTP/1.1 keep-alive with a connection
  per concurrent request; tokens from `stream_options.include_usage`.
- `TritonGrpcBackend`: a Triton model of our tensor contract over gRPC streaming, one
  `adapter.triton_call.TritonCall` per request (as the adapter does), so "Triton direct"
  and "through the adapter" differ only by the adapter's HTTP layer.
- `TritonGenerateBackend`: Triton's HTTP `generate_stream` extension (SSE).

Every backend fills a `RequestRecord`; failures are recorded, never raised, so one bad
request does not stop a benchmark.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any, Protocol

import httpx

from benchmarks.metrics import RequestRecord
from benchmarks.workloads import BenchRequest

BACKEND_NAMES = ("openai-chat", "openai-completions", "triton-grpc", "triton-generate")


class Backend(Protocol):
    async def send(self, request: BenchRequest, record: RequestRecord) -> None: ...

    async def close(self) -> None: ...


def sse_events(buffer: bytearray) -> list[bytes]:
    """Pop the complete `data:` payloads from ``buffer`` (events end with a blank line);
    a partial event stays in the buffer for the next read."""
    payloads: list[bytes] = []
    while True:
        end = buffer.find(b"\n\n")
        if end < 0:
            return payloads
        event = bytes(buffer[:end])
        del buffer[: end + 2]
        for line in event.split(b"\n"):
            if line.startswith(b"data:"):
                payloads.append(line[5:].strip())


class OpenAIBackend:
    def __init__(
        self,
        base_url: str,
        model: str,
        chat: bool,
        max_connections: int,
        extra_body: dict[str, Any] | None = None,
        api_key: str | None = None,
        timeout_s: float = 600.0,
        length_without_usage: bool = False,
    ) -> None:
        # For servers that send no usage when streaming (llama-cpp-python): a request that
        # ends with finish_reason "length" produced exactly max_tokens tokens. Off by default.
        self.length_without_usage = length_without_usage
        self.url = base_url.rstrip("/") + ("/chat/completions" if chat else "/completions")
        self.model = model
        self.chat = chat
        self.extra_body = extra_body or {}
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        limits = httpx.Limits(
            max_connections=max_connections, max_keepalive_connections=max_connections
        )
        self.client = httpx.AsyncClient(
            limits=limits, headers=headers, timeout=httpx.Timeout(timeout_s, connect=30.0)
        )

    def body(self, request: BenchRequest) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.model,
            "max_tokens": request.max_tokens,
            "temperature": 0.0,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        if self.chat:
            body["messages"] = request.as_messages()
        else:
            body["prompt"] = request.as_text()
        return {**body, **self.extra_body}

    async def send(self, request: BenchRequest, record: RequestRecord) -> None:
        finish_reasons: set[str] = set()
        try:
            async with self.client.stream("POST", self.url, json=self.body(request)) as response:
                if response.status_code != 200:
                    text = (await response.aread()).decode(errors="replace")
                    record.error = f"HTTP {response.status_code}: {text[:300]}"
                    return
                buffer = bytearray()
                async for data in response.aiter_bytes():
                    buffer += data
                    for payload in sse_events(buffer):
                        finish_reasons |= self._on_event(payload, record)
        except httpx.HTTPError as error:
            record.error = f"{type(error).__name__}: {error}"
        finally:
            record.latency = time.perf_counter() - record.sent_at
        if self.length_without_usage and not record.output_tokens and finish_reasons == {"length"}:
            record.output_tokens = request.max_tokens

    def _on_event(self, payload: bytes, record: RequestRecord) -> set[str]:
        """Record one SSE event; returns the finish reasons it carried."""
        if payload == b"[DONE]":
            return set()
        chunk = json.loads(payload)
        if "error" in chunk:
            record.error = str(chunk["error"])[:300]
            return set()
        choices = chunk.get("choices") or []
        for choice in choices:
            text = (choice.get("delta") or {}).get("content") if self.chat else choice.get("text")
            if text:
                record.chunk_times.append(time.perf_counter() - record.sent_at)
                break
        usage = chunk.get("usage")
        if usage:
            record.input_tokens = int(usage.get("prompt_tokens") or 0)
            record.output_tokens = int(usage.get("completion_tokens") or 0)
        return {choice["finish_reason"] for choice in choices if choice.get("finish_reason")}

    async def close(self) -> None:
        await self.client.aclose()


def sampling_parameters(request: BenchRequest, ignore_eos: bool) -> dict[str, Any]:
    params: dict[str, Any] = {"max_tokens": request.max_tokens, "temperature": 0.0}
    if ignore_eos:
        params["ignore_eos"] = True
    return params


class TritonGrpcBackend:
    """Our tensor contract over gRPC, through the adapter's own `TritonCall` (the same
    start, read and end of a call as the adapter, without the HTTP layer)."""

    def __init__(self, url: str, model: str, ignore_eos: bool) -> None:
        import tritonclient.grpc.aio as grpcclient  # only this backend needs it

        self.client = grpcclient.InferenceServerClient(url=url)
        self.model = model
        self.ignore_eos = ignore_eos
        self._readers: set[asyncio.Task[None]] = set()
        self._cancel_in_band: bool | None = None  # learnt from the model's config

    async def send(self, request: BenchRequest, record: RequestRecord) -> None:
        from adapter.triton_call import TritonCall
        from contract.tensors import ModelRequest

        model_request = ModelRequest(
            text_input=request.as_text(),
            sampling_parameters=sampling_parameters(request, self.ignore_eos),
            stream=True,
            exclude_input_in_output=True,
        )
        try:
            call = TritonCall(
                self.client,
                self.model,
                model_request,
                request_id=str(id(record)),
                cancel_in_band=await self._cancels_in_band(),
                readers=self._readers,
            )
            async with call:  # a run cut short (its time limit) cancels the request
                async for response in call:
                    if any(choice.text for choice in response.choices):
                        record.chunk_times.append(time.perf_counter() - record.sent_at)
                    counts = [c.num_output_tokens for c in response.choices]
                    if counts and counts[0] is not None:
                        record.output_tokens = counts[0]  # cumulative
                    if response.num_input_tokens is not None:
                        record.input_tokens = response.num_input_tokens
        except Exception as error:  # grpc, tritonclient and contract errors share no base
            record.error = f"{type(error).__name__}: {error}"[:300]
        finally:
            record.latency = time.perf_counter() - record.sent_at

    async def _cancels_in_band(self) -> bool:
        from contract.tensors import Capabilities

        if self._cancel_in_band is None:
            config = await self.client.get_model_config(self.model, as_json=True)
            names = {tensor["name"] for tensor in config.get("config", {}).get("input", [])}
            capabilities = Capabilities.of(names)
            self._cancel_in_band = capabilities is not None and capabilities.cancel_in_band
        return self._cancel_in_band

    async def close(self) -> None:
        while self._readers:  # every call ended by Triton (or cancelled when overdue)
            await asyncio.gather(*self._readers, return_exceptions=True)
        await self.client.close()


class TritonGenerateBackend:
    def __init__(self, base_url: str, model: str, max_connections: int, ignore_eos: bool) -> None:
        self.url = f"{base_url.rstrip('/')}/v2/models/{model}/generate_stream"
        self.ignore_eos = ignore_eos
        limits = httpx.Limits(
            max_connections=max_connections, max_keepalive_connections=max_connections
        )
        self.client = httpx.AsyncClient(limits=limits, timeout=httpx.Timeout(600.0, connect=30.0))

    async def send(self, request: BenchRequest, record: RequestRecord) -> None:
        body = {
            "text_input": request.as_text(),
            "sampling_parameters": json.dumps(sampling_parameters(request, self.ignore_eos)),
            "stream": True,
            "exclude_input_in_output": True,
            "return_num_input_tokens": True,
            "return_num_output_tokens": True,
        }
        try:
            async with self.client.stream("POST", self.url, json=body) as response:
                if response.status_code != 200:
                    text = (await response.aread()).decode(errors="replace")
                    record.error = f"HTTP {response.status_code}: {text[:300]}"
                    return
                buffer = bytearray()
                async for data in response.aiter_bytes():
                    buffer += data
                    for payload in sse_events(buffer):
                        _on_generate_event(json.loads(payload), record)
        except httpx.HTTPError as error:
            record.error = f"{type(error).__name__}: {error}"
        finally:
            record.latency = time.perf_counter() - record.sent_at

    async def close(self) -> None:
        await self.client.aclose()


def _first(value: Any) -> Any:
    # The generate extension writes one-element tensors as a scalar or a one-item list.
    return value[0] if isinstance(value, list) and value else value


def _on_generate_event(event: dict[str, Any], record: RequestRecord) -> None:
    if "error" in event:
        record.error = str(event["error"])[:300]
        return
    if _first(event.get("text_output")):
        record.chunk_times.append(time.perf_counter() - record.sent_at)
    if event.get("num_output_tokens") is not None:
        record.output_tokens = int(_first(event["num_output_tokens"]))
    if event.get("num_input_tokens") is not None:
        record.input_tokens = int(_first(event["num_input_tokens"]))
