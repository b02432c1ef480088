"""docker/entrypoint-*.sh run directly on this machine, as the images run them."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, suppress
from pathlib import Path

import httpx
import pytest

from tests.conftest import DEFAULT_MODEL
from tests.docker.deploy_files import DOCKER_DIR
from tests.docker.test_dockerfiles import NGC_TRITON_VERSIONS, Dockerfile
from tests.e2e.conftest import ENGINE_PARAMETERS, free_port

# On a fresh machine the engine's first load compiles its decode step (compile_decode,
# about 2.5 minutes on 2 quiet cores, cached after), and this test is the first to load
# the e2e engine parameters: a ceiling with room for a slower machine, not a wait.
READY_TIMEOUT_S = 600


def run_healthcheck(what: str, env: dict[str, str]) -> int:
    command = [sys.executable, str(DOCKER_DIR / "healthcheck.py"), what]
    return subprocess.run(command, env=env, capture_output=True, timeout=30).returncode


def test_triton_entrypoint_packages_the_model_then_execs_tritonserver(
    tmp_path: Path, default_weights_dir: Path
) -> None:
    """With a stand-in tritonserver that records how it was started."""
    fake = tmp_path / "server" / "bin" / "tritonserver"
    fake.parent.mkdir(parents=True)
    record = tmp_path / "record.json"
    fake.write_text(
        f"#!{sys.executable}\nimport json, os, sys\n"
        f"json.dump({{'argv': sys.argv[1:], 'pid': os.getpid()}}, open({str(record)!r}, 'w'))\n"
    )
    fake.chmod(0o755)
    repository = tmp_path / "models"
    env = {
        **os.environ,
        "PYTHON": sys.executable,
        "TRITONSERVER": str(fake),
        "TRITIUM_MODEL_REPOSITORY": str(repository),
        "TRITIUM_PACKAGE_MODEL": "tiny",
        "TRITIUM_PACKAGE_SOURCE": str(default_weights_dir),
        "TRITIUM_GRPC_PORT": "9001",
    }
    process = subprocess.Popen(
        [str(DOCKER_DIR / "entrypoint-triton.sh"), "--log-info=false"], env=env,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    output, _ = process.communicate(timeout=120)
    assert process.returncode == 0, output
    assert (repository / "tiny" / "config.pbtxt").is_file()
    started = json.loads(record.read_text())
    assert started["pid"] == process.pid  # exec all the way: signals reach tritonserver
    argv = started["argv"]
    assert f"--model-repository={repository}" in argv
    assert "--model-control-mode=none" in argv and "--grpc-port=9001" in argv
    assert "--http-port=8080" in argv and "--metrics-port=8002" in argv
    assert argv[-1] == "--log-info=false"


def test_triton_entrypoint_fails_clearly_without_a_repository(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "PYTHON": sys.executable,
        "TRITIUM_MODEL_REPOSITORY": str(tmp_path / "none"),
    }
    result = subprocess.run(
        [str(DOCKER_DIR / "entrypoint-triton.sh")],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "does not exist" in result.stderr and "TRITIUM_PACKAGE_MODEL" in result.stderr


def start(command: list[str], env: dict[str, str], log: Path, stack: ExitStack) -> subprocess.Popen:
    with open(log, "wb") as handle:
        process = subprocess.Popen(
            command, env=env, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True
        )
    stack.callback(stop, process)
    return process


def stop(process: subprocess.Popen) -> None:
    """SIGTERM (what Docker and Kubernetes send), then SIGKILL whatever is left of the group."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        with suppress(subprocess.TimeoutExpired):
            process.wait(40)
    with suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)  # Python backend stubs included
    process.wait(10)
    for region in Path("/dev/shm").glob(f"tritium_{process.pid}_*"):
        with suppress(OSError):
            region.unlink()


def wait_healthy(what: str, env: dict[str, str], process: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(
                f"{what} exited with {process.returncode}:\n{log.read_text()[-4000:]}"
            )
        if run_healthcheck(what, env) == 0:
            return
        time.sleep(0.5)
    raise AssertionError(f"{what} not ready in {READY_TIMEOUT_S} s:\n{log.read_text()[-4000:]}")


@pytest.fixture
def processes() -> Iterator[ExitStack]:
    with ExitStack() as stack:
        yield stack


@pytest.mark.e2e
def test_entrypoints_start_a_stack_that_answers_a_chat_request(
    tmp_path: Path, default_weights_dir: Path, processes: ExitStack
) -> None:
    from engine.package import package_model

    repository = tmp_path / "models"
    package_model(
        str(default_weights_dir),
        DEFAULT_MODEL,
        repository,
        parameters=ENGINE_PARAMETERS,
        progress=False,
    )
    http_port, grpc_port, metrics_port, port = (free_port() for _ in range(4))
    base = {**os.environ, "PYTHON": sys.executable, "XDG_CACHE_HOME": str(tmp_path / "cache")}
    triton_env = {
        **base,
        "TRITIUM_MODEL_REPOSITORY": str(repository),
        "TRITIUM_PACKAGE_MODEL": DEFAULT_MODEL,  # already there: not packaged again
        "TRITIUM_HTTP_PORT": str(http_port),
        "TRITIUM_GRPC_PORT": str(grpc_port),
        "TRITIUM_METRICS_PORT": str(metrics_port),
    }
    triton_log = tmp_path / "triton.log"
    triton = start([str(DOCKER_DIR / "entrypoint-triton.sh")], triton_env, triton_log, processes)
    wait_healthy("triton", triton_env, triton, triton_log)
    # The bundled tritonserver is the Triton of the NGC release the image pins.
    release = Dockerfile.read("Dockerfile.triton").base_image().rsplit(":", 1)[1].split("-")[0]
    metadata = httpx.get(f"http://127.0.0.1:{http_port}/v2", timeout=10).json()
    assert metadata["version"] == NGC_TRITON_VERSIONS[release]

    adapter_env = {
        **base,
        "TRITIUM_HOST": "127.0.0.1",
        "TRITIUM_PORT": str(port),
        # The form the Kubernetes manifests use: every address of a name.
        "TRITIUM_TRITON_URLS": f"dns:///127.0.0.1:{grpc_port}",
    }
    adapter_log = tmp_path / "adapter.log"
    adapter = start(
        [str(DOCKER_DIR / "entrypoint-adapter.sh")], adapter_env, adapter_log, processes
    )
    wait_healthy("adapter", adapter_env, adapter, adapter_log)

    reply = httpx.post(
        f"http://127.0.0.1:{port}/v1/chat/completions",
        json={
            "model": DEFAULT_MODEL,
            "messages": [{"role": "user", "content": "What is the capital of France?"}],
            "max_tokens": 8,
            "temperature": 0,
        },
        timeout=60,
    )
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert body["choices"][0]["message"]["content"]
    assert body["usage"]["completion_tokens"] > 0

    # SIGTERM stops each server by itself (exec: the signal reached the server, not a shell).
    for process in (adapter, triton):
        process.send_signal(signal.SIGTERM)
        assert process.wait(45) is not None


@pytest.mark.e2e
def test_liveness_fails_when_a_stub_dies_under_the_triton_entrypoint(
    tmp_path: Path, processes: ExitStack
) -> None:
    """The Kubernetes liveness probe (`healthcheck.py triton-live`) on the real tritonserver
    started by the image's entrypoint: Triton keeps answering ready after its Python-backend
    stub is killed, the probe does not."""
    from benchmarks.null_model import write_null_repository
    from tritium.process import group_processes

    repository = write_null_repository(tmp_path / "models", {"null-1": 1, "null-4": 4})
    http_port, grpc_port, metrics_port = (free_port() for _ in range(3))
    env = {
        **os.environ,
        "PYTHON": sys.executable,
        "XDG_CACHE_HOME": str(tmp_path / "cache"),
        "TRITIUM_MODEL_REPOSITORY": str(repository),
        "TRITIUM_HTTP_PORT": str(http_port),
        "TRITIUM_GRPC_PORT": str(grpc_port),
        "TRITIUM_METRICS_PORT": str(metrics_port),
        "TRITIUM_TRITON_PID_FILE": str(tmp_path / "tritonserver.pid"),
    }
    log = tmp_path / "triton.log"
    triton = start([str(DOCKER_DIR / "entrypoint-triton.sh")], env, log, processes)
    wait_healthy("triton", env, triton, log)
    assert int((tmp_path / "tritonserver.pid").read_text()) == triton.pid  # exec all the way
    assert run_healthcheck("triton-live", env) == 0

    stubs = [
        pid
        for pid, name in group_processes(triton.pid).items()
        if name.startswith("triton_python_b")
    ]
    assert len(stubs) == 2  # one per model instance
    os.kill(stubs[0], signal.SIGKILL)
    deadline = time.monotonic() + 10
    while stubs[0] in group_processes(triton.pid) and time.monotonic() < deadline:
        time.sleep(0.1)

    command = [sys.executable, str(DOCKER_DIR / "healthcheck.py"), "triton-live"]
    probe = subprocess.run(command, env=env, capture_output=True, text=True, timeout=30)
    assert probe.returncode == 1
    assert "a Python backend stub died (1 of 2 alive)" in probe.stderr
    assert run_healthcheck("triton", env) == 0  # what an HTTP probe sees: still ready
