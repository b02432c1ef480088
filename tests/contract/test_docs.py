"""docs/api.md's contract tables are the contract's own (python -m contract.docs)."""

from __future__ import annotations

from contract.docs import API_DOC, main, render


def test_the_contract_tables_of_docs_api_md_are_current() -> None:
    assert main(["--check"]) == 0, "run: .venv/bin/python -m contract.docs"


def test_a_change_to_a_table_shows_in_the_doc(monkeypatch) -> None:  # noqa: ANN001
    from contract import sampling

    changed = sampling.SAMPLING_FIELDS[:-1]  # one field fewer
    monkeypatch.setattr("contract.docs.SAMPLING_FIELDS", changed)
    text = API_DOC.read_text()
    assert render(text) != text
    assert f"`{sampling.SAMPLING_FIELDS[-1].name}`" not in render(text).split("contract:sampling")[1]
