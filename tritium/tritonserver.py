"""Find a tritonserver binary and prepare what it needs to run here.

Two layouts are supported:

- the NGC container: ``/opt/tritonserver/bin/tritonserver`` next to
  ``/opt/tritonserver/backends/`` with the Python backend and its stub ready to use;
- the ``nvidia-pytriton`` wheel: ``pytriton/tritonserver/bin/tritonserver`` next to
  ``backends/python/`` (without a stub) and ``python_backend_stubs/3.X/`` (one stub per
  Python version). Its shared libraries live in ``nvidia_pytriton.libs/`` beside the
  ``pytriton`` package, and the stub links ``libpython3.X.so`` from the interpreter's
  ``LIBDIR``, so both must be on ``LD_LIBRARY_PATH``.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shlex
import sys
import sysconfig
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

SYSTEM_TRITONSERVER = Path("/opt/tritonserver/bin/tritonserver")
TRITONSERVER_ENV_VAR = "TRITONSERVER"

# Files the Python backend needs in <backend-directory>/python/.
PYTHON_BACKEND_LIBRARY = "libtriton_python.so"
PYTHON_BACKEND_UTILS = "triton_python_backend_utils.py"
PYTHON_BACKEND_STUB = "triton_python_backend_stub"


class TritonServerNotFoundError(RuntimeError):
    """No usable tritonserver binary; the message lists every place that was tried."""


def pytriton_server_root() -> Path | None:
    """The wheel's ``pytriton/tritonserver`` directory, or None when nvidia-pytriton is absent.

    Uses the import machinery's spec only, so pytriton's own modules are never executed.
    """
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        root = Path(location) / "tritonserver"
        if (root / "bin" / "tritonserver").is_file():
            return root
    return None


def find_tritonserver(
    explicit: str | None = None,
    environ: Mapping[str, str] | None = None,
    system_path: Path = SYSTEM_TRITONSERVER,
) -> Path:
    """Locate tritonserver: ``explicit`` (``--tritonserver``), ``$TRITONSERVER``,
    the NGC container's ``/opt/tritonserver``, then the nvidia-pytriton wheel.

    An explicit path or variable that does not point at an executable is an error
    rather than a reason to fall through: the user asked for that binary.
    """
    environ = os.environ if environ is None else environ
    requested = [
        ("--tritonserver", explicit),
        (f"${TRITONSERVER_ENV_VAR}", environ.get(TRITONSERVER_ENV_VAR)),
    ]
    for source, value in requested:
        if value:
            path = Path(value).expanduser()
            if not _is_executable(path):
                raise TritonServerNotFoundError(
                    f"{source} points at {path}, which is not an executable file"
                )
            return path.resolve()

    tried = ["--tritonserver (not given)", f"${TRITONSERVER_ENV_VAR} (not set)"]
    if _is_executable(system_path):
        return system_path
    tried.append(f"{system_path} (not found)")

    wheel_root = pytriton_server_root()
    if wheel_root is not None:
        return wheel_root / "bin" / "tritonserver"
    tried.append("the nvidia-pytriton wheel (not installed in this environment)")

    raise TritonServerNotFoundError(
        "tritonserver not found. Tried: "
        + "; ".join(tried)
        + ". Install it with `pip install nvidia-pytriton==0.7.0` (extra `tritium[server]`), "
        "run inside the NGC Triton container, or pass --tritonserver PATH."
    )


def _is_executable(path: Path) -> bool:
    return path.is_file() and os.access(path, os.X_OK)


def is_wheel_server(executable: Path) -> bool:
    """True for the nvidia-pytriton layout (per-version stubs, no stub in backends/)."""
    return (executable.resolve().parent.parent / "python_backend_stubs").is_dir()


def wheel_libs_dir(executable: Path) -> Path:
    """``nvidia_pytriton.libs`` beside the ``pytriton`` package (auditwheel's vendored libs)."""
    pytriton_dir = executable.resolve().parent.parent.parent
    return pytriton_dir.parent / "nvidia_pytriton.libs"


def python_version() -> str:
    return f"{sys.version_info.major}.{sys.version_info.minor}"


def default_cache_dir(environ: Mapping[str, str] | None = None) -> Path:
    environ = os.environ if environ is None else environ
    base = environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "tritium"


def prepare_backend_dir(
    executable: Path,
    cache_dir: Path | None = None,
    version: str | None = None,
) -> Path:
    """Return the directory to pass as ``--backend-directory``.

    The container's ``backends/`` is used as it is. For the wheel, a
    ``<cache>/backends-<key>/python/`` directory is filled with symlinks to the
    backend library, its utils module and the stub built for this interpreter's
    major.minor; ``<key>`` names the wheel location and the Python version so that
    several environments can share one cache without clobbering each other.
    """
    executable = executable.resolve()
    server_root = executable.parent.parent
    if not is_wheel_server(executable):
        return server_root / "backends"

    version = version or python_version()
    stub = server_root / "python_backend_stubs" / version / PYTHON_BACKEND_STUB
    if not stub.is_file():
        available = sorted(p.name for p in (server_root / "python_backend_stubs").iterdir())
        raise TritonServerNotFoundError(
            f"the tritonserver at {executable} has no Python backend stub for Python {version} "
            f"(it has stubs for {', '.join(available)}); run tritium with one of those Pythons"
        )
    sources = {
        PYTHON_BACKEND_LIBRARY: server_root / "backends" / "python" / PYTHON_BACKEND_LIBRARY,
        PYTHON_BACKEND_UTILS: server_root / "backends" / "python" / PYTHON_BACKEND_UTILS,
        PYTHON_BACKEND_STUB: stub,
    }
    key = hashlib.sha256(str(server_root).encode()).hexdigest()[:12]
    backends = (cache_dir or default_cache_dir()) / f"backends-{key}-py{version}"
    python_dir = backends / "python"
    python_dir.mkdir(parents=True, exist_ok=True)
    for name, source in sources.items():
        _link_atomically(source, python_dir / name)
    return backends


def _link_atomically(source: Path, destination: Path) -> None:
    """Point ``destination`` at ``source``; safe when several launchers race on one cache."""
    if destination.is_symlink() and destination.resolve() == source.resolve():
        return
    temporary = destination.with_name(f".{destination.name}.{os.getpid()}.tmp")
    temporary.unlink(missing_ok=True)
    temporary.symlink_to(source)
    os.replace(temporary, destination)


def server_environment(
    executable: Path,
    base: Mapping[str, str] | None = None,
    python_executable: str | None = None,
) -> dict[str, str]:
    """Environment for tritonserver and, through inheritance, the Python backend stubs.

    - ``LD_LIBRARY_PATH``: the wheel's vendored libraries and the interpreter's LIBDIR
      (``libpython3.X.so``, which the stub links) ahead of whatever was there.
    - ``PATH``: the directory of the running interpreter first, because the stub's
      embedded Python derives ``sys.prefix`` from the ``python3`` it finds on ``PATH``;
      that is how models see the virtual environment's packages.
    """
    environment = dict(os.environ if base is None else base)
    library_dirs: list[str] = []
    if is_wheel_server(executable):
        library_dirs.append(str(wheel_libs_dir(executable)))
    libdir = sysconfig.get_config_var("LIBDIR")
    if libdir and Path(libdir).is_dir():
        library_dirs.append(libdir)
    if environment.get("LD_LIBRARY_PATH"):
        library_dirs.append(environment["LD_LIBRARY_PATH"])
    environment["LD_LIBRARY_PATH"] = os.pathsep.join(library_dirs)

    interpreter_bin = str(Path(python_executable or sys.executable).parent)
    rest = [entry for entry in environment.get("PATH", "").split(os.pathsep) if entry]
    environment["PATH"] = os.pathsep.join([interpreter_bin, *rest])
    return environment


def has_nvidia_gpu() -> bool:
    """Cheap check without CUDA: the driver creates /dev/nvidiactl when a GPU is usable."""
    return Path("/dev/nvidiactl").exists()


@dataclass(frozen=True)
class TritonServerOptions:
    """How to run one tritonserver; built once from CLI flags."""

    executable: Path
    model_repository: Path
    backend_directory: Path
    # Address Triton binds its HTTP, gRPC and metrics endpoints to (loopback by default:
    # the adapter is the public face, Triton's own API has no authentication).
    host: str = "127.0.0.1"
    # Triton's usual ports are 8000/8001/8002; 8000 belongs to the adapter, so HTTP moves.
    http_port: int = 8080
    grpc_port: int = 8001
    metrics_port: int = 8002
    log_verbose: int = 0
    # Seconds Triton waits for in-flight requests when asked to stop.
    exit_timeout_seconds: int = 30
    # Prefix for the Python backend's /dev/shm regions; unique per launch so that leftovers
    # of a killed server can be found and removed, and concurrent servers never collide.
    shm_region_prefix: str = "tritium_"
    # Without a GPU, skip the pinned-memory pool and DCGM GPU metrics (both only log errors).
    cpu_only: bool = field(default_factory=lambda: not has_nvidia_gpu())
    # True: a model that fails to load stops the server, and readiness means every model
    # is ready. False: the server starts with the models that load (the launcher reports
    # the others) and readiness is the server's own.
    strict_models: bool = False
    extra_args: tuple[str, ...] = ()


def build_command(options: TritonServerOptions) -> list[str]:
    """The tritonserver argv for ``options``."""
    command = [
        str(options.executable),
        f"--model-repository={options.model_repository}",
        f"--backend-directory={options.backend_directory}",
        f"--http-address={options.host}",
        f"--grpc-address={options.host}",
        f"--metrics-address={options.host}",
        f"--http-port={options.http_port}",
        f"--grpc-port={options.grpc_port}",
        f"--metrics-port={options.metrics_port}",
        # Every model in the repository is loaded at start. Strict: any failure stops the
        # server. Otherwise the models that load serve and the launcher names the others.
        "--model-control-mode=none",
        f"--exit-on-error={str(options.strict_models).lower()}",
        f"--strict-readiness={str(options.strict_models).lower()}",
        f"--exit-timeout-secs={options.exit_timeout_seconds}",
        f"--log-verbose={options.log_verbose}",
        f"--backend-config=python,shm-region-prefix-name={options.shm_region_prefix}",
    ]
    if options.cpu_only:
        command += ["--pinned-memory-pool-byte-size=0", "--allow-gpu-metrics=false"]
    command += list(options.extra_args)
    return command


def connect_host(bind_host: str) -> str:
    """Where a local client reaches a server bound to ``bind_host``."""
    return "127.0.0.1" if bind_host in ("", "0.0.0.0", "::", "[::]") else bind_host


def list_model_names(model_repository: Path) -> list[str]:
    """Model directories in the repository (those holding a config.pbtxt), sorted."""
    if not model_repository.is_dir():
        return []
    return sorted(
        entry.name
        for entry in model_repository.iterdir()
        if entry.is_dir() and (entry / "config.pbtxt").is_file()
    )


def format_command(command: Sequence[str]) -> str:
    return " ".join(shlex.quote(part) for part in command)
