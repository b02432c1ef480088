"""Which grammar library the engine uses: xgrammar against llguidance, on this machine.

    .venv/bin/python -m benchmarks.grammar_libraries [--weights-dir DIR] [--repeats 5]

Per library, with the default model's tokenizer (vocab 49,152), JSON in the engine's style
(one line, ", " and ": "):
  - compile: a mid-size JSON schema (`MID_SCHEMA`: nested objects, arrays, enums,
    patterns, bounds), fresh each time (no cache); the median of `--repeats`;
  - fill: the allowed-token bitmask of 16 sequences, every step, on one thread (as the
    engine fills it), while they walk
      instance: a valid instance of the schema in its canonical tokens, the 16 staggered
        a few tokens apart (so the batch holds keys, strings, numbers and enums at once);
      model: the default model's own 16 outputs under the schema at temperature 1 (seeds
        0-15, bf16, recorded through the engine), which is what a constrained batch
        really walks: a small model writes odd tokens inside strings, where masks cost
        the most; a sequence leaves the batch at its end;
      list / bounded list: a list of 70 small objects (`benchmarks.structured_outputs.
        long_schema`, the step benchmark's), its name strings free or at most 16 long.
The tokenizer's conversion (once per model) is reported too. llguidance is only the
`bench` extra's (the engine does not use it); without it, its row says so.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

NUM_SEQS = 16

MID_SCHEMA = {
    "type": "object",
    "properties": {
        "id": {"type": "integer", "minimum": 1},
        "name": {"type": "string", "minLength": 1, "maxLength": 40},
        "email": {"type": "string", "pattern": "^[a-z0-9.]+@[a-z0-9]+\\.[a-z]{2,4}$"},
        "age": {"type": "integer", "minimum": 0, "maximum": 150},
        "active": {"type": "boolean"},
        "role": {"enum": ["admin", "editor", "viewer"]},
        "score": {"type": "number"},
        "tags": {"type": "array", "items": {"type": "string"}, "maxItems": 5},
        "address": {
            "type": "object",
            "properties": {
                "street": {"type": "string"},
                "city": {"type": "string"},
                "zip": {"type": "string", "pattern": "^[0-9]{5}$"},
                "country": {"enum": ["FR", "DE", "US", "JP"]},
            },
            "required": ["street", "city", "country"],
        },
        "orders": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "sku": {"type": "string"},
                    "quantity": {"type": "integer", "minimum": 1},
                    "price": {"type": "number", "minimum": 0},
                    "status": {"enum": ["new", "paid", "shipped"]},
                },
                "required": ["sku", "quantity", "status"],
            },
        },
        "notes": {"type": ["string", "null"]},
    },
    "required": ["id", "name", "email", "role", "address", "orders"],
}

MID_INSTANCE = {
    "id": 42,
    "name": "Ada Lovelace",
    "email": "ada@example.com",
    "age": 36,
    "active": True,
    "role": "editor",
    "score": 97.5,
    "tags": ["math", "engines"],
    "address": {"street": "12 St James's Square", "city": "London", "zip": "10001", "country": "US"},
    "orders": [
        {"sku": "AE-1843", "quantity": 2, "price": 19.99, "status": "paid"},
        {"sku": "NOTE-G", "quantity": 1, "status": "shipped"},
    ],
    "notes": None,
}


def timed(function: Callable[[], Any], repeats: int) -> tuple[float, Any]:
    """Median seconds of `repeats` calls, and the last call's result."""
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = function()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


# A walk: per sequence, the tokens fed before timing starts and the tokens walked after.
Walk = list[tuple[list[int], list[int]]]


def instance_walk(token_ids: list[int]) -> Walk:
    return [(token_ids[: index * 3], token_ids[index * 3 :]) for index in range(NUM_SEQS)]


def model_walk(weights_dir: Path) -> Walk:
    """The default model's outputs under MID_SCHEMA, temperature 1, seeds 0..15 (EOS left out)."""
    from engine.api import GenerationRequest
    from engine.config import EngineConfig
    from engine.llm_engine import LLMEngine
    from engine.sampling_params import SamplingParams

    parameters = {"max_num_seqs": str(NUM_SEQS), "max_model_len": "1024",
                  "max_num_batched_tokens": "1024", "kv_cache_memory_mb": "256", "dtype": "bfloat16"}  # fmt: skip
    engine = LLMEngine(EngineConfig.from_parameters(weights_dir, parameters))
    for seed in range(NUM_SEQS):
        params = SamplingParams(temperature=1.0, seed=seed, max_tokens=300, logprobs=True,
                                structured_outputs={"json": MID_SCHEMA})  # fmt: skip
        prompt = f"Describe customer number {seed + 1} of a web shop as JSON."
        engine.add_request(seed, engine.prepare(GenerationRequest(params, messages=[{"role": "user", "content": prompt}])))  # fmt: skip
    walks: dict[int, list[int]] = {}
    while engine.has_unfinished():
        for key, output in engine.step():
            if output.finished:
                walks[key] = output.choices[0].logprobs.token_ids
    eos = set(engine.tokenizer.eos_token_ids)
    return [([], [t for t in walks[key] if t not in eos]) for key in sorted(walks)]


class XGrammar:
    name = "xgrammar 0.2.8"

    def __init__(self, hf_tokenizer: Any, vocab_size: int) -> None:
        import xgrammar

        self.xgrammar = xgrammar
        self.info = xgrammar.TokenizerInfo.from_huggingface(hf_tokenizer, vocab_size=vocab_size)
        self.batch = xgrammar.BatchGrammarMatcher(max_threads=1)  # as engine.structured

    def compile(self, schema: str) -> Any:
        compiler = self.xgrammar.GrammarCompiler(self.info, max_threads=1, cache_enabled=False)
        return compiler.compile_json_schema(schema, any_whitespace=False)

    def matcher(self, grammar: Any) -> Any:
        return self.xgrammar.GrammarMatcher(grammar)

    def fill(self, matchers: list[Any], rows: list[int], bitmask: torch.Tensor) -> None:
        self.batch.batch_fill_next_token_bitmask(matchers, bitmask, rows)

    def accept(self, matcher: Any, token: int) -> bool:
        return matcher.accept_token(token)


class LLGuidance:
    name = "llguidance 1.9.1"

    def __init__(self, hf_tokenizer: Any, vocab_size: int) -> None:
        import llguidance
        import llguidance.hf

        self.llguidance = llguidance
        self.tokenizer = llguidance.hf.from_tokenizer(hf_tokenizer, n_vocab=vocab_size)

    def compile(self, schema: str) -> Any:
        options = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}
        grammar = self.llguidance.LLMatcher.grammar_from_json_schema(schema, overrides=options)
        matcher = self.llguidance.LLMatcher(self.tokenizer, grammar)  # builds the parser
        assert not matcher.is_error(), matcher.get_error()
        return grammar

    def matcher(self, grammar: Any) -> Any:
        return self.llguidance.LLMatcher(self.tokenizer, grammar, log_level=0)

    def fill(self, matchers: list[Any], rows: list[int], bitmask: torch.Tensor) -> None:
        row_bytes = bitmask.shape[1] * 4
        for matcher, row in zip(matchers, rows, strict=True):
            matcher.unsafe_compute_mask_ptr(bitmask[row].data_ptr(), row_bytes)

    def accept(self, matcher: Any, token: int) -> bool:
        # False also when the parser gives up (its limits, e.g. "ParserTooComplex").
        return matcher.consume_token(token)


def fill_times(library: Any, grammar: Any, walk: Walk, vocab_size: int) -> tuple[list[float], int]:
    """Seconds of each step's fill for the sequences still walking, and how many sequences
    the library refused a token of (they leave the walk there)."""
    matchers = [library.matcher(grammar) for _ in walk]
    for matcher, (prefix, _rest) in zip(matchers, walk, strict=True):
        for token in prefix:
            assert library.accept(matcher, token)
    bitmask = torch.full((len(walk), (vocab_size + 31) // 32), -1, dtype=torch.int32)
    times: list[float] = []
    refused: set[int] = set()
    for step in range(max(len(rest) for _prefix, rest in walk)):
        rows = [r for r, (_prefix, rest) in enumerate(walk) if step < len(rest) and r not in refused]
        if not rows:
            break
        start = time.perf_counter()
        library.fill([matchers[row] for row in rows], rows, bitmask)
        times.append(time.perf_counter() - start)
        for row in rows:
            if not library.accept(matchers[row], walk[row][1][step]):
                refused.add(row)
    return times, len(refused)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--weights-dir", type=Path, default=None)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    from transformers import AutoTokenizer

    from benchmarks.engine_offline import default_weights_dir
    from benchmarks.structured_outputs import long_schema

    weights_dir = args.weights_dir or default_weights_dir()
    hf_tokenizer = AutoTokenizer.from_pretrained(str(weights_dir), local_files_only=True)
    vocab_size = json.loads((weights_dir / "config.json").read_text())["vocab_size"]
    def tokens(value: Any) -> list[int]:  # ", " and ": ": the engine's style
        return hf_tokenizer.encode(json.dumps(value, ensure_ascii=False), add_special_tokens=False)

    names = ["apple", "Milk 2L", "bread, sliced", "Ünïcode ☕", "x" * 16]
    items = {"items": [{"id": i, "name": names[i % 5], "ok": i % 3 == 0} for i in range(70)]}
    walks = {  # name -> (schema, walk)
        "instance": (MID_SCHEMA, instance_walk(tokens(MID_INSTANCE))),
        "model": (MID_SCHEMA, model_walk(weights_dir)),
        "list": (long_schema(None), instance_walk(tokens(items))),
        "bounded list": (long_schema(16), instance_walk(tokens(items))),
    }
    steps = {name: sum(len(rest) for _prefix, rest in walk) for name, (_, walk) in walks.items()}
    print(f"torch threads {torch.get_num_threads()}; {NUM_SEQS} sequences; vocab {vocab_size}; "
          f"tokens walked: {steps}")  # fmt: skip
    print("| library | tokenizer ms | compile ms | fill ms, mean / p99: " + " | ".join(walks) + " |")
    print("|---|---|---|" + "---|" * len(walks))
    schema = json.dumps(MID_SCHEMA)
    for library_class in (XGrammar, LLGuidance):
        try:
            tokenizer_s, library = timed(lambda c=library_class: c(hf_tokenizer, vocab_size), 1)
        except ModuleNotFoundError as error:
            print(f"| {library_class.name} | not installed ({error.name}) | | | |")
            continue
        compile_s, grammar = timed(lambda lib=library: lib.compile(schema), args.repeats)
        cells = [library.name, f"{tokenizer_s * 1e3:.0f}", f"{compile_s * 1e3:.1f}"]
        for walk_schema, walk in walks.values():
            walk_grammar = (
                grammar if walk_schema is MID_SCHEMA else library.compile(json.dumps(walk_schema))
            )
            times, refused = fill_times(library, walk_grammar, walk, vocab_size)
            times.sort()
            p99 = times[min(len(times) - 1, round(0.99 * (len(times) - 1)))]
            cell = f"{statistics.mean(times) * 1e3:.2f} / {p99 * 1e3:.2f}"
            cells.append(cell + (f" ({refused} of {len(walk)} refused a valid token)" if refused else ""))
        print("| " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
