"""The launcher against the real tritonserver, with tiny models written by the tests.

A stand-in adapter (a plain HTTP server taking the adapter's flags) replaces
`python -m adapter`, so these tests cover launching and supervising, not the API.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from tritium import tritonserver
from tritium.process import group_members, wait_until
from tritium.serve import is_triton_ready, run
from tritium.serve_options import ServeOptions

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(
        tritonserver.pytriton_server_root() is None and "TRITONSERVER" not in os.environ,
        reason="no tritonserver (install nvidia-pytriton)",
    ),
]

MODEL_CONFIG = """\
backend: "python"
max_batch_size: 0
model_transaction_policy { decoupled: true }
input [ { name: "text_input", data_type: TYPE_STRING, dims: [ 1 ] } ]
output [ { name: "text_output", data_type: TYPE_STRING, dims: [ -1 ] } ]
instance_group [ { kind: KIND_CPU, count: 1 } ]
"""

# Sends one response per word of its input, then the final flag.
ECHO_MODEL = """\
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        for request in requests:
            sender = request.get_response_sender()
            text = pb_utils.get_input_tensor_by_name(request, "text_input").as_numpy()[0]
            for word in text.decode().split():
                output = pb_utils.Tensor("text_output", np.array([word.encode()], dtype=np.object_))
                sender.send(pb_utils.InferenceResponse(output_tensors=[output]))
            sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
        return None
"""

BROKEN_MODEL = """\
class TritonPythonModel:
    def initialize(self, args):
        raise RuntimeError("weights are missing: tiny-broken-model cannot load")
"""

SLOW_MODEL = """\
import time


class TritonPythonModel:
    def initialize(self, args):
        time.sleep(600)
"""

# Takes the adapter's flags, answers every GET with 200, exits with $FAKE_ADAPTER_EXIT if set.
FAKE_ADAPTER = """\
import argparse, http.server, os, sys

parser = argparse.ArgumentParser()
parser.add_argument("--host")
parser.add_argument("--port", type=int)
parser.add_argument("--triton-url", action="append")
args = parser.parse_args()
print("fake adapter for", args.triton_url, "keys", os.environ.get("TRITIUM_API_KEYS"), flush=True)
if os.environ.get("FAKE_ADAPTER_EXIT"):
    print("fake adapter: giving up on purpose", flush=True)
    sys.exit(int(os.environ["FAKE_ADAPTER_EXIT"]))


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"ok")


http.server.HTTPServer((args.host, args.port), Handler).serve_forever()
"""


def write_model(repository: Path, name: str, source: str) -> None:
    (repository / name / "1").mkdir(parents=True)
    (repository / name / "config.pbtxt").write_text(MODEL_CONFIG)
    (repository / name / "1" / "model.py").write_text(source)


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for each in sockets:
            each.bind(("127.0.0.1", 0))
        return [each.getsockname()[1] for each in sockets]
    finally:
        for each in sockets:
            each.close()


@pytest.fixture(autouse=True)
def private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The prepared backend directory goes under tmp_path, not the user's cache."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


@pytest.fixture
def fake_adapter(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    package = tmp_path / "site" / "fake_adapter"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "__main__.py").write_text(FAKE_ADAPTER)
    monkeypatch.setenv("PYTHONPATH", str(tmp_path / "site"))
    return "fake_adapter"


def serve_options(tmp_path: Path, repository: Path, **overrides: object) -> ServeOptions:
    http_port, grpc_port, metrics_port, port = free_ports(4)
    settings: dict[str, object] = {
        "model_repository": repository,
        "http_port": http_port,
        "grpc_port": grpc_port,
        "metrics_port": metrics_port,
        "port": port,
        "log_dir": tmp_path / "logs",
        "startup_timeout_seconds": 60.0,
        "stop_grace_seconds": 10.0,
        "api_keys": ("secret-key",),
    }
    settings.update(overrides)
    return ServeOptions(**settings)  # type: ignore[arg-type]


def children_of(parent_pid: int) -> list[int]:
    children = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat[stat.rfind(")") + 2 :].split()[1]) == parent_pid:
                children.append(int(entry.name))
    return children


def is_alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rfind(")") + 2] not in "ZX"


def command_name(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def wait_for_banner(capsys: pytest.CaptureFixture[str]) -> str:
    """Everything the launcher printed up to its ready banner."""
    output: list[str] = []

    def banner_printed() -> bool:
        output.append(capsys.readouterr().out)
        return "Press Ctrl-C" in "".join(output)

    assert wait_until(banner_printed, 60, 0.2), "".join(output)
    return "".join(output)


class RunInThread:
    """`run()` in a thread, as `serve` runs it in the main thread; stopped like Ctrl-C."""

    def __init__(self, options: ServeOptions) -> None:
        self.options = options
        self.stop_event = threading.Event()
        self.exit_status: int | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        self.exit_status = run(self.options, self.stop_event)

    def __enter__(self) -> RunInThread:
        self.thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop_event.set()
        self.thread.join(timeout=60)


@pytest.fixture
def echo_repository(tmp_path: Path) -> Path:
    repository = tmp_path / "repository"
    write_model(repository, "echo", ECHO_MODEL)
    return repository


def stream_echo(grpc_url: str, text: str) -> list[str]:
    import tritonclient.grpc as grpcclient

    responses: queue.Queue[object] = queue.Queue()
    client = grpcclient.InferenceServerClient(grpc_url)
    try:
        client.start_stream(callback=lambda result, error: responses.put(error or result))
        text_input = grpcclient.InferInput("text_input", [1], "BYTES")
        text_input.set_data_from_numpy(np.array([text.encode()], dtype=np.object_))
        client.async_stream_infer("echo", [text_input], enable_empty_final_response=True)
        words = []
        while True:
            result = responses.get(timeout=30)
            assert not isinstance(result, Exception), result
            if result.get_response().parameters["triton_final_response"].bool_param:
                return words
            words += [word.decode() for word in result.as_numpy("text_output")]
    finally:
        client.stop_stream()
        client.close()


def test_serves_a_decoupled_model_and_stops_cleanly(
    tmp_path: Path, echo_repository: Path, fake_adapter: str
) -> None:
    options = serve_options(tmp_path, echo_repository, adapter_module=fake_adapter)
    http_url = f"http://127.0.0.1:{options.http_port}"
    before = set(children_of(os.getpid()))  # e.g. a session-wide stack of other tests
    with RunInThread(options) as launcher:
        adapter_log_path = options.log_dir / "adapter.log"
        # The adapter has started once it has written its first line (a loaded machine may
        # take a while to start Python); stopping before that would leave the log empty.
        assert wait_until(
            lambda: adapter_log_path.exists() and "fake adapter for" in adapter_log_path.read_text(),
            60,
        )
        assert wait_until(lambda: is_triton_ready(http_url), 60)
        words = stream_echo(f"127.0.0.1:{options.grpc_port}", "several words come back")
        assert words == ["several", "words", "come", "back"]
        spawned = [pid for pid in children_of(os.getpid()) if pid not in before]
        stubs = [pid for child in spawned for pid in group_members(child)]
        assert len(spawned) == 2 and len(stubs) >= 3  # server, its stub, the adapter
    assert launcher.exit_status == 0
    assert not [pid for pid in stubs if is_alive(pid)]
    assert not list(Path("/dev/shm").glob(f"tritium_{os.getpid()}_*"))
    assert (tmp_path / "cache" / "tritium").is_dir()
    adapter_log = (options.log_dir / "adapter.log").read_text()
    assert f"127.0.0.1:{options.grpc_port}" in adapter_log and "secret-key" in adapter_log


def test_real_adapter_lists_the_served_model(tmp_path: Path, echo_repository: Path) -> None:
    options = serve_options(tmp_path, echo_repository)  # `python -m adapter`, the real one
    base_url = f"http://127.0.0.1:{options.port}"
    with RunInThread(options) as launcher:
        assert wait_until(lambda: is_serving(f"{base_url}/health"), 60, 0.2), launcher.exit_status
        request = urllib.request.Request(
            f"{base_url}/v1/models", headers={"Authorization": "Bearer secret-key"}
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            models = json.load(response)
    assert [model["id"] for model in models["data"]] == ["echo"]
    assert launcher.exit_status == 0


def is_serving(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def test_prints_where_to_send_requests(
    tmp_path: Path, echo_repository: Path, fake_adapter: str, capsys: pytest.CaptureFixture[str]
) -> None:
    options = serve_options(tmp_path, echo_repository, adapter_module=fake_adapter)
    with RunInThread(options):
        printed = wait_for_banner(capsys)
    assert f"http://127.0.0.1:{options.port}/v1/chat/completions" in printed
    assert '"model": "echo"' in printed
    assert "Authorization: Bearer secret-key" in printed


@pytest.mark.parametrize("strict_models", [False, True])
def test_broken_model_fails_fast_with_the_log_tail(
    tmp_path: Path, fake_adapter: str, capsys: pytest.CaptureFixture[str], strict_models: bool
) -> None:
    repository = tmp_path / "repository"
    write_model(repository, "broken", BROKEN_MODEL)
    started = time.monotonic()
    options = serve_options(
        tmp_path, repository, adapter_module=fake_adapter, strict_models=strict_models
    )
    status = run(options, threading.Event())
    assert status == 1
    assert time.monotonic() - started < 30
    error = capsys.readouterr().err
    if strict_models:
        assert "tritonserver exited during startup" in error
    else:
        assert "tritonserver loaded no model (broken: " in error
    assert "tiny-broken-model cannot load" in error


def write_leftover(repository: Path) -> None:
    """What a failed `tritium package` used to leave: a model directory with a lock file."""
    (repository / "half-packaged").mkdir(parents=True)
    (repository / "half-packaged" / ".package.lock").write_text("")


def test_models_that_cannot_load_do_not_stop_the_others(
    tmp_path: Path, echo_repository: Path, fake_adapter: str, capsys: pytest.CaptureFixture[str]
) -> None:
    write_model(echo_repository, "broken", BROKEN_MODEL)
    write_leftover(echo_repository)
    options = serve_options(tmp_path, echo_repository, adapter_module=fake_adapter)
    printed: list[str] = []

    def banner_printed() -> bool:
        captured = capsys.readouterr()
        printed.extend([captured.out, captured.err])
        return "Press Ctrl-C" in "".join(printed)

    with RunInThread(options) as launcher:
        assert wait_until(banner_printed, 60, 0.2), "".join(printed)
        words = stream_echo(f"127.0.0.1:{options.grpc_port}", "still served")
        assert words == ["still", "served"]
        # The watch checks the served models only: the broken ones never cause a restart.
        assert launcher.exit_status is None
    assert launcher.exit_status == 0
    output = "".join(printed)
    assert "Tritium is serving echo at" in output
    assert "model broken is not served: " in output
    assert "tiny-broken-model cannot load" in output
    assert "model half-packaged is not served: " in output


def test_strict_models_refuses_a_repository_with_a_model_that_cannot_load(
    tmp_path: Path, echo_repository: Path, fake_adapter: str, capsys: pytest.CaptureFixture[str]
) -> None:
    write_leftover(echo_repository)
    options = serve_options(
        tmp_path, echo_repository, adapter_module=fake_adapter, strict_models=True
    )
    assert run(options, threading.Event()) == 1
    error = capsys.readouterr().err
    assert "tritonserver exited during startup" in error  # Triton 2.51 may crash as it exits
    assert "failed to load all models" in error


def test_missing_repository_is_reported_before_starting_anything(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status = run(serve_options(tmp_path, tmp_path / "missing"), threading.Event())
    assert status == 1
    assert f"model repository {tmp_path / 'missing'} does not exist" in capsys.readouterr().err


def test_startup_timeout_stops_a_server_that_never_gets_ready(
    tmp_path: Path, fake_adapter: str, capsys: pytest.CaptureFixture[str]
) -> None:
    repository = tmp_path / "repository"
    write_model(repository, "slow", SLOW_MODEL)
    options = serve_options(
        tmp_path, repository, adapter_module=fake_adapter, startup_timeout_seconds=3.0
    )
    before = set(children_of(os.getpid()))
    assert run(options, threading.Event()) == 1
    error = capsys.readouterr().err
    assert "tritonserver was not ready after 3 s (--startup-timeout)" in error
    assert "loading: slow:1" in error
    assert set(children_of(os.getpid())) <= before


def test_adapter_death_stops_triton(
    tmp_path: Path,
    echo_repository: Path,
    fake_adapter: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("FAKE_ADAPTER_EXIT", "3")
    options = serve_options(tmp_path, echo_repository, adapter_module=fake_adapter)
    assert run(options, threading.Event()) == 1
    error = capsys.readouterr().err
    assert "adapter exited during startup (exit code 3)" in error
    assert "giving up on purpose" in error
    assert not is_triton_ready(f"http://127.0.0.1:{options.http_port}")


def test_triton_crash_is_reported_and_leaves_nothing_behind(
    tmp_path: Path,
    echo_repository: Path,
    fake_adapter: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # No restart budget: the crash ends serve (tests/tritium/test_supervision.py restarts).
    options = serve_options(
        tmp_path, echo_repository, adapter_module=fake_adapter, max_triton_restarts=0
    )
    before = set(children_of(os.getpid()))  # e.g. a session-wide stack of other tests
    with RunInThread(options) as launcher:
        wait_for_banner(capsys)
        spawned = [pid for pid in children_of(os.getpid()) if pid not in before]
        (triton_pid,) = [pid for pid in spawned if command_name(pid) == "tritonserver"]
        members = [pid for child in spawned for pid in group_members(child)]
        os.kill(triton_pid, signal.SIGKILL)  # its stub is orphaned; the launcher must sweep it
        launcher.thread.join(timeout=60)
    assert launcher.exit_status == 1
    assert "tritonserver stopped unexpectedly (signal SIGKILL)" in capsys.readouterr().err
    assert not [pid for pid in members if is_alive(pid)]
    assert not list(Path("/dev/shm").glob(f"tritium_{os.getpid()}_*"))


@pytest.fixture
def cli_workdir(tmp_path: Path) -> Iterator[Path]:
    """A working directory whose `adapter` package is the stand-in: `python -m adapter`
    from there finds it before the project's own."""
    workdir = tmp_path / "workdir"
    (workdir / "adapter").mkdir(parents=True)
    (workdir / "adapter" / "__init__.py").write_text("")
    (workdir / "adapter" / "__main__.py").write_text(FAKE_ADAPTER)
    yield workdir


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGINT])
def test_cli_stops_everything_on_a_signal(
    tmp_path: Path, echo_repository: Path, cli_workdir: Path, stop_signal: signal.Signals
) -> None:
    http_port, grpc_port, metrics_port, port = free_ports(4)
    command = [sys.executable, "-m", "tritium", "serve", f"--model-repository={echo_repository}"]
    command += [f"--http-port={http_port}", f"--grpc-port={grpc_port}"]
    command += [
        f"--metrics-port={metrics_port}",
        f"--port={port}",
        f"--log-dir={tmp_path / 'logs'}",
    ]
    launcher = subprocess.Popen(
        command, cwd=cli_workdir, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        banner = []
        for line in launcher.stdout:  # type: ignore[union-attr]
            banner.append(line)
            if "Press Ctrl-C" in line:
                break
        assert "Press Ctrl-C" in "".join(banner), "".join(banner)
        spawned = children_of(launcher.pid)
        members = [pid for child in spawned for pid in group_members(child)]
        assert len(members) >= 3
        launcher.send_signal(stop_signal)
        assert launcher.wait(timeout=60) == 0
        assert not [pid for pid in members if is_alive(pid)]
    finally:
        if launcher.poll() is None:
            launcher.kill()
            launcher.wait()


def test_a_garbled_readiness_answer_is_not_ready(tmp_path: Path) -> None:
    """The probe runs in serve's supervision loop: a bad status line (or a connection
    closed mid-answer) must read as "not ready", not raise and stop the stack."""
    import socket as socket_module

    with socket_module.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]

        def answer_garbage() -> None:
            for reply in (b"NOT HTTP AT ALL\r\n\r\n", b"HTTP/1.1 2x0 OK\r\n\r\n"):
                connection, _ = server.accept()
                with connection:
                    connection.recv(4096)
                    connection.sendall(reply)

        answering = threading.Thread(target=answer_garbage, daemon=True)
        answering.start()
        assert is_triton_ready(f"http://127.0.0.1:{port}") is False
        assert is_triton_ready(f"http://127.0.0.1:{port}") is False
        answering.join(5)
