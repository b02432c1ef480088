"""Hand-made bad inputs against a running stack: each with the status and message it gets.

    python -m tests.stress.bad_inputs   # starts a stack, prints the table of docs/reliability.md

tests/reliability/test_bad_inputs.py asserts the same table on the session stack.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass

import httpx

from tests.stack import Stack

MAX_BODY_BYTES = 4 * 1024 * 1024  # the adapter's default --max-body-bytes


@dataclass(frozen=True)
class BadInput:
    name: str
    status: int  # expected
    code: str  # expected error code
    content: bytes | Iterator[bytes]
    headers: tuple[tuple[str, str], ...] = (("Content-Type", "application/json"),)


def bad_inputs(model: str) -> list[BadInput]:
    def body(**fields: object) -> bytes:
        base: dict[str, object] = {"model": model, "messages": [{"role": "user", "content": "Hi"}]}
        return json.dumps({**base, "max_tokens": 4, **fields}).encode()

    too_large = b'{"model": "' + b"x" * (MAX_BODY_BYTES + 10) + b'"}'

    def chunked() -> Iterator[bytes]:  # no Content-Length: only the bytes received count
        for start in range(0, len(too_large), 1 << 20):
            yield too_large[start : start + (1 << 20)]

    return [
        BadInput("malformed JSON", 400, "invalid_json", b'{"model": "m", "messages": [}'),
        BadInput("invalid UTF-8", 400, "invalid_json", b'{"model": "\xff\xfe", "messages": []}'),
        BadInput("empty messages", 400, "invalid_value", body(messages=[])),
        BadInput("messages of the wrong type", 400, "invalid_value", body(messages="hello")),
        BadInput("temperature of the wrong type", 400, "invalid_value", body(temperature="hot")),
        BadInput("huge n", 400, "invalid_value", body(n=10_000)),
        BadInput("huge max_tokens", 400, "context_length_exceeded", body(max_tokens=10**9)),
        BadInput(
            "prompt over the context",
            400,
            "context_length_exceeded",
            body(messages=[{"role": "user", "content": "word " * 5000}]),
        ),
        BadInput("unknown field", 400, "unknown_parameter", body(frobnicate=True)),
        BadInput("unknown model", 404, "model_not_found", body(model="no-such-model")),
        BadInput("body over the limit (Content-Length)", 413, "request_too_large", too_large),
        BadInput("body over the limit (chunked)", 413, "request_too_large", chunked()),
    ]


def send(stack: Stack, bad: BadInput) -> httpx.Response:
    content = bad.content if isinstance(bad.content, bytes) else bad.content
    return httpx.post(
        stack.base_url + "/chat/completions", content=content, headers=dict(bad.headers), timeout=60
    )


def main() -> int:
    from tests.stack import default_weights_dir, running_stack, scratch_dir

    failed = 0
    with scratch_dir("tritium-bad-") as work, running_stack(default_weights_dir(), work) as stack:
        print("| input | status | code | message |\n|---|---|---|---|")
        for bad in bad_inputs(stack.model):
            response = send(stack, bad)
            error = response.json().get("error", {})
            failed += response.status_code != bad.status or error.get("code") != bad.code
            message = str(error.get("message", ""))[:150].replace("|", "\\|")
            print(f"| {bad.name} | {response.status_code} | {error.get('code')} | {message} |")
    print(f"unexpected statuses or codes: {failed}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
