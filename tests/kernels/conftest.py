"""Kernel tests run on CUDA when it exists, else on CPU under Triton's interpreter.

The interpreter must be on before anything `@triton.jit` is created: Triton's own
helpers (`tl.sum`, `tl.argmax`, ...) when `triton` is first imported, ours at the first
`import kernels.*`. pytest imports this conftest before the test modules of this
directory, so switching it on here (at import time) is early enough.

It is switched on for this process only: TRITON_INTERPRET=1 is in os.environ just
while `triton` is imported, then only the in-process knob `triton.knobs.runtime.interpret`
holds it. The session also starts subprocesses (tritonserver and its Python backend
stubs in the e2e tests, the CUDA compile check); they get the environment the user
gave them, not this one. After import, Triton reads the setting only through the knob
(`@triton.jit`, the interpreter, `kernels.attention_common.upcast_dot`).
"""

from __future__ import annotations

import os
import sys

import pytest
import torch

HAS_CUDA = torch.cuda.is_available()
# The user ran pytest with TRITON_INTERPRET=1: theirs to pass on to subprocesses.
INTERPRET_EXPORTED = os.environ.get("TRITON_INTERPRET") == "1"


def _import_triton_interpreted() -> None:
    if "triton" in sys.modules:
        raise pytest.UsageError(
            "triton was imported before tests/kernels/conftest.py could switch on its "
            "interpreter (no CUDA here); run with TRITON_INTERPRET=1 in the environment"
        )
    previous = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "1"
    try:
        import triton

        # Pin the knob in this process; setting it with propagate_env off leaves
        # os.environ alone.
        triton.knobs.propagate_env = False
        triton.knobs.runtime.interpret = True
        triton.knobs.propagate_env = True
    finally:
        if previous is None:
            del os.environ["TRITON_INTERPRET"]
        else:
            os.environ["TRITON_INTERPRET"] = previous


if not HAS_CUDA and not INTERPRET_EXPORTED:
    _import_triton_interpreted()


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
