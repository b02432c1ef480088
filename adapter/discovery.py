"""Triton endpoints found through DNS: a `--triton-url` of the form `dns:///NAME:PORT`.

A Kubernetes headless Service is one DNS name whose A/AAAA records are the IPs of the
ready pods behind it. `DnsBackends` resolves such a name on first use and again whenever
its last answer is older than `REFRESH_INTERVAL_S`, keeps one client per address, and
sends each request to the address with the fewest requests in flight (as `Backends`
does for a fixed list). An address that leaves DNS gets no new requests; its client is
closed once its last request has ended, so requests in flight are never cut.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass

from adapter.contract import GenerateInputs, ModelInfo, TritonBackend
from adapter.errors import APIError, ServiceUnavailable
from contract.tensors import ModelResponse

logger = logging.getLogger("adapter")

DNS_SCHEME = "dns:///"
# Seconds an answer is trusted; Kubernetes' DNS serves headless records with a 5 s TTL.
REFRESH_INTERVAL_S = 5.0

Resolver = Callable[[str, int], Awaitable[list[str]]]
ClientFactory = Callable[[str], TritonBackend]


def is_dns_url(url: str) -> bool:
    return url.startswith(DNS_SCHEME)


def parse_dns_url(url: str) -> tuple[str, int]:
    """`dns:///NAME:PORT` -> (NAME, PORT); ValueError saying what is expected otherwise."""
    host, separator, port = url.removeprefix(DNS_SCHEME).rpartition(":")
    if not is_dns_url(url) or not separator or not host or not port.isdigit():
        raise ValueError(f"expected dns:///NAME:PORT, got {url!r}")
    if not 0 < int(port) < 65536:
        raise ValueError(f"port must be in 1..65535, got {url!r}")
    return host, int(port)


def endpoint(address: str, port: int) -> str:
    """A gRPC target for one address (IPv6 in brackets)."""
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


async def resolve_all(host: str, port: int) -> list[str]:
    """Every address of `host` as sorted `address:port` endpoints.

    A name that does not exist (a headless Service with no ready pod) is no endpoint;
    other failures (DNS unreachable) raise OSError.
    """
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as error:
        if error.errno in (socket.EAI_NONAME, getattr(socket, "EAI_NODATA", socket.EAI_NONAME)):
            return []
        raise
    return sorted({endpoint(str(info[4][0]), port) for info in infos})


@dataclass(eq=False)
class _Member:
    backend: TritonBackend
    in_flight: int = 0  # requests of this endpoint not yet finished


class DnsBackends:
    """All addresses of one DNS name; least-loaded routing; re-resolved as it ages."""

    def __init__(
        self,
        url: str,
        client_factory: ClientFactory,
        resolver: Resolver = resolve_all,
        refresh_interval_s: float = REFRESH_INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.url = url
        self.host, self.port = parse_dns_url(url)
        self.client_factory = client_factory
        self.resolver = resolver
        self.refresh_interval_s = refresh_interval_s
        self.clock = clock
        self.members: dict[str, _Member] = {}  # endpoint -> member, in sorted order
        self.retired: list[_Member] = []  # left DNS, still finishing requests
        self.resolved_at: float | None = None
        self._lock = asyncio.Lock()

    def _is_fresh(self) -> bool:
        return (
            self.resolved_at is not None
            and self.clock() - self.resolved_at < self.refresh_interval_s
        )

    async def refresh(self) -> None:
        """Resolve the name again unless the last answer is still fresh."""
        if self._is_fresh():
            return
        async with self._lock:
            if self._is_fresh():  # another request refreshed while this one waited
                return
            try:
                endpoints = await self.resolver(self.host, self.port)
            except OSError as error:  # keep the last known endpoints; try again next time
                logger.warning(
                    "cannot resolve %s (%s); keeping %d endpoints",
                    self.url,
                    error,
                    len(self.members),
                )
                self.resolved_at = self.clock()
                return
            self.resolved_at = self.clock()
            await self._update(endpoints)

    async def _update(self, endpoints: list[str]) -> None:
        added = [e for e in endpoints if e not in self.members]
        removed = [e for e in self.members if e not in endpoints]
        if added or removed:
            logger.info(
                "%s: endpoints %s (added %s, removed %s)", self.url, endpoints, added, removed
            )
        current = {e: self.members.get(e) or _Member(self.client_factory(e)) for e in endpoints}
        leaving = [self.members[e] for e in removed]
        self.members = current
        for member in leaving:
            if member.in_flight:
                self.retired.append(member)
            else:
                await member.backend.close()

    async def generate(
        self, model: str, inputs: GenerateInputs
    ) -> AsyncGenerator[ModelResponse, None]:
        """Least-loaded address first; an unreachable one (503 before any output) hands the
        request to the next, and makes the next request resolve the name again."""
        await self.refresh()
        tried: list[_Member] = []
        while True:
            untried = [m for m in self.members.values() if m not in tried]
            if not untried:
                raise ServiceUnavailable(
                    f"no Triton endpoint behind {self.url}: DNS lists no address"
                )
            member = min(untried, key=lambda m: m.in_flight)
            tried.append(member)
            member.in_flight += 1
            stream = member.backend.generate(model, inputs)
            answered = False
            try:
                async for output in stream:
                    answered = True
                    yield output
                return
            except ServiceUnavailable:
                self.resolved_at = None  # the pods behind the name may have changed
                if answered or all(m in tried for m in self.members.values()):
                    raise
                logger.warning(
                    "%s: an endpoint is unavailable; retrying request %s on another",
                    self.url,
                    inputs.request_id,
                )
            finally:
                member.in_flight -= 1
                await stream.aclose()  # now, not at garbage collection: it cancels the request
                if member.in_flight == 0 and member in self.retired:
                    self.retired.remove(member)
                    await member.backend.close()

    async def list_models(self) -> list[ModelInfo]:
        await self.refresh()
        error: APIError = ServiceUnavailable(f"no Triton endpoint behind {self.url}")
        for member in list(self.members.values()):
            try:
                return await member.backend.list_models()
            except APIError as failure:
                error = failure
        raise error

    async def is_ready(self) -> bool:
        await self.refresh()
        members = list(self.members.values())
        return any(await asyncio.gather(*(m.backend.is_ready() for m in members)))

    async def close(self) -> None:
        members = [*self.members.values(), *self.retired]
        self.members, self.retired = {}, []
        await asyncio.gather(*(m.backend.close() for m in members))
