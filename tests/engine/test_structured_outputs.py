"""Structured output on the real default model: every kind of `structured_outputs` gives
output in its language, at temperature 1 and with the other sampling features on.

One batch (`batch` fixture) runs every constrained request together with an
unconstrained one, so the bitmask path sees mixed rows, chunked prefill (a long prompt)
and n = 2 siblings sharing a prompt; the tests read its outputs. Preemption, cancellation
and errors have tests of their own. The grammar library's own parts (compile cache,
bitmask rows, min_tokens) are in test_structured.py.
"""

from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path

import jsonschema
import pytest

from contract.errors import ContractError
from contract.tools import FORMATS, structural_tag
from engine.api import GenerationOutput, GenerationRequest
from engine.config import EngineConfig
from engine.llm_engine import LLMEngine
from engine.sampling_params import SamplingParams
from engine.scheduler import Scheduler

PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 24},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "pet": {"enum": ["cat", "dog", "fish"]},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 10}, "maxItems": 2},
    },
    "required": ["name", "age", "pet"],
}
REGEX = r"[A-Z][a-z]{2,8}-[0-9]{3}"
CHOICES = ["red", "green", "blue", "dark \"purple\""]
GRAMMAR = 'root ::= "The answer is " [1-9] [0-9]? "."'
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "maxLength": 20}},
            "required": ["city"],
        },
    },
}
SEEDS = (0, 1, 2)
LONG_PROMPT = "Here is a list of people I met at the market this morning. " * 12


@pytest.fixture(scope="module")
def engine(default_weights_dir: Path) -> LLMEngine:
    parameters = {
        "max_model_len": "512",
        "max_num_seqs": "16",
        "max_num_batched_tokens": "64",  # the long prompt is prefilled in chunks
        "kv_cache_memory_mb": "64",
        "dtype": "float32",
    }
    return LLMEngine(EngineConfig.from_parameters(default_weights_dir, parameters))


def _chat(content: str, spec: dict | None, stream: bool = False, **params: object) -> GenerationRequest:
    params.setdefault("temperature", 1.0)
    params.setdefault("max_tokens", 128)
    return GenerationRequest(
        params=SamplingParams(structured_outputs=spec, **params),
        messages=[{"role": "user", "content": content}],
        stream=stream,
    )


def _run(engine: LLMEngine, requests: dict[str, GenerationRequest]) -> dict[str, list[GenerationOutput]]:
    """Add every request at once, step until all finish; outputs by name."""
    keys = {7000 + offset: name for offset, name in enumerate(requests)}
    for key, name in keys.items():
        engine.add_request(key, engine.prepare(requests[name]))
    outputs: dict[str, list[GenerationOutput]] = {}
    for _ in range(2000):
        if not engine.has_unfinished():
            return outputs
        for key, output in engine.step():
            outputs.setdefault(keys[key], []).append(output)
    raise AssertionError("the engine does not finish")


def _texts(outputs: list[GenerationOutput]) -> list[tuple[str, str | None]]:
    """(text, finish_reason) per choice, streamed deltas joined."""
    texts: dict[int, str] = {}
    reasons: dict[int, str | None] = {}
    for output in outputs:
        for choice in output.choices:
            texts[choice.index] = texts.get(choice.index, "") + choice.text
            reasons[choice.index] = choice.finish_reason or reasons.get(choice.index)
    return [(texts[index], reasons[index]) for index in sorted(texts)]


@pytest.fixture(scope="module")
def batch(engine: LLMEngine) -> dict[str, list[tuple[str, str | None]]]:
    describe = "Describe a person as JSON with name, age, pet and tags."
    requests = {f"json-{seed}": _chat(describe, {"json": PERSON}, seed=seed) for seed in SEEDS}
    requests |= {
        "json-again-0": _chat(describe, {"json": json.dumps(PERSON)}, seed=0),  # same seed, text
        "json-object": _chat('Reply with a JSON object with two keys, "name" and "color", for a cat.',
                             {"json_object": True}, temperature=0.0),
        "regex": _chat("Make up a product code.", {"regex": REGEX}, seed=5),
        "choice": _chat("Pick a color.", {"choice": CHOICES}, seed=6, logprobs=True),
        "grammar": _chat("What is 6 times 7?", {"grammar": GRAMMAR}, seed=7, stream=True),
        "n2": _chat(LONG_PROMPT + describe, {"json": PERSON}, n=2, seed=8, stream=True),
        "truncated": _chat(describe, {"json": PERSON}, seed=9, max_tokens=6),
        "tool": _chat("What is the weather in Paris?",
                      {"structural_tag": structural_tag("hermes", [WEATHER_TOOL], required=True,
                                                        parallel=False)}, seed=10),
        "free": _chat("Say hello.", None, seed=11, max_tokens=12),
    }  # fmt: skip
    return {name: _texts(outputs) for name, outputs in _run(engine, requests).items()}


@pytest.mark.parametrize("seed", SEEDS)
def test_json_schema_output_is_valid_at_temperature_1(batch: dict, seed: int) -> None:
    ((text, reason),) = batch[f"json-{seed}"]
    assert reason == "stop", text
    jsonschema.validate(json.loads(text), PERSON)


def test_same_seed_same_output_however_the_schema_is_spelled(batch: dict) -> None:
    assert batch["json-again-0"] == batch["json-0"]


def test_json_object_parses_as_an_object(batch: dict) -> None:
    ((text, reason),) = batch["json-object"]
    assert reason == "stop", text
    assert isinstance(json.loads(text), dict)


def test_regex_output_fullmatches(batch: dict) -> None:
    ((text, reason),) = batch["regex"]
    assert reason == "stop" and re.fullmatch(REGEX, text), text


def test_choice_output_is_one_of_the_choices(batch: dict) -> None:
    ((text, reason),) = batch["choice"]
    assert reason == "stop" and text in CHOICES, text


def test_grammar_output_is_in_the_grammar_streamed(batch: dict) -> None:
    ((text, reason),) = batch["grammar"]
    assert reason == "stop" and re.fullmatch(r"The answer is [1-9][0-9]?\.", text), text


def test_each_of_n_choices_is_valid_after_a_chunked_prefill(batch: dict) -> None:
    choices = batch["n2"]
    assert len(choices) == 2
    for text, reason in choices:
        assert reason == "stop", text
        jsonschema.validate(json.loads(text), PERSON)


def test_max_tokens_truncates_json_with_length(batch: dict) -> None:
    ((text, reason),) = batch["truncated"]
    assert reason == "length" and text.startswith("{"), text
    with pytest.raises(json.JSONDecodeError):
        json.loads(text)


def test_tool_call_structural_tag_gives_a_call_with_valid_arguments(batch: dict) -> None:
    ((text, reason),) = batch["tool"]
    assert reason == "stop", text
    fmt = FORMATS["hermes"]
    prefix = fmt.call_prefix.replace("{name}", "get_weather")
    assert text.startswith(prefix) and text.endswith(fmt.call_suffix), text
    arguments = json.loads(text[len(prefix) : len(text) - len(fmt.call_suffix)])
    jsonschema.validate(arguments, WEATHER_TOOL["function"]["parameters"])


def test_unconstrained_request_in_the_batch_is_free_text(batch: dict) -> None:
    ((text, _reason),) = batch["free"]
    assert text


def test_finished_requests_free_their_matchers(engine: LLMEngine, batch: dict) -> None:
    assert batch and len(engine.grammars) == 0
    snapshot = engine.metrics.snapshot
    assert snapshot["tritium_structured_output_requests_total"] >= 11
    assert snapshot["tritium_grammar_cache_hits_total"] >= 4  # the PERSON schema, reused
    assert snapshot["tritium_grammar_cache_misses_total"] >= 6


def test_grammar_end_stops_despite_min_tokens_ignore_eos_and_bias(engine: LLMEngine) -> None:
    """A finished grammar allows only EOS: min_tokens and ignore_eos cannot hold the
    sequence open (no deadlock), and a +100 bias cannot push a masked token through."""
    other = engine.tokenizer.encode(" yellow", add_special_tokens=False)[0]
    requests = {
        "min_tokens": _chat("Pick a color.", {"choice": CHOICES}, seed=1, min_tokens=20),
        "ignore_eos": _chat("Pick a color.", {"choice": CHOICES}, seed=2, ignore_eos=True),
        "bias": _chat("Pick a color.", {"choice": CHOICES}, temperature=0.0,
                      logit_bias={other: 100.0}),
    }  # fmt: skip
    for name, outputs in _run(engine, requests).items():
        ((text, reason),) = _texts(outputs)
        assert reason == "stop" and text in CHOICES, (name, text)


def test_stop_string_ends_constrained_output(engine: LLMEngine) -> None:
    outputs = _run(engine, {"stop": _chat("Pick a color.", {"choice": ["light green"]}, stop=[" "])})
    assert _texts(outputs["stop"]) == [("light", "stop")]


def test_preempted_sequences_keep_their_grammar(engine: LLMEngine, monkeypatch: pytest.MonkeyPatch) -> None:
    """With a KV cache of a few blocks the batch preempts (recompute); the matchers stay in
    step with the accepted tokens, so every output is still valid."""
    tiny = replace(engine.config.cache, num_blocks=12)  # 192 tokens; each prompt takes 3 blocks
    monkeypatch.setattr(engine, "scheduler", Scheduler(engine.config.scheduler, tiny))
    requests = {
        f"p{index}": _chat(f"Describe person number {index} as JSON with name, age, pet and tags.",
                           {"json": PERSON}, seed=index + 20)
        for index in range(4)
    }  # fmt: skip
    outputs = _run(engine, requests)
    assert engine.scheduler.num_preemptions > 0
    for name in requests:
        ((text, reason),) = _texts(outputs[name])
        assert reason == "stop", text
        jsonschema.validate(json.loads(text), PERSON)
    assert len(engine.grammars) == 0


def test_cancellation_frees_the_matchers(engine: LLMEngine) -> None:
    request = _chat("Describe a person.", {"json": PERSON}, n=2, seed=3)
    engine.add_request(9000, engine.prepare(request))
    for _ in range(3):
        engine.step()
    assert len(engine.grammars) == 2  # one per choice
    engine.abort(9000)
    assert len(engine.grammars) == 0
    engine.step()
    assert not engine.has_unfinished() and engine.scheduler.num_used_blocks == 0


@pytest.mark.parametrize(
    ("spec", "says"),
    [
        ({"json": {"type": "nonsense"}}, "nonsense"),
        ({"json": "{not json"}, "not valid JSON"),
        ({"json": {"type": "object", "properties": {"a": {"$ref": "#/nowhere"}}}}, "nowhere"),
        ({"regex": "a(b"}, "parenthesis"),
        ({"grammar": "root ::= undefined_rule"}, "undefined_rule"),
        ({"grammar": 'root ::= "unterminated'}, "string literal"),
        ({"structural_tag": {"format": {"type": "bogus"}}}, "bogus"),
        ({"structural_tag": {"structures": [{"begin": "<a>"}], "triggers": ["<a"]}}, "schema"),
    ],
)
def test_invalid_spec_is_a_contract_error_naming_the_field(
    engine: LLMEngine, spec: dict, says: str
) -> None:
    with pytest.raises(ContractError, match=re.escape(says)) as raised:
        engine.prepare(_chat("x", spec))
    assert raised.value.field == "structured_outputs"
    assert not raised.value.reason.startswith("[")  # no source location of the library
