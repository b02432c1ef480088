"""The real stack for end-to-end tests: `tritium serve` (tritonserver + adapter) on free ports.

One stack per test session, on the default model packaged with small engine
parameters so it starts fast on 2 cores. Every process is stopped at the end.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.conftest import DEFAULT_MODEL, REPO_ROOT

STARTUP_TIMEOUT_S = 300
ENGINE_PARAMETERS = {
    "max_model_len": "2048",
    "max_num_seqs": "16",
    "max_num_batched_tokens": "256",
    "kv_cache_memory_mb": "256",
}


@dataclass(frozen=True)
class Stack:
    base_url: str  # the adapter, e.g. http://127.0.0.1:PORT/v1
    triton_http_url: str  # Triton's HTTP endpoint (generate, health)
    triton_grpc_url: str  # Triton's gRPC endpoint as the adapter takes it (host:port)
    triton_metrics_url: str  # Triton's Prometheus metrics (engine metrics included)
    model: str
    weights_dir: Path
    log_path: Path

    def metric(self, name: str) -> float:
        """The value of one engine metric (summed over label sets) from Triton's /metrics."""
        text = httpx.get(self.triton_metrics_url, timeout=10).text
        values = [
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith(name + "{") or line.startswith(name + " ")
        ]
        if not values:
            raise AssertionError(f"metric {name} not exported by Triton")
        return sum(values)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def stack(default_weights_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    from engine.package import package_model

    repository = tmp_path_factory.mktemp("model_repository")
    package_model(
        str(default_weights_dir), DEFAULT_MODEL, repository, parameters=ENGINE_PARAMETERS, progress=False
    )
    port, http_port, grpc_port, metrics_port = (free_port() for _ in range(4))
    log_path = tmp_path_factory.mktemp("logs") / "serve.log"
    command = [
        sys.executable, "-m", "tritium", "serve",
        "--model-repository", str(repository),
        "--port", str(port),
        "--http-port", str(http_port),
        "--grpc-port", str(grpc_port),
        "--metrics-port", str(metrics_port),
        "--log-dir", str(log_path.parent),
        "--startup-timeout", str(STARTUP_TIMEOUT_S),
    ]  # fmt: skip
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            command, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    stack = Stack(
        base_url=f"http://127.0.0.1:{port}/v1",
        triton_http_url=f"http://127.0.0.1:{http_port}",
        triton_grpc_url=f"127.0.0.1:{grpc_port}",
        triton_metrics_url=f"http://127.0.0.1:{metrics_port}/metrics",
        model=DEFAULT_MODEL,
        weights_dir=default_weights_dir,
        log_path=log_path,
    )
    try:
        _wait_ready(stack, process)
        yield stack
    finally:
        _stop(process)


@dataclass(frozen=True)
class Adapter:
    """A second adapter process in front of the stack's Triton, with its own flags."""

    base_url: str  # e.g. http://127.0.0.1:PORT/v1
    log_path: Path


StartAdapter = Callable[..., Adapter]


@pytest.fixture(scope="session")
def start_adapter(
    stack: Stack, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[StartAdapter]:
    """`start_adapter("--api-key", "k", ...)` runs `python -m adapter` with those flags
    (and `--triton-url <the stack's Triton>` unless they name one); stopped at the end."""
    with ExitStack() as running:

        def start(*flags: str) -> Adapter:
            if "--triton-url" not in flags:
                flags = ("--triton-url", stack.triton_grpc_url, *flags)
            log_dir = tmp_path_factory.mktemp("adapter")
            return running.enter_context(_adapter_process(log_dir / "adapter.log", flags))

        yield start


@contextmanager
def _adapter_process(log_path: Path, flags: tuple[str, ...]) -> Iterator[Adapter]:
    port = free_port()
    command = [sys.executable, "-m", "adapter", "--host", "127.0.0.1", "--port", str(port), *flags]
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT)
    adapter = Adapter(f"http://127.0.0.1:{port}/v1", log_path)
    try:
        deadline = time.monotonic() + 60
        # /health, not /health/ready: some of these adapters point at a dead Triton on purpose.
        while not _answers(f"http://127.0.0.1:{port}/health"):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the adapter did not start:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.2)
        yield adapter
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _wait_ready(stack: Stack, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S + 30
    ready_url = stack.base_url.removesuffix("/v1") + "/health/ready"
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"tritium serve exited with {process.returncode}:\n{_tail(stack)}")
        try:
            if httpx.get(ready_url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"the stack was not ready in time:\n{_tail(stack)}")


def _tail(stack: Stack, lines: int = 60) -> str:
    return "\n".join(stack.log_path.read_text(errors="replace").splitlines()[-lines:])


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGINT)  # what Ctrl-C does: serve stops Triton and the adapter
        with suppress(subprocess.TimeoutExpired):
            process.wait(60)
    with suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)  # anything left in the group is a bug; never leak it
