"""Structured output: a compiled grammar per request, a matcher per sequence, and each
step's allowed-token bitmask.

The grammar engine is xgrammar (docs/architecture.md says why, with the measurements).
Two objects, one per side of the engine thread:

- `GrammarCompiler` (any thread but the engine's): turns a `structured_outputs` spec into
  a compiled grammar, in `LLMEngine.prepare`, so an invalid spec is a ContractError at
  submit and a compile never stalls the running batch. Compiles run on a small pool of
  low-priority threads (xgrammar releases the GIL while it compiles) and are cached by
  the spec (LRU, bounded); concurrent requests with the same spec share one compile.
- `GrammarMatchers` (engine thread): one matcher per constrained sequence (each of the n
  choices its own), advanced with every token the sequence accepts. A matcher lives as
  long as its sequence, preemption included: preemption recomputes the KV of tokens that
  are already accepted and samples nothing twice, so the matcher stays in step.
  `allowed_mask(seqs)` fills the step's bitmask, only when a sampled row is constrained.

The grammar's end is the model's EOS: EOS is allowed exactly when the grammar accepts the
text so far (and is then the only choice when nothing can follow), and the sequence ends
("stop") when the matcher takes it, whatever ignore_eos and min_tokens say (a finished
grammar has nothing else to allow). Before that, min_tokens keeps EOS out of a row that
allows anything else.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import os
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence as SequenceOf
from dataclasses import dataclass
from typing import Any

import torch
import xgrammar

from contract.errors import ContractError, ErrorKind
from engine.request import Sequence

FIELD = "structured_outputs"
# Compiled grammars kept for reuse (a JSON schema's is typically 0.1-5 MB).
DEFAULT_CACHE_SIZE = 128
# Threads compiling at once; each compile runs single-threaded.
NUM_COMPILE_THREADS = 2
# Nice value of the compile threads: the engine thread wins a contended core.
COMPILE_NICENESS = 10
# xgrammar's error text starts with "[hh:mm:ss] /path/file.cc:123: "; check failures
# carry "Check failed: (...) is false: ". Neither tells a client anything.
_LOCATION = re.compile(r"^\[[^\]]*\]\s+\S+:\d+:\s*")
_CHECK = re.compile(r"Check failed: \(.*?\) is false:\s*")


@dataclass(frozen=True)
class Grammar:
    """A request's compiled grammar, as `LLMEngine.prepare` hands it to the engine thread."""

    compiled: xgrammar.CompiledGrammar
    kind: str  # the structured_outputs key: "json", "regex", ...
    compile_seconds: float | None  # None: found in the cache (or compiled by a concurrent request)


class GrammarCompiler:
    """Compiles `structured_outputs` specs for one tokenizer; thread-safe, cached."""

    def __init__(
        self,
        hf_tokenizer: Any,  # the model's transformers tokenizer (engine.tokenizer.Tokenizer.hf)
        vocab_size: int,  # the model's (its logits' width), which may differ from the tokenizer's
        eos_token_ids: SequenceOf[int],
        cache_size: int = DEFAULT_CACHE_SIZE,
    ) -> None:
        self.tokenizer_info = xgrammar.TokenizerInfo.from_huggingface(
            hf_tokenizer, vocab_size=vocab_size, stop_token_ids=list(eos_token_ids)
        )
        self._compiler = xgrammar.GrammarCompiler(
            self.tokenizer_info, max_threads=1, cache_enabled=False
        )
        self._cache_size = cache_size
        # Canonical spec -> its compile (done or running); most recently used last.
        self._cache: OrderedDict[str, concurrent.futures.Future[xgrammar.CompiledGrammar]] = (
            OrderedDict()
        )
        self._lock = threading.Lock()
        self._pool = concurrent.futures.ThreadPoolExecutor(
            NUM_COMPILE_THREADS, thread_name_prefix="tritium-grammar", initializer=_lower_priority
        )

    def compile(self, spec: dict[str, Any]) -> Grammar:
        """The compiled grammar of a validated spec (`{kind: value}`, one kind); blocks the
        calling thread until it is compiled. Raises ContractError naming structured_outputs."""
        ((kind, value),) = spec.items()
        key = _canonical(kind, value)
        with self._lock:
            future = self._cache.get(key)
            hit = future is not None
            if future is None:
                try:
                    future = self._pool.submit(self._compile, kind, value)
                except RuntimeError:  # the pool is shut down: so is the engine
                    raise ContractError(
                        "the model is shutting down", kind=ErrorKind.UNAVAILABLE
                    ) from None
                self._cache[key] = future
                while len(self._cache) > self._cache_size:
                    self._cache.popitem(last=False)
            else:
                self._cache.move_to_end(key)
        start = time.perf_counter()
        try:
            compiled = future.result()
        except ContractError as error:
            with self._lock:  # errors are not kept: the next request tries again
                if self._cache.get(key) is future:
                    del self._cache[key]
            raise ContractError(error.reason, FIELD) from None
        return Grammar(compiled, kind, None if hit else time.perf_counter() - start)

    def shutdown(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _compile(self, kind: str, value: Any) -> xgrammar.CompiledGrammar:
        compiler = self._compiler
        try:
            if kind == "json":
                schema = json.loads(value) if isinstance(value, str) else value
                # One line, ", " and ": ": a small model cannot wander off into whitespace.
                return compiler.compile_json_schema(json.dumps(schema), any_whitespace=False)
            if kind == "json_object":
                return compiler.compile_json_schema(
                    '{"type": "object"}', any_whitespace=False, strict_mode=False
                )
            if kind == "regex":
                return compiler.compile_regex(value)
            if kind == "choice":
                return compiler.compile_grammar(choice_grammar(value))
            if kind == "grammar":
                return compiler.compile_grammar(value)
            if kind == "structural_tag":
                return compiler.compile_structural_tag(structural_tag(value))
        except json.JSONDecodeError as error:
            raise ContractError(f"json is not valid JSON: {error}", FIELD) from None
        except (RuntimeError, ValueError, TypeError) as error:  # xgrammar's and pydantic's
            raise ContractError(f"{kind}: {_message(error)}", FIELD) from None
        raise ContractError(f"unknown kind {kind!r}", FIELD)


class GrammarMatchers:
    """The matchers of the constrained sequences and the step's bitmask (engine thread)."""

    def __init__(
        self,
        vocab_size: int,
        eos_token_ids: SequenceOf[int],
        pin_memory: bool = False,  # page-locked bitmask buffer, for copies to CUDA
    ) -> None:
        self.vocab_size = vocab_size
        self.eos_token_ids = tuple(t for t in eos_token_ids if t < vocab_size)
        self._pin_memory = pin_memory
        self._matchers: dict[int, xgrammar.GrammarMatcher] = {}  # by seq_id
        # Reused across steps, grown to the largest batch: [rows, cdiv(vocab_size, 32)].
        self._bitmask = self._allocate(16)
        self._batch = xgrammar.BatchGrammarMatcher(max_threads=1)

    def __len__(self) -> int:
        return len(self._matchers)

    def add(self, seq: Sequence, grammar: Grammar) -> None:
        self._matchers[seq.seq_id] = xgrammar.GrammarMatcher(grammar.compiled)

    def remove(self, seq: Sequence) -> None:
        """Free the sequence's matcher (finished or aborted); nothing if it has none."""
        self._matchers.pop(seq.seq_id, None)

    def accept(self, seq: Sequence, token_id: int) -> bool:
        """Advance the sequence's matcher; True when its grammar has ended (it took EOS).
        False for an unconstrained sequence."""
        matcher = self._matchers.get(seq.seq_id)
        if matcher is None:
            return False
        if not matcher.accept_token(token_id):
            # The bitmask allowed only what the matcher accepts: this is a bug, not input.
            raise RuntimeError(
                f"the grammar of sequence {seq.seq_id} rejected token {token_id}, "
                "which its allowed-token mask let through"
            )
        return matcher.is_terminated()

    def allowed_mask(
        self, seqs: SequenceOf[Sequence]
    ) -> torch.Tensor | None:  # [len(seqs), cdiv(vocab_size, 32)] int32 on CPU
        """Row i: the tokens seqs[i] may take next (all ones when unconstrained); None when
        no row is constrained. Valid until the next call (the buffer is reused)."""
        if not self._matchers:
            return None
        rows = [row for row, seq in enumerate(seqs) if seq.seq_id in self._matchers]
        if not rows:
            return None
        if len(seqs) > self._bitmask.shape[0]:
            self._bitmask = self._allocate(max(len(seqs), 2 * self._bitmask.shape[0]))
        bitmask = self._bitmask[: len(seqs)]
        bitmask.fill_(-1)
        matchers = [self._matchers[seqs[row].seq_id] for row in rows]
        self._batch.batch_fill_next_token_bitmask(matchers, bitmask, rows)
        for row in rows:
            seq = seqs[row]
            if seq.num_output_tokens < seq.params.min_tokens:
                self._keep_eos_out(bitmask[row])
        return bitmask

    def _keep_eos_out(self, words: torch.Tensor) -> None:
        """min_tokens: clear the EOS bits of one row, unless they are all it allows."""
        saved = words.clone()
        for token in self.eos_token_ids:
            words[token // 32] &= ~(1 << (token % 32))
        if not bool(words.any()):
            words.copy_(saved)  # the grammar is finished: EOS it is

    def _allocate(self, rows: int) -> torch.Tensor:
        shape = xgrammar.get_bitmask_shape(rows, self.vocab_size)
        return torch.full(shape, -1, dtype=torch.int32, pin_memory=self._pin_memory)


def choice_grammar(choices: SequenceOf[str]) -> str:
    """An EBNF grammar whose language is exactly `choices`."""
    return "root ::= " + " | ".join(_ebnf_string(choice) for choice in choices)


def structural_tag(value: dict[str, Any]) -> dict[str, Any]:
    """xgrammar's structural tag from either accepted shape (docs/api.md):
    `{"type": "structural_tag", "format": {...}}` (type optional), or the legacy
    `{"structures": [{"begin", "schema", "end"}], "triggers": [...]}`."""
    if "format" in value:
        return {"type": "structural_tag", **value}
    if "structures" in value:
        unknown = sorted(set(value) - {"type", "structures", "triggers"})
        if unknown:
            raise ValueError(f"unknown key {unknown[0]!r} next to structures")
        items = [xgrammar.StructuralTagItem(**item) for item in value["structures"]]
        tag = xgrammar.StructuralTag.from_legacy_structural_tag(items, value.get("triggers", []))
        return tag.model_dump(mode="json")
    raise ValueError('needs "format" (a structural tag format) or "structures" and "triggers"')


def _ebnf_string(text: str) -> str:
    """A quoted EBNF string literal: quotes and backslashes escaped, control characters as
    \\uXXXX, everything else as it is (the grammar reads UTF-8)."""
    out = []
    for char in text:
        if char in '"\\':
            out.append("\\" + char)
        elif ord(char) < 0x20 or ord(char) == 0x7F:
            out.append(f"\\u{ord(char):04x}")
        else:
            out.append(char)
    return '"' + "".join(out) + '"'


def _canonical(kind: str, value: Any) -> str:
    """The cache key: equal specs, however spelled (key order, a schema as text), are equal."""
    if kind == "json" and isinstance(value, str):
        with contextlib.suppress(json.JSONDecodeError):  # compiling it reports the error
            value = json.loads(value)
    return json.dumps({kind: value}, sort_keys=True, separators=(",", ":"))


def _message(error: Exception) -> str:
    """The first line of xgrammar's error without its source location; pydantic's (a
    legacy structural tag) as `where: what` pairs."""
    if callable(getattr(error, "errors", None)):  # pydantic.ValidationError
        return "; ".join(
            f"{'.'.join(str(part) for part in item['loc'])}: {item['msg']}"
            for item in error.errors()[:3]
        )
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return _CHECK.sub("", _LOCATION.sub("", text))


def _lower_priority() -> None:
    """Compile threads yield the CPU to the engine thread (Linux: a nice value per thread)."""
    # Elsewhere (not Linux, or not allowed) they compile at normal priority.
    with contextlib.suppress(AttributeError, OSError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), COMPILE_NICENESS)
