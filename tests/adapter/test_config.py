"""AdapterConfig, TRITIUM_* variables and the CLI helpers `tritium serve` reuses."""

from __future__ import annotations

import argparse

import pytest

from adapter.cli import add_arguments, config_from_args
from adapter.config import AdapterConfig, ConfigError


def test_defaults() -> None:
    config = AdapterConfig()
    assert config.triton_urls == ("127.0.0.1:8001",)
    assert config.api_keys == () and not config.auth_enabled
    assert config.max_body_bytes == 4 * 1024 * 1024
    assert config.max_concurrent_requests == 256
    assert config.max_tokens is None


def test_from_env() -> None:
    config = AdapterConfig.from_env(
        {
            "TRITIUM_TRITON_URLS": "a:1, b:2",
            "TRITIUM_API_KEYS": "k1,k2",
            "TRITIUM_MAX_TOKENS": "512",
            "TRITIUM_REQUEST_TIMEOUT_S": "none",
            "TRITIUM_LOG_LEVEL": "DEBUG",
            "UNRELATED": "x",
        }
    )
    assert config.triton_urls == ("a:1", "b:2")
    assert config.api_keys == ("k1", "k2")
    assert config.max_tokens == 512 and config.request_timeout_s is None
    assert config.log_level == "debug"
    assert "k1" not in repr(config)  # keys stay out of logs


def test_flags_override_env_which_override_defaults() -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(
        ["--triton-url", "x:1", "--triton-url", "y:2", "--max-n", "4", "--cors-origin", "http://a"]
    )
    config = config_from_args(args, {"TRITIUM_MAX_N": "8", "TRITIUM_MAX_BODY_BYTES": "100"})
    assert config.triton_urls == ("x:1", "y:2")
    assert config.max_n == 4 and config.max_body_bytes == 100
    assert config.cors_origins == ("http://a",)


def test_bind_false_leaves_out_host_and_port() -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser, bind=False)
    names = set(vars(parser.parse_args([])))
    assert "host" not in names and "port" not in names and "api_key" in names


@pytest.mark.parametrize(
    "changes",
    [
        {"triton_urls": ()},
        {"triton_urls": ("http://a:1",)},
        {"max_body_bytes": 0},
        {"max_tokens": -1},
        {"log_level": "loud"},
        {"request_timeout_s": 0},
        {"api_keys": ("",)},
    ],
)
def test_bad_values_name_the_setting(changes: dict[str, object]) -> None:
    with pytest.raises(ConfigError, match=next(iter(changes))):
        AdapterConfig(**changes)  # type: ignore[arg-type]


def test_bad_env_value_names_the_setting() -> None:
    with pytest.raises(ConfigError, match="max_n"):
        AdapterConfig.from_env({"TRITIUM_MAX_N": "many"})


def test_the_adapter_process_listens_where_the_variables_say(tmp_path) -> None:  # noqa: ANN001
    """`python -m adapter` with TRITIUM_HOST/TRITIUM_PORT only (no flags): the images run
    it so, and `tritium serve` hands its own --host/--port on the same way."""
    import os
    import socket
    import subprocess
    import sys
    import time

    import httpx

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    environment = {
        **os.environ,
        "TRITIUM_HOST": "127.0.0.1",
        "TRITIUM_PORT": str(port),
        "TRITIUM_TRITON_URLS": "127.0.0.1:1",  # nothing there: /health needs no Triton
    }
    log = tmp_path / "adapter.log"
    with open(log, "wb") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "adapter"], env=environment, stdout=output, stderr=output
        )
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, log.read_text()
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
    finally:
        process.terminate()
        process.wait(10)
