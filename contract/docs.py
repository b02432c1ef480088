"""docs/api.md's tables of the contract, written from the contract's own tables.

    .venv/bin/python -m contract.docs           # rewrite the generated blocks of docs/api.md
    .venv/bin/python -m contract.docs --check   # exit 1 if they are out of date

Each block sits between `<!-- contract:NAME -->` and `<!-- /contract:NAME -->`; the
text around the blocks is written by hand. tests/contract/test_docs.py runs the check.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from contract.errors import ErrorKind
from contract.sampling import SAMPLING_FIELDS, Exposure
from contract.tensors import INPUTS, OUTPUTS, TensorSpec

API_DOC = Path(__file__).resolve().parents[1] / "docs" / "api.md"

_EXPOSURE = {
    Exposure.SAME: "same name",
    Exposure.MAPPED: "mapped (see the routes)",
    Exposure.NONE: "Triton clients only",
}
_ERROR_STATUS = {
    ErrorKind.INVALID_REQUEST: "400, `param` = the field when one is named",
    ErrorKind.CONTEXT_LENGTH: "400, `code` = `context_length_exceeded`",
    ErrorKind.UNAVAILABLE: "503",
    ErrorKind.OVERLOADED: "503",
}


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def _tensor_rows(specs: tuple[TensorSpec, ...]) -> list[str]:
    rows = ["| Tensor | Type | Shape | Meaning |", "|---|---|---|---|"]
    for spec in specs:
        shape = ", ".join("k" if d == -1 and spec in OUTPUTS else str(d) for d in spec.dims)
        rows.append(f"| `{spec.name}` | {spec.datatype} | `[{shape}]` | {_cell(spec.doc)} |")
    return rows


def _sampling_rows() -> list[str]:
    rows = [
        "| Field | Type | Default | Range | Meaning | OpenAI API |",
        "|---|---|---|---|---|---|",
    ]
    for spec in SAMPLING_FIELDS:
        default = "absent" if spec.default is None else f"`{_json_default(spec.default)}`"
        rows.append(
            f"| `{spec.name}` | {spec.kind.value} | {default} | {_cell(spec.limits())}"
            f" | {_cell(spec.doc)} | {_EXPOSURE[spec.exposure]} |"
        )
    return rows


def _json_default(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple):
        return "[]"
    return str(value)


def _error_rows() -> list[str]:
    rows = ["| Message | HTTP |", "|---|---|"]
    for kind in ErrorKind:
        rows.append(f"| `{kind.value}: [<field>: ]<what is wrong>` | {_ERROR_STATUS[kind]} |")
    return rows


def blocks() -> dict[str, str]:
    """Block name -> its markdown."""
    return {
        "inputs": "\n".join(_tensor_rows(INPUTS)),
        "outputs": "\n".join(_tensor_rows(OUTPUTS)),
        "sampling": "\n".join(_sampling_rows()),
        "errors": "\n".join(_error_rows()),
    }


def render(text: str) -> str:
    """``text`` with every generated block rewritten; raises if a block's markers are missing."""
    for name, body in blocks().items():
        pattern = re.compile(
            rf"(<!-- contract:{name} -->\n)(?:.*?\n)?(<!-- /contract:{name} -->)", re.S
        )
        if not pattern.search(text):
            raise ValueError(f"docs/api.md has no block 'contract:{name}'")
        text = pattern.sub(lambda match, body=body: f"{match[1]}{body}\n{match[2]}", text)
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if docs/api.md is stale")
    args = parser.parse_args(argv)
    current = API_DOC.read_text()
    wanted = render(current)
    if args.check:
        if wanted != current:
            print("docs/api.md is out of date: run python -m contract.docs", file=sys.stderr)
            return 1
        return 0
    API_DOC.write_text(wanted)
    return 0


if __name__ == "__main__":
    sys.exit(main())
