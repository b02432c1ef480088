"""Switch Triton's interpreter on for this pytest process when there is no CUDA.

Called by the root tests/conftest.py, before any test module imports triton (directly,
or through torch or transformers): the interpreter must be on before anything
`@triton.jit` is created — Triton's own helpers (`tl.sum`, ...) at its first import.

It is switched on for this process only: TRITON_INTERPRET=1 is in os.environ just
while `triton` is imported, then only the in-process knob `triton.knobs.runtime.interpret`
holds it. Subprocesses (tritonserver and its Python backend stubs in the e2e tests, the
CUDA compile check) get the environment the user gave them, not this one.
"""

from __future__ import annotations

import os
import sys

import pytest

# The user ran pytest with TRITON_INTERPRET=1: theirs to pass on to subprocesses.
INTERPRET_EXPORTED = os.environ.get("TRITON_INTERPRET") == "1"


def import_triton_interpreted() -> None:
    """No-op with CUDA or when the user exported TRITON_INTERPRET=1 (theirs to pass on)."""
    import torch

    if torch.cuda.is_available() or INTERPRET_EXPORTED:
        return
    if "triton" in sys.modules:
        raise pytest.UsageError(
            "triton was imported before tests/conftest.py could switch on its interpreter "
            "(no CUDA here); run with TRITON_INTERPRET=1 in the environment"
        )
    os.environ["TRITON_INTERPRET"] = "1"
    try:
        import triton

        # Pin the knob in this process; setting it with propagate_env off leaves
        # os.environ alone.
        triton.knobs.propagate_env = False
        triton.knobs.runtime.interpret = True
        triton.knobs.propagate_env = True
    finally:
        del os.environ["TRITON_INTERPRET"]
