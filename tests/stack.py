"""The real stack for tests and stress scripts: `tritium serve` (tritonserver + adapter) on free ports.

`running_stack(...)` packages the default model with the given engine parameters into
a fresh repository, starts `tritium serve` on free loopback ports, waits until the
adapter's /health/ready answers 200 and stops every process on exit. The session
fixtures `stack` and `start_adapter` (registered for the whole suite by
tests/conftest.py) are built on it; stress scripts use it directly.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

# tests/conftest.py imports this module to register its fixtures: import it lazily here.
REPO_ROOT = Path(__file__).resolve().parents[1]
STARTUP_TIMEOUT_S = 300
ENGINE_PARAMETERS = {
    "max_model_len": "2048",
    "max_num_seqs": "16",
    "max_num_batched_tokens": "256",
    "kv_cache_memory_mb": "256",
    # The e2e tests compare with transformers' fp32 token for token; the bf16 default of
    # CPUs with native bf16 is checked against it in tests/engine/test_llama.py.
    "dtype": "float32",
    # ... and transformers runs the package's dense weights: the GGUF's quantized tensors
    # (served by default) are checked against them in tests/engine/test_quantization.py.
    "quantization": "none",
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
    serve_pid: int = 0  # the `tritium serve` process (its group holds Triton and the adapter)

    @property
    def ready_url(self) -> str:
        return self.base_url.removesuffix("/v1") + "/health/ready"

    def metric(self, name: str, default: float | None = None) -> float:
        """The value of one engine metric (summed over label sets) from Triton's /metrics;
        `default` for one not exported yet (a counter appears at its first increment)."""
        text = httpx.get(self.triton_metrics_url, timeout=10).text
        values = [
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith(name + "{") or line.startswith(name + " ")
        ]
        if not values and default is not None:
            return default
        if not values:
            raise AssertionError(f"metric {name} not exported by Triton")
        return sum(values)

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def default_weights_dir() -> Path:
    """The packaged default model's weights (outside pytest: no fixture to ask)."""
    from engine.package import package_model
    from tests.conftest import CACHE_DIR, DEFAULT_MODEL

    return package_model("default", DEFAULT_MODEL, CACHE_DIR / "models", progress=False) / "weights"


@contextmanager
def running_stack(
    weights_dir: Path,
    work_dir: Path,
    parameters: Mapping[str, str] = ENGINE_PARAMETERS,
    serve_flags: tuple[str, ...] = (),
) -> Iterator[Stack]:
    """`tritium serve` over a fresh repository in `work_dir`; stopped (SIGINT, then the group
    SIGKILLed) on exit."""
    from engine.package import package_model
    from tests.conftest import DEFAULT_MODEL

    repository = work_dir / "model_repository"
    package_model(
        str(weights_dir), DEFAULT_MODEL, repository, parameters=dict(parameters), progress=False
    )
    port, http_port, grpc_port, metrics_port = (free_port() for _ in range(4))
    log_path = work_dir / "logs" / "serve.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    command = [
        sys.executable, "-m", "tritium", "serve",
        "--model-repository", str(repository),
        "--port", str(port),
        "--http-port", str(http_port),
        "--grpc-port", str(grpc_port),
        "--metrics-port", str(metrics_port),
        "--log-dir", str(log_path.parent),
        "--startup-timeout", str(STARTUP_TIMEOUT_S),
        *serve_flags,
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
        weights_dir=weights_dir,
        log_path=log_path,
        serve_pid=process.pid,
    )
    try:
        _wait_ready(stack, process)
        yield stack
    finally:
        stop_serve(process)


@pytest.fixture(scope="session")
def stack(default_weights_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """One stack per test session, small engine parameters so it starts fast on 2 cores."""
    with running_stack(default_weights_dir, tmp_path_factory.mktemp("stack")) as running:
        yield running


@dataclass(frozen=True)
class Adapter:
    """A second adapter process in front of the stack's Triton, with its own flags."""

    base_url: str  # e.g. http://127.0.0.1:PORT/v1
    log_path: Path
    pid: int = 0


StartAdapter = Callable[..., Adapter]


@pytest.fixture(scope="session")
def start_adapter(
    stack: Stack, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[StartAdapter]:
    """`start_adapter("--api-key", "k", ...)` runs `python -m adapter` with those flags
    (and `--triton-url <the stack's Triton>` unless they name one); stopped at the end."""
    with ExitStack() as running:

        def start(*flags: str, environment: Mapping[str, str] | None = None) -> Adapter:
            if "--triton-url" not in flags:
                flags = ("--triton-url", stack.triton_grpc_url, *flags)
            log_dir = tmp_path_factory.mktemp("adapter")
            return running.enter_context(
                adapter_process(log_dir / "adapter.log", flags, environment)
            )

        yield start


@contextmanager
def adapter_process(
    log_path: Path, flags: tuple[str, ...], environment: Mapping[str, str] | None = None
) -> Iterator[Adapter]:
    port = free_port()
    command = [sys.executable, "-m", "adapter", "--host", "127.0.0.1", "--port", str(port), *flags]
    process_environment = {**os.environ, **(environment or {})}
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            command, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT, env=process_environment
        )
    adapter = Adapter(f"http://127.0.0.1:{port}/v1", log_path, process.pid)
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
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"tritium serve exited with {process.returncode}:\n{stack.log_tail()}")
        try:
            if httpx.get(stack.ready_url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"the stack was not ready in time:\n{stack.log_tail()}")


def stop_serve(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGINT)  # what Ctrl-C does: serve stops Triton and the adapter
        with suppress(subprocess.TimeoutExpired):
            process.wait(60)
    with suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)  # anything left in the group is a bug; never leak it


@contextmanager
def scratch_dir(prefix: str, keep: Path | None = None) -> Iterator[Path]:
    """A working directory for a stress script's stack: temporary, or ``keep`` (created
    if needed, left in place with the stack's logs and repository for a post-mortem)."""
    if keep is not None:
        keep.mkdir(parents=True, exist_ok=True)
        yield keep
        return
    with tempfile.TemporaryDirectory(prefix=prefix) as directory:
        yield Path(directory)
