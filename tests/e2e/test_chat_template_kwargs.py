"""chat_template_kwargs travel from the HTTP request through the Triton contract to the
model's tokenizer, which checks them against its chat template."""

from __future__ import annotations

import httpx
import pytest

from tests.e2e.conftest import Stack

pytestmark = pytest.mark.e2e


def test_a_variable_the_template_does_not_read_is_a_400_naming_it(stack: Stack) -> None:
    """SmolLM2's template reads no extra variable: the engine says so, by name."""
    body = {
        "model": stack.model,
        "messages": [{"role": "user", "content": "Hi"}],
        "max_tokens": 2,
        "chat_template_kwargs": {"enable_thinking": False},
    }
    response = httpx.post(f"{stack.base_url}/chat/completions", json=body, timeout=60)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == "chat_template_kwargs.enable_thinking"
    assert "does not read it" in error["message"]
    # Empty kwargs are no variables at all: the request runs.
    body["chat_template_kwargs"] = {}
    assert httpx.post(f"{stack.base_url}/chat/completions", json=body, timeout=60).is_success
