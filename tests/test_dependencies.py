"""pyproject.toml declares what the code imports, for the part that imports it, and
nothing the code does not use.

The base dependencies serve the adapter, the contract and the CLI (no torch); the
`engine` extra what runs inside the Triton Python backend; `bench` what `tritium bench`
adds. An import inside `try: ... except ImportError` is optional and left out.
"""

from __future__ import annotations

import ast
import importlib.metadata
import re
import sys

import pytest

from tests.conftest import REPO_ROOT

tomllib = pytest.importorskip("tomllib")  # Python 3.11+

OWN = {"adapter", "contract", "engine", "tritium_kernels", "tritium", "benchmarks", "tests"}
# Provided by Triton to the models it runs, not by pip.
PROVIDED = {"triton_python_backend_utils"}
# package -> the requirement groups it may import from
GROUPS = {
    "adapter": ("base",),
    "contract": ("base",),
    "tritium": ("base",),
    "docker": ("base",),
    "engine": ("base", "engine"),
    "tritium_kernels": ("base", "engine"),
    "benchmarks": ("base", "engine", "bench", "peer"),
}
# Declared without being imported by our code, and why.
USED_INDIRECTLY = {
    "gguf": "transformers' GGUF loader reads .gguf files with it (tritium package)",
    "numpy": "the engine extra pins numpy < 2 for Triton 2.51's Python backend stub",
}


def _name(requirement: str) -> str:
    return re.split(r"[\s\[<>=!~;]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def declared() -> dict[str, set[str]]:
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    groups = {"base": {_name(r) for r in project["dependencies"]}}
    for extra, requirements in project["optional-dependencies"].items():
        groups[extra] = {_name(r) for r in requirements}
    return groups


def _optional_lines(tree: ast.AST) -> set[int]:
    """Lines of imports inside a try whose handler catches ImportError."""
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Try) and any(
            isinstance(h.type, ast.Name) and h.type.id in ("ImportError", "ModuleNotFoundError")
            for h in node.handlers
        ):
            lines |= {child.lineno for child in ast.walk(node) if hasattr(child, "lineno")}
    return lines


def imported_distributions(package: str) -> dict[str, set[str]]:
    """Distribution -> files of `package` that import it (not optionally)."""
    distributions = importlib.metadata.packages_distributions()
    found: dict[str, set[str]] = {}
    for path in sorted((REPO_ROOT / package).rglob("*.py")):
        tree = ast.parse(path.read_text())
        optional = _optional_lines(tree)
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules = [node.module]
            else:
                continue
            for module in modules:
                top = module.split(".")[0]
                if top in sys.stdlib_module_names or top in OWN | PROVIDED:
                    continue
                if node.lineno in optional:
                    continue
                for distribution in distributions.get(top, [top]):
                    name = distribution.lower().replace("_", "-")
                    found.setdefault(name, set()).add(str(path.relative_to(REPO_ROOT)))
    return found


def test_every_import_is_declared_for_its_part() -> None:
    groups = declared()
    problems = []
    for package, allowed in GROUPS.items():
        available = set().union(*(groups.get(group, set()) for group in allowed))
        for distribution, files in imported_distributions(package).items():
            if distribution not in available:
                problems.append(f"{distribution} (imported by {', '.join(sorted(files))})")
    assert not problems, "not declared where it is imported: " + "; ".join(problems)


def test_nothing_is_declared_and_unused() -> None:
    groups = declared()
    used = {
        distribution
        for package in GROUPS
        for distribution in imported_distributions(package)
    }
    for group in ("base", "engine", "bench"):
        unused = groups[group] - used - set(USED_INDIRECTLY)
        assert not unused, f"declared in {group} but imported nowhere: {sorted(unused)}"


def test_our_packages_shadow_no_installed_distribution() -> None:
    # The repository root comes first on sys.path, so a top-level package of ours named like
    # another distribution's hides it (transformers imports Hugging Face's `kernels`, which a
    # package of ours by that name would replace in every process).
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    ours = {package for package in project["packages"] if "." not in package}
    assert ours == OWN - {"tests"}
    distributions = importlib.metadata.packages_distributions()
    shadowed = {
        package: others
        for package in sorted(ours)
        if (others := sorted(set(distributions.get(package, [])) - {"tritium"}))
    }
    assert not shadowed, f"our top-level packages share their names with: {shadowed}"
