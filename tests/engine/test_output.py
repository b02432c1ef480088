"""SequenceOutputTracker: token ids in, text to send and finish reason out (default model's tokenizer)."""

from __future__ import annotations

import pytest

from engine.output import SequenceOutputTracker
from engine.sampling_params import SamplingParams
from engine.tokenizer import Tokenizer
from tests.engine.test_tokenizer import build_smollm2_tokenizer_dir


@pytest.fixture(scope="session")
def smollm2(tmp_path_factory: pytest.TempPathFactory) -> Tokenizer:
    return Tokenizer(build_smollm2_tokenizer_dir(tmp_path_factory.getbasetemp()))


def _generate(
    tokenizer: Tokenizer, output_ids: list[int], params: SamplingParams, max_tokens: int = 1000
) -> tuple[SequenceOutputTracker, list[str], str | None]:
    prompt_ids = tokenizer.encode_chat([{"role": "user", "content": "Talk."}])
    tracker = SequenceOutputTracker(tokenizer, prompt_ids, params, max_tokens)
    sent = []
    for token_id in output_ids:
        text, finish_reason = tracker.on_token(token_id)  # what the engine loop does
        sent.append(text)
        if finish_reason is not None:
            return tracker, sent, finish_reason
    return tracker, sent, None


def test_stop_string_across_tokens_of_a_real_tokenizer(smollm2: Tokenizer) -> None:
    text = "Sure! 日本語 😀 here.\n\nUser: next question"
    output_ids = smollm2.encode(text, add_special_tokens=False)
    tracker, sent, reason = _generate(smollm2, output_ids, SamplingParams(stop=("\n\nUser:",)))
    assert reason == "stop"
    assert "".join(sent) == "Sure! 日本語 😀 here."
    assert tracker.finish_reason == "stop"
    assert tracker.num_output_tokens < len(output_ids)


@pytest.mark.parametrize("skip_special_tokens", [True, False])
def test_eos_text_is_never_sent(smollm2: Tokenizer, skip_special_tokens: bool) -> None:
    output_ids = smollm2.encode("Hello there.", add_special_tokens=False) + [
        smollm2.eos_token_ids[0]
    ]
    params = SamplingParams(skip_special_tokens=skip_special_tokens)
    tracker, sent, reason = _generate(smollm2, output_ids, params)
    assert (reason, "".join(sent)) == ("stop", "Hello there.")
    assert tracker.num_output_tokens == len(output_ids)


def test_ignore_eos_keeps_going(smollm2: Tokenizer) -> None:
    output_ids = [smollm2.eos_token_ids[0], *smollm2.encode("ok", add_special_tokens=False)]
    params = SamplingParams(ignore_eos=True, skip_special_tokens=False)
    _, sent, reason = _generate(smollm2, output_ids, params, max_tokens=len(output_ids))
    assert (reason, "".join(sent)) == ("length", "<|im_end|>ok")


def test_length_finish_flushes_an_incomplete_character(smollm2: Tokenizer) -> None:
    output_ids = smollm2.encode("ab 😀", add_special_tokens=False)
    max_tokens = len(output_ids) - 1  # cut inside the emoji's bytes
    _, sent, reason = _generate(smollm2, output_ids, SamplingParams(), max_tokens)
    assert reason == "length"
    assert "".join(sent) == smollm2.decode(output_ids[:max_tokens])
    assert sent[-1].endswith("\ufffd")


def test_flush_after_engine_side_finish(smollm2: Tokenizer) -> None:
    output_ids = smollm2.encode("say </s", add_special_tokens=False)
    tracker, sent, reason = _generate(smollm2, output_ids, SamplingParams(stop=("</stop>",)))
    assert reason is None and "".join(sent) == "say "
    assert tracker.flush() == "</s"
