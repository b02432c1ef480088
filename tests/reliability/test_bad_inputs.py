"""The hand-made bad inputs of docs/reliability.md, on the session stack: each gets its
status in the OpenAI error envelope, and none a 5xx."""

from __future__ import annotations

import pytest

from tests.stack import Stack
from tests.stress.bad_inputs import bad_inputs, send
from tests.stress.fuzz import check_response

pytestmark = pytest.mark.e2e


@pytest.mark.parametrize("index", range(len(bad_inputs("m"))), ids=[b.name for b in bad_inputs("m")])
def test_bad_input(stack: Stack, index: int) -> None:
    bad = bad_inputs(stack.model)[index]
    response = send(stack, bad)
    assert response.status_code == bad.status, response.text[:300]
    check_response(response, bad.name)
    assert response.json()["error"]["code"] == bad.code
