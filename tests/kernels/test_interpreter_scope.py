"""The interpreter that tests/triton_interpreter.py switches on stays in this process (see its docstring)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import triton

from tests.kernels.conftest import HAS_CUDA
from tests.triton_interpreter import INTERPRET_EXPORTED


@pytest.mark.skipif(HAS_CUDA or INTERPRET_EXPORTED, reason="conftest switched nothing on")
def test_interpreter_is_on_here_and_not_exported_to_subprocesses() -> None:
    assert triton.knobs.runtime.interpret
    assert "TRITON_INTERPRET" not in os.environ
    child = subprocess.run(
        [sys.executable, "-c", "import os; print(os.environ.get('TRITON_INTERPRET'))"],
        capture_output=True, text=True, check=True, timeout=60,
    )  # fmt: skip
    assert child.stdout.strip() == "None"  # what tritonserver in the e2e tests inherits
