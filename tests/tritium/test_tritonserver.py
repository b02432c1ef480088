"""Finding and preparing tritonserver, without starting it."""

from __future__ import annotations

import os
import stat
import sys
import sysconfig
from pathlib import Path

import pytest

from tritium import tritonserver
from tritium.tritonserver import (
    PYTHON_BACKEND_LIBRARY,
    PYTHON_BACKEND_STUB,
    PYTHON_BACKEND_UTILS,
    TritonServerNotFoundError,
    TritonServerOptions,
    build_command,
    find_tritonserver,
    prepare_backend_dir,
    server_environment,
)

WHEEL_ROOT = tritonserver.pytriton_server_root()
needs_wheel = pytest.mark.skipif(WHEEL_ROOT is None, reason="nvidia-pytriton is not installed")


def make_executable(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def test_explicit_path_wins_over_everything(tmp_path: Path) -> None:
    explicit = make_executable(tmp_path / "explicit" / "tritonserver")
    from_env = make_executable(tmp_path / "env" / "tritonserver")
    system = make_executable(tmp_path / "opt" / "tritonserver")
    found = find_tritonserver(
        str(explicit), environ={"TRITONSERVER": str(from_env)}, system_path=system
    )
    assert found == explicit.resolve()


def test_environment_variable_comes_before_the_system_install(tmp_path: Path) -> None:
    from_env = make_executable(tmp_path / "env" / "tritonserver")
    system = make_executable(tmp_path / "opt" / "tritonserver")
    found = find_tritonserver(None, environ={"TRITONSERVER": str(from_env)}, system_path=system)
    assert found == from_env.resolve()


def test_system_install_comes_before_the_wheel(tmp_path: Path) -> None:
    system = make_executable(tmp_path / "opt" / "tritonserver")
    assert find_tritonserver(None, environ={}, system_path=system) == system


@needs_wheel
def test_wheel_is_the_last_resort(tmp_path: Path) -> None:
    found = find_tritonserver(None, environ={}, system_path=tmp_path / "missing")
    assert found == WHEEL_ROOT / "bin" / "tritonserver"
    assert os.access(found, os.X_OK)


def test_explicit_path_that_is_not_executable_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(TritonServerNotFoundError, match="--tritonserver points at"):
        find_tritonserver(str(tmp_path / "nope"), environ={}, system_path=tmp_path / "missing")
    with pytest.raises(TritonServerNotFoundError, match=r"\$TRITONSERVER points at"):
        find_tritonserver(
            None, environ={"TRITONSERVER": str(tmp_path)}, system_path=tmp_path / "missing"
        )


def test_not_found_lists_everything_tried(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tritonserver, "pytriton_server_root", lambda: None)
    with pytest.raises(TritonServerNotFoundError) as caught:
        find_tritonserver(None, environ={}, system_path=tmp_path / "opt" / "tritonserver")
    message = str(caught.value)
    for tried in ("--tritonserver", "$TRITONSERVER", str(tmp_path / "opt"), "nvidia-pytriton"):
        assert tried in message


@needs_wheel
def test_backend_dir_holds_the_python_backend_for_this_interpreter(tmp_path: Path) -> None:
    executable = WHEEL_ROOT / "bin" / "tritonserver"
    backends = prepare_backend_dir(executable, cache_dir=tmp_path)
    python_dir = backends / "python"
    names = sorted(entry.name for entry in python_dir.iterdir())
    assert names == sorted([PYTHON_BACKEND_LIBRARY, PYTHON_BACKEND_UTILS, PYTHON_BACKEND_STUB])
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    expected_stub = WHEEL_ROOT / "python_backend_stubs" / version / PYTHON_BACKEND_STUB
    assert (python_dir / PYTHON_BACKEND_STUB).resolve() == expected_stub.resolve()
    assert os.access(python_dir / PYTHON_BACKEND_STUB, os.X_OK)
    # Preparing again (another launcher, same cache) gives the same, intact directory.
    assert prepare_backend_dir(executable, cache_dir=tmp_path) == backends
    assert sorted(entry.name for entry in python_dir.iterdir()) == names


@needs_wheel
def test_backend_dir_rejects_a_python_without_a_stub(tmp_path: Path) -> None:
    executable = WHEEL_ROOT / "bin" / "tritonserver"
    with pytest.raises(TritonServerNotFoundError, match="no Python backend stub for Python 2.7"):
        prepare_backend_dir(executable, cache_dir=tmp_path, version="2.7")


def test_container_server_uses_its_own_backends(tmp_path: Path) -> None:
    executable = make_executable(tmp_path / "tritonserver" / "bin" / "tritonserver")
    assert (
        prepare_backend_dir(executable, cache_dir=tmp_path / "cache")
        == (tmp_path / "tritonserver" / "backends").resolve()
    )


@needs_wheel
def test_environment_finds_libraries_and_the_virtual_environment() -> None:
    executable = WHEEL_ROOT / "bin" / "tritonserver"
    environment = server_environment(
        executable, base={"PATH": "/usr/bin:/bin", "LD_LIBRARY_PATH": "/existing"}
    )
    library_dirs = environment["LD_LIBRARY_PATH"].split(os.pathsep)
    assert library_dirs[0] == str(WHEEL_ROOT.parent.parent / "nvidia_pytriton.libs")
    assert Path(library_dirs[0]).is_dir()
    assert sysconfig.get_config_var("LIBDIR") in library_dirs
    assert library_dirs[-1] == "/existing"
    path_dirs = environment["PATH"].split(os.pathsep)
    assert path_dirs[0] == str(Path(sys.executable).parent)
    assert path_dirs[1:] == ["/usr/bin", "/bin"]


def test_command_binds_to_loopback_and_fails_fast(tmp_path: Path) -> None:
    options = TritonServerOptions(
        executable=Path("/bin/tritonserver"),
        model_repository=tmp_path / "repo",
        backend_directory=tmp_path / "backends",
        http_port=18080,
        grpc_port=18001,
        metrics_port=18002,
        shm_region_prefix="tritium_42_",
        cpu_only=True,
        extra_args=("--log-info=false",),
    )
    command = build_command(options)
    assert command[0] == "/bin/tritonserver"
    for expected in (
        f"--model-repository={tmp_path / 'repo'}",
        f"--backend-directory={tmp_path / 'backends'}",
        "--http-address=127.0.0.1",
        "--grpc-address=127.0.0.1",
        "--metrics-address=127.0.0.1",
        "--http-port=18080",
        "--grpc-port=18001",
        "--metrics-port=18002",
        "--model-control-mode=none",
        "--exit-on-error=false",  # the models that load serve; serve names the others
        "--strict-readiness=false",
        "--backend-config=python,shm-region-prefix-name=tritium_42_",
        "--pinned-memory-pool-byte-size=0",
        "--allow-gpu-metrics=false",
    ):
        assert expected in command
    assert command[-1] == "--log-info=false"


def test_strict_models_make_any_load_failure_fatal(tmp_path: Path) -> None:
    options = TritonServerOptions(
        executable=Path("/bin/tritonserver"),
        model_repository=tmp_path,
        backend_directory=tmp_path,
        strict_models=True,
    )
    command = build_command(options)
    assert "--exit-on-error=true" in command and "--strict-readiness=true" in command


def test_command_keeps_gpu_defaults_when_a_gpu_is_present(tmp_path: Path) -> None:
    options = TritonServerOptions(
        executable=Path("/bin/tritonserver"),
        model_repository=tmp_path,
        backend_directory=tmp_path,
        cpu_only=False,
    )
    command = build_command(options)
    assert not any(part.startswith("--pinned-memory-pool-byte-size") for part in command)


def test_model_names_are_directories_with_a_config(tmp_path: Path) -> None:
    for name in ("beta", "alpha"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.pbtxt").write_text('backend: "python"\n')
    (tmp_path / "notes").mkdir()
    (tmp_path / "README.md").write_text("not a model\n")
    assert tritonserver.list_model_names(tmp_path) == ["alpha", "beta"]
    assert tritonserver.list_model_names(tmp_path / "missing") == []
