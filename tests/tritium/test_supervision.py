"""How `tritium serve` keeps its children: what makes a live tritonserver count as broken
(`TritonWatch`) and the order `Stack.stop` stops them in, without a server; then a real
tritonserver killed and restarted."""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.tritium.test_launcher import (  # noqa: F401 - fixtures used by name
    RunInThread,
    children_of,
    command_name,
    echo_repository,
    fake_adapter,
    is_alive,
    private_cache,
    serve_options,
    stream_echo,
    wait_for_banner,
)
from tritium import serve, supervision, tritonserver
from tritium.process import ChildProcess, start_child, stop_child, wait_until
from tritium.supervision import TritonWatch


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def sleeper(tmp_path: Path) -> Iterator[ChildProcess]:
    child = start_child("tritonserver", [sys.executable, "-c", "import time; time.sleep(60)"], tmp_path / "log")
    yield child
    stop_child(child, 1.0)


def test_a_dead_stub_is_a_problem(sleeper: ChildProcess, monkeypatch: pytest.MonkeyPatch) -> None:
    stubs = [[11, 12], [11, 12], [11]]
    monkeypatch.setattr(supervision, "live_stubs", lambda _triton: stubs.pop(0))
    watch = TritonWatch(sleeper, is_ready=lambda: True, unready_grace_seconds=10)
    watch.arm()
    assert watch.problem() is None
    assert "a Python backend stub died (1 of 2 alive)" in (watch.problem() or "")


def test_unready_past_the_grace_is_a_problem(sleeper: ChildProcess, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(supervision, "live_stubs", lambda _triton: [])
    clock = Clock()
    ready = [True]
    watch = TritonWatch(
        sleeper, lambda: ready[0], unready_grace_seconds=10, readiness_interval_seconds=0, clock=clock
    )
    watch.arm()
    assert watch.problem() is None
    ready[0] = False
    for now in (2.0, 6.0, 11.0):  # unready since 2 s: within the grace until 12 s
        clock.now = now
        assert watch.problem() is None
    clock.now = 12.5
    assert watch.problem() == "tritonserver was not ready for 10 s"
    ready[0] = True
    clock.now = 15.0
    assert watch.problem() is None  # ready again: the clock starts over


def test_an_exited_server_is_left_to_the_exit_check(tmp_path: Path) -> None:
    child = start_child("tritonserver", [sys.executable, "-c", "pass"], tmp_path / "log")
    child.popen.wait(10)
    watch = TritonWatch(child, is_ready=lambda: False, unready_grace_seconds=0)
    assert watch.problem() is None


def test_live_stubs_reads_the_process_group(sleeper: ChildProcess) -> None:
    assert supervision.live_stubs(sleeper) == []  # a python child is not a stub


def test_the_stack_stops_the_adapter_then_triton_then_removes_shared_memory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def start_sleeper(name: str) -> ChildProcess:
        command = [sys.executable, "-c", "import time; time.sleep(60)"]
        return start_child(name, command, tmp_path / f"{name}.log")

    shm_prefix = f"tritium_test_{os.getpid()}_"
    region = Path("/dev/shm") / f"{shm_prefix}region"
    region.write_bytes(b"")
    stack = serve.Stack(shm_prefix, start_sleeper("tritonserver"), start_sleeper("adapter"))
    children = [stack.triton, stack.adapter]
    stopped: list[tuple[str, bool]] = []

    def recording_stop(child: ChildProcess, grace_seconds: float) -> int:
        stopped.append((child.name, region.exists()))
        return stop_child(child, grace_seconds)

    monkeypatch.setattr(serve, "stop_child", recording_stop)
    stack.stop(grace_seconds=5.0)
    assert stopped == [("adapter", True), ("tritonserver", True)]
    assert not region.exists()
    assert all(child is not None and child.exit_code() is not None for child in children)
    assert stack.triton is None and stack.adapter is None
    stack.stop(grace_seconds=5.0)  # nothing left to stop: no child is signalled twice
    assert len(stopped) == 2


# --- against the real tritonserver, with the launcher tests' echo model ------------------

def needs_tritonserver(test: Callable[..., None]) -> Callable[..., None]:
    """An e2e test, skipped where no tritonserver is installed."""
    skip = pytest.mark.skipif(
        tritonserver.pytriton_server_root() is None and "TRITONSERVER" not in os.environ,
        reason="no tritonserver (install nvidia-pytriton)",
    )
    return pytest.mark.e2e(skip(test))


def our_tritonserver() -> int:
    """The pid of the tritonserver this test's launcher started."""
    (triton,) = [pid for pid in children_of(os.getpid()) if command_name(pid) == "tritonserver"]
    return triton


@needs_tritonserver
@pytest.mark.parametrize(
    ("victim", "failure"),
    [
        ("stub", "cannot serve (a Python backend stub died (0 of 1 alive)"),
        ("tritonserver", "tritonserver stopped unexpectedly (signal SIGKILL)"),
    ],
    ids=["stub", "tritonserver"],
)
def test_a_killed_stub_or_tritonserver_restarts_triton_until_the_budget_is_spent(
    victim: str,
    failure: str,
    tmp_path: Path,
    echo_repository: Path,  # noqa: F811 - the launcher tests' fixture, imported above
    fake_adapter: str,  # noqa: F811
    capsys: pytest.CaptureFixture[str],
) -> None:
    options = serve_options(
        tmp_path, echo_repository, adapter_module=fake_adapter, max_triton_restarts=1
    )
    grpc_url = f"127.0.0.1:{options.grpc_port}"

    def kill() -> int:
        """SIGKILL the victim; returns the stub's pid (orphaned when Triton is the victim)."""
        triton = our_tritonserver()
        (stub,) = children_of(triton)
        os.kill(stub if victim == "stub" else triton, signal.SIGKILL)
        return stub

    with RunInThread(options) as launcher:
        wait_for_banner(capsys)
        stub = kill()
        assert wait_until(lambda: "tritonserver ready" in capsys.readouterr().out, 60, 0.2)
        assert not is_alive(stub)  # a Triton's orphaned stub is swept before the restart
        assert stream_echo(grpc_url, "back again") == ["back", "again"]
        kill()  # the second failure is past the budget of one restart
        launcher.thread.join(timeout=60)
    assert launcher.exit_status == 1
    error = capsys.readouterr().err
    assert failure in error and "after 1 restarts" in error
