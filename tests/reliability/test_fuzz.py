"""Schemathesis against the adapter's own /openapi.json, in process, over a fake Triton.

Valid and invalid inputs (both generation modes), 200 examples per operation: no answer
may be a 5xx, and every 4xx must be the OpenAI error envelope. The same check against
the real stack is `python -m tests.stress.fuzz` (docs/reliability.md).
"""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, settings

from adapter.app import create_app
from adapter.config import AdapterConfig
from tests.adapter.fake_triton import FakeTriton
from tests.stack import Stack
from tests.stress import sampling_fuzz
from tests.stress.fuzz import check_response

EXAMPLES_PER_OPERATION = 200

app = create_app(AdapterConfig(), triton_factory=lambda _config: FakeTriton())
schema = schemathesis.openapi.from_asgi("/openapi.json", app)
schema.config.generation.update(max_examples=EXAMPLES_PER_OPERATION)


@schema.parametrize()
@settings(
    max_examples=EXAMPLES_PER_OPERATION,
    deadline=None,
    derandomize=True,  # seeded: the same examples every run, no flaky reruns
    suppress_health_check=list(HealthCheck),
)
def test_no_server_errors_and_every_error_is_an_envelope(case: schemathesis.Case) -> None:
    check_response(case.call(), f"{case.method} {case.path}")


@pytest.mark.e2e
@pytest.mark.parametrize("chat", [True, False], ids=["chat", "completions"])
def test_supported_fields_fuzzed_down_to_the_engine(stack: Stack, chat: bool) -> None:
    """The fields the model takes, valid or not, on the real stack (fewer examples than the
    stress run, `python -m tests.stress.sampling_fuzz`, to stay fast)."""
    statuses = sampling_fuzz.fuzz(stack, examples=40, chat=chat)
    assert statuses[200] > 0  # some cases reached the engine and came back
