"""Fuzz the fields the model really takes, down to the engine, on a running stack.

Schemathesis draws from the whole OpenAI schema, so almost every generated chat body
carries a field we reject up front (tools, prediction, ...) and never reaches the engine.
This draws bodies from the supported fields only, each either valid or an edge/wrong
value (negative, huge, NaN-like, wrong type, token ids outside the vocabulary), so the
engine's own validation is fuzzed too. No answer may be a 5xx; every error an envelope.

    python -m tests.stress.sampling_fuzz [--examples 200]
"""

from __future__ import annotations

import argparse
import collections
import json
import time
from typing import Any

import httpx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.stack import Stack
from tests.stress.fuzz import MAX_TOKENS, check_response

EDGE_INTEGERS = st.sampled_from([-(2**63), -1, 0, 1, 2, 16, 49151, 49152, 2**31, 2**63])
ANY_VALUE = st.one_of(
    st.none(), st.booleans(), EDGE_INTEGERS, st.floats(), st.text(max_size=8),
    st.lists(st.integers(-5, 60000), max_size=4), st.dictionaries(st.text(max_size=4), st.integers(), max_size=2),
)  # fmt: skip


def field_value(valid: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Mostly a valid value, sometimes anything at all."""
    return st.one_of(valid, valid, valid, ANY_VALUE)


FIELDS: dict[str, st.SearchStrategy[Any]] = {
    "max_tokens": field_value(st.integers(1, MAX_TOKENS)),
    "min_tokens": field_value(st.integers(0, MAX_TOKENS)),
    "temperature": field_value(st.floats(0, 2)),
    "top_p": field_value(st.floats(0.01, 1)),
    "top_k": field_value(st.integers(-1, 100)),
    "min_p": field_value(st.floats(0, 1)),
    "seed": field_value(st.integers(0, 2**31)),
    "stop": field_value(st.one_of(st.text(max_size=4), st.lists(st.text(max_size=4), max_size=4))),
    "stop_token_ids": field_value(st.lists(st.integers(0, 49151), max_size=3)),
    "ignore_eos": field_value(st.booleans()),
    "presence_penalty": field_value(st.floats(-2, 2)),
    "frequency_penalty": field_value(st.floats(-2, 2)),
    "repetition_penalty": field_value(st.floats(0.1, 10)),
    "logit_bias": field_value(st.dictionaries(st.integers(0, 49151).map(str), st.floats(-100, 100), max_size=3)),
    "n": field_value(st.integers(1, 4)),
    "logprobs": field_value(st.booleans()),
    "stream": field_value(st.booleans()),
}  # fmt: skip
MESSAGES = st.lists(
    st.fixed_dictionaries(
        {"role": st.sampled_from(["system", "user", "assistant"]), "content": st.text(max_size=40)}
    ),
    min_size=1,
    max_size=3,
)


def bodies(model: str, chat: bool) -> st.SearchStrategy[dict[str, Any]]:
    prompt = {"messages": MESSAGES} if chat else {"prompt": st.text(max_size=60)}
    return st.fixed_dictionaries(
        {"model": st.just(model), **prompt}, optional=FIELDS
    ).map(_bounded)


def _bounded(body: dict[str, Any]) -> dict[str, Any]:
    """At most MAX_TOKENS each, so a case takes seconds on CPU."""
    if not (isinstance(body.get("max_tokens"), int) and 0 < body["max_tokens"] <= MAX_TOKENS):
        body.setdefault("max_tokens", MAX_TOKENS)
    if isinstance(body.get("n"), int) and 4 < body["n"] <= 16:
        body["n"] = 4
    if body.get("logprobs") is True:
        body.setdefault("top_logprobs", 2)
    return body


def fuzz(stack: Stack, examples: int, chat: bool) -> collections.Counter[int]:
    """Returns the statuses seen; raises AssertionError at the first bad answer."""
    path = "/chat/completions" if chat else "/completions"
    statuses: collections.Counter[int] = collections.Counter()
    client = httpx.Client(timeout=120)

    @given(body=bodies(stack.model, chat))
    @settings(
        max_examples=examples,
        deadline=None,
        derandomize=True,
        suppress_health_check=list(HealthCheck),
        database=None,
    )
    def run(body: dict[str, Any]) -> None:
        # json.dumps writes inf/nan as the literals Infinity/NaN, which Python's parser
        # (and so the adapter's) accepts: the server must refuse them, not fail on them.
        content = json.dumps(body).encode()
        headers = {"Content-Type": "application/json"}
        response = client.post(stack.base_url + path, content=content, headers=headers)
        statuses[response.status_code] += 1
        check_response(response, f"POST {path} {body}")

    try:
        run()
    finally:
        client.close()
    return statuses


def main() -> int:
    from tests.stack import default_weights_dir, running_stack, scratch_dir

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--examples", type=int, default=200)
    args = parser.parse_args()
    with scratch_dir("tritium-sfuzz-") as work, running_stack(default_weights_dir(), work) as stack:
        for chat in (True, False):
            started = time.monotonic()
            statuses = fuzz(stack, args.examples, chat)
            name = "chat/completions" if chat else "completions"
            shown = ", ".join(f"{status}: {count}" for status, count in sorted(statuses.items()))
            print(f"POST /v1/{name}: {sum(statuses.values())} cases, {shown}, 0 server errors,"
                  f" every 4xx an envelope ({time.monotonic() - started:.0f} s)", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
