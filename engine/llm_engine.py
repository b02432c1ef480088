"""The engine step: schedule, run the model, post-process.

`LLMEngine` is single-threaded: `EngineService` calls `add_request`, `abort` and
`step` from its engine thread only. `prepare`, `tokenize` and `detokenize` touch no
engine state (only the tokenizer), so callers may run them on their own thread.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace

from contract.errors import ContractError, ErrorKind
from contract.outputs import ChoiceDelta, TokenLogprobs, TopLogprob
from engine.api import GenerationOutput, GenerationRequest
from engine.config import EngineConfig
from engine.metrics import EngineMetrics
from engine.model_runner import ModelRunner
from engine.output import SequenceOutputTracker
from engine.request import Sequence, SequenceStatus
from engine.sampler import SampleResult
from engine.scheduler import RequestTooLargeError, Scheduler
from engine.structured import Grammar, GrammarCompiler, GrammarMatchers
from engine.tokenizer import MessagesError, Tokenizer

_FINISH_STATUS = {"stop": SequenceStatus.FINISHED_STOPPED, "length": SequenceStatus.FINISHED_LENGTH}


@dataclass(frozen=True)
class PreparedRequest:
    request: GenerationRequest
    prompt_token_ids: list[int]
    prompt_text: str  # the text the prompt tokens encode (templated for chat), for echo
    max_tokens: int  # resolved against the context length
    grammar: Grammar | None = None  # compiled from params.structured_outputs


@dataclass
class _RequestState:
    prepared: PreparedRequest
    sequences: list[Sequence]
    trackers: list[SequenceOutputTracker]
    texts: list[str] = field(default_factory=list)  # accumulated text per choice (non-streaming)
    logprobs: list[TokenLogprobs] = field(default_factory=list)  # accumulated, non-streaming
    echoed: list[bool] = field(default_factory=list)  # prompt text already sent per choice

    @property
    def finished(self) -> bool:
        return all(seq.status.finished for seq in self.sequences)


class LLMEngine:
    def __init__(self, config: EngineConfig, metrics: EngineMetrics | None = None) -> None:
        self.tokenizer = Tokenizer(config.model_dir, config.tool_call_format)
        self.runner = ModelRunner(config)
        # The number of KV blocks is learned from the runner's memory budget.
        cache = replace(config.cache, num_blocks=self.runner.num_blocks)
        self.config = replace(config, cache=cache)
        self.scheduler = Scheduler(self.config.scheduler, cache)
        self.metrics = metrics or EngineMetrics(None)
        vocab_size, eos_token_ids = config.model.vocab_size, self.tokenizer.eos_token_ids
        # Structured output: grammars compile in `prepare` (the caller's thread), matchers
        # advance here; the bitmask is copied to the device from page-locked memory.
        self.grammar_compiler = GrammarCompiler(self.tokenizer.hf, vocab_size, eos_token_ids)
        self.grammars = GrammarMatchers(
            vocab_size, eos_token_ids, pin_memory=self.runner.device.type == "cuda"
        )
        self._requests: dict[int, _RequestState] = {}
        self._next_seq_id = 0

    # -- any thread ------------------------------------------------------------------------
    def tokenize(self, request: GenerationRequest) -> tuple[list[int], str]:
        """The prompt's token ids and the text they encode, exactly as a generation of the
        request computes them (chat template, tools, special tokens); raises ContractError.
        `prepare` and the contract's `tokenize` requests both call it."""
        if request.messages is not None:
            try:
                prompt_text = self.tokenizer.apply_chat_template(
                    request.messages,
                    request.tools,
                    request.chat_template_kwargs,
                    add_generation_prompt=request.add_generation_prompt,
                    continue_final_message=request.continue_final_message,
                )
            except MessagesError as error:
                raise ContractError(str(error).split(": ", 1)[-1], error.field) from None
            except ValueError as error:  # the template itself refused the conversation
                raise ContractError(str(error), "messages") from None
            special = bool(request.add_special_tokens)  # the template holds any BOS
            return self.tokenizer.encode(prompt_text, add_special_tokens=special), prompt_text
        if request.prompt_token_ids is not None:
            prompt_token_ids = self._checked_token_ids(request.prompt_token_ids)
            # Special tokens kept: echo returns what the ids say, BOS included.
            prompt_text = self.tokenizer.decode(prompt_token_ids, skip_special_tokens=False)
            return prompt_token_ids, prompt_text
        prompt_text = request.prompt or ""
        special = request.add_special_tokens is not False
        return self.tokenizer.encode(prompt_text, add_special_tokens=special), prompt_text

    def detokenize(self, token_ids: list[int]) -> str:
        """Token ids as text, special tokens kept (as vLLM's /detokenize); an empty list or
        an id outside the tokenizer's vocabulary is a ContractError naming `tokens`."""
        if not token_ids:
            raise ContractError("must hold at least one token id", "tokens")
        vocab_size = self.tokenizer.vocab_size
        for token_id in token_ids:
            if not 0 <= token_id < vocab_size:
                raise ContractError(
                    f"token id {token_id} is not in [0, {vocab_size}) (the vocabulary)", "tokens"
                )
        return self.tokenizer.decode(token_ids, skip_special_tokens=False)

    def prepare(self, request: GenerationRequest) -> PreparedRequest:
        """Tokenize and check the request against the context, compile its grammar (this
        thread waits; the engine thread does not); raises ContractError."""
        prompt_token_ids, prompt_text = self.tokenize(request)
        if not prompt_token_ids:
            field = "prompt" if request.prompt_token_ids is not None else "text_input"
            raise ContractError("the prompt is empty", field)
        keep = request.params.truncate_prompt_tokens
        if keep is not None:
            keep = self.config.scheduler.max_model_len if keep == -1 else keep
            if len(prompt_token_ids) > keep:  # left truncation, as vLLM does
                prompt_token_ids = prompt_token_ids[-keep:]
                prompt_text = self.tokenizer.decode(prompt_token_ids, skip_special_tokens=False)
        # Without max_tokens a sequence may grow to the context or the whole cache, not beyond.
        cache = self.config.cache
        room = min(self.config.scheduler.max_model_len, cache.num_blocks * cache.block_size)
        max_tokens = request.params.max_tokens or room - len(prompt_token_ids)
        try:
            self.scheduler.check_fits(len(prompt_token_ids), max(max_tokens, 1))
        except RequestTooLargeError as error:
            raise ContractError(str(error), kind=ErrorKind.CONTEXT_LENGTH) from None
        vocab_size = self.config.model.vocab_size
        for token_id in request.params.logit_bias:
            if token_id >= vocab_size:
                raise ContractError(f"token id {token_id} is not below the vocabulary size {vocab_size}", "logit_bias")
        spec = request.params.structured_outputs
        grammar = self.grammar_compiler.compile(spec) if spec is not None else None
        return PreparedRequest(request, prompt_token_ids, prompt_text, max_tokens, grammar)

    def _checked_token_ids(self, token_ids: list[int]) -> list[int]:
        # The error names `prompt`: the OpenAI field the ids came from.
        vocab_size = self.config.model.vocab_size
        for token_id in token_ids:
            if not 0 <= token_id < vocab_size:
                raise ContractError(
                    f"token id {token_id} is not in [0, {vocab_size}) (the vocabulary)", "prompt"
                )
        return list(token_ids)

    # -- engine thread ---------------------------------------------------------------------
    def add_request(self, request_id: int, prepared: PreparedRequest) -> None:
        now = time.monotonic()
        params = prepared.request.params
        sequences, trackers = [], []
        for index in range(params.n):
            seq = Sequence(
                seq_id=self._next_seq_id,
                request_id=request_id,
                index=index,
                token_ids=list(prepared.prompt_token_ids),
                num_prompt_tokens=len(prepared.prompt_token_ids),
                params=params,
                max_tokens=prepared.max_tokens,
                arrival_time=now,
            )
            self._next_seq_id += 1
            sequences.append(seq)
            trackers.append(
                SequenceOutputTracker(
                    self.tokenizer, prepared.prompt_token_ids, params, prepared.max_tokens
                )
            )
        state = _RequestState(prepared, sequences, trackers)
        state.texts = [""] * params.n
        state.logprobs = [TokenLogprobs() for _ in range(params.n)]
        state.echoed = [False] * params.n
        self._requests[request_id] = state
        for seq in sequences:
            self.scheduler.add(seq)
            if prepared.grammar is not None:
                self.grammars.add(seq, prepared.grammar)
        self.metrics.add_prompt_tokens(len(prepared.prompt_token_ids))
        if prepared.grammar is not None:
            self.metrics.observe_structured_request(prepared.grammar.compile_seconds)

    def abort(self, request_id: int) -> None:
        state = self._requests.pop(request_id, None)
        if state is not None:
            self.scheduler.abort(request_id)
            for seq in state.sequences:
                self.grammars.remove(seq)

    def has_unfinished(self) -> bool:
        return bool(self._requests)

    def step(self) -> list[tuple[int, GenerationOutput]]:
        scheduled = self.scheduler.schedule()
        results = self.runner.execute(scheduled.chunks, self.grammars.allowed_mask)
        self.scheduler.step_done(scheduled)  # the KV is written: cache full blocks
        outputs = self._postprocess(scheduled.chunks, results)
        self.metrics.record_step(self.scheduler, len(scheduled.preempted))
        return outputs

    def _postprocess(
        self, chunks: list, results: list[SampleResult | None]
    ) -> list[tuple[int, GenerationOutput]]:
        now = time.monotonic()
        touched: dict[int, list[ChoiceDelta]] = {}
        generated = 0
        for chunk, result in zip(chunks, results, strict=True):
            if result is None:
                continue
            seq = chunk.seq
            state = self._requests.get(seq.request_id)
            if state is None or seq.status.finished:
                continue
            delta = self._accept_token(state, seq, result, now)
            touched.setdefault(seq.request_id, []).append(delta)
            generated += 1
        # Once a step: on Triton each metric update is a round trip to the server.
        self.metrics.add_generation_tokens(generated)
        outputs = []
        for request_id, deltas in touched.items():
            output = self._request_output(request_id, deltas)
            if output is not None:
                outputs.append((request_id, output))
        return outputs

    def _accept_token(
        self, state: _RequestState, seq: Sequence, result: SampleResult, now: float
    ) -> ChoiceDelta:
        if seq.first_token_time is None:
            seq.first_token_time = now
            self.metrics.observe_first_token(now - seq.arrival_time)
        seq.append_token(result.token_id)
        tracker = state.trackers[seq.index]
        text, finish_reason = tracker.on_token(result.token_id)
        if self.grammars.accept(seq, result.token_id) and finish_reason is None:
            # The grammar took its end (EOS) though ignore_eos or min_tokens kept the
            # tracker going: nothing can follow, the sequence stops here.
            text, finish_reason = text + tracker.flush(), "stop"
        if finish_reason is not None:
            self.grammars.remove(seq)
            self.scheduler.finish(seq, _FINISH_STATUS[finish_reason])
            if seq.num_output_tokens > 1:
                per_token = (now - seq.first_token_time) / (seq.num_output_tokens - 1)
                self.metrics.observe_time_per_output_token(per_token)
        logprobs = self._logprobs(result) if seq.params.logprobs else None
        return ChoiceDelta(seq.index, text, seq.num_output_tokens, finish_reason, logprobs)

    def _logprobs(self, result: SampleResult) -> TokenLogprobs:
        """The logprobs of one sampled token."""
        text = self.tokenizer.token_text
        return TokenLogprobs(
            token_ids=[result.token_id],
            tokens=[text(result.token_id)],
            logprobs=[result.logprob if result.logprob is not None else 0.0],
            top_logprobs=[[TopLogprob(text(t), lp) for t, lp in result.top_logprobs]],
        )

    def _request_output(
        self, request_id: int, deltas: list[ChoiceDelta]
    ) -> GenerationOutput | None:
        state = self._requests[request_id]
        request = state.prepared.request
        for delta in deltas:
            if request.include_input and not state.echoed[delta.index]:
                state.echoed[delta.index] = True
                delta.text = state.prepared.prompt_text + delta.text
        finished = state.finished
        if finished:
            del self._requests[request_id]
        if request.stream:
            # Deltas whose text is held back (partial UTF-8, a possible stop string) wait.
            deltas = [d for d in deltas if d.text or d.finish_reason or d.logprobs]
            if not deltas and not finished:
                return None
            return GenerationOutput(len(state.prepared.prompt_token_ids), deltas, finished)
        for delta in deltas:
            state.texts[delta.index] += delta.text
            if delta.logprobs:
                state.logprobs[delta.index].extend(delta.logprobs)
        if not finished:
            return None
        return GenerationOutput(
            len(state.prepared.prompt_token_ids),
            [self._whole_choice(state, seq) for seq in state.sequences],
            True,
        )

    @staticmethod
    def _whole_choice(state: _RequestState, seq: Sequence) -> ChoiceDelta:
        logprobs = state.logprobs[seq.index] if seq.params.logprobs else None
        return ChoiceDelta(
            seq.index,
            state.texts[seq.index],
            seq.num_output_tokens,
            seq.status.finish_reason,
            logprobs,
        )
