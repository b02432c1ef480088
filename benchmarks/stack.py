"""Start servers to benchmark on free ports: `tritium serve` on a model repository,
tritonserver alone, llama.cpp's own `llama-server` (the peer, built by `python -m
benchmarks.peer build`), or llama-cpp-python's single-slot server. Each is a context manager that stops its whole
process group on exit."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, replace
from pathlib import Path

import httpx

REPO_ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Endpoints:
    openai_url: str  # http://127.0.0.1:PORT/v1
    triton_grpc_url: str  # 127.0.0.1:PORT (empty for servers without Triton)
    triton_http_url: str  # http://127.0.0.1:PORT
    log_path: Path
    pid: int


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def tritium_stack(
    repository: Path,
    log_dir: Path,
    startup_timeout_s: float = 600,  # `tritium serve`'s own default: a first start compiles
    serve_flags: tuple[str, ...] = (),
) -> Iterator[Endpoints]:
    """`tritium serve` on ``repository`` (plus ``serve_flags``); yields once the adapter
    reports ready."""
    port, http_port, grpc_port, metrics_port = (free_port() for _ in range(4))
    log_dir.mkdir(parents=True, exist_ok=True)
    command = [
        sys.executable, "-m", "tritium", "serve",
        "--model-repository", str(repository),
        "--port", str(port), "--http-port", str(http_port),
        "--grpc-port", str(grpc_port), "--metrics-port", str(metrics_port),
        "--log-dir", str(log_dir), "--startup-timeout", str(startup_timeout_s),
        *serve_flags,
    ]  # fmt: skip
    endpoints = Endpoints(
        openai_url=f"http://127.0.0.1:{port}/v1",
        triton_grpc_url=f"127.0.0.1:{grpc_port}",
        triton_http_url=f"http://127.0.0.1:{http_port}",
        log_path=log_dir / "serve.log",
        pid=0,
    )
    ready_url = endpoints.openai_url.removesuffix("/v1") + "/health/ready"
    with _process(command, endpoints.log_path, ready_url, startup_timeout_s, signal.SIGINT) as pid:
        yield replace(endpoints, pid=pid)


@contextmanager
def bare_tritonserver(repository: Path, log_path: Path, startup_timeout_s: float = 120) -> Iterator[Endpoints]:
    """tritonserver alone (no adapter, no launcher) on ``repository``, as `tritium serve`
    would start it; yields once Triton reports ready (its OpenAI URL is empty)."""
    from tritium import tritonserver

    executable = tritonserver.find_tritonserver()
    http_port, grpc_port = free_port(), free_port()
    options = tritonserver.TritonServerOptions(
        executable=executable, model_repository=repository,
        backend_directory=tritonserver.prepare_backend_dir(executable),
        http_port=http_port, grpc_port=grpc_port, metrics_port=free_port(),
        shm_region_prefix=f"tritium_bench_{grpc_port}_",
    )  # fmt: skip
    command = tritonserver.build_command(options)
    environment = tritonserver.server_environment(executable)
    base = f"http://127.0.0.1:{http_port}"
    with _process(
        command, log_path, f"{base}/v2/health/ready", startup_timeout_s, signal.SIGTERM, environment
    ) as pid:
        yield Endpoints("", f"127.0.0.1:{grpc_port}", base, log_path, pid)


@contextmanager
def llama_server(
    binary: Path,
    gguf_path: Path,
    log_dir: Path,
    threads: int,
    port: int | None = None,
    startup_timeout_s: float = 180,
) -> Iterator[Endpoints]:
    """llama.cpp's `llama-server` on ``gguf_path`` with the command line of
    `benchmarks.peer.server_command` (parallel slots, continuous batching); yields once
    `/health` answers 200 (it answers 503 while the model loads)."""
    from benchmarks.peer import server_command

    port = port or free_port()
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / "llama_server.log"
    base = f"http://127.0.0.1:{port}"
    command = server_command(binary, gguf_path, port, threads)
    with _process(command, log_path, f"{base}/health", startup_timeout_s, signal.SIGTERM) as pid:
        yield Endpoints(f"{base}/v1", "", "", log_path, pid)


@contextmanager
def llama_cpp_server(
    gguf_path: Path, log_dir: Path, settings: dict[str, str], startup_timeout_s: float = 180
) -> Iterator[Endpoints]:
    """llama-cpp-python's OpenAI-compatible server on ``gguf_path``; ``settings`` are its
    flags without dashes (n_threads, n_ctx, n_batch, ...)."""
    port = free_port()
    command = [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf_path),
               "--host", "127.0.0.1", "--port", str(port)]  # fmt: skip
    for key, value in settings.items():
        command += [f"--{key}", value]
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / "llama_cpp_server.log"
    base = f"http://127.0.0.1:{port}"
    with _process(command, log_path, f"{base}/v1/models", startup_timeout_s, signal.SIGTERM) as pid:
        yield Endpoints(f"{base}/v1", "", "", log_path, pid)


@contextmanager
def _process(
    command: list[str], log_path: Path, ready_url: str, timeout_s: float, stop_signal: int,
    environment: dict[str, str] | None = None,
) -> Iterator[int]:  # fmt: skip
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            command, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            env=environment,
        )  # fmt: skip
    try:
        _wait_ready(process, ready_url, timeout_s, log_path)
        yield process.pid
    finally:
        _stop(process, stop_signal)


def _wait_ready(
    process: subprocess.Popen, ready_url: str, timeout_s: float, log_path: Path
) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(
                f"{' '.join(map(str, process.args[:3]))} exited with {process.returncode}:\n"
                f"{_tail(log_path)}"
            )
        try:
            if httpx.get(ready_url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"not ready after {timeout_s:g} s:\n{_tail(log_path)}")


def _tail(log_path: Path, lines: int = 40) -> str:
    return "\n".join(log_path.read_text(errors="replace").splitlines()[-lines:])


def _stop(process: subprocess.Popen, stop_signal: int) -> None:
    if process.poll() is None:
        process.send_signal(stop_signal)
        with suppress(subprocess.TimeoutExpired):
            process.wait(60)
    with suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)  # whatever is left of the group
