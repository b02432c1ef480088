"""Stop decisions and held-back text; pure Python, no tokenizer needed.

Tokens are (id, text) pairs; id 0 is EOS, ids >= 100 are ordinary text tokens.
"""

from __future__ import annotations

import random

import pytest

from engine.sampling_params import SamplingParams
from engine.stop import StopChecker, StopResult

EOS = 0


def _run(
    pieces: list[str], max_tokens: int = 100, eos_at: int | None = None, **params: object
) -> tuple[list[str], str | None, int]:
    """Feed text pieces (and EOS at index `eos_at`); return sent texts, reason, tokens used."""
    checker = StopChecker(SamplingParams(**params), eos_token_ids=[EOS], max_tokens=max_tokens)
    sent: list[str] = []
    for index, piece in enumerate(pieces):
        token_id = EOS if index == eos_at else 100 + index
        result = checker.check(token_id, piece)
        sent.append(result.text)
        if result.finish_reason is not None:
            return sent, result.finish_reason, checker.num_output_tokens
    sent.append(checker.flush())
    return sent, None, checker.num_output_tokens


def test_no_stop_sends_everything_at_once() -> None:
    sent, reason, _ = _run(["Hello", " world", "!"])
    assert sent == ["Hello", " world", "!", ""]
    assert reason is None


def test_stop_string_split_across_tokens() -> None:
    sent, reason, used = _run(["Hello", " wor", "ld. ", "END", "ING more"], stop=("world. END",))
    assert reason == "stop"
    assert "".join(sent) == "Hello "
    assert used == 4
    assert sent[1] == " "  # "wor" could begin the stop string: held back


def test_held_text_released_when_it_stops_matching() -> None:
    sent, reason, _ = _run(["a", "<", "/", "b>", "c"], stop=("</s>",))
    assert sent == ["a", "", "", "</b>", "c", ""]
    assert reason is None


def test_earliest_of_several_stop_strings_wins() -> None:
    sent, reason, _ = _run(["one two three", " four"], stop=("three", "two", "one two three four"))
    assert reason == "stop"
    assert "".join(sent) == "one "


def test_stop_string_inside_one_token() -> None:
    sent, reason, _ = _run(["abc\n\nUser: hi"], stop=("\n\nUser:",))
    assert (sent, reason) == (["abc"], "stop")


def test_stop_at_the_very_first_token() -> None:
    assert _run(["STOP here"], stop=("STOP",))[:2] == ([""], "stop")
    assert _run(["x"], eos_at=0)[:2] == ([""], "stop")


def test_eos_stops_and_its_text_is_not_sent() -> None:
    sent, reason, used = _run(["Hi", "</s>"], eos_at=1)
    assert (sent, reason, used) == (["Hi", ""], "stop", 2)


def test_eos_sends_held_back_text() -> None:
    sent, reason, _ = _run(["Hi <", "|"], eos_at=1, stop=("<|user|>",))
    assert sent == ["Hi ", "<"]
    assert reason == "stop"


def test_ignore_eos_continues_until_length() -> None:
    sent, reason, used = _run(["a", "<eos>", "b"], max_tokens=3, eos_at=1, ignore_eos=True)
    assert (sent, reason, used) == (["a", "<eos>", "b"], "length", 3)


def test_stop_token_ids_stop_even_with_ignore_eos() -> None:
    checker = StopChecker(
        SamplingParams(stop_token_ids=(7,), ignore_eos=True), eos_token_ids=[EOS], max_tokens=10
    )
    assert checker.check(EOS, "e") == StopResult("e", None)
    assert checker.check(7, "\n") == StopResult("", "stop")
    assert checker.finish_reason == "stop"


def test_max_tokens_finishes_with_length_and_flushes_held_text() -> None:
    sent, reason, used = _run(["a", "b", "S", "T"], max_tokens=3, stop=("STOP",))
    assert (sent, reason, used) == (["a", "b", "S"], "length", 3)


def test_min_tokens_delays_every_kind_of_stop() -> None:
    # EOS before min_tokens is an ordinary token (the sampler is meant to avoid it).
    sent, reason, used = _run(["a", "</s>", "b", "c"], min_tokens=3, eos_at=1, max_tokens=10)
    assert reason is None and "".join(sent) == "a</s>bc" and used == 4
    sent, reason, used = _run(["x", "STOP", "y", "STOP"], min_tokens=3, stop=("STOP",))
    assert (sent, reason, used) == (["x", "STOP", "y", ""], "stop", 4)
    sent, reason, used = _run(["a", "b", "c"], min_tokens=2, eos_at=1)
    assert (sent, reason, used) == (["a", ""], "stop", 2)  # the min_tokens-th token may stop


def test_min_tokens_stop_string_spanning_the_boundary() -> None:
    sent, reason, _ = _run(["x", "ST", "OP"], min_tokens=3, stop=("STOP",))
    assert (sent, reason) == (["x", "", ""], "stop")


def test_max_tokens_one() -> None:
    assert _run(["only"], max_tokens=1)[:2] == (["only"], "length")


def test_check_after_finish_is_an_error() -> None:
    checker = StopChecker(SamplingParams(), eos_token_ids=[EOS], max_tokens=1)
    checker.check(5, "x")
    with pytest.raises(RuntimeError):
        checker.check(6, "y")
    assert checker.flush() == ""


def test_hold_back_is_bounded_by_the_longest_stop_string() -> None:
    checker = StopChecker(SamplingParams(stop=("abcd", "xy")), eos_token_ids=[], max_tokens=100)
    assert checker.check(1, "zzabc").text == "zz"
    assert checker.check(2, "abc").text == "abc"  # "abcabc": only the last 3 may still match
    assert checker.check(3, "x").text == "abc"


@pytest.mark.parametrize("seed", range(20))
def test_sent_text_is_exactly_the_text_before_the_stop(seed: int) -> None:
    """Random splits of random text: what is sent is the text up to the first stop string."""
    rng = random.Random(seed)
    alphabet = "ab <>/\n"
    text = "".join(rng.choice(alphabet) for _ in range(200))
    stops = tuple(
        {"".join(rng.choice(alphabet) for _ in range(rng.randint(2, 5))) for _ in range(3)}
    )
    cuts = sorted(rng.sample(range(1, len(text)), 60))
    pieces = [text[i:j] for i, j in zip([0, *cuts], [*cuts, len(text)], strict=True)]
    sent, reason, _ = _run(pieces, max_tokens=1000, stop=stops)
    first = min((i for i in (text.find(s) for s in stops) if i >= 0), default=None)
    if first is None:
        assert reason is None and "".join(sent) == text
    else:
        assert reason == "stop" and "".join(sent) == text[:first]
