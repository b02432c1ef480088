"""docs/api.md names every request field, so the doc cannot drift from the schemas."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydantic import BaseModel

from adapter.schemas import (
    SAME_FIELDS,
    ChatCompletionRequest,
    ChatMessage,
    CompletionRequest,
    ContentPart,
    DetokenizeRequest,
    StreamOptions,
    TokenizeRequest,
)

API_DOC = Path(__file__).resolve().parents[2] / "docs" / "api.md"


def section(title: str) -> str:
    text = API_DOC.read_text()
    start = text.index(f"## {title}\n")
    following = text.find("\n## ", start + 1)
    return text[start : following if following != -1 else None]


def documented(text: str) -> set[str]:
    return set(re.findall(r"`([a-z_][a-z_.\[\]0-9]*)`", text))


def fields_of(model: type[BaseModel], prefix: str = "") -> set[str]:
    """The model's fields but the contract's sampling fields, which "Sampling fields" lists."""
    sampling = {spec.name for spec in SAME_FIELDS}
    return {prefix + name for name in model.model_fields if name not in sampling}


@pytest.mark.parametrize(
    ("title", "expected"),
    [
        (
            "POST /v1/chat/completions",
            fields_of(ChatCompletionRequest)
            | fields_of(StreamOptions, "stream_options.")
            | fields_of(ChatMessage)
            | fields_of(ContentPart, "content[j]."),
        ),
        ("POST /v1/completions", fields_of(CompletionRequest)),
        ("POST /tokenize", fields_of(TokenizeRequest)),
        ("POST /detokenize", fields_of(DetokenizeRequest)),
    ],
)
def test_every_request_field_is_documented(title: str, expected: set[str]) -> None:
    missing = expected - documented(section(title))
    assert not missing, f"docs/api.md section '{title}' does not mention: {sorted(missing)}"


def test_every_sampling_field_of_the_requests_is_in_the_contracts_table() -> None:
    table = API_DOC.read_text().split("### Sampling fields", 1)[1].split("\n### ", 1)[0]
    for spec in SAME_FIELDS:
        assert f"| `{spec.name}` |" in table and "same name" in table
        assert spec.name in ChatCompletionRequest.model_fields
        assert spec.name in CompletionRequest.model_fields
