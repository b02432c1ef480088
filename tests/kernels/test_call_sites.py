"""Kernel call sites pass every argument by keyword (the parameters' own names).

Kernels take a dozen pointers, strides and flags; a positional slip (a stride for
another stride, a bool in the wrong constexpr) still runs. So every launch
(`*_kernel[grid](...)`), every call of a `@triton.jit` helper, and every engine call
into `tritium_kernels` names its arguments; Python and Triton then reject a wrong name.
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
KERNEL_FILES = sorted((REPO_ROOT / "tritium_kernels").glob("*.py"))


def _jit_functions() -> set[str]:
    names = set()
    for path in KERNEL_FILES:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef) and any(
                ast.unparse(decorator).startswith("triton.jit") for decorator in node.decorator_list
            ):
                names.add(node.name)
    return names


def _positional_calls(path: Path, callees: set[str]) -> list[str]:
    """`file:line name` of each call of `callees` (or launch `name[grid](...)`) that
    passes an argument by position."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if not isinstance(node, ast.Call) or not node.args:
            continue
        function = node.func.value if isinstance(node.func, ast.Subscript) else node.func
        if isinstance(function, ast.Name) and function.id in callees:
            found.append(f"{path.relative_to(REPO_ROOT)}:{node.lineno} {function.id}")
    return found


def _imported_from_kernels(path: Path) -> set[str]:
    return {
        alias.asname or alias.name
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("tritium_kernels.")
        for alias in node.names
    }


def test_kernel_launches_and_jit_calls_are_keyword_only() -> None:
    jit_functions = _jit_functions()
    assert {"sample_kernel", "attend_tile", "copy_heads", "quant_matmul_kernel", "dot_dequantized"} <= jit_functions
    positional = [site for path in KERNEL_FILES for site in _positional_calls(path, jit_functions)]
    assert positional == []


def test_engine_calls_into_kernels_are_keyword_only() -> None:
    kernel_ops = REPO_ROOT / "engine" / "kernel_ops.py"
    launchers = _imported_from_kernels(kernel_ops)
    assert {"sample", "paged_attention", "rms_norm"} <= launchers
    assert _positional_calls(kernel_ops, launchers) == []
