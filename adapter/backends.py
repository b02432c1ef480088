"""Several Triton endpoints behind one `TritonBackend`: routing, health, the model union.

Each request goes to the endpoint with the fewest requests in flight (least
outstanding requests) among those that are healthy and serve its model. What an
endpoint serves and whether it is healthy are learned from `list_models`, which the
adapter's model catalog calls every few seconds while requests arrive; an endpoint
that fails with 503 (unreachable) is marked unhealthy at once and the request moves
to the next candidate, as long as nothing has been sent to the client yet.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass, replace

from adapter.config import AdapterConfig
from adapter.contract import GenerateInputs, ModelInfo, TritonBackend
from adapter.errors import APIError, ServiceUnavailable
from contract.tensors import ModelResponse

logger = logging.getLogger("adapter")


@dataclass(frozen=True)
class EndpointStats:
    """One endpoint as /metrics shows it."""

    url: str
    in_flight: int  # generation requests running there now
    requests: int  # generation requests sent there since start
    healthy: bool


class Backends:
    def __init__(self, backends: Sequence[TritonBackend], urls: Sequence[str] = ()) -> None:
        if not backends:
            raise ValueError("Backends needs at least one backend")
        self.backends = list(backends)
        self.urls = list(urls) or [f"backend-{slot}" for slot in range(len(self.backends))]
        self.in_flight = [0] * len(self.backends)
        self.requests = [0] * len(self.backends)
        self.healthy = [True] * len(self.backends)
        # Model ids each endpoint served at its last listing; None = not listed yet.
        self.served: list[set[str] | None] = [None] * len(self.backends)

    @classmethod
    def from_config(cls, config: AdapterConfig) -> Backends:
        from adapter.discovery import DnsBackends, is_dns_url
        from adapter.triton_client import TritonClient  # gRPC only when really used

        def client(url: str) -> TritonBackend:
            return TritonClient(url, config.request_timeout_s)

        # dns:///NAME:PORT stands for every address of NAME, re-resolved (adapter.discovery).
        clients = [
            DnsBackends(url, client) if is_dns_url(url) else client(url)
            for url in config.triton_urls
        ]
        return cls(clients, config.triton_urls)

    def candidates(self, model: str) -> list[int]:
        """The endpoints a request for `model` may go to."""
        everyone = list(range(len(self.backends)))
        serving = [
            slot for slot in everyone if self.served[slot] is None or model in self.served[slot]
        ]
        # Nobody (known to) serve it: let an endpoint answer, it says "unknown model".
        serving = serving or everyone
        # Nobody healthy: try anyway rather than fail without asking (they may be back).
        return [slot for slot in serving if self.healthy[slot]] or serving

    async def generate(
        self, model: str, inputs: GenerateInputs
    ) -> AsyncGenerator[ModelResponse, None]:
        tried: set[int] = set()
        while True:
            untried = [slot for slot in self.candidates(model) if slot not in tried]
            slot = min(untried or self.candidates(model), key=self.in_flight.__getitem__)
            tried.add(slot)
            self.in_flight[slot] += 1
            self.requests[slot] += 1
            stream = self.backends[slot].generate(model, inputs)
            answered = False
            try:
                async for output in stream:
                    answered = True
                    yield output
                return
            except ServiceUnavailable as error:
                self.healthy[slot] = False
                others = [other for other in self.candidates(model) if other not in tried]
                if answered or not others:
                    raise
                logger.warning(
                    "Triton at %s is unavailable (%s); request %s goes to another endpoint",
                    self.urls[slot],
                    error.message,
                    inputs.request_id,
                )
            finally:
                self.in_flight[slot] -= 1
                await stream.aclose()  # now, not at garbage collection: it cancels the request

    async def list_models(self) -> list[ModelInfo]:
        """The union over the endpoints that answer; an error only if none does."""
        results = await asyncio.gather(
            *(backend.list_models() for backend in self.backends), return_exceptions=True
        )
        union: dict[str, ModelInfo] = {}
        errors: list[APIError] = []
        for slot, result in enumerate(results):
            if isinstance(result, APIError):
                self.healthy[slot] = False
                errors.append(result)
                continue
            if isinstance(result, BaseException):
                raise result
            self.healthy[slot] = True
            self.served[slot] = {model.id for model in result}
            for model in result:
                union[model.id] = _merged(union.get(model.id), model)
        if len(errors) == len(self.backends):
            raise errors[0]
        return list(union.values())

    async def is_ready(self) -> bool:
        results = await asyncio.gather(*(backend.is_ready() for backend in self.backends))
        self.healthy = list(results)
        return any(results)

    def endpoint_stats(self) -> list[EndpointStats]:
        return [
            EndpointStats(url, in_flight, requests, healthy)
            for url, in_flight, requests, healthy in zip(
                self.urls, self.in_flight, self.requests, self.healthy, strict=True
            )
        ]

    async def close(self) -> None:
        await asyncio.gather(*(backend.close() for backend in self.backends))


def _merged(known: ModelInfo | None, other: ModelInfo) -> ModelInfo:
    """One model served by several endpoints: the shortest context is the one that holds."""
    if known is None:
        return other
    lengths = [length for length in (known.max_model_len, other.max_model_len) if length]
    return replace(known, max_model_len=min(lengths) if lengths else None)
