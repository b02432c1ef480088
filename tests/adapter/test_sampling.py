"""The adapter's own list of sampling fields matches what the model accepts."""

from __future__ import annotations

from dataclasses import fields

import pytest

from adapter.sampling import SAMPLING_FIELDS


def test_sampling_fields_match_the_engine() -> None:
    sampling_params = pytest.importorskip("engine.sampling_params")
    engine_fields = {f.name for f in fields(sampling_params.SamplingParams)}
    assert set(SAMPLING_FIELDS) == engine_fields
