"""Fuzz the real stack's adapter from its /openapi.json (schemathesis, valid and invalid inputs).

    python -m tests.stress.fuzz [--examples 200]

Starts a stack (tests/stack.py), runs every operation with `--examples` generated cases
in both generation modes, and prints per operation: cases, statuses seen, server errors
and 4xx answers outside the OpenAI envelope. Exit status 1 if any.
"""

from __future__ import annotations

import argparse
import collections
import json
import time
from collections.abc import Callable
from typing import Any

ENVELOPE_FIELDS = {"message", "type", "param", "code"}
MAX_TOKENS = 16
MAX_PROMPTS = 4  # also the most choices (n)


def check_response(response: Any, label: str) -> None:
    """No 5xx; a 4xx is `{"error": {message, type, param, code}}` with a message."""
    status = response.status_code
    assert status < 500, f"{label}: {status} {response.text[:500]}"
    if status >= 400:
        body = json.loads(response.text)
        assert set(body) == {"error"}, f"{label}: {status} not an envelope: {response.text[:300]}"
        assert set(body["error"]) == ENVELOPE_FIELDS and body["error"]["message"], label


def bound_generation(case: Any, model: str) -> None:
    """Name the served model (else every case stops at 404) and cap what a case may generate
    (on CPU a 2048-token answer takes a minute): the fuzz is about input handling."""
    body = case.body
    if not isinstance(body, dict):
        return
    if isinstance(body.get("model"), str):
        body["model"] = model
    for name in ("max_tokens", "max_completion_tokens"):
        value = body.get(name)
        if isinstance(value, int) and not isinstance(value, bool) and value > MAX_TOKENS:
            body[name] = MAX_TOKENS
    if "max_tokens" not in body and "max_completion_tokens" not in body:
        body["max_tokens"] = MAX_TOKENS
    # A batch of prompts times n choices multiplies the work: keep it to a few sequences.
    prompt = body.get("prompt")
    if isinstance(prompt, list) and prompt and not isinstance(prompt[0], int):
        body["prompt"] = prompt[:MAX_PROMPTS]
    n = body.get("n")
    if isinstance(n, int) and not isinstance(n, bool) and n > MAX_PROMPTS:
        body["n"] = MAX_PROMPTS


def fuzz_operation(
    operation: Any,
    examples: int,
    root: str,
    label: str,
    model: str,
    statuses: collections.Counter[int],
    problems: list[str],
) -> Callable[[], None]:
    """A hypothesis test of one operation that records statuses and problems."""
    from hypothesis import HealthCheck, given, settings

    @given(case=operation.as_strategy())
    @settings(
        max_examples=examples,
        deadline=None,
        derandomize=True,
        suppress_health_check=list(HealthCheck),
        database=None,
    )
    def run(case: Any) -> None:
        bound_generation(case, model)
        try:
            response = case.call(base_url=root, timeout=120)
        except Exception as error:  # a hang or a dropped connection is a finding, recorded
            problems.append(f"{label}: {type(error).__name__}: {error} (body {case.body!r:.300})")
            return
        statuses[response.status_code] += 1
        try:
            check_response(response, label)
        except (AssertionError, ValueError) as error:
            problems.append(str(error))

    return run


def main() -> int:
    import schemathesis

    from tests.stack import default_weights_dir, running_stack, scratch_dir

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--examples", type=int, default=200, help="examples per operation")
    args = parser.parse_args()
    started = time.monotonic()
    with scratch_dir("tritium-fuzz-") as work, running_stack(default_weights_dir(), work) as stack:
        root = stack.base_url.removesuffix("/v1")
        schema = schemathesis.openapi.from_url(root + "/openapi.json")
        failures: list[str] = []
        print(f"{'operation':40} {'cases':>6} {'5xx':>4} {'bad 4xx':>8}  statuses")
        for result in schema.get_all_operations():
            operation = result.ok()
            statuses: collections.Counter[int] = collections.Counter()
            label = f"{operation.method.upper()} {operation.path}"
            problems: list[str] = []

            run = fuzz_operation(
                operation, args.examples, root, label, stack.model, statuses, problems
            )
            run()
            server_errors = sum(count for status, count in statuses.items() if status >= 500)
            bad_client_errors = len(problems) - server_errors  # transport failures included
            failures += problems
            shown = ", ".join(f"{status}: {count}" for status, count in sorted(statuses.items()))
            print(
                f"{label:40} {sum(statuses.values()):>6} {server_errors:>4} "
                f"{bad_client_errors:>8}  {shown}",
                flush=True,
            )
        for problem in failures[:20]:
            print("FAIL", problem)
    print(f"failures: {len(failures)}; took {time.monotonic() - started:.0f} s")
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
