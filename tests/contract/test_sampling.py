"""The sampling fields' validation: types, limits, unknown fields, each error naming its field."""

from __future__ import annotations

import pytest

from contract.errors import ContractError
from contract.sampling import SAMPLING_FIELDS, parse_sampling_parameters


def test_values_are_coerced_to_the_fields_types() -> None:
    parsed = parse_sampling_parameters(
        {"temperature": 1, "stop": "x", "stop_token_ids": [3], "logit_bias": {"5": -1}, "seed": None}
    )
    assert parsed == {"temperature": 1.0, "stop": ("x",), "stop_token_ids": (3,), "logit_bias": {5: -1.0}}
    assert isinstance(parsed["temperature"], float)


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"temprature": 1}, "temprature"),
        ({"temperature": 5}, "temperature"),
        ({"temperature": float("nan")}, "temperature"),
        ({"top_p": 0}, "top_p"),
        ({"n": 0}, "n"),
        ({"n": 17}, "n"),
        ({"max_tokens": "10"}, "max_tokens"),
        ({"max_tokens": True}, "max_tokens"),
        ({"logit_bias": {"x": 1}}, "logit_bias"),
        ({"logit_bias": {"1": 101}}, "logit_bias"),
        ({"stop": [""]}, "stop"),
        ({"stop": ["a"] * 17}, "stop"),
        ({"stop_token_ids": [-1]}, "stop_token_ids"),
        ({"ignore_eos": 1}, "ignore_eos"),
        ([1], "sampling_parameters"),
    ],
)
def test_bad_values_name_their_field(data: object, field: str) -> None:
    with pytest.raises(ContractError) as error:
        parse_sampling_parameters(data)
    assert error.value.field == field


def test_every_default_is_within_its_own_limits() -> None:
    for spec in SAMPLING_FIELDS:
        if spec.default is not None:
            assert spec.check(spec.default) == spec.default, spec.name


def test_structured_outputs_take_exactly_one_kind_of_constraint() -> None:
    ok = {"json": {"type": "object"}, "regex": "[a-z]+", "choice": ["yes", "no"], "json_object": True}
    for kind, spec in ok.items():
        assert parse_sampling_parameters({"structured_outputs": {kind: spec, "grammar": None}}) == {
            "structured_outputs": {kind: spec}
        }
    for bad in ({}, {"json": {}, "regex": "x"}, {"choice": []}, {"json_object": False}, {"sql": "x"}, "json"):
        with pytest.raises(ContractError) as error:
            parse_sampling_parameters({"structured_outputs": bad})
        assert error.value.field == "structured_outputs"
