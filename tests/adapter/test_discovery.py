"""`dns:///NAME:PORT` Triton URLs: every address of a name, re-resolved, least-loaded."""

from __future__ import annotations

import socket

import pytest

from adapter.backends import Backends
from adapter.config import AdapterConfig, ConfigError
from adapter.contract import GenerateInputs
from adapter.discovery import DnsBackends, endpoint, is_dns_url, parse_dns_url, resolve_all
from adapter.errors import ServiceUnavailable
from tests.adapter.fake_triton import HANG, FakeTriton, choice, out

pytestmark = pytest.mark.anyio


class FakeDns:
    """Answers with `addresses` (or raises `error`) and counts lookups."""

    def __init__(self, *addresses: str) -> None:
        self.addresses = list(addresses)
        self.error: OSError | None = None
        self.lookups = 0

    async def __call__(self, host: str, port: int) -> list[str]:
        self.lookups += 1
        if self.error is not None:
            raise self.error
        return [endpoint(address, port) for address in self.addresses]


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def make(dns: FakeDns, clock: Clock | None = None) -> tuple[DnsBackends, dict[str, FakeTriton]]:
    fakes: dict[str, FakeTriton] = {}

    def factory(url: str) -> FakeTriton:
        fakes[url] = FakeTriton()
        fakes[url].respond = lambda inputs: [out(choice(0, "a")), HANG]
        return fakes[url]

    backends = DnsBackends(
        "dns:///triton-headless:8001", factory, dns, refresh_interval_s=5.0, clock=clock or Clock()
    )
    return backends, fakes


def request(number: int) -> GenerateInputs:
    return GenerateInputs(str(number), text_input="x")


def test_dns_urls_parse_and_validate() -> None:
    assert is_dns_url("dns:///triton-headless:8001") and not is_dns_url("triton:8001")
    assert parse_dns_url("dns:///triton-headless.ns.svc:8001") == ("triton-headless.ns.svc", 8001)
    for bad in ("dns:///triton", "dns:///:8001", "dns:///t:0", "dns:///t:x", "triton:8001"):
        with pytest.raises(ValueError):
            parse_dns_url(bad)
    assert endpoint("10.0.0.7", 8001) == "10.0.0.7:8001"
    assert endpoint("fd00::7", 8001) == "[fd00::7]:8001"
    assert AdapterConfig(triton_urls=("dns:///triton-headless:8001",)).triton_urls
    with pytest.raises(ConfigError, match="dns:///name:port"):
        AdapterConfig(triton_urls=("dns:///triton-headless",))


async def test_requests_spread_over_every_address_least_loaded_first() -> None:
    dns = FakeDns("10.0.0.2", "10.0.0.1")
    backends, fakes = make(dns)
    streams = [backends.generate("m", request(i)) for i in range(4)]
    for stream in streams:
        await anext(stream)
    assert sorted(fakes) == ["10.0.0.1:8001", "10.0.0.2:8001"]
    assert [len(fake.calls) for fake in fakes.values()] == [2, 2]
    assert [m.in_flight for m in backends.members.values()] == [2, 2]
    for stream in streams:
        await stream.aclose()
    assert [m.in_flight for m in backends.members.values()] == [0, 0]
    assert sum(fake.cancelled for fake in fakes.values()) == 4
    assert dns.lookups == 1  # answers are reused while fresh


async def test_a_new_address_joins_and_a_gone_one_drains_before_closing() -> None:
    clock = Clock()
    dns = FakeDns("10.0.0.1")
    backends, fakes = make(dns, clock)
    running = backends.generate("m", request(1))
    await anext(running)
    dns.addresses = ["10.0.0.2"]  # pod 1 went away, pod 2 came
    clock.now = 6.0
    assert await backends.is_ready()
    assert list(backends.members) == ["10.0.0.2:8001"]
    old = fakes["10.0.0.1:8001"]
    assert not old.closed  # its request is still running
    other = backends.generate("m", request(2))
    await anext(other)
    assert len(fakes["10.0.0.2:8001"].calls) == 1 and len(old.calls) == 1
    await running.aclose()
    assert old.closed and not backends.retired
    await other.aclose()
    await backends.close()
    assert fakes["10.0.0.2:8001"].closed


async def test_no_address_means_not_ready_and_503() -> None:
    backends, _ = make(FakeDns())
    assert not await backends.is_ready()
    with pytest.raises(ServiceUnavailable, match="DNS lists no address"):
        await anext(backends.generate("m", request(1)))
    with pytest.raises(ServiceUnavailable):
        await backends.list_models()


async def test_a_dns_failure_keeps_the_last_known_addresses() -> None:
    clock = Clock()
    dns = FakeDns("10.0.0.1")
    backends, _ = make(dns, clock)
    assert await backends.list_models()
    dns.error = OSError("DNS server unreachable")
    clock.now = 10.0
    assert await backends.is_ready()
    assert list(backends.members) == ["10.0.0.1:8001"]


async def test_an_unavailable_address_hands_the_request_to_the_next() -> None:
    backends, fakes = make(FakeDns("10.0.0.1", "10.0.0.2"))
    await backends.refresh()
    fakes["10.0.0.1:8001"].respond = lambda inputs: [ServiceUnavailable("gone")]
    stream = backends.generate("m", request(1))
    assert (await anext(stream)).choices[0].text == "a"
    assert len(fakes["10.0.0.2:8001"].calls) == 1
    assert backends.resolved_at is None  # the next request asks DNS again
    await stream.aclose()


async def test_backends_from_config_builds_a_dns_backend() -> None:
    backends = Backends.from_config(AdapterConfig(triton_urls=("dns:///triton-headless:8001",)))
    assert isinstance(backends.backends[0], DnsBackends)
    await backends.close()


async def test_the_real_resolver_lists_every_address_of_a_name() -> None:
    assert await resolve_all("127.0.0.1", 8001) == ["127.0.0.1:8001"]
    assert await resolve_all("no-such-host.invalid", 8001) == []
    infos = socket.getaddrinfo("localhost", 8001, type=socket.SOCK_STREAM)
    expected = sorted({endpoint(str(info[4][0]), 8001) for info in infos})
    assert await resolve_all("localhost", 8001) == expected
