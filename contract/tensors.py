"""The tensors of the contract: one table of inputs, one of outputs, and their codecs.

The model is decoupled: a request gets one or more responses; the last is sent with
TRITONSERVER_RESPONSE_COMPLETE_FINAL (Triton marks it `triton_final_response`) and
carries data. Each response holds the choices that advanced since the previous one
(`contract.outputs.ChoiceDelta`); with stream=false, exactly one response holding every
choice's whole text and finish reason.

Every input is optional in the model config; exactly one of `text_input`, `messages`
and `input_ids` carries the prompt, except in a cancel request (`cancel` true and the
`cancellation_key` of the request to stop, nothing else), which the model answers with a
flag-only final response.

`operation` says what the model does with the prompt (`Operation`): generate (the
default), or answer at once with one final response and nothing scheduled: `tokenize`
(the prompt's token ids, `prompt_token_ids`, exactly as a generation of the same inputs
would see them) or `detokenize` (`input_ids` as text, one `text_output`).

Who uses what here:
- `render_model_config`: `tritium package` and the null model's repository;
- `ModelRequest.to_arrays` / `decode_response`: the adapter and the benchmark client;
- `decode_request` / `encode_response` / `encode_tokenization` / `encode_text`:
  `contract.python_backend`, the base of the model shim and the null model.
"""

from __future__ import annotations

import enum
import json
import struct
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np

from contract.errors import ContractError
from contract.outputs import ChoiceDelta, Tokenization, TokenLogprobs
from contract.sampling import parse_sampling_parameters


@dataclass(frozen=True)
class TensorSpec:
    name: str
    datatype: str  # Triton's datatype on the wire: BYTES, BOOL, INT32, INT64
    dims: tuple[int, ...]  # -1 = any length
    doc: str  # one line for docs/api.md

    @property
    def config_type(self) -> str:
        """The data_type of config.pbtxt."""
        return "TYPE_STRING" if self.datatype == "BYTES" else f"TYPE_{self.datatype}"

    def array(self, values: Sequence[Any]) -> np.ndarray:
        """Values -> the numpy array Triton sends for this tensor."""
        if self.datatype == "BYTES":
            return np.array([str(v).encode("utf-8") for v in values], dtype=np.object_)
        return np.array(values, dtype=_NUMPY_TYPES[self.datatype])


_NUMPY_TYPES = {"BOOL": np.bool_, "INT32": np.int32, "INT64": np.int64}


class Operation(str, enum.Enum):
    """What a request asks of the model (the `operation` input)."""

    GENERATE = "generate"  # responses with the choices' text, as the engine steps
    TOKENIZE = "tokenize"  # the prompt's token ids, at once; nothing generated
    DETOKENIZE = "detokenize"  # `input_ids` as text, at once; nothing generated


def _input(datatype: str, dims: tuple[int, ...], doc: str, default: Any = None) -> Any:
    """A ModelRequest field that is an input tensor; `default` is the model's when absent."""
    metadata = {"datatype": datatype, "dims": dims, "doc": doc, "default": default}
    return field(default=None, metadata=metadata)


@dataclass(frozen=True)
class ModelRequest:
    """One request: a field per input tensor, in the table's order.

    A client sets what it sends (None = not sent); `decode_request` gives the model
    every field, absent inputs at their default.
    """

    text_input: str | None = _input("BYTES", (1,), "a raw prompt")
    messages: list[dict[str, Any]] | None = _input(
        "BYTES", (1,), 'chat messages as a JSON list of `{"role", "content", "name"?}`; the model applies its chat template'
    )  # fmt: skip
    tools: list[dict[str, Any]] | None = _input(
        "BYTES", (1,), 'with `messages`: OpenAI function tools as a JSON list, rendered by the chat template (or the generic tool prompt)'
    )  # fmt: skip
    chat_template_kwargs: dict[str, Any] | None = _input(
        "BYTES", (1,), "with `messages`: a JSON object of extra chat template variables (e.g. `enable_thinking`); each must be one the template reads"
    )  # fmt: skip
    input_ids: list[int] | None = _input(
        "INT64", (-1,), "a prompt as token ids, used as they are (each checked against the vocabulary)"
    )  # fmt: skip
    stream: bool | None = _input("BOOL", (1,), "a response per engine step; else one at the end", False)
    sampling_parameters: dict[str, Any] | None = _input(
        "BYTES", (1,), "a JSON object of sampling fields (see Sampling fields); unknown fields are an error"
    )  # fmt: skip
    exclude_input_in_output: bool | None = _input(
        "BOOL", (1,), "false: the prompt's text is prepended to each choice's first delta", False
    )  # fmt: skip
    return_finish_reason: bool | None = _input("BOOL", (1,), "send `finish_reason`", True)
    return_num_input_tokens: bool | None = _input("BOOL", (1,), "send `num_input_tokens`", True)
    return_num_output_tokens: bool | None = _input("BOOL", (1,), "send `num_output_tokens`", True)
    return_logprobs: bool | None = _input("BOOL", (1,), "send `logprobs` (with `logprobs` in sampling_parameters)", False)
    cancellation_key: str | None = _input(
        "BYTES", (1,), "a key naming this request for a later cancel request on the same stream"
    )  # fmt: skip
    cancel: bool | None = _input(
        "BOOL", (1,), "true: stop the request sent with this `cancellation_key` (in-band cancellation)", False
    )  # fmt: skip
    operation: str | None = _input(
        "BYTES", (1,), "`generate`; `tokenize`: answer the prompt's token ids (`text_input` or `messages`) as a generation would see them, nothing generated; `detokenize`: answer `input_ids` as one `text_output`, special tokens kept", Operation.GENERATE.value
    )  # fmt: skip
    add_special_tokens: bool | None = _input(
        "BOOL", (1,), "add the tokenizer's special tokens (e.g. BOS) to the prompt; absent: true for `text_input`, false for `messages` (the chat template writes them)"
    )  # fmt: skip
    add_generation_prompt: bool | None = _input(
        "BOOL", (1,), "with `messages`: end the prompt with the template's opening of an assistant turn", True
    )  # fmt: skip
    continue_final_message: bool | None = _input(
        "BOOL", (1,), "with `messages`: leave the last message open for the model to continue (needs add_generation_prompt false)", False
    )  # fmt: skip
    return_token_strs: bool | None = _input(
        "BOOL", (1,), "with `tokenize`: send `token_strs`", False
    )  # fmt: skip

    def to_arrays(self) -> list[tuple[TensorSpec, np.ndarray]]:
        """The tensors a client sends: every field that is set."""
        arrays = []
        for spec in INPUTS:
            value = getattr(self, spec.name)
            if value is None:
                continue
            if spec.name in _JSON_INPUTS:
                value = json.dumps(value, ensure_ascii=False)
            elif isinstance(value, enum.Enum):
                value = value.value
            arrays.append((spec, spec.array(value if spec.dims == (-1,) else [value])))
        return arrays

    @classmethod
    def cancel_of(cls, cancellation_key: str) -> ModelRequest:
        """The in-band cancel of the request sent with ``cancellation_key``."""
        return cls(cancel=True, cancellation_key=cancellation_key)


INPUTS: tuple[TensorSpec, ...] = tuple(
    TensorSpec(f.name, f.metadata["datatype"], f.metadata["dims"], f.metadata["doc"])
    for f in fields(ModelRequest)
)
_DEFAULTS = {f.name: f.metadata["default"] for f in fields(ModelRequest)}
_JSON_INPUTS = ("messages", "tools", "chat_template_kwargs", "sampling_parameters")
PROMPT_INPUTS = ("text_input", "messages", "input_ids")

OUTPUTS: tuple[TensorSpec, ...] = (
    TensorSpec("text_output", "BYTES", (-1,), "new text of each choice (UTF-8, never a split character); with stream=false, the whole text"),
    TensorSpec("index", "INT32", (-1,), "the choice index 0..n-1 of each entry (if absent: 0..k-1)"),
    TensorSpec("finish_reason", "BYTES", (-1,), '`""` while running, then `stop`, `length`, `tool_calls` or `abort` (the engine gave up)'),
    TensorSpec("num_input_tokens", "INT32", (1,), "prompt tokens after the chat template (INT64 accepted)"),
    TensorSpec("num_output_tokens", "INT32", (-1,), "tokens generated so far by each choice, cumulative (INT64 accepted)"),
    TensorSpec("logprobs", "BYTES", (-1,), '`""` unless return_logprobs; else JSON for the tokens of this delta: `{"token_ids", "tokens", "logprobs", "top_logprobs"}`'),
    TensorSpec("prompt_token_ids", "INT64", (-1,), "`tokenize` only: the prompt's token ids (`num_input_tokens` of them)"),
    TensorSpec("token_strs", "BYTES", (-1,), "`tokenize` with return_token_strs: each token's entry in the vocabulary (e.g. `Ġworld`)"),
    TensorSpec("max_model_len", "INT32", (1,), "`tokenize` only: the model's context length, prompt + output tokens (INT64 accepted)"),
)  # fmt: skip
OUTPUTS_BY_NAME = {spec.name: spec for spec in OUTPUTS}


@dataclass(frozen=True)
class Capabilities:
    """What a model of the repository offers, read from its config's input names."""

    chat: bool  # has `messages`
    completions: bool  # has `text_input`
    token_ids: bool  # has `input_ids`
    cancel_in_band: bool  # has `cancel` and `cancellation_key`
    # Has `operation` (tokenize and detokenize requests); a model may still refuse them
    # by name (the null model has no tokenizer).
    tokenize: bool = False

    @classmethod
    def of(cls, input_names: set[str]) -> Capabilities | None:
        """None for a model that is not an LLM of this contract (no prompt input)."""
        if not input_names & {"text_input", "messages"}:
            return None
        return cls(
            chat="messages" in input_names,
            completions="text_input" in input_names,
            token_ids="input_ids" in input_names,
            cancel_in_band={"cancel", "cancellation_key"} <= input_names,
            tokenize="operation" in input_names,
        )


# -- the model's side ---------------------------------------------------------------------


def decode_request(read: Callable[[str], np.ndarray | None]) -> ModelRequest:
    """The request a model received; ``read(name)`` gives an input's array or None.

    Raises ContractError naming the input at fault.
    """
    values: dict[str, Any] = {}
    for spec in INPUTS:
        array = read(spec.name)
        if array is None:
            values[spec.name] = _DEFAULTS[spec.name]
            continue
        flat = array.reshape(-1)
        if spec.dims == (-1,):
            values[spec.name] = [int(v) for v in flat]
            continue
        if flat.size != 1:
            raise ContractError(f"must hold one element, got {flat.size}", spec.name)
        value = flat[0]
        if spec.datatype == "BOOL":
            values[spec.name] = bool(value)
        else:
            values[spec.name] = _text(value, spec.name)
    for name in _JSON_INPUTS:
        if values[name] is not None:
            values[name] = _json(values[name], name)
    if values["messages"] is not None and (
        not isinstance(values["messages"], list) or not values["messages"]
    ):
        raise ContractError("must be a non-empty JSON list of messages", "messages")
    if values["tools"] is not None:
        _check_tools(values["tools"], has_messages=values["messages"] is not None)
    values["sampling_parameters"] = parse_sampling_parameters(values["sampling_parameters"])
    request = ModelRequest(**values)
    if request.cancel:
        if not request.cancellation_key:
            raise ContractError("a cancel request names the request to stop", "cancellation_key")
    elif sum(values[name] is not None for name in PROMPT_INPUTS) != 1:
        raise ContractError(f"exactly one of the inputs {', '.join(PROMPT_INPUTS)} is required")
    _check_operation(request)
    return request


def _check_operation(request: ModelRequest) -> None:
    known = [operation.value for operation in Operation]
    if request.operation not in known:
        raise ContractError(
            f"must be one of {', '.join(known)}; got {request.operation!r}", "operation"
        )
    if request.cancel:
        return
    if request.operation == Operation.TOKENIZE and request.input_ids is not None:
        raise ContractError("tokenize takes text_input or messages", "operation")
    if request.operation == Operation.DETOKENIZE and request.input_ids is None:
        raise ContractError("detokenize takes input_ids", "operation")
    if request.continue_final_message and request.add_generation_prompt:
        raise ContractError(
            "the last message is continued or a generation prompt is added, not both:"
            " send add_generation_prompt false",
            "continue_final_message",
        )


def _check_tools(tools: Any, has_messages: bool) -> None:
    if not has_messages:
        raise ContractError("tools go with messages (a chat)", "tools")
    if not isinstance(tools, list):
        raise ContractError("must be a JSON list of tools", "tools")
    for position, tool in enumerate(tools):
        function = tool.get("function") if isinstance(tool, dict) else None
        if (
            not isinstance(tool, dict)
            or tool.get("type") != "function"
            or not isinstance(function, dict)
            or not isinstance(function.get("name"), str)
        ):
            raise ContractError(
                f'tool {position} must be {{"type": "function", "function": {{"name", ...}}}}',
                "tools",
            )


def _text(value: Any, name: str) -> str:
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            raise ContractError("is not valid UTF-8", name) from None
    return str(value)


def _json(text: str, name: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise ContractError(f"not valid JSON ({error})", name) from None


def encode_response(
    request: ModelRequest, choices: Sequence[ChoiceDelta], num_input_tokens: int
) -> list[tuple[str, np.ndarray]]:
    """One response's output tensors, as the request's `return_*` inputs ask."""
    out = OUTPUTS_BY_NAME
    arrays = [
        ("text_output", out["text_output"].array([c.text for c in choices])),
        ("index", out["index"].array([c.index for c in choices])),
    ]
    if request.return_num_input_tokens:
        arrays.append(("num_input_tokens", out["num_input_tokens"].array([num_input_tokens])))
    if request.return_finish_reason:
        reasons = [c.finish_reason or "" for c in choices]
        arrays.append(("finish_reason", out["finish_reason"].array(reasons)))
    if request.return_num_output_tokens:
        counts = [c.num_output_tokens or 0 for c in choices]
        arrays.append(("num_output_tokens", out["num_output_tokens"].array(counts)))
    if request.return_logprobs:
        logprobs = [c.logprobs.to_json() if c.logprobs else "" for c in choices]
        arrays.append(("logprobs", out["logprobs"].array(logprobs)))
    return arrays


def encode_tokenization(
    request: ModelRequest, result: Tokenization
) -> list[tuple[str, np.ndarray]]:
    """The response to a `tokenize` request (token strings only when it asks for them)."""
    out = OUTPUTS_BY_NAME
    arrays = [
        ("num_input_tokens", out["num_input_tokens"].array([len(result.token_ids)])),
        ("prompt_token_ids", out["prompt_token_ids"].array(result.token_ids)),
        ("max_model_len", out["max_model_len"].array([result.max_model_len])),
    ]
    if request.return_token_strs and result.token_strs is not None:
        arrays.append(("token_strs", out["token_strs"].array(result.token_strs)))
    return arrays


def encode_text(text: str, num_input_tokens: int) -> list[tuple[str, np.ndarray]]:
    """The response to a `detokenize` request: the text as choice 0."""
    out = OUTPUTS_BY_NAME
    return [
        ("text_output", out["text_output"].array([text])),
        ("index", out["index"].array([0])),
        ("num_input_tokens", out["num_input_tokens"].array([num_input_tokens])),
    ]


# -- the client's side --------------------------------------------------------------------


@dataclass(frozen=True)
class ModelResponse:
    choices: list[ChoiceDelta]
    num_input_tokens: int | None  # None when the model did not send it
    final: bool  # triton_final_response
    # The answer to a `tokenize` request; None in any other response.
    tokenization: Tokenization | None = None


def decode_response(raw: Mapping[str, tuple[str, bytes]], final: bool) -> ModelResponse:
    """Output tensors given as name -> (datatype, raw contents) -> the response.

    Reads Triton's raw output contents directly (no numpy array per tensor: that costs
    more than this whole parse: `python -m benchmarks.parse_response`). Raises
    ContractError saying how the model broke the contract.
    """
    texts = _strings(raw.get("text_output"))
    count = len(texts)
    indexes = _integers(raw.get("index")) or list(range(count))
    reasons = _strings(raw.get("finish_reason")) or [""] * count
    counts: list[int | None] = list(_integers(raw.get("num_output_tokens"))) or [None] * count
    logprobs = _strings(raw.get("logprobs")) or [""] * count
    if not (len(indexes) == len(reasons) == len(counts) == len(logprobs) == count):
        raise ContractError(
            "contract violation: text_output, index, finish_reason, num_output_tokens and"
            f" logprobs must have the same length, got {count}, {len(indexes)}, {len(reasons)},"
            f" {len(counts)}, {len(logprobs)}"
        )
    choices = []
    for i in range(count):
        try:
            parsed = TokenLogprobs.from_json(logprobs[i]) if logprobs[i] else None
        except ValueError as error:
            raise ContractError(f"contract violation: {error}") from None
        choices.append(ChoiceDelta(indexes[i], texts[i], counts[i], reasons[i] or None, parsed))
    input_counts = _integers(raw.get("num_input_tokens"))
    return ModelResponse(
        choices, input_counts[0] if input_counts else None, final, _tokenization(raw)
    )


def _tokenization(raw: Mapping[str, tuple[str, bytes]]) -> Tokenization | None:
    if "prompt_token_ids" not in raw:
        return None
    token_ids = _integers(raw["prompt_token_ids"])
    lengths = _integers(raw.get("max_model_len"))
    if len(lengths) != 1:
        raise ContractError("contract violation: a tokenize response has one max_model_len")
    token_strs = _strings(raw["token_strs"]) if "token_strs" in raw else None
    if token_strs is not None and len(token_strs) != len(token_ids):
        raise ContractError(
            f"contract violation: {len(token_strs)} token_strs for {len(token_ids)} token ids"
        )
    return Tokenization(token_ids, token_strs, lengths[0])


_INTEGER_FORMATS = {
    "INT8": "b", "INT16": "h", "INT32": "i", "INT64": "q",
    "UINT8": "B", "UINT16": "H", "UINT32": "I", "UINT64": "Q",
}  # fmt: skip
_INTEGER_SIZES = {datatype: struct.calcsize(code) for datatype, code in _INTEGER_FORMATS.items()}
_LENGTH = struct.Struct("<I")  # the 4-byte little-endian length before each BYTES element


def _strings(tensor: tuple[str, bytes] | None) -> list[str]:
    """A BYTES tensor's elements (each a 4-byte length, then the bytes) as text."""
    if tensor is None:
        return []
    datatype, raw = tensor
    if datatype != "BYTES":
        raise ContractError(f"contract violation: a text output has datatype {datatype}, not BYTES")
    values, offset = [], 0
    while offset < len(raw):
        (length,) = _LENGTH.unpack_from(raw, offset)
        offset += _LENGTH.size
        values.append(raw[offset : offset + length].decode("utf-8"))
        offset += length
    if offset != len(raw):
        raise ContractError("contract violation: a BYTES output is truncated")
    return values


def _integers(tensor: tuple[str, bytes] | None) -> list[int]:
    if tensor is None:
        return []
    datatype, raw = tensor
    code = _INTEGER_FORMATS.get(datatype)
    if code is None:
        raise ContractError(
            f"contract violation: a count output has datatype {datatype}, not an integer"
        )
    count, rest = divmod(len(raw), _INTEGER_SIZES[datatype])
    if rest:
        raise ContractError(f"contract violation: a {datatype} output is truncated")
    return list(struct.unpack(f"<{count}{code}", raw))


# -- the model configuration --------------------------------------------------------------


def render_model_config(name: str, parameters: Mapping[str, str]) -> str:
    """A model's config.pbtxt: decoupled Python backend, the contract's tensors, parameters."""

    def dims(spec: TensorSpec) -> str:
        return ", ".join(str(d) for d in spec.dims)

    lines = [
        f'name: "{name}"',
        'backend: "python"',
        "max_batch_size: 0",
        "model_transaction_policy { decoupled: true }",
        "",
        "input [",
        ",\n".join(
            f'  {{ name: "{s.name}" data_type: {s.config_type} dims: [ {dims(s)} ] optional: true }}'
            for s in INPUTS
        ),
        "]",
        "output [",
        ",\n".join(
            f'  {{ name: "{s.name}" data_type: {s.config_type} dims: [ {dims(s)} ] }}'
            for s in OUTPUTS
        ),
        "]",
        "",
        "# One instance: the model batches requests itself (continuous batching).",
        "instance_group [ { count: 1 kind: KIND_MODEL } ]",
        "",
        "# Model parameters; see docs/architecture.md (Configuration).",
    ]
    for key, value in sorted(parameters.items()):
        lines.append(f'parameters {{ key: "{key}" value: {{ string_value: "{value}" }} }}')
    return "\n".join(lines) + "\n"
