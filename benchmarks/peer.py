"""The peer: llama.cpp's own `llama-server`, built from the llama.cpp sources vendored in the
`llama-cpp-python` sdist, run the way its users run it (parallel slots, continuous batching).

    .venv/bin/python -m benchmarks.peer build [--jobs N] [--dest DIR] [--force]
    .venv/bin/python -m benchmarks.peer serve [--port P] [--threads N]
    .venv/bin/python -m benchmarks.peer commands     # the cmake and server command lines

`build` downloads the sdist from PyPI (`pip download --no-binary :all:`), unpacks it,
configures `vendor/llama.cpp` with cmake (Release, CPU only, tuned for this CPU, static, no
web UI, no network at build time) and builds `llama-server` (and `llama-perplexity`, for
`benchmarks.quant_accuracy`) into `<dest>/` (default `.cache/peer/`), kept and reused: about 10-15 minutes on two
cores, so it is never part of `make test`. `serve` starts it on the default model's GGUF
(`engine.package.default_gguf_path()`) with `-t <cores> -np 32 -c 32768` and waits for
`/health`. The benchmark suite starts it the same way (`benchmarks.stack.llama_server`).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
LLAMA_CPP_PYTHON_VERSION = "0.3.36"
DEFAULT_DEST = REPO_ROOT / ".cache" / "peer"
BINARY_NAME = "llama-server"
# llama-perplexity: llama.cpp's own KL divergence of a quantized GGUF (benchmarks.quant_accuracy).
BUILD_TARGETS = ("llama-server", "llama-perplexity")
# Slots and context as a llama.cpp user serving many clients sets them: 32 sequences decoded
# together (our engine's max_num_seqs), the context shared by the slots, 1,024 tokens each.
PARALLEL_SLOTS = 32
CONTEXT_TOKENS = 32768

# What the build turns on and off, and why.
CMAKE_OPTIONS = {
    "CMAKE_BUILD_TYPE": "Release",
    "BUILD_SHARED_LIBS": "OFF",  # one self-contained binary, movable into the cache
    "GGML_NATIVE": "ON",  # -march=native: AVX512 on these Zen 4 cores, as a local build gets
    "GGML_CUDA": "OFF",  # CPU only: no GPU backend here
    "GGML_VULKAN": "OFF",
    "GGML_METAL": "OFF",
    "LLAMA_CURL": "OFF",  # no model downloads (deprecated in this llama.cpp; ignored when ON)
    "LLAMA_OPENSSL": "OFF",  # the server listens on loopback, plain HTTP
    "LLAMA_BUILD_SERVER": "ON",
    "LLAMA_BUILD_UI": "OFF",  # the web UI needs npm ...
    "LLAMA_USE_PREBUILT_UI": "OFF",  # ... or a download at build time: neither works here
    "LLAMA_BUILD_TESTS": "OFF",
    "LLAMA_BUILD_EXAMPLES": "OFF",
}


class PeerError(RuntimeError):
    pass


def cmake_executable() -> str:
    """The virtualenv's cmake (the `peer` extra's wheel) first, then the system's."""
    local = Path(sys.executable).parent / "cmake"
    found = str(local) if local.is_file() else shutil.which("cmake")
    if found is None:
        raise PeerError(
            "cmake is missing: `.venv/bin/pip install -e '.[peer]'` installs it "
            "(or, as root, `apt-get install -y cmake`)"
        )
    return found


def download_command(dest: Path, version: str = LLAMA_CPP_PYTHON_VERSION) -> list[str]:
    """pip fetches the sdist only: no wheel, no dependencies, nothing built or installed."""
    return [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
            f"llama-cpp-python=={version}", "--dest", str(dest)]  # fmt: skip


def configure_command(source_dir: Path, build_dir: Path, cmake: str = "cmake") -> list[str]:
    options = [f"-D{key}={value}" for key, value in CMAKE_OPTIONS.items()]
    return [cmake, "-S", str(source_dir), "-B", str(build_dir), *options]


def build_command(build_dir: Path, jobs: int, cmake: str = "cmake") -> list[str]:
    return [cmake, "--build", str(build_dir), "--config", "Release",
            "--target", *BUILD_TARGETS, "--parallel", str(jobs)]  # fmt: skip


def server_command(
    binary: Path,
    gguf_path: Path,
    port: int,
    threads: int,
    host: str = "127.0.0.1",
    parallel_slots: int = PARALLEL_SLOTS,
    context_tokens: int = CONTEXT_TOKENS,
) -> list[str]:
    """llama-server as its users run it for many clients: `threads` for decode and prompt
    batches, `parallel_slots` sequences batched together, the context shared by the slots.
    Continuous batching (`-cb`) is llama-server's default; it is named to make it plain."""
    return [
        str(binary), "--model", str(gguf_path), "--host", host, "--port", str(port),
        "--threads", str(threads), "--threads-batch", str(threads),
        "--parallel", str(parallel_slots), "--ctx-size", str(context_tokens),
        "--cont-batching",
    ]  # fmt: skip


def binary_path(dest: Path = DEFAULT_DEST) -> Path:
    return dest / BINARY_NAME


def build(dest: Path = DEFAULT_DEST, jobs: int | None = None, force: bool = False) -> Path:
    """Download, configure and build llama-server and llama-perplexity into ``dest``; reuse
    them when both are there."""
    binary = binary_path(dest)
    if all((dest / target).is_file() for target in BUILD_TARGETS) and not force:
        print(f"{binary} exists (--force rebuilds)")
        return binary
    cmake = cmake_executable()
    jobs = jobs or os.cpu_count() or 1
    dest.mkdir(parents=True, exist_ok=True)
    sdist = _download(dest / "sdist")
    source_dir = _unpack(sdist, dest / "src")
    build_dir = dest / "build"
    timings: dict[str, float] = {}
    for step, command in (
        ("configure", configure_command(source_dir, build_dir, cmake)),
        ("build", build_command(build_dir, jobs, cmake)),
    ):
        print("+", " ".join(command), flush=True)
        started = time.perf_counter()
        subprocess.run(command, check=True)
        timings[f"{step}_s"] = round(time.perf_counter() - started, 1)
    for target in BUILD_TARGETS:
        shutil.copy2(build_dir / "bin" / target, dest / target)
    info = {
        "llama_cpp_python": LLAMA_CPP_PYTHON_VERSION,
        "version": _version(binary),
        "cmake": configure_command(source_dir, build_dir, cmake),
        "jobs": jobs,
        **timings,
    }
    (dest / f"{BINARY_NAME}.json").write_text(json.dumps(info, indent=1))
    print(json.dumps(info, indent=1))
    return binary


def build_info(dest: Path = DEFAULT_DEST) -> dict[str, object]:
    """What `build` recorded beside the binary (version, cmake line, timings), or {}."""
    path = dest / f"{BINARY_NAME}.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def _download(directory: Path) -> Path:
    name = f"llama_cpp_python-{LLAMA_CPP_PYTHON_VERSION}.tar.gz"
    sdist = directory / name
    if not sdist.is_file():
        directory.mkdir(parents=True, exist_ok=True)
        subprocess.run(download_command(directory), check=True)
    if not sdist.is_file():
        raise PeerError(f"pip did not leave {name} in {directory}")
    return sdist


def _unpack(sdist: Path, directory: Path) -> Path:
    """The sdist's vendored llama.cpp source tree (unpacked once)."""
    root = directory / sdist.name.removesuffix(".tar.gz")
    source_dir = root / "vendor" / "llama.cpp"
    if not (source_dir / "CMakeLists.txt").is_file():
        directory.mkdir(parents=True, exist_ok=True)
        with tarfile.open(sdist) as archive:
            archive.extractall(directory, filter="data")
    if not (source_dir / "CMakeLists.txt").is_file():
        raise PeerError(f"{sdist} has no vendor/llama.cpp/CMakeLists.txt")
    return source_dir


def _version(binary: Path) -> str:
    result = subprocess.run([str(binary), "--version"], capture_output=True, text=True)
    return (result.stdout + result.stderr).strip()


def serve(port: int, threads: int, dest: Path = DEFAULT_DEST) -> int:
    """Start llama-server on the default GGUF, wait for /health, serve until Ctrl-C."""
    from benchmarks.stack import llama_server
    from engine.package import default_gguf_path

    binary = binary_path(dest)
    if not binary.is_file():
        raise PeerError(f"{binary} is missing: `python -m benchmarks.peer build` first")
    log_dir = dest / "logs"
    # llama-server runs in its own session: SIGTERM must unwind through the context manager
    # that stops it, as Ctrl-C does.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    with llama_server(binary, default_gguf_path(), log_dir, threads, port=port) as endpoints:
        print(f"llama-server ready at {endpoints.openai_url} (log: {endpoints.log_path})")
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    build_parser = commands.add_parser("build", help="download the sdist, build llama-server")
    build_parser.add_argument("--jobs", type=int, default=None, help="default: every core")
    build_parser.add_argument("--dest", type=Path, default=DEFAULT_DEST)
    build_parser.add_argument("--force", action="store_true", help="rebuild an existing binary")
    serve_parser = commands.add_parser("serve", help="llama-server on the default model's GGUF")
    serve_parser.add_argument("--port", type=int, default=8090)
    serve_parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    serve_parser.add_argument("--dest", type=Path, default=DEFAULT_DEST)
    commands.add_parser("commands", help="print the configure, build and serve command lines")
    args = parser.parse_args(argv)
    try:
        if args.command == "build":
            build(args.dest, args.jobs, args.force)
            return 0
        if args.command == "serve":
            return serve(args.port, args.threads, args.dest)
    except (PeerError, subprocess.CalledProcessError) as error:
        print(f"benchmarks.peer: {error}", file=sys.stderr)
        return 1
    source, build_dir = Path("<src>/vendor/llama.cpp"), Path("<build>")
    print(" ".join(configure_command(source, build_dir)))
    print(" ".join(build_command(build_dir, os.cpu_count() or 1)))
    binary = binary_path().relative_to(REPO_ROOT)
    print(" ".join(server_command(binary, Path("<model.gguf>"), 8090, os.cpu_count() or 1)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
