"""Engine configuration from config.pbtxt parameters, and request parsing from the contract."""

from __future__ import annotations

from pathlib import Path

import pytest

from contract.errors import ContractError
from engine.config import ConfigError, EngineConfig
from engine.sampling_params import SamplingParams


def test_parameters_build_frozen_configs(default_weights_dir: Path) -> None:
    config = EngineConfig.from_parameters(
        default_weights_dir,
        {"max_num_seqs": "8", "kv_cache_memory_mb": "64", "enable_prefix_caching": "false",
         "max_model_len": "1024", "dtype": "float32"},
    )
    assert config.scheduler.max_num_seqs == 8
    assert config.cache.memory_budget_bytes == 64 << 20
    assert config.cache.enable_prefix_caching is False
    assert config.model.num_kv_heads == 3 and config.model.tie_word_embeddings
    with pytest.raises(AttributeError):
        config.dtype = "bfloat16"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("parameters", "message"),
    [
        ({"max_num_seq": "8"}, "unknown parameter 'max_num_seq'"),
        ({"max_num_seqs": "many"}, "max_num_seqs must be an integer"),
        ({"enable_prefix_caching": "maybe"}, "must be true or false"),
        ({"kv_block_size": "12"}, "power of two"),
        ({"dtype": "int8"}, "dtype must be"),
        ({"max_model_len": "100000"}, "over the model's max_position_embeddings"),
    ],
)
def test_bad_parameters_say_what_to_change(default_weights_dir: Path, parameters: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        EngineConfig.from_parameters(default_weights_dir, parameters)


def test_sampling_params_reject_unknown_and_bad_fields() -> None:
    assert SamplingParams.from_json({"temperature": 0, "stop": "x"}).stop == ("x",)
    for data, field in [
        ({"temprature": 1}, "temprature"),
        ({"temperature": 5}, "temperature"),
        ({"top_p": 0}, "top_p"),
        ({"n": 0}, "n"),
        ({"max_tokens": "10"}, "max_tokens"),
        ({"logit_bias": {"x": 1}}, "logit_bias"),
        ({"top_logprobs": 3}, "top_logprobs"),
        ({"stop": [""]}, "stop"),
    ]:
        with pytest.raises(ContractError) as error:
            SamplingParams.from_json(data)
        assert error.value.field == field




def test_sampling_params_are_the_contracts_fields_with_its_defaults() -> None:
    from dataclasses import fields

    from contract.sampling import SAMPLING_FIELDS

    ours = {f.name: SamplingParams().__getattribute__(f.name) for f in fields(SamplingParams)}
    assert ours == {spec.name: spec.default for spec in SAMPLING_FIELDS}


def test_every_parameter_is_documented_in_the_architecture_table_and_the_readme() -> None:
    from engine.config import PARAMETER_HELP

    root = Path(__file__).resolve().parents[2]
    table = (root / "docs" / "architecture.md").read_text().split("## Configuration", 1)[1]
    table = table.split("\n## ", 1)[0]
    readme = (root / "README.md").read_text().split("## Configuration", 1)[1]
    for name in PARAMETER_HELP:
        assert f"| `{name}` |" in table, f"docs/architecture.md's table lacks {name}"
        assert f"`{name}`" in readme, f"README's Configuration lacks {name}"
