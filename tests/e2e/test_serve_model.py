"""`tritium serve MODEL`, the one-step form, against the real tritonserver."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.stack import REPO_ROOT, free_port, stop_serve
from tritium import tritonserver

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(
        tritonserver.pytriton_server_root() is None and "TRITONSERVER" not in os.environ,
        reason="no tritonserver (install nvidia-pytriton)",
    ),
]


def test_serve_a_model_directory_in_one_step(default_weights_dir: Path, tmp_path: Path) -> None:
    """A Hugging Face directory, its name and engine flags: packaged into the cache, served
    under that name, with the flags in its config.pbtxt; loading shows on the console."""
    port = free_port()
    environment = {
        **os.environ,
        "XDG_CACHE_HOME": str(tmp_path / "cache"),
        "TRITIUM_PORT": str(port),  # the variable, not a flag, sets the adapter's port
        "TRITIUM_HTTP_PORT": str(free_port()),
        "TRITIUM_GRPC_PORT": str(free_port()),
        "TRITIUM_METRICS_PORT": str(free_port()),
    }
    command = [
        sys.executable, "-m", "tritium", "serve", str(default_weights_dir),
        "--served-model-name", "smol",
        "--max-num-seqs", "4", "--kv-cache-memory-mb", "64", "--max-model-len", "1024",
        "--log-dir", str(tmp_path / "logs"),
    ]  # fmt: skip
    console = tmp_path / "console.txt"
    with open(console, "wb") as output:
        process = subprocess.Popen(
            command, cwd=REPO_ROOT, env=environment, stdout=output, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 300
        while "Tritium is serving" not in console.read_text():
            assert process.poll() is None, console.read_text()
            assert time.monotonic() < deadline, console.read_text()
            time.sleep(0.5)
        text = console.read_text()
        assert f"packaging {default_weights_dir} as smol" in text
        assert "tritium-engine[smol]: loading LlamaForCausalLM" in text
        assert "tritium-engine[smol]: weights: file 1 of 1" in text
        assert "tritium-engine[smol]: ready in" in text and "up to 4 sequences" in text
        base = f"http://127.0.0.1:{port}/v1"
        assert [m["id"] for m in httpx.get(f"{base}/models").json()["data"]] == ["smol"]
        reply = httpx.post(
            f"{base}/completions",
            json={"model": "smol", "prompt": "The capital of France is", "max_tokens": 4, "ignore_eos": True},
            timeout=60,
        ).json()
        assert reply["usage"]["completion_tokens"] == 4
        (repository,) = (tmp_path / "cache" / "tritium" / "served").iterdir()
        config = (repository / "smol" / "config.pbtxt").read_text()
        assert 'key: "max_num_seqs" value: { string_value: "4" }' in config
    finally:
        stop_serve(process)
    assert process.returncode in (0, -signal.SIGINT)
