"""What `tritium serve` prints while tritonserver loads models (tritium.progress)."""

from __future__ import annotations

from pathlib import Path

from tritium.progress import LoadingReport, loading_message

TRITON_LOG = """\
# /opt/tritonserver/bin/tritonserver --model-repository=/m
I1202 15:02:55.610606 26700 pinned_memory_manager.cc:283] "Pinned memory pool disabled"
I1202 15:02:55.611974 26700 model_lifecycle.cc:472] "loading: smollm2:1"
tritium-engine[smollm2]: loading LlamaForCausalLM (30 layers, hidden 576), dtype auto, device auto, max_model_len 2048
tritium-engine[smollm2]: weights: file 1 of 1, model.safetensors (0.27 GB)
I1202 15:03:09.309732 26700 model_lifecycle.cc:839] "successfully loaded 'smollm2'"
+---------+------+
"""


def test_only_loading_lines_are_shown() -> None:
    shown = [loading_message(line) for line in TRITON_LOG.splitlines()]
    assert [line for line in shown if line] == [
        "loading: smollm2:1",
        "tritium-engine[smollm2]: loading LlamaForCausalLM (30 layers, hidden 576), dtype auto, "
        "device auto, max_model_len 2048",
        "tritium-engine[smollm2]: weights: file 1 of 1, model.safetensors (0.27 GB)",
        "successfully loaded 'smollm2'",
    ]
    failure = 'E1202 15:03:09.3 26700 model_lifecycle.cc:654] "failed to load \'m\' version 1: x"'
    assert loading_message(failure) == "failed to load 'm' version 1: x"


def test_new_lines_once_each_and_a_word_after_a_quiet_spell(tmp_path: Path) -> None:
    log = tmp_path / "tritonserver.log"
    lines = TRITON_LOG.splitlines(keepends=True)
    log.write_text("".join(lines[:3]) + lines[3][:20])  # the last line is not complete yet
    now = [0.0]
    said: list[str] = []
    report = LoadingReport(log, said.append, quiet_seconds=15, clock=lambda: now[0])
    report.poll()
    assert said == ["loading: smollm2:1"]
    with open(log, "a") as handle:
        handle.write("".join(lines[3:])[20:])
    report.poll()
    assert len(said) == 4 and said[-1] == "successfully loaded 'smollm2'"
    now[0] = 20.0
    report.poll()
    assert said[-1] == "still loading (20 s)"
    report.poll()
    assert len(said) == 5  # nothing new, not quiet for long: nothing said
