"""EngineService: the engine thread, submission, cancellation and shutdown (default model)."""

from __future__ import annotations

import re
import shutil
import threading
import time
from pathlib import Path

import pytest

from contract.errors import ContractError, ErrorKind
from engine.api import GenerationOutput, GenerationRequest
from engine.config import EngineConfig
from engine.llm_engine import LLMEngine
from engine.sampling_params import SamplingParams
from engine.serving import EngineService
from engine.weights import WeightsError


class RecordingSink:
    def __init__(self, cancel_after: int | None = None, fail_send: bool = False) -> None:
        self.outputs: list[GenerationOutput] = []
        self.cancel_after = cancel_after
        self.fail_send = fail_send
        self.done = threading.Event()
        self.closed = 0  # close() calls: the final flag of a request that gets no more outputs
        self.sent_after_close = False

    def close(self) -> None:
        self.closed += 1

    def is_cancelled(self) -> bool:
        return self.cancel_after is not None and len(self.outputs) >= self.cancel_after

    def send(self, output: GenerationOutput) -> None:
        self.sent_after_close |= self.closed > 0
        if self.fail_send:
            self.done.set()
            raise ConnectionError("the client is gone")
        self.outputs.append(output)
        if output.finished:
            self.done.set()


@pytest.fixture(scope="module")
def service(default_weights_dir: Path) -> EngineService:
    parameters = {"max_model_len": "512", "max_num_seqs": "4", "kv_cache_memory_mb": "32",
                  "compile_decode": "off"}  # fmt: skip
    service = EngineService(EngineConfig.from_parameters(default_weights_dir, parameters))
    service.start()
    yield service
    service.shutdown()


def _request(max_tokens: int, stream: bool = True, **params: object) -> GenerationRequest:
    return GenerationRequest(
        params=SamplingParams(temperature=0.0, max_tokens=max_tokens, **params),
        prompt="Once upon a time",
        stream=stream,
        include_input=True,
    )


def _wait_idle(service: EngineService) -> None:
    deadline = time.monotonic() + 10
    while service.engine.scheduler.num_running or service.engine.has_unfinished():
        assert time.monotonic() < deadline, "the engine did not go idle"
        time.sleep(0.05)


def test_streamed_and_whole_outputs_agree(service: EngineService) -> None:
    streamed, whole = RecordingSink(), RecordingSink()
    service.submit(_request(12), streamed)
    service.submit(_request(12, stream=False), whole)
    assert streamed.done.wait(60) and whole.done.wait(60)
    assert len(whole.outputs) == 1 and whole.outputs[0].finished
    text = "".join(c.text for o in streamed.outputs for c in o.choices)
    assert text.startswith("Once upon a time")  # include_input: the prompt is echoed first
    assert text == whole.outputs[0].choices[0].text
    assert whole.outputs[0].choices[0].num_output_tokens == 12
    assert whole.outputs[0].choices[0].finish_reason == "length"
    assert streamed.outputs[-1].num_input_tokens == whole.outputs[0].num_input_tokens > 0


def test_cancelled_request_leaves_the_engine(service: EngineService) -> None:
    sink = RecordingSink(cancel_after=2)
    service.submit(_request(400, ignore_eos=True), sink)
    deadline = time.monotonic() + 30
    while len(sink.outputs) < 2:
        assert time.monotonic() < deadline, "no output"
        time.sleep(0.01)
    _wait_idle(service)
    assert 2 <= len(sink.outputs) < 400 and not sink.outputs[-1].finished
    assert service.engine.scheduler.num_used_blocks == 0
    # Closed exactly once (Triton then releases the request), and nothing sent after.
    assert sink.closed == 1 and not sink.sent_after_close


def test_failed_send_aborts_the_request(service: EngineService) -> None:
    sink = RecordingSink(fail_send=True)
    service.submit(_request(400, ignore_eos=True), sink)
    assert sink.done.wait(30)
    _wait_idle(service)
    assert service.engine.scheduler.num_used_blocks == 0
    assert sink.closed == 1


def test_bad_requests_fail_at_submit(service: EngineService) -> None:
    with pytest.raises(ContractError, match="context length") as error:
        service.submit(_request(600), RecordingSink())
    assert error.value.triton_message.startswith("context length: ")
    bad_bias = GenerationRequest(SamplingParams(logit_bias={10**6: 1.0}), prompt="x")
    with pytest.raises(ContractError, match="logit_bias"):
        service.submit(bad_bias, RecordingSink())
    bad_messages = GenerationRequest(SamplingParams(), messages=[{"role": "tool", "content": "x"}])
    with pytest.raises(ContractError) as error:
        service.submit(bad_messages, RecordingSink())
    assert error.value.field is not None and error.value.field.startswith("messages")


def test_shutdown_fails_what_is_still_running(default_weights_dir: Path) -> None:
    parameters = {"max_model_len": "512", "max_num_seqs": "2", "kv_cache_memory_mb": "16",
                  "compile_decode": "off"}  # fmt: skip
    service = EngineService(EngineConfig.from_parameters(default_weights_dir, parameters))
    service.start()
    sinks = [RecordingSink() for _ in range(3)]
    for sink in sinks:
        service.submit(_request(300, ignore_eos=True), sink)
    time.sleep(0.5)
    service.shutdown()
    for sink in sinks:  # nothing is left hanging: every request got a final response
        assert sink.done.is_set()
        assert sink.outputs[-1].finished and sink.outputs[-1].error == "the model is shutting down"
    with pytest.raises(ContractError, match="shutting down"):
        service.submit(_request(4), RecordingSink())


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_a_failed_engine_fails_later_requests_at_once(
    default_weights_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A dead engine thread must not leave requests queued forever (a hang, not an error)."""
    parameters = {"max_model_len": "512", "max_num_seqs": "2", "kv_cache_memory_mb": "16",
                  "compile_decode": "off"}  # fmt: skip
    service = EngineService(EngineConfig.from_parameters(default_weights_dir, parameters))

    def broken_step(self: LLMEngine) -> list:
        raise RuntimeError("simulated kernel failure")

    monkeypatch.setattr(LLMEngine, "step", broken_step)
    service.start()
    first = RecordingSink()
    service.submit(_request(8), first)
    assert first.done.wait(30)
    assert first.outputs[-1].error == "engine failure: simulated kernel failure"
    with pytest.raises(ContractError, match="engine failure: simulated kernel failure") as error:
        service.submit(_request(8), RecordingSink())
    assert error.value.kind is ErrorKind.UNAVAILABLE
    service.shutdown()


def test_start_builds_the_engine_on_its_thread_and_raises_what_building_raised(
    default_weights_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    built_on: list[str] = []
    parameters = {"max_model_len": "512", "max_num_seqs": "2", "kv_cache_memory_mb": "16",
                  "compile_decode": "off"}  # fmt: skip
    service = EngineService(EngineConfig.from_parameters(default_weights_dir, parameters))
    real_init = LLMEngine.__init__

    def recording_init(self: LLMEngine, *args: object, **kwargs: object) -> None:
        built_on.append(threading.current_thread().name)
        real_init(self, *args, **kwargs)

    monkeypatch.setattr(LLMEngine, "__init__", recording_init)
    service.start()
    monkeypatch.undo()
    assert built_on == ["tritium-engine"]  # the thread that steps it (see EngineService.start)
    service.shutdown()

    no_weights = tmp_path / "weights"
    no_weights.mkdir()
    for path in default_weights_dir.iterdir():
        if path.suffix != ".safetensors":
            shutil.copy(path, no_weights / path.name)
    broken = EngineService(EngineConfig.from_parameters(no_weights, parameters))
    with pytest.raises(WeightsError):  # raised on the engine thread, re-raised here
        broken.start()


def test_a_grammar_compiles_off_the_engine_thread(
    service: EngineService, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While a request's grammar compiles (held here until released), the submitting
    thread waits and the running batch does not: a streaming request keeps getting tokens.
    The compile runs on a compile thread, never on the engine thread."""
    compiler = service.engine.grammar_compiler
    compiling, release = threading.Event(), threading.Event()
    compiled_on: list[str] = []
    real_compile = compiler._compile

    def held_compile(kind: str, value: object) -> object:
        compiled_on.append(threading.current_thread().name)
        compiling.set()
        assert release.wait(120)
        return real_compile(kind, value)

    monkeypatch.setattr(compiler, "_compile", held_compile)
    running = RecordingSink()
    service.submit(_request(300, ignore_eos=True), running)
    constrained = RecordingSink()
    request = GenerationRequest(
        SamplingParams(temperature=0.0, max_tokens=8, structured_outputs={"regex": "[0-9]{3}"}),
        prompt="Three digits:",
    )
    submitter = threading.Thread(target=service.submit, args=(request, constrained))
    submitter.start()
    try:
        assert compiling.wait(60)
        seen = len(running.outputs)
        deadline = time.monotonic() + 120
        while len(running.outputs) < seen + 5:  # five more steps during the compile
            assert time.monotonic() < deadline, "the running request stalled during a compile"
            time.sleep(0.01)
        assert submitter.is_alive() and not constrained.outputs  # still compiling
    finally:
        release.set()
        submitter.join(60)
    assert constrained.done.wait(60)
    assert re.fullmatch("[0-9]{3}", constrained.outputs[-1].choices[0].text)
    assert len(compiled_on) == 1 and compiled_on[0].startswith("tritium-grammar")
    running.cancel_after = 0  # done with it
    _wait_idle(service)
    assert len(service.engine.grammars) == 0
