"""The compiled decode step (engine/decode_graph.py) against the eager forward.

Every architecture's compiled decode is checked against transformers in
test_architectures.py (test_compiled_decode_equals_transformers); here: which steps the
graph takes and how it pads them, its scratch block, the batch sizes it covers without
recompiling, its errors, and the default model as it is served (bf16, quantized).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer

from engine.attention import build_attention_metadata
from engine.config import ConfigError, EngineConfig, SchedulerConfig
from engine.model_runner import ModelRunner
from tests.engine.tiny_models import BlockPool, engine_config, save_tiny_model

# Sequences of these lengths decode together; 3 is shorter than a block, so a step of it
# alone has a one-block table.
LENGTHS = [3, 9, 17, 30, 5]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("tiny")
    save_tiny_model(directory)
    return directory


@pytest.fixture(scope="module")
def runners(tiny_dir: Path) -> tuple[ModelRunner, ModelRunner]:
    """(compiled, eager) runners of the same tiny fp32 model."""
    compiled = ModelRunner(engine_config(tiny_dir, compile_decode="on"))
    return compiled, ModelRunner(engine_config(tiny_dir))


def decode_logits(
    runner: ModelRunner, starts: list[int], blocks: list[list[int]], tokens: list[int]
) -> torch.Tensor:
    """One decode step of the sequences at `starts` through `runner.execute`'s own path
    (the graph when it takes the step, with its padding); their next-token logits."""
    graph = runner.decode_graph
    padding = graph.fit(starts, [1] * len(starts)) if graph is not None else None
    rows = list(zip(starts, blocks, tokens, strict=True))
    rows += [(start, ids, 0) for start, ids in padding or ()]
    with torch.inference_mode():  # as in ModelRunner.execute: the graph's inputs are inference tensors
        metadata = build_attention_metadata(
            [r[0] for r in rows], [1] * len(rows), [r[1] for r in rows],
            [True] * len(starts) + [False] * (len(rows) - len(starts)), runner.block_size,
        )  # fmt: skip
        ids = torch.tensor([r[2] for r in rows])
        if padding is not None:
            hidden = graph(ids, metadata)
        else:
            hidden = runner.model(ids, metadata, runner.kv_caches, runner.ops)
        return runner.model.compute_logits(hidden[metadata.logits_indices])


def prefill(runner: ModelRunner, prompts: list[list[int]], blocks: list[list[int]]) -> None:
    with torch.inference_mode():
        for prompt, ids in zip(prompts, blocks, strict=True):
            metadata = build_attention_metadata([0], [len(prompt)], [ids], [True], runner.block_size)
            runner.model(torch.tensor(prompt), metadata, runner.kv_caches, runner.ops)


def decode_alike(
    compiled: ModelRunner,
    eager: ModelRunner,
    batches: tuple[list[int], ...],
    positions: list[int],
    blocks: list[list[int]],
) -> None:
    """Decode each batch (indexes of sequences at `positions`, in `blocks`) through both
    runners: their logits equal at 1e-4; each decoded sequence moves on a position."""
    for batch in batches:
        starts = [positions[i] for i in batch]
        tokens = [(7 * positions[i]) % 120 + 3 for i in batch]
        theirs = decode_logits(eager, starts, [blocks[i] for i in batch], tokens)
        ours = decode_logits(compiled, starts, [blocks[i] for i in batch], tokens)
        torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=1e-4)
        for i in batch:
            positions[i] += 1


def test_every_batch_and_context_size_equals_eager(runners: tuple[ModelRunner, ModelRunner]) -> None:
    """Batches of 1 to 5 sequences (max_num_seqs 4 + the padding row's room), contexts from
    under one block to several, growing across block boundaries: the compiled step's
    logits equal the eager forward's, and no step recompiles."""
    compiled, eager = runners
    graph = compiled.decode_graph
    assert graph is not None and graph.max_rows == 5  # max_num_seqs + 1, nothing quantized
    free = BlockPool(compiled.num_blocks).free  # shuffled: tables out of order
    blocks = [free[10 * i : 10 * i + 10] for i in range(len(LENGTHS))]
    generator = torch.Generator().manual_seed(0)
    prompts = [torch.randint(3, 128, (n,), generator=generator).tolist() for n in LENGTHS]
    for runner in runners:
        prefill(runner, prompts, blocks)
    steps_before = graph.steps
    batches = ([0], [1], [0, 1], [2, 0, 4], [3, 1, 2, 0], [4], [0, 1, 2, 3], [2]) * 2
    decode_alike(compiled, eager, batches, list(LENGTHS), blocks)
    assert graph.steps - steps_before == 16 and graph.misses == 0


def test_a_graph_per_band_where_quantized_layers_change_path(tiny_dir: Path) -> None:
    """int4 layers whose matmuls take the quantized weight up to 2 rows: a graph for 2
    rows and one for 3 to 5 (dense matmuls), each equal to the eager forward of the same
    quantized model at every batch size, none recompiling."""
    settings = {"quantization": "int4", "quantized_max_rows": 2}
    compiled = ModelRunner(engine_config(tiny_dir, compile_decode="on", **settings))
    eager = ModelRunner(engine_config(tiny_dir, **settings))
    graph = compiled.decode_graph
    assert graph is not None and graph.bands == [(2, 2), (3, 5)] and graph.max_rows == 5
    blocks = [list(range(10 * i, 10 * i + 10)) for i in range(4)]
    prompts = [[5 + i] * n for i, n in enumerate(LENGTHS[1:])]  # two blocks or more each
    for runner in (compiled, eager):
        prefill(runner, prompts, blocks)
    steps_before = graph.steps
    decode_alike(compiled, eager, ([0], [0, 1], [0, 1, 2], [3, 2, 1, 0], [1, 3]), list(LENGTHS[1:]), blocks)
    assert graph.steps - steps_before == 5 and graph.misses == 0


def test_fit_pads_short_steps_and_leaves_prefills_and_big_batches(
    runners: tuple[ModelRunner, ModelRunner],
) -> None:
    graph = runners[0].decode_graph
    assert graph is not None
    block_size, scratch = runners[0].block_size, runners[0].num_blocks
    padding = [(block_size, [scratch, scratch])]
    assert graph.fit([9], [1]) == []  # one sequence: the single-stream graph
    assert graph.fit([1], [1]) == padding  # one block: the rows graph, with a padding row
    assert graph.fit([1, 2], [1, 1]) == padding  # two, but a one-block table
    assert graph.fit([1, 9], [1, 1]) == []
    assert graph.fit([9, 9, 9, 9], [1, 1, 1, 1]) == []
    assert graph.fit([9, 0], [1, 5]) is None  # a prefill chunk in the step
    assert graph.fit([9] * 6, [1] * 6) is None  # more rows than the graph takes
    assert graph.fit([], []) is None


def test_scratch_block_is_the_graphs_own(runners: tuple[ModelRunner, ModelRunner]) -> None:
    """The compiled runner's caches hold one block more than the block manager is given."""
    compiled, eager = runners
    assert compiled.num_blocks == eager.num_blocks
    assert compiled.kv_caches[0][0].shape[0] == compiled.num_blocks + 1
    assert eager.kv_caches[0][0].shape[0] == eager.num_blocks
    assert eager.decode_graph is None


def test_compiles_batches_of_more_rows_than_a_block_holds(tiny_dir: Path) -> None:
    """The warm-up's largest batch, max_num_seqs + 1 = 41 rows, more than the positions of
    its 3-block tables: every row still sits in the scratch block's tables."""
    scheduler = SchedulerConfig(max_num_seqs=40, max_model_len=128)
    runner = ModelRunner(engine_config(tiny_dir, compile_decode="on", scheduler=scheduler))
    assert runner.decode_graph is not None and runner.decode_graph.max_rows == 41


def test_compile_decode_values_and_where_it_cannot_be(tiny_dir: Path) -> None:
    with pytest.raises(ConfigError, match="compile_decode must be auto, on or off"):
        engine_config(tiny_dir, compile_decode="yes")
    with pytest.raises(ConfigError, match="compile_decode=on: the Triton kernel backend"):
        ModelRunner(engine_config(tiny_dir, compile_decode="on", use_kernels="on"))
    assert ModelRunner(engine_config(tiny_dir, compile_decode="auto", use_kernels="on")).decode_graph is None
    parameters = {"compile_decode": "off", "kv_num_blocks": "8"}
    assert EngineConfig.from_parameters(tiny_dir, parameters).compile_decode == "off"


def test_default_model_as_served(default_weights_dir: Path) -> None:
    """The default package as `tritium serve` runs it on this CPU (bf16 where native, its
    GGUF's int4 weights, our quantized kernel where the CPU has VNNI): compiled and eager
    decode steps pick the same tokens, their log-probabilities within rounding, one and
    three sequences at a time."""
    parameters = {"max_model_len": "256", "max_num_seqs": "4", "kv_num_blocks": "48",
                  "dtype": "bfloat16", "quantization": "auto"}  # fmt: skip
    compiled = ModelRunner(EngineConfig.from_parameters(default_weights_dir, {**parameters, "compile_decode": "on"}))
    eager = ModelRunner(EngineConfig.from_parameters(default_weights_dir, {**parameters, "compile_decode": "off"}))
    graph = compiled.decode_graph
    assert graph is not None and graph.max_rows == 5
    tokenizer = AutoTokenizer.from_pretrained(default_weights_dir)
    texts = ["The capital of France is Paris. The capital of Italy is",
             "def fibonacci(n):",
             "Once upon a time, in a small village by the sea, there lived an old fisherman "
             "who every morning walked down to the harbour and"]  # fmt: skip
    prompts = [tokenizer(text)["input_ids"] for text in texts]
    blocks = [list(range(16 * i, 16 * i + 16))[::-1] for i in range(3)]
    for runner in (compiled, eager):
        prefill(runner, prompts, blocks)
    positions = [len(p) for p in prompts]
    tokens = [p[-1] for p in prompts]
    for batch in ([0], [0, 1, 2], [2], [1, 0]) * 3:
        starts = [positions[i] for i in batch]
        inputs = [tokens[i] for i in batch]
        ours = decode_logits(compiled, starts, [blocks[i] for i in batch], inputs)
        theirs = decode_logits(eager, starts, [blocks[i] for i in batch], inputs)
        # bf16 logits of ~±20: the eager SDPA and the graph's float32 attention round apart,
        # so the two may only pick different tokens at a near-tie of the eager logits.
        # Log-probabilities (a shift of all logits samples alike): our CPU kernel's int8
        # activations round the two paths' slightly different inputs apart too.
        assert (ours.float().log_softmax(-1) - theirs.float().log_softmax(-1)).abs().max().item() < 1.5
        for row, (mine, eager_pick) in enumerate(zip(ours.argmax(-1), theirs.argmax(-1), strict=True)):
            assert theirs[row, eager_pick] - theirs[row, mine] < 0.25
        for row, i in enumerate(batch):
            positions[i] += 1
            tokens[i] = int(theirs[row].argmax())
    assert graph.misses == 0
