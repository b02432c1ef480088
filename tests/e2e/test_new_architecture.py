"""A new architecture served by the real stack: a tiny Gemma 2 (sliding windows shorter
than the chat prompt, soft-capping, (1 + w) norms, GeGLU, scaled embeddings) given to
`tritium serve` as a Hugging Face directory, chatted with through the OpenAI SDK; the
answer is transformers' greedy answer on the same weights."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import openai
import pytest

from tests.engine.tiny_architectures import ARCHITECTURES, hf_greedy
from tests.stack import REPO_ROOT, free_port, stop_serve
from tritium import tritonserver

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(
        tritonserver.pytriton_server_root() is None and "TRITONSERVER" not in os.environ,
        reason="no tritonserver (install nvidia-pytriton)",
    ),
]
MAX_TOKENS = 10
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja")


def test_chat_with_a_served_gemma2(default_weights_dir: Path, tmp_path: Path) -> None:
    from dataclasses import replace

    from transformers import AutoTokenizer

    source = tmp_path / "tiny-gemma2"
    # The default model's tokenizer and chat template; a vocabulary that covers it.
    tiny = ARCHITECTURES["gemma2"]
    model = replace(tiny, settings={**tiny.settings, "vocab_size": 49152}).build()
    model.save_pretrained(source, safe_serialization=True)
    for name in TOKENIZER_FILES:
        shutil.copy(default_weights_dir / name, source)
    port = free_port()
    environment = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache")}
    command = [
        sys.executable, "-m", "tritium", "serve", str(source), "--served-model-name", "gemma",
        "--dtype", "float32", "--kv-block-size", "4", "--max-model-len", "128",
        "--kv-cache-memory-mb", "16", "--port", str(port), "--http-port", str(free_port()),
        "--grpc-port", str(free_port()), "--metrics-port", str(free_port()),
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
        assert "tritium-engine[gemma]: loading Gemma2ForCausalLM" in console.read_text()
        client = openai.OpenAI(
            base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0, timeout=120
        )
        messages = [{"role": "user", "content": "Tell me about the sea, in a few words please."}]
        reply = client.chat.completions.create(
            model="gemma", messages=messages, max_tokens=MAX_TOKENS, temperature=0.0,
            extra_body={"ignore_eos": True},
        )  # fmt: skip
    finally:
        stop_serve(process)
    assert process.returncode in (0, -signal.SIGINT)

    tokenizer = AutoTokenizer.from_pretrained(source)
    prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    prompt = list(prompt["input_ids"] if hasattr(prompt, "keys") else prompt)
    assert len(prompt) > tiny.settings["sliding_window"]
    expected = hf_greedy(model, prompt, MAX_TOKENS)
    assert reply.usage.prompt_tokens == len(prompt)
    assert reply.usage.completion_tokens == MAX_TOKENS
    assert reply.choices[0].finish_reason == "length"
    assert reply.choices[0].message.content == tokenizer.decode(expected, skip_special_tokens=True)
