"""`tritium serve`: start tritonserver and the OpenAI adapter, supervise both.

Order: tritonserver first, wait until ``/v2/health/ready`` (the repository loaded), then
the adapter, wait until it accepts connections, print how to reach it. A model that
cannot load (a broken config, a directory without one, an engine that fails to start)
is named with Triton's reason and left out; the others serve, and only their readiness
is watched. With ``--strict-models`` any such model stops serve instead (Triton runs
with ``--exit-on-error`` and ``--strict-readiness``); so does a repository where no
model loads. A tritonserver
that exits, or is alive but cannot serve (a dead Python-backend stub, or unready for
long; see `tritium.supervision`), is restarted in place, at most ``max_triton_restarts``
times in all; one failure more, or the adapter dying, stops everything and the launcher
exits non-zero with the failed child's log tail. SIGINT/SIGTERM/SIGHUP stop both and
exit 0. The children are held by name in a `Stack`, whose `stop` sets the stop order.
"""

from __future__ import annotations

import argparse
import dataclasses
import http.client
import json
import os
import shutil
import signal
import socket
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO
from urllib.parse import quote

from tritium import model_cache, tritonserver
from tritium.process import (
    ChildProcess,
    describe_exit,
    start_child,
    stop_child,
    wait_until,
)
from tritium.progress import LoadingReport
from tritium.serve_options import (
    ServeOptions,
    adapter_command,
    adapter_environment,
    default_log_dir,
    example_api_key,
)
from tritium.supervision import TritonWatch

LOG_TAIL_LINES = 40
SUPERVISE_INTERVAL_SECONDS = 0.5
# SIGTERM-to-SIGKILL time of a tritonserver being restarted: it cannot serve, so its
# in-flight requests will never finish; waiting longer only delays the clients' errors.
RESTART_GRACE_SECONDS = 2.0


class LaunchError(RuntimeError):
    """A child failed to start or died; the message says which, why, and its log tail."""


def shm_region_prefix() -> str:
    """Unique per launch so leftovers of this server alone can be removed from /dev/shm."""
    return f"tritium_{os.getpid()}_"


def triton_options(
    options: ServeOptions, shm_prefix: str, environ: Mapping[str, str] | None = None
) -> tritonserver.TritonServerOptions:
    assert options.model_repository is not None, "prepare_model() chose the repository"
    executable = tritonserver.find_tritonserver(options.tritonserver, environ)
    return tritonserver.TritonServerOptions(
        executable=executable,
        model_repository=options.model_repository,
        backend_directory=tritonserver.prepare_backend_dir(executable),
        host=options.triton_host,
        http_port=options.http_port,
        grpc_port=options.grpc_port,
        metrics_port=options.metrics_port,
        log_verbose=options.triton_log_verbose,
        exit_timeout_seconds=options.triton_exit_timeout_seconds,
        shm_region_prefix=shm_prefix,
        strict_models=options.strict_models,
        extra_args=options.triton_args,
    )


def triton_http_url(options: ServeOptions) -> str:
    return f"http://{tritonserver.connect_host(options.triton_host)}:{options.http_port}"


def prepare_model(options: ServeOptions, cache_dir: Path | None = None) -> ServeOptions:
    """For `tritium serve MODEL`: package MODEL into its cache repository (reused while
    it is unchanged) and return the options with that repository; else `options`."""
    if options.model is None:
        return options
    name = options.served_model_name or model_cache.default_served_name(options.model)
    say(f"packaging {options.model} as {name}")
    started = time.monotonic()
    try:
        repository = model_cache.prepare_repository(
            options.model,
            name,
            dict(options.engine_parameters),
            cache_dir or tritonserver.default_cache_dir(),
        )
    except ImportError as error:
        raise LaunchError(
            f"serving MODEL needs the engine extras ({error}): pip install 'tritium[engine]'"
        ) from None
    except ValueError as error:  # a source or an engine parameter that cannot work
        raise LaunchError(str(error)) from None
    say(f"{name} is ready to load from {repository / name} ({time.monotonic() - started:.1f} s)")
    return dataclasses.replace(options, model_repository=repository)


def start_triton(options: ServeOptions, log_dir: Path, shm_prefix: str) -> ChildProcess:
    assert options.model_repository is not None, "prepare_model() chose the repository"
    if not options.model_repository.is_dir():
        raise LaunchError(
            f"model repository {options.model_repository} does not exist; create one with "
            "`tritium package default --name NAME` or pass --model-repository DIR"
        )
    server = triton_options(options, shm_prefix)
    command = tritonserver.build_command(server)
    environment = tritonserver.server_environment(server.executable)
    log_path = log_dir / "tritonserver.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log_path.write_text(f"# {tritonserver.format_command(command)}\n")
    return start_child("tritonserver", command, log_path, environment)


def is_triton_ready(http_url: str, models: Sequence[str] = ()) -> bool:
    """Triton's readiness (strict: every model ready, when started with --strict-models),
    then that of each of `models`. False for every way a probe can fail: the probe runs
    in the supervision loop, and an exception there would stop the whole stack."""
    paths = ["/v2/health/ready", *(f"/v2/models/{quote(name)}/ready" for name in models)]
    try:
        for path in paths:
            with urllib.request.urlopen(f"{http_url}{path}", timeout=2) as response:
                if response.status != 200:
                    return False
        return True
    # Refused while starting, 400 while models load, a timeout, or a garbled answer.
    except (OSError, http.client.HTTPException):
        return False


def model_states(http_url: str) -> dict[str, tuple[str, str]]:
    """Every model of Triton's repository index: name -> (state, reason); empty if the
    index cannot be read."""
    request = urllib.request.Request(f"{http_url}/v2/repository/index", data=b"{}", method="POST")
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            index = json.load(response)
        return {entry["name"]: (entry.get("state", ""), entry.get("reason", "")) for entry in index}
    except (OSError, http.client.HTTPException, ValueError, KeyError, TypeError):
        return {}


def loaded_models(triton: ChildProcess, http_url: str) -> tuple[str, ...]:
    """The models a (non-strict) Triton loaded; each one that did not load is named with
    its error. LaunchError when none loaded: there is nothing to serve."""
    states = model_states(http_url)
    ready = tuple(sorted(name for name, (state, _) in states.items() if state == "READY"))
    failed = {name: reason for name, (state, reason) in states.items() if state != "READY"}
    for name, reason in sorted(failed.items()):
        say(
            f"model {name} is not served: {reason or 'it did not load'} (the other models are; "
            "--strict-models refuses to start instead)",
            stream=sys.stderr,
        )
    if not ready:
        listed = "; ".join(f"{name}: {reason}" for name, reason in sorted(failed.items()))
        raise LaunchError(failure_report(triton, f"loaded no model ({listed or 'none found'})"))
    return ready


def is_port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def wait_ready(
    child: ChildProcess,
    is_ready: Callable[[], bool],
    timeout_seconds: float,
    stop_event: threading.Event,
) -> None:
    """Return once ``is_ready()``; raise LaunchError if the child exits or time runs out.
    Returns early, without error, when ``stop_event`` is set (the user asked to stop)."""

    def ready_or_exited() -> bool:
        return child.exit_code() is not None or is_ready()

    became = wait_until(ready_or_exited, timeout_seconds, 0.2, stop_event)
    if stop_event.is_set():
        return
    exit_code = child.exit_code()
    if exit_code is not None:
        raise LaunchError(
            failure_report(child, f"exited during startup ({describe_exit(exit_code)})")
        )
    if not became:
        raise LaunchError(
            failure_report(child, f"was not ready after {timeout_seconds:g} s (--startup-timeout)")
        )


def failure_report(child: ChildProcess, what: str) -> str:
    tail = child.log_tail(LOG_TAIL_LINES)
    return (
        f"{child.name} {what}. Last {LOG_TAIL_LINES} lines of {child.log_path}:\n"
        f"{tail or '(empty log)'}"
    )


def served_model_names(http_url: str, model_repository: Path) -> list[str]:
    """READY models from Triton's repository index; the repository's directories if
    the index cannot be read."""
    request = urllib.request.Request(f"{http_url}/v2/repository/index", data=b"{}", method="POST")
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            index = json.load(response)
        return sorted({entry["name"] for entry in index if entry.get("state") == "READY"})
    except (OSError, ValueError, KeyError, TypeError):
        return tritonserver.list_model_names(model_repository)


def tritium_command() -> str:
    """How a shell runs `tritium`: its name when on PATH, else its script beside this Python
    (e.g. .venv/bin/tritium after `make serve`)."""
    beside = Path(sys.executable).with_name("tritium")
    if shutil.which("tritium") or not beside.exists():
        return "tritium"
    relative = os.path.relpath(beside)
    return relative if not relative.startswith("..") else str(beside)


def usage_banner(options: ServeOptions, model_names: list[str]) -> str:
    base_url = f"http://{tritonserver.connect_host(options.host)}:{options.port}"
    model = model_names[0] if model_names else "MODEL"
    api_key = example_api_key(options)
    authorization = f" -H 'Authorization: Bearer {api_key}'" if api_key else ""
    body = json.dumps({"model": model, "messages": [{"role": "user", "content": "Hello!"}]})
    return (
        f"Tritium is serving {', '.join(model_names) or 'no models'} at {base_url}/v1\n"
        f"Try:\n  curl {base_url}/v1/chat/completions -H 'Content-Type: application/json'"
        f"{authorization} -d '{body}'\n"
        f"Playground (chat in the browser): {base_url}/  API reference: {base_url}/docs\n"
        f"Terminal chat: {tritium_command()} chat --url {base_url}\n"
        "Press Ctrl-C to stop."
    )


@dataclass
class Stack:
    """The children `tritium serve` started, by name. Each is recorded the moment it
    starts, so that `stop` stops it whatever fails next."""

    # Triton's Python-backend /dev/shm regions start with this (see shm_region_prefix).
    shm_prefix: str
    # None until started; a restart in place replaces it.
    triton: ChildProcess | None = None
    # The OpenAI adapter; None until started.
    adapter: ChildProcess | None = None

    def stop(self, grace_seconds: float) -> None:
        """Stop everything: the adapter first, so that no request reaches a Triton that
        is shutting down, then tritonserver and what it leaves behind."""
        if self.adapter is not None:
            stop_child(self.adapter, grace_seconds)
            self.adapter = None
        self.stop_triton(grace_seconds)

    def stop_triton(self, grace_seconds: float) -> None:
        """Stop tritonserver with its process group (its Python-backend stubs, orphaned
        ones too), then remove the /dev/shm regions a killed server leaves behind."""
        if self.triton is not None:
            stop_child(self.triton, grace_seconds)
            self.triton = None
        for region in Path("/dev/shm").glob(f"{self.shm_prefix}*"):
            with suppress(OSError):
                region.unlink()


def supervise(stack: Stack, keeper: TritonKeeper, stop_event: threading.Event) -> None:
    """Block until ``stop_event`` is set (return) or the adapter exits (raise LaunchError);
    ``keeper`` restarts a tritonserver that exited or cannot serve, within its budget."""
    while not stop_event.wait(SUPERVISE_INTERVAL_SECONDS):
        adapter = stack.adapter
        assert adapter is not None, "supervise() runs once the adapter started"
        exit_code = adapter.exit_code()
        if exit_code is not None:
            raise LaunchError(
                failure_report(adapter, f"stopped unexpectedly ({describe_exit(exit_code)})")
            )
        keeper.check()


class TritonKeeper:
    """Starts `stack.triton` and restarts it in place when it exits or `TritonWatch` finds
    it broken, at most ``max_triton_restarts`` times."""

    def __init__(
        self, options: ServeOptions, log_dir: Path, stack: Stack, stop_event: threading.Event
    ) -> None:
        self.options = options
        self.log_dir = log_dir
        self.stack = stack
        self.stop_event = stop_event
        self.restarts = 0
        self.watch: TritonWatch | None = None

    def start(self) -> None:
        """Start tritonserver as ``stack.triton``, wait until the repository is loaded, then
        watch it (and, unless strict, the models that loaded)."""
        triton = start_triton(self.options, self.log_dir, self.stack.shm_prefix)
        self.stack.triton = triton
        say(f"starting tritonserver (log: {triton.log_path})")
        started = time.monotonic()
        http_url = triton_http_url(self.options)
        report = LoadingReport(triton.log_path, say)

        def is_ready() -> bool:
            return is_triton_ready(http_url)

        def is_ready_reporting() -> bool:
            report.poll()  # the console shows model loading as it goes
            return is_ready()

        wait_ready(
            triton, is_ready_reporting, self.options.startup_timeout_seconds, self.stop_event
        )
        if not self.options.strict_models and not self.stop_event.is_set():
            # Readiness was the server's own: watch the models that loaded as well.
            models = loaded_models(triton, http_url)

            def is_ready() -> bool:
                return is_triton_ready(http_url, models)

        self.watch = TritonWatch(triton, is_ready, self.options.unready_grace_seconds)
        if not self.stop_event.is_set():
            say(f"tritonserver ready in {time.monotonic() - started:.1f} s")
            self.watch.arm()

    def check(self) -> None:
        """Restart a tritonserver that exited or cannot serve; LaunchError past the budget."""
        triton, watch = self.stack.triton, self.watch
        assert triton is not None and watch is not None, "check() runs after start()"
        exit_code = triton.exit_code()
        if exit_code is not None:
            what = f"stopped unexpectedly ({describe_exit(exit_code)})"
            reason = f"it {what}"
        else:
            problem = watch.problem()
            if problem is None:
                return
            what, reason = f"cannot serve ({problem})", problem
        limit = self.options.max_triton_restarts
        if self.restarts >= limit:
            raise LaunchError(
                failure_report(triton, f"{what} after {limit} restarts" if limit else what)
            )
        self.restarts += 1
        say(f"restarting tritonserver: {reason} (restart {self.restarts} of {limit})")
        self.stack.stop_triton(RESTART_GRACE_SECONDS)
        self.start()


def check_ports_free(options: ServeOptions) -> None:
    """Fail before starting anything if a port is taken: otherwise another server on
    Triton's HTTP port could answer our readiness probe in place of ours."""
    wanted = [
        ("--http-port", options.triton_host, options.http_port),
        ("--grpc-port", options.triton_host, options.grpc_port),
        ("--metrics-port", options.triton_host, options.metrics_port),
        ("--port", options.host, options.port),
    ]
    for flag, host, port in wanted:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
            # Like the servers themselves: sockets in TIME_WAIT do not count as taken.
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((host.strip("[]"), port))
            except OSError as error:
                raise LaunchError(
                    f"cannot use {host}:{port} ({flag}): {error.strerror}; "
                    f"stop what is using it or pick another {flag}"
                ) from None


def launch_adapter(
    options: ServeOptions, log_dir: Path, stack: Stack, stop_event: threading.Event
) -> None:
    """Start the adapter as ``stack.adapter`` and wait until it accepts connections."""
    command = adapter_command(options)
    environment = adapter_environment(options)
    adapter = start_child("adapter", command, log_dir / "adapter.log", environment)
    stack.adapter = adapter
    adapter_host = tritonserver.connect_host(options.host)
    wait_ready(
        adapter,
        lambda: is_port_open(adapter_host, options.port),
        options.startup_timeout_seconds,
        stop_event,
    )


def run(options: ServeOptions, stop_event: threading.Event) -> int:
    """Launch, supervise until ``stop_event`` or a failure, stop; returns the exit status."""
    log_dir = options.log_dir or default_log_dir()
    stack = Stack(shm_prefix=shm_region_prefix())
    try:
        check_ports_free(options)
        options = prepare_model(options)
        keeper = TritonKeeper(options, log_dir, stack, stop_event)
        keeper.start()
        if not stop_event.is_set():
            launch_adapter(options, log_dir, stack, stop_event)
        if not stop_event.is_set():
            assert options.model_repository is not None
            model_names = served_model_names(triton_http_url(options), options.model_repository)
            print(usage_banner(options, model_names), flush=True)
            supervise(stack, keeper, stop_event)
        say("stopping")
        return 0
    except (LaunchError, tritonserver.TritonServerNotFoundError, OSError) as error:
        say(f"error: {error}", stream=sys.stderr)
        return 1
    finally:
        stack.stop(options.stop_grace_seconds)


def say(message: str, stream: TextIO | None = None) -> None:
    print(f"tritium: {message}", file=stream or sys.stdout, flush=True)


@contextmanager
def stop_on_signals(stop_event: threading.Event) -> Iterator[None]:
    """Turn SIGINT/SIGTERM/SIGHUP into ``stop_event`` while the block runs."""
    handled = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

    def request_stop(signal_number: int, _frame: object) -> None:
        stop_event.set()

    previous = {number: signal.signal(number, request_stop) for number in handled}
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


def serve(args: argparse.Namespace) -> int:
    """Entry point of `tritium serve`; returns the exit status."""
    try:
        options = ServeOptions.from_args(args)
    except ValueError as error:
        say(f"error: {error}", stream=sys.stderr)
        return 2
    stop_event = threading.Event()
    with stop_on_signals(stop_event):
        return run(options, stop_event)
