"""Incremental detokenization: streamed deltas concatenate to the whole decode.

Two tokenizers: the default model's byte-level BPE (SmolLM2), and a small
SentencePiece-style BPE with byte-fallback tokens (`<0xF0>`) and "▁" spaces, as in
Llama/Mistral, trained here in a fraction of a second.
"""

from __future__ import annotations

import json
import random
from typing import Any

import pytest

from engine.detokenizer import MAX_PENDING_TOKENS, IncrementalDetokenizer
from engine.tokenizer import Tokenizer
from tests.engine.test_tokenizer import build_smollm2_tokenizer_dir

TEXTS = [
    "Hello, world! How are you today?",
    "Emoji: 😀👍🏽 family 👩‍👩‍👧 flags 🇫🇷🇯🇵 done.",
    "日本語のテキストです。中文文本。한국어 텍스트.",
    "Mixed: naïve café — Ελληνικά, русский, العربية, हिन्दी, 世界 🌍!",
    "Accents: àéîõü ÀÉÎÕÜ ñ ç ß ø å æ œ ğ ş ı.",
    "def main():\n    x = {'a': 1}\n\tif x:\n        return  42  \n\n\n# end\n",
    "   leading spaces and trailing   ",
    "\U0001f9ea\U0001f52c mixed 🧪 with ascii 123 and \u00a0 nbsp",
]


@pytest.fixture(scope="session")
def smollm2(tmp_path_factory: pytest.TempPathFactory) -> Tokenizer:
    return Tokenizer(build_smollm2_tokenizer_dir(tmp_path_factory.getbasetemp()))


@pytest.fixture(scope="session")
def sentencepiece_style() -> Any:
    """A Llama-like tokenizer: "▁" for spaces, <0xNN> tokens for bytes outside the vocab."""
    from tokenizers import Tokenizer as RawTokenizer
    from tokenizers import decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    raw = RawTokenizer(models.BPE(unk_token="<unk>", byte_fallback=True))
    raw.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    raw.decoder = decoders.Sequence(
        [
            decoders.Replace("▁", " "),
            decoders.ByteFallback(),
            decoders.Fuse(),
            decoders.Strip(" ", 1, 0),
        ]
    )
    corpus = [
        "the quick brown fox jumps over the lazy dog",
        "hello world, this is a test of streaming text",
        "def main():\n    return 42\n",
    ]
    trainer = trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<unk>", "<s>", "</s>"], show_progress=False
    )
    raw.train_from_iterator(corpus * 10, trainer)
    data = json.loads(raw.to_str())
    for byte in range(256):  # the byte-fallback pieces, as ordinary (non-special) tokens
        data["model"]["vocab"].setdefault(f"<0x{byte:02X}>", len(data["model"]["vocab"]))
    raw = RawTokenizer.from_str(json.dumps(data))
    return PreTrainedTokenizerFast(
        tokenizer_object=raw, bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )


def _stream(
    tokenizer: Any, prompt_ids: list[int], output_ids: list[int], skip: bool = True
) -> list[str]:
    detokenizer = IncrementalDetokenizer(tokenizer, prompt_ids, skip_special_tokens=skip)
    deltas = [detokenizer.add(token_id) for token_id in output_ids]
    return [*deltas, detokenizer.flush()]


@pytest.mark.parametrize("text", TEXTS)
def test_byte_level_bpe_deltas_concatenate(smollm2: Tokenizer, text: str) -> None:
    hf = smollm2.hf
    output_ids = hf.encode(text, add_special_tokens=False)
    prompt_ids = smollm2.encode_chat([{"role": "user", "content": "Say something."}])
    deltas = _stream(smollm2, prompt_ids, output_ids)
    assert "".join(deltas) == hf.decode(output_ids, skip_special_tokens=True)
    assert not any("\ufffd" in delta for delta in deltas)
    assert deltas[-1] == ""  # valid text leaves nothing held back


@pytest.mark.parametrize("text", TEXTS)
def test_byte_fallback_without_prompt_equals_decode(sentencepiece_style: Any, text: str) -> None:
    output_ids = sentencepiece_style.encode(text, add_special_tokens=False)
    pieces = sentencepiece_style.convert_ids_to_tokens(output_ids)
    assert text.isascii() or any(piece.startswith("<0x") for piece in pieces)
    deltas = _stream(sentencepiece_style, [], output_ids)
    assert "".join(deltas) == sentencepiece_style.decode(output_ids)
    assert not any("\ufffd" in delta for delta in deltas)


@pytest.mark.parametrize("text", TEXTS)
def test_leading_space_kept_after_prompt(sentencepiece_style: Any, text: str) -> None:
    """With the prompt as context, "▁word" keeps its space: the text continues the prompt."""
    prompt_ids = sentencepiece_style.encode("the prompt:", add_special_tokens=False)
    output_ids = sentencepiece_style.encode(text, add_special_tokens=False)  # starts with "▁"
    whole = sentencepiece_style.decode(prompt_ids + output_ids)
    prompt_text = sentencepiece_style.decode(prompt_ids)
    deltas = _stream(sentencepiece_style, prompt_ids, output_ids)
    assert "".join(deltas) == whole[len(prompt_text) :]
    assert not any("\ufffd" in delta for delta in deltas)


def test_words_stream_with_their_spaces(sentencepiece_style: Any) -> None:
    prompt_ids = sentencepiece_style.encode("hello", add_special_tokens=False)
    output_ids = sentencepiece_style.encode("hello world fox", add_special_tokens=False)
    deltas = [d for d in _stream(sentencepiece_style, prompt_ids, output_ids) if d]
    assert "".join(deltas) == " hello world fox"  # the first output piece is "▁hello"


@pytest.mark.parametrize("skip", [True, False])
def test_special_tokens_follow_skip_flag(smollm2: Tokenizer, skip: bool) -> None:
    hf = smollm2.hf
    output_ids = hf.encode("Hi there<|im_end|>\n<|im_start|>user 😀", add_special_tokens=False)
    deltas = _stream(smollm2, [], output_ids, skip=skip)
    assert "".join(deltas) == hf.decode(output_ids, skip_special_tokens=skip)
    assert ("<|im_end|>" in "".join(deltas)) is not skip


def test_character_is_held_until_complete(sentencepiece_style: Any) -> None:
    output_ids = sentencepiece_style.encode("a😀", add_special_tokens=False)
    assert sentencepiece_style.convert_ids_to_tokens(output_ids)[1:] == [
        "<0xF0>",
        "<0x9F>",
        "<0x98>",
        "<0x80>",
    ]
    assert _stream(sentencepiece_style, [], output_ids) == ["a", "", "", "", "😀", ""]


def test_flush_returns_an_incomplete_character(sentencepiece_style: Any) -> None:
    output_ids = sentencepiece_style.encode("ab😀", add_special_tokens=False)[:-2]  # cut mid-emoji
    deltas = _stream(sentencepiece_style, [], output_ids)
    assert deltas[-1].endswith("\ufffd")
    assert "".join(deltas) == sentencepiece_style.decode(output_ids)


def test_invalid_bytes_do_not_stall_the_stream(sentencepiece_style: Any) -> None:
    continuation_byte = sentencepiece_style.convert_tokens_to_ids("<0x80>")
    detokenizer = IncrementalDetokenizer(sentencepiece_style, [], skip_special_tokens=True)
    deltas = [detokenizer.add(continuation_byte) for _ in range(3 * MAX_PENDING_TOKENS)]
    assert sum(1 for delta in deltas if delta) >= 2


class _CountingTokenizer:
    """Records how many ids each Python-side decode call gets; DecodeStream does the rest."""

    def __init__(self, hf: Any) -> None:
        self._hf = hf
        self.backend_tokenizer = hf.backend_tokenizer
        self.decode_lengths: list[int] = []

    def decode(self, token_ids: list[int], skip_special_tokens: bool = True) -> str:
        self.decode_lengths.append(len(token_ids))
        return self._hf.decode(token_ids, skip_special_tokens=skip_special_tokens)


def test_cost_per_token_is_bounded(smollm2: Tokenizer) -> None:
    """tokenizers' DecodeStream steps one token at a time; Python decodes nothing of valid
    text, and never more than the held-back tokens."""
    random.seed(0)
    words = " ".join(TEXTS).split(" ")
    text = " ".join(random.choice(words) for _ in range(2500))
    output_ids = smollm2.hf.encode(text, add_special_tokens=False)[:2000]
    assert len(output_ids) == 2000
    counting = _CountingTokenizer(smollm2.hf)
    prompt_ids = list(range(100, 400))
    deltas = _stream(counting, prompt_ids, output_ids)
    assert "".join(deltas) == smollm2.hf.decode(output_ids)
    assert max(counting.decode_lengths, default=0) <= MAX_PENDING_TOKENS
