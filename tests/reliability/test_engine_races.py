"""Cancellation races inside the engine service: at admission, mid-prefill, mid-decode
and just after the final token, many times each. Every request must end exactly once —
with its final output or, if cancelled first, with `close()` (Triton's final flag) —
and get nothing after that; the engine must end idle with every KV block free."""

from __future__ import annotations

import random
import threading
import time
from pathlib import Path

import pytest

from engine.api import GenerationOutput, GenerationRequest
from engine.config import EngineConfig
from engine.sampling_params import SamplingParams
from engine.serving import EngineService

ROUNDS = 12  # per stage
LONG_PROMPT = "The sea is wide and deep. " * 60  # ~420 tokens: prefill spans several steps


class RacingSink:
    """Cancels itself after `polls` cancellation checks or `outputs` outputs."""

    def __init__(self, polls: int | None = None, outputs: int | None = None) -> None:
        self.polls_left = polls
        self.outputs_left = outputs
        self.outputs: list[GenerationOutput] = []
        self.closed = 0
        self.after_end: list[str] = []  # anything that arrived after the request ended
        self.lock = threading.Lock()

    @property
    def ended(self) -> bool:
        return self.closed > 0 or bool(self.outputs and self.outputs[-1].finished)

    def is_cancelled(self) -> bool:
        if self.polls_left is not None:
            self.polls_left -= 1
            return self.polls_left < 0
        return self.outputs_left is not None and self.outputs_left <= 0

    def send(self, output: GenerationOutput) -> None:
        with self.lock:
            if self.ended:
                self.after_end.append("send")
            self.outputs.append(output)
            if self.outputs_left is not None:
                self.outputs_left -= 1

    def close(self) -> None:
        with self.lock:
            if self.ended:
                self.after_end.append("close")
            self.closed += 1


@pytest.fixture(scope="module")
def service(default_weights_dir: Path) -> EngineService:
    parameters = {
        "max_model_len": "1024",
        "max_num_seqs": "8",
        "max_num_batched_tokens": "64",  # chunked prefill: a long prompt takes ~7 steps
        "kv_cache_memory_mb": "64",
    }
    service = EngineService(EngineConfig.from_parameters(default_weights_dir, parameters))
    service.start()
    yield service
    service.shutdown()


def request(prompt: str, max_tokens: int) -> GenerationRequest:
    params = SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True)
    return GenerationRequest(params, prompt=prompt, stream=True)


def test_cancellation_races(service: EngineService) -> None:
    chooser = random.Random(0)
    sinks: list[tuple[str, RacingSink]] = []
    for _round in range(ROUNDS):
        stages = [
            ("admission", request("Hello", 32), RacingSink(polls=0)),
            ("prefill", request(LONG_PROMPT, 16), RacingSink(polls=chooser.randint(1, 4))),
            ("decode", request("Once upon a time", 64), RacingSink(outputs=chooser.randint(1, 8))),
            # Cancelled as the final output is sent: the race is lost by the cancellation.
            ("after final", request("Hi", 4), RacingSink(outputs=4)),
        ]
        for stage, generation_request, sink in stages:
            service.submit(generation_request, sink)
            sinks.append((stage, sink))
    deadline = time.monotonic() + 120
    while not all(sink.ended for _stage, sink in sinks):
        assert time.monotonic() < deadline, [stage for stage, sink in sinks if not sink.ended]
        time.sleep(0.05)
    time.sleep(0.3)  # a few more engine steps: anything late would show now
    for stage, sink in sinks:
        assert not sink.after_end, (stage, sink.after_end)
        assert sink.closed + sum(output.finished for output in sink.outputs) == 1, stage
    assert {stage for stage, sink in sinks if sink.closed} >= {"admission", "prefill", "decode"}
    assert not service.engine.has_unfinished()
    assert service.engine.scheduler.num_used_blocks == 0
