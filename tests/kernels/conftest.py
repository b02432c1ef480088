"""Kernel tests run on CUDA when it exists, else on CPU under Triton's interpreter.

TRITON_INTERPRET must be set before `@triton.jit` wraps our kernels, i.e. before the
first `import kernels.*`. pytest imports this conftest before the test modules of
this directory, so setting it here (at import time) is early enough.
"""

from __future__ import annotations

import os
import sys

import pytest
import torch

HAS_CUDA = torch.cuda.is_available()
if not HAS_CUDA:
    os.environ["TRITON_INTERPRET"] = "1"

_already_imported = [name for name in sys.modules if name == "kernels" or name.startswith("kernels.")]
if not HAS_CUDA and any(name != "kernels" for name in _already_imported):
    raise pytest.UsageError(
        f"{_already_imported} were imported before tests/kernels/conftest.py could set "
        "TRITON_INTERPRET=1 (no CUDA here); run with TRITON_INTERPRET=1 in the environment"
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    skip_gpu = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords and not HAS_CUDA:
            item.add_marker(skip_gpu)


@pytest.fixture
def device() -> torch.device:
    """Where kernel inputs live: CUDA when present, else CPU (interpreter)."""
    return torch.device("cuda" if HAS_CUDA else "cpu")


@pytest.fixture(autouse=True)
def poison_new_tensors(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every torch.empty / empty_like (the launchers' outputs) starts as NaN (floats) or
    a large sentinel (ints), so an element a kernel forgets to write fails the test."""
    from tests.kernels.kernel_testing import poisoned

    real_empty, real_empty_like = torch.empty, torch.empty_like
    monkeypatch.setattr(torch, "empty", lambda *a, **k: poisoned(real_empty(*a, **k)))
    monkeypatch.setattr(torch, "empty_like", lambda *a, **k: poisoned(real_empty_like(*a, **k)))
