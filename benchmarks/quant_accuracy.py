"""What serving a GGUF's quantized weights as they are costs in accuracy, against what
llama.cpp's own run of the same file costs.

    .venv/bin/python -m benchmarks.quant_accuracy [--chunks 4] [--ctx 512] [--llama-cpp]

The reference is transformers in float32 on the GGUF's weights (its own GGUF reader
dequantizes them exactly). A fixed text (`benchmarks/data/accuracy_text.md`) is cut into
chunks of `--ctx` tokens; each chunk's first half is a prefill and each token of the
second half a decode step, as serving runs them (a decode step of one sequence takes the
quantized weights). Over the second halves' positions it reports, for each engine setting,
the mean KL divergence from the reference's next-token distribution, how often the top
token agrees, and the perplexity of the text:

- `quantized`: the engine as it serves the default model (`quantization: auto`: the GGUF's
  Q4_1 layers and Q8_0 LM head, bf16 activations, our CPU kernel where the CPU has AVX-512
  VNNI: activations quantized to int8 per 32 columns, as llama.cpp does);
- `quantized, torch's kernel`: the same with torch's weight-only kernels (float products);
- `dense bf16`: the same weights dequantized to bf16 (`quantization: none`);
  `quantized fp32, torch's kernel`: transformers' own arithmetic on the GGUF's values;
  `dense fp32`: the dense package in float32.

With `--llama-cpp`, llama.cpp's own `llama-perplexity` (built by `python -m benchmarks.peer
build`) measures what its run of the Q4_1 file costs against its run of the same weights
dequantized to F32 (a GGUF this script writes with `gguf`), over the same text, context and
scored halves: the "what llama.cpp's format itself costs" line that the quantized engine
is compared with.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from engine.config import EngineConfig
from engine.model_runner import ModelRunner
from engine.package import default_gguf_path

TEXT = Path(__file__).resolve().parent / "data" / "accuracy_text.md"
SETTINGS = {  # name -> config.pbtxt parameters over the common ones
    "quantized": {"dtype": "bfloat16"},
    "quantized, torch's kernel": {"dtype": "bfloat16", "quantized_cpu_kernel": "torch"},
    "dense bf16": {"dtype": "bfloat16", "quantization": "none"},
    "quantized fp32, torch's kernel": {"dtype": "float32", "quantization": "gguf", "quantized_cpu_kernel": "torch"},
    "dense fp32": {"dtype": "float32", "quantization": "none"},
}


def transformers_on_gguf(gguf_path: Path) -> tuple[torch.nn.Module, dict[str, torch.Tensor]]:
    """transformers' float32 model of a GGUF, and the tensors its GGUF reader dequantized."""
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    config = AutoConfig.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name, local_files_only=True)
    with torch.device("meta"):
        skeleton = AutoModelForCausalLM.from_config(config)
    tensors = load_gguf_checkpoint(str(gguf_path), return_tensors=True, model_to_load=skeleton)["tensors"]
    model = AutoModelForCausalLM.from_config(config).float().eval()
    model.load_state_dict(tensors, strict=False)  # rotary buffers are computed, not stored
    if config.tie_word_embeddings:
        model.tie_weights()
    return model, tensors


def engine_logits(runner: ModelRunner, token_ids: list[int], prefill_len: int) -> torch.Tensor:
    """[len(token_ids) - prefill_len, vocab] float32: the decode steps' next-token logits
    after a prefill of `prefill_len` tokens (one sequence, as `LLMEngine` would run it)."""
    from engine.attention import build_attention_metadata

    blocks = [list(range(-(-len(token_ids) // runner.block_size)))]
    rows = []
    with torch.inference_mode():
        steps = [(0, prefill_len)] + [(p, 1) for p in range(prefill_len, len(token_ids))]
        for start, length in steps:
            metadata = build_attention_metadata([start], [length], blocks, [True], runner.block_size)
            hidden = runner.model(torch.tensor(token_ids[start : start + length]), metadata, runner.kv_caches, runner.ops)
            rows.append(runner.model.compute_logits(hidden[-1:]))
    return torch.cat(rows)[:-1].float()  # row i predicts token prefill_len + i


def compare(logits: torch.Tensor, reference: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
    ours, theirs = logits.log_softmax(-1), reference.log_softmax(-1)
    kl = (theirs.exp() * (theirs - ours)).sum(-1)
    return {
        "mean_kl": kl.mean().item(),
        "p99_kl": kl.quantile(0.99).item(),
        "top1_agreement": (ours.argmax(-1) == theirs.argmax(-1)).float().mean().item(),
        "perplexity": math.exp(-ours.gather(1, targets[:, None]).mean().item()),
    }


def dequantized_gguf(source: Path, target: Path) -> None:
    """`source` with every tensor dequantized to F32 (the same metadata): the weights the
    quantized file stands for, for llama.cpp's base run."""
    from gguf import GGUFReader, GGUFValueType, GGUFWriter, dequantize

    reader = GGUFReader(str(source))
    architecture = reader.fields["general.architecture"].contents()
    writer = GGUFWriter(str(target), architecture)
    for field in reader.fields.values():
        if field.name.startswith("GGUF.") or field.name in ("general.architecture", "general.file_type"):
            continue
        sub_type = field.types[1] if field.types[0] == GGUFValueType.ARRAY else None
        writer.add_key_value(field.name, field.contents(), field.types[0], sub_type)
    for tensor in reader.tensors:
        values = dequantize(tensor.data, tensor.tensor_type).astype(np.float32)
        writer.add_tensor(tensor.name, values.reshape([int(n) for n in reversed(tensor.shape)]))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def llama_cpp_kl(perplexity: Path, gguf_path: Path, text: Path, ctx: int, chunks: int, threads: int) -> dict[str, float]:
    """llama.cpp's mean KL divergence and top-token agreement of its Q4_1 run against its F32 run."""
    with tempfile.TemporaryDirectory() as scratch:
        f32, base = Path(scratch) / "f32.gguf", Path(scratch) / "base.kld"
        dequantized_gguf(gguf_path, f32)
        common = ["-f", str(text), "-c", str(ctx), "--chunks", str(chunks), "-t", str(threads), "--kl-divergence-base", str(base)]
        subprocess.run([str(perplexity), "-m", str(f32), *common], check=True, capture_output=True)
        run = subprocess.run([str(perplexity), "-m", str(gguf_path), *common, "--kl-divergence"],
                             check=True, capture_output=True, text=True)  # fmt: skip
    output = run.stdout + run.stderr
    mean_kl = re.search(r"Mean\s+KLD:\s+([0-9.]+)", output)
    same_top = re.search(r"Same top p:\s+([0-9.]+)", output)
    if mean_kl is None:
        raise RuntimeError(f"llama-perplexity printed no KLD:\n{output[-2000:]}")
    return {"mean_kl": float(mean_kl.group(1)), "top1_agreement": float(same_top.group(1)) / 100 if same_top else float("nan")}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--chunks", type=int, default=4)
    parser.add_argument("--ctx", type=int, default=512)
    parser.add_argument("--llama-cpp", action="store_true", help="also run llama.cpp's llama-perplexity")
    parser.add_argument("--output", type=Path, help="write the results as JSON")
    args = parser.parse_args(argv)

    from benchmarks.engine_offline import default_weights_dir
    from benchmarks.peer import DEFAULT_DEST

    gguf_path, weights_dir = default_gguf_path(), default_weights_dir()
    reference, _ = transformers_on_gguf(gguf_path)
    from transformers import AutoTokenizer

    tokens = AutoTokenizer.from_pretrained(str(weights_dir))(TEXT.read_text())["input_ids"]
    chunks = [tokens[i * args.ctx : (i + 1) * args.ctx] for i in range(min(args.chunks, len(tokens) // args.ctx))]
    half = args.ctx // 2
    with torch.no_grad():
        references = [reference(torch.tensor([c])).logits[0, half - 1 : -1].float() for c in chunks]
    targets = torch.cat([torch.tensor(c[half:]) for c in chunks])
    reference_logits = torch.cat(references)
    results: dict[str, dict[str, float]] = {
        "transformers fp32": compare(reference_logits, reference_logits, targets)
    }
    common = {"kv_block_size": "16", "kv_num_blocks": str(args.ctx // 16 + 1), "max_model_len": str(args.ctx)}
    for name, parameters in SETTINGS.items():
        runner = ModelRunner(EngineConfig.from_parameters(weights_dir, {**common, **parameters}))
        started = time.perf_counter()
        logits = torch.cat([engine_logits(runner, c, half) for c in chunks])
        results[name] = compare(logits, reference_logits, targets)
        print(f"{name}: {results[name]} ({time.perf_counter() - started:.0f} s)", flush=True)
    if args.llama_cpp:
        perplexity = DEFAULT_DEST / "llama-perplexity"
        results["llama.cpp Q4_1 vs its F32"] = llama_cpp_kl(
            perplexity, gguf_path, TEXT, args.ctx, len(chunks), torch.get_num_threads()
        )
        print(f"llama.cpp: {results['llama.cpp Q4_1 vs its F32']}", flush=True)
    print(f"{len(chunks)} chunks of {args.ctx} tokens, {len(targets)} scored positions")
    print("| setting | mean KL vs transformers fp32 | p99 KL | top-1 agreement | perplexity |")
    print("|---|---|---|---|---|")
    for name, row in results.items():
        cells = [f"{row.get(key, float('nan')):.4g}" for key in ("mean_kl", "p99_kl", "top1_agreement", "perplexity")]
        print(f"| {name} | " + " | ".join(cells) + " |")
    if args.output:
        args.output.write_text(json.dumps({"chunks": len(chunks), "ctx": args.ctx, "results": results}, indent=1))


if __name__ == "__main__":
    main()
