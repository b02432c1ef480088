"""Kernel tests run on CUDA when it exists, else on CPU under Triton's interpreter.

The interpreter must be on before anything `@triton.jit` is created: Triton's own
helpers (`tl.sum`, `tl.argmax`, ...) when `triton` is first imported, ours at the first
`import tritium_kernels.*`. pytest imports this conftest before the test modules of this
directory — but other directories' test modules may import triton first (transformers
and torch do), so the switch lives in tests/triton_interpreter.py, called by the root
tests/conftest.py before any test module is imported.

It is switched on for this process only: TRITON_INTERPRET=1 is in os.environ just
while `triton` is imported, then only the in-process knob `triton.knobs.runtime.interpret`
holds it. The session also starts subprocesses (tritonserver and its Python backend
stubs in the e2e tests, the CUDA compile check); they get the environment the user
gave them, not this one. After import, Triton reads the setting only through the knob
(`@triton.jit`, the interpreter, `tritium_kernels.attention_common.upcast_dot`).
"""

from __future__ import annotations

import pytest
import torch

HAS_CUDA = torch.cuda.is_available()

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
