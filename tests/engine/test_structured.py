"""engine.structured without a model: compiling specs (cache, errors, threads), the
per-step bitmask (unconstrained rows, min_tokens, EOS at the grammar's end), and the
specs the API side sends for tool calls. The default model's tokenizer is real; the
whole engine on the real model is in test_structured_outputs.py."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
import torch
import xgrammar

from contract.errors import ContractError, ErrorKind
from contract.tools import FORMATS, structural_tag
from engine.request import Sequence
from engine.sampler import unpack_bitmask
from engine.sampling_params import SamplingParams
from engine.structured import GrammarCompiler, GrammarMatchers, choice_grammar
from engine.tokenizer import Tokenizer

VOCAB_SIZE = 49152  # the default model's


@pytest.fixture(scope="module")
def tokenizer(default_weights_dir: Path) -> Tokenizer:
    return Tokenizer(default_weights_dir)


@pytest.fixture
def compiler(tokenizer: Tokenizer) -> GrammarCompiler:
    compiler = GrammarCompiler(tokenizer.hf, VOCAB_SIZE, tokenizer.eos_token_ids, cache_size=3)
    yield compiler
    compiler.shutdown()


def _seq(seq_id: int, output: list[int] | None = None, **params: object) -> Sequence:
    prompt = [1, 2, 3]
    return Sequence(
        seq_id=seq_id,
        request_id=seq_id,
        index=0,
        token_ids=prompt + (output or []),
        num_prompt_tokens=len(prompt),
        params=SamplingParams(**params),
        max_tokens=64,
        arrival_time=0.0,
    )


def _allowed_text(tokenizer: Tokenizer, row: torch.Tensor) -> set[str]:
    """The texts of the tokens a bitmask row allows."""
    ids = unpack_bitmask(row[None], VOCAB_SIZE)[0].nonzero()[:, 0].tolist()
    return {tokenizer.hf.convert_ids_to_tokens(i) for i in ids}


def test_choice_grammar_escapes_quotes_backslashes_and_control_characters(
    compiler: GrammarCompiler,
) -> None:
    choices = ['say "hi"', "back\\slash", "two\nlines", "tab\there", "été 😀", "bell\x07"]
    grammar = compiler.compile({"choice": choices})
    for choice in choices:
        matcher = xgrammar.GrammarMatcher(grammar.compiled)
        assert matcher.accept_string(choice) and matcher.is_completed(), choice
    matcher = xgrammar.GrammarMatcher(grammar.compiled)
    assert not matcher.accept_string('say "ho"')
    assert choice_grammar(["a"]) == 'root ::= "a"'


def test_equal_specs_share_one_compile_and_the_cache_is_bounded(
    compiler: GrammarCompiler, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[str] = []
    real = compiler._compile

    def counting(kind: str, value: object) -> xgrammar.CompiledGrammar:
        calls.append(kind)
        return real(kind, value)

    monkeypatch.setattr(compiler, "_compile", counting)
    schema = {"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "string"}}}
    first = compiler.compile({"json": schema})
    # Keys in another order, and the schema as text: the same grammar, from the cache.
    reordered = {"properties": {"b": {"type": "string"}, "a": {"type": "integer"}}, "type": "object"}
    assert compiler.compile({"json": reordered}).compiled is first.compiled
    assert compiler.compile({"json": '{"type": "object", "properties": {"a": {"type": "integer"},'
                                     ' "b": {"type": "string"}}}'}).compile_seconds is None  # fmt: skip
    assert first.compile_seconds is not None and calls == ["json"]
    for regex in ("a+", "b+", "c+"):  # three more: the schema (least recently used) goes
        compiler.compile({"regex": regex})
    assert compiler.compile({"json": schema}).compile_seconds is not None
    assert calls == ["json", "regex", "regex", "regex", "json"]


def test_concurrent_requests_with_one_spec_wait_for_one_compile(
    compiler: GrammarCompiler, monkeypatch: pytest.MonkeyPatch
) -> None:
    release = threading.Event()
    threads: list[str] = []
    real = compiler._compile

    def slow(kind: str, value: object) -> xgrammar.CompiledGrammar:
        threads.append(threading.current_thread().name)
        assert release.wait(30)
        return real(kind, value)

    monkeypatch.setattr(compiler, "_compile", slow)
    results: list[object] = []
    callers = [
        threading.Thread(target=lambda: results.append(compiler.compile({"regex": "[0-9]+"})))
        for _ in range(3)
    ]
    for caller in callers:
        caller.start()
    time.sleep(0.2)  # all three asked; none got an answer
    assert not results
    release.set()
    for caller in callers:
        caller.join(30)
    assert len(results) == 3 and len({id(r.compiled) for r in results}) == 1
    # One compile, on a compile thread (not the callers').
    assert len(threads) == 1 and threads[0].startswith("tritium-grammar")


def test_a_failed_compile_is_not_cached(compiler: GrammarCompiler) -> None:
    for _ in range(2):
        with pytest.raises(ContractError, match="regex: .*parenthesis") as raised:
            compiler.compile({"regex": "(unclosed"})
        assert raised.value.field == "structured_outputs"


@pytest.mark.parametrize("format_name", sorted(FORMATS))
@pytest.mark.parametrize("required", [True, False], ids=["required", "auto"])
def test_tool_call_structural_tags_compile(
    compiler: GrammarCompiler, format_name: str, required: bool
) -> None:
    tool = {"type": "function", "function": {"name": "lookup", "parameters": {
        "type": "object", "properties": {"q": {"type": "string"}}, "required": ["q"]}}}  # fmt: skip
    spec = structural_tag(format_name, [tool], required=required, parallel=True)
    grammar = compiler.compile({"structural_tag": spec})
    fmt = FORMATS[format_name]
    call = fmt.call_prefix.replace("{name}", "lookup") + '{"q": "x"}' + fmt.call_suffix
    matcher = xgrammar.GrammarMatcher(grammar.compiled)
    assert matcher.accept_string(call) and matcher.is_completed()


def test_legacy_structural_tag_shape(compiler: GrammarCompiler) -> None:
    spec = {"structures": [{"begin": "<f>", "schema": {"type": "object", "properties": {
        "n": {"type": "integer"}}, "required": ["n"]}, "end": "</f>"}], "triggers": ["<f"]}  # fmt: skip
    matcher = xgrammar.GrammarMatcher(compiler.compile({"structural_tag": spec}).compiled)
    assert matcher.accept_string('hello <f>{"n": 3}</f> bye')
    assert not xgrammar.GrammarMatcher(compiler.compile({"structural_tag": spec}).compiled).accept_string(
        '<f>{"n": "x"}'
    )


def test_bitmask_only_for_batches_with_a_constrained_row(
    compiler: GrammarCompiler, tokenizer: Tokenizer
) -> None:
    matchers = GrammarMatchers(VOCAB_SIZE, tokenizer.eos_token_ids)
    free, constrained = _seq(0), _seq(1, structured_outputs={"choice": ["yes", "no"]})
    assert matchers.allowed_mask([free]) is None
    matchers.add(constrained, compiler.compile({"choice": ["yes", "no"]}))
    assert matchers.allowed_mask([free, _seq(2)]) is None
    mask = matchers.allowed_mask([free, constrained])
    assert mask.shape == (2, VOCAB_SIZE // 32) and mask.dtype == torch.int32
    assert bool((mask[0] == -1).all())  # unconstrained: every token
    allowed = _allowed_text(tokenizer, mask[1])
    assert {"yes", "no"} <= allowed and all("yes".startswith(t) or "no".startswith(t) for t in allowed)
    matchers.remove(constrained)
    assert len(matchers) == 0 and matchers.allowed_mask([free, constrained]) is None


def test_eos_only_at_the_grammars_end_and_min_tokens_never_empties_a_row(
    compiler: GrammarCompiler, tokenizer: Tokenizer
) -> None:
    eos = tokenizer.eos_token_ids[0]
    grammar = compiler.compile({"regex": "a+"})
    matchers = GrammarMatchers(VOCAB_SIZE, tokenizer.eos_token_ids)
    seq = _seq(0, min_tokens=3)
    matchers.add(seq, grammar)

    def allows_eos() -> bool:
        return bool(unpack_bitmask(matchers.allowed_mask([seq]), VOCAB_SIZE)[0, eos])

    assert not allows_eos()  # nothing written yet: "a+" needs an "a"
    token_a = tokenizer.encode("a", add_special_tokens=False)[0]
    assert not matchers.accept(seq, token_a)
    seq.append_token(token_a)
    assert not allows_eos()  # the grammar could end, but min_tokens = 3 keeps EOS out
    for _ in range(2):
        matchers.accept(seq, token_a)
        seq.append_token(token_a)
    assert allows_eos()
    assert matchers.accept(seq, eos)  # the grammar took its end: terminated
    # A grammar whose only continuation is EOS keeps EOS, min_tokens or not.
    done = _seq(1, min_tokens=50)
    matchers.add(done, compiler.compile({"choice": ["a"]}))
    matchers.accept(done, token_a)
    done.append_token(token_a)
    row = unpack_bitmask(matchers.allowed_mask([done]), VOCAB_SIZE)[0]
    assert row.nonzero()[:, 0].tolist() == [t for t in tokenizer.eos_token_ids if t < VOCAB_SIZE]


def test_after_shutdown_a_compile_is_unavailable_not_a_crash(tokenizer: Tokenizer) -> None:
    compiler = GrammarCompiler(tokenizer.hf, VOCAB_SIZE, tokenizer.eos_token_ids)
    compiler.shutdown()
    with pytest.raises(ContractError, match="shutting down") as raised:
        compiler.compile({"regex": "[a-z]+"})
    assert raised.value.kind is ErrorKind.UNAVAILABLE
