"""The `tritium` command line: parsing, the adapter command, `package` wiring."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import types
from pathlib import Path

import pytest

from tritium.cli import build_parser, main
from tritium.serve import run, serve, usage_banner
from tritium.serve_options import ServeOptions, adapter_command, adapter_environment


def parse_serve(*flags: str, environ: dict[str, str] | None = None) -> ServeOptions:
    args = build_parser().parse_args(["serve", *flags])
    return ServeOptions.from_args(args, environ={} if environ is None else environ)


def test_serve_defaults_keep_triton_on_loopback_and_off_the_adapter_port() -> None:
    options = parse_serve()
    assert options.model_repository == (Path.cwd() / "model_repository").resolve()
    assert (options.host, options.port) == ("127.0.0.1", 8000)
    assert options.triton_host == "127.0.0.1"
    assert (options.http_port, options.grpc_port, options.metrics_port) == (8080, 8001, 8002)
    assert options.startup_timeout_seconds == 600.0
    assert (options.max_triton_restarts, options.unready_grace_seconds) == (3, 10.0)
    assert options.tritonserver is None and options.log_dir is None


def test_serve_flags_reach_the_options(tmp_path: Path) -> None:
    options = parse_serve(
        f"--model-repository={tmp_path}",
        "--tritonserver=/opt/custom/tritonserver",
        "--triton-host=0.0.0.0",
        "--http-port=9080",
        "--grpc-port=9001",
        "--metrics-port=9002",
        "--host=0.0.0.0",
        "--port=9000",
        "--triton-arg=--log-info=false",
        f"--log-dir={tmp_path / 'logs'}",
        "--startup-timeout=12.5",
        "--max-triton-restarts=0",
        "--unready-grace=2.5",
    )
    assert options.model_repository == tmp_path
    assert options.tritonserver == "/opt/custom/tritonserver"
    assert options.triton_host == "0.0.0.0"
    assert (options.http_port, options.grpc_port, options.metrics_port) == (9080, 9001, 9002)
    assert (options.host, options.port) == ("0.0.0.0", 9000)
    assert options.triton_args == ("--log-info=false",)
    assert options.log_dir == tmp_path / "logs"
    assert options.startup_timeout_seconds == 12.5
    assert (options.max_triton_restarts, options.unready_grace_seconds) == (0, 2.5)
    command = adapter_command(options)
    assert command[:3] == [sys.executable, "-m", "adapter"]
    # Triton bound to every interface is still reached over loopback.
    assert command[3:] == ["--host", "0.0.0.0", "--port", "9000", "--triton-url", "127.0.0.1:9001"]


def test_adapter_flags_are_forwarded_and_keys_stay_out_of_argv() -> None:
    options = parse_serve(
        "--api-key=first",
        "--api-key=second",
        "--cors-origin=http://localhost:3000",
        "--max-concurrent-requests=4",
        "--triton-url=10.0.0.7:8001",
    )
    command = adapter_command(options)
    assert "first" not in command and "--api-key" not in command
    assert command[7:] == [
        "--triton-url",
        "127.0.0.1:8001",
        "--triton-url",
        "10.0.0.7:8001",
        "--cors-origin",
        "http://localhost:3000",
        "--max-concurrent-requests",
        "4",
    ]
    assert adapter_environment(options)["TRITIUM_API_KEYS"] == "first,second"
    assert adapter_environment(options)["PYTHONUNBUFFERED"] == "1"


def test_forwarded_flags_parse_as_the_adapters_own() -> None:
    import argparse

    import adapter.cli

    options = parse_serve("--cors-origin=http://a.example", "--max-n=2", "--log-level=debug")
    parser = argparse.ArgumentParser()
    adapter.cli.add_arguments(parser)
    config = adapter.cli.config_from_args(
        parser.parse_args(adapter_command(options)[3:]), environ={}
    )
    assert config.cors_origins == ("http://a.example",)
    assert config.max_n == 2 and config.log_level == "debug"
    assert config.triton_urls == ("127.0.0.1:8001",)


def test_clashing_ports_are_rejected(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(ValueError, match="ports must differ"):
        parse_serve("--http-port=8000")
    args = build_parser().parse_args(["serve", "--grpc-port=8000"])
    assert serve(args) == 2
    assert "ports must differ" in capsys.readouterr().err


def test_a_port_in_use_is_reported_before_starting_anything(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        options = parse_serve(f"--model-repository={tmp_path}", f"--http-port={port}")
        assert run(options, threading.Event()) == 1
    assert f"cannot use 127.0.0.1:{port} (--http-port)" in capsys.readouterr().err


def test_nonsense_values_are_rejected() -> None:
    with pytest.raises(ValueError, match="--port must be between 1 and 65535"):
        parse_serve("--port=70000")
    with pytest.raises(ValueError, match="--startup-timeout must be positive"):
        parse_serve("--startup-timeout=0")
    with pytest.raises(ValueError, match="--max-triton-restarts must be >= 0"):
        parse_serve("--max-triton-restarts=-1")
    with pytest.raises(ValueError, match="--unready-grace must be positive"):
        parse_serve("--unready-grace=0")


def test_banner_shows_a_ready_to_paste_request(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TRITIUM_API_KEYS", raising=False)
    options = parse_serve("--host=0.0.0.0", "--port=9000")
    banner = usage_banner(options, ["smollm2", "other"])
    assert "curl http://127.0.0.1:9000/v1/chat/completions" in banner
    assert '"model": "smollm2"' in banner
    assert "Authorization" not in banner
    monkeypatch.setenv("TRITIUM_API_KEYS", "secret-from-env,other")
    banner = usage_banner(options, ["smollm2"])
    assert "-H 'Authorization: Bearer <a key from $TRITIUM_API_KEYS>'" in banner
    assert "secret-from-env" not in banner


def test_help_and_serve_never_import_torch() -> None:
    check = (
        "import sys\n"
        "from tritium.cli import build_parser\n"
        "import tritium.serve\n"
        "build_parser().parse_args(['serve'])\n"
        "engine = {name for name in sys.modules if name.split('.')[0] == 'engine'}\n"
        # engine.config and engine.architectures (pure Python) hold the table of engine
        # parameters that are flags and of the architectures it reads.
        "pure = {'engine', 'engine.config', 'engine.architectures'}\n"
        "assert 'torch' not in sys.modules and engine <= pure, engine\n"
    )
    subprocess.run([sys.executable, "-c", check], check=True)
    for command in (["--help"], ["serve", "--help"], ["package", "--help"]):
        result = subprocess.run(
            [sys.executable, "-m", "tritium", *command], capture_output=True, text=True, check=True
        )
        assert result.stdout.startswith("usage: tritium")


def test_a_subcommand_is_required(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        main([])
    assert caught.value.code == 2
    assert "COMMAND" in capsys.readouterr().err


@pytest.fixture
def fake_packaging(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, object]]:
    """Stand in for engine.package so the CLI wiring is tested without torch."""
    calls: list[dict[str, object]] = []

    def package_model(source: str, name: str, repository: Path, force: bool) -> Path:
        calls.append({"source": source, "name": name, "repository": repository, "force": force})
        if name == "taken":
            raise FileExistsError(f"{repository / name} exists; pass --force to replace it")
        return repository / name

    module = types.ModuleType("engine.package")
    module.package_model = package_model  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "engine.package", module)
    return calls


def test_package_calls_the_packager(
    tmp_path: Path, fake_packaging: list[dict[str, object]], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as caught:
        main(["package", "default", "--name", "smollm2", "--repository", str(tmp_path), "--force"])
    assert caught.value.code == 0
    assert fake_packaging == [
        {"source": "default", "name": "smollm2", "repository": tmp_path, "force": True}
    ]
    assert f"tritium serve --model-repository {tmp_path}" in capsys.readouterr().out


def test_package_defaults_to_the_local_repository(fake_packaging: list[dict[str, object]]) -> None:
    with pytest.raises(SystemExit):
        main(["package", "model.gguf", "--name", "mine"])
    assert fake_packaging[0]["repository"] == (Path.cwd() / "model_repository").resolve()
    assert fake_packaging[0]["force"] is False


def test_package_errors_are_one_line_and_non_zero(
    tmp_path: Path, fake_packaging: list[dict[str, object]], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as caught:
        main(["package", "default", "--name", "taken", "--repository", str(tmp_path)])
    assert caught.value.code == 1
    assert "pass --force to replace it" in capsys.readouterr().err


def test_package_without_the_engine_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "engine.package", None)  # makes the import fail
    with pytest.raises(SystemExit) as caught:
        main(["package", "default", "--name", "smollm2"])
    assert caught.value.code == 1
    assert "pip install -e '.[engine]'" in capsys.readouterr().err


def test_variables_set_what_flags_leave_unset() -> None:
    environ = {"TRITIUM_PORT": "9123", "TRITIUM_HOST": "0.0.0.0", "TRITIUM_GRPC_PORT": "9001"}
    options = parse_serve(environ=environ)
    assert (options.host, options.port, options.grpc_port) == ("0.0.0.0", 9123, 9001)
    # The adapter that serve starts listens where the variables say.
    assert adapter_command(options)[3:7] == ["--host", "0.0.0.0", "--port", "9123"]
    assert parse_serve("--port=9200", environ=environ).port == 9200  # a flag wins


def test_every_serve_flag_names_its_variable_in_help() -> None:
    parser = build_parser()
    serve_parser = parser._subparsers._group_actions[0].choices["serve"]  # type: ignore[union-attr]
    for action in serve_parser._actions:
        if action.dest != "help":
            assert "[env: TRITIUM_" in (action.help or ""), action.option_strings or action.dest
    help_text = serve_parser.format_help()
    assert "TRITIUM_PORT" in help_text and "TRITIUM_MAX_NUM_SEQS" in help_text


def test_a_bad_variable_is_named(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(ValueError, match="TRITIUM_PORT"):
        parse_serve(environ={"TRITIUM_PORT": "eighty"})


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    from tritium import __version__

    with pytest.raises(SystemExit) as caught:
        main(["--version"])
    assert caught.value.code == 0
    assert capsys.readouterr().out.strip() == f"tritium {__version__}"


def test_serve_model_takes_engine_parameters_from_flags_and_variables(tmp_path: Path) -> None:
    options = parse_serve(
        str(tmp_path),
        "--served-model-name=mine",
        "--max-num-seqs=8",
        "--no-enable-prefix-caching",
        environ={"TRITIUM_DTYPE": "float32", "TRITIUM_MAX_NUM_SEQS": "2"},
    )
    assert options.model == str(tmp_path) and options.model_repository is None
    assert options.served_model_name == "mine"
    assert dict(options.engine_parameters) == {
        "max_num_seqs": "8",
        "enable_prefix_caching": "false",
        "dtype": "float32",
    }


def test_model_and_repository_exclude_each_other(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not both"):
        parse_serve(str(tmp_path), f"--model-repository={tmp_path}")
    with pytest.raises(ValueError, match="--max-num-seqs apply to MODEL"):
        parse_serve(f"--model-repository={tmp_path}", "--max-num-seqs=4")
