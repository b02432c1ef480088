"""The contract's request and response codecs, and the model config rendered from its tables."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from contract.errors import ContractError, ErrorKind, parse_error_message
from contract.outputs import ChoiceDelta, Tokenization, TokenLogprobs, TopLogprob
from contract.tensors import (
    INPUTS,
    OUTPUTS,
    Capabilities,
    ModelRequest,
    Operation,
    decode_request,
    decode_response,
    encode_response,
    encode_text,
    encode_tokenization,
    render_model_config,
)


def arrays_of(request: ModelRequest) -> dict[str, np.ndarray]:
    return {spec.name: array for spec, array in request.to_arrays()}


def test_a_request_round_trips_and_absent_inputs_take_the_models_defaults() -> None:
    sent = ModelRequest(
        messages=[{"role": "user", "content": "日本"}],
        stream=True,
        sampling_parameters={"max_tokens": 3, "stop": "x"},
        return_logprobs=True,
        cancellation_key="k1",
    )
    arrays = arrays_of(sent)
    assert set(arrays) == {"messages", "stream", "sampling_parameters", "return_logprobs", "cancellation_key"}
    assert arrays["stream"].dtype == np.bool_ and arrays["messages"].dtype == np.object_
    received = decode_request(arrays.get)
    assert received.messages == sent.messages
    assert received.sampling_parameters == {"max_tokens": 3, "stop": ("x",)}
    assert (received.stream, received.exclude_input_in_output, received.cancel) == (True, False, False)
    assert received.return_finish_reason and received.return_num_output_tokens
    ids = decode_request(arrays_of(ModelRequest(input_ids=[5, 7, 11])).get)
    assert ids.input_ids == [5, 7, 11]


@pytest.mark.parametrize(
    ("inputs", "field", "message"),
    [
        ({}, None, "exactly one of"),
        ({"text_input": "a", "messages": [{"role": "user"}]}, None, "exactly one of"),
        ({"messages": []}, "messages", "non-empty"),
        ({"text_input": "a", "sampling_parameters": {"top_k": -5}}, "top_k", "must be in"),
        ({"text_input": "a", "sampling_parameters": {"temprature": 1}}, "temprature", "unknown"),
        ({"cancel": True}, "cancellation_key", "names the request"),
        ({"text_input": "a", "operation": "count"}, "operation", "must be one of generate, tokenize, detokenize"),
        ({"input_ids": [1], "operation": "tokenize"}, "operation", "tokenize takes text_input or messages"),
        ({"text_input": "a", "operation": "detokenize"}, "operation", "detokenize takes input_ids"),
        (
            {"messages": [{"role": "user"}], "operation": "tokenize", "continue_final_message": True},
            "continue_final_message",
            "send add_generation_prompt false",
        ),
    ],
)
def test_bad_requests_name_the_input(inputs: dict, field: str | None, message: str) -> None:
    with pytest.raises(ContractError, match=message) as error:
        decode_request(arrays_of(ModelRequest(**inputs)).get)
    assert error.value.field == field
    assert error.value.triton_message.startswith("invalid request: ")


def test_json_inputs_that_do_not_parse_are_named() -> None:
    for name in ("messages", "sampling_parameters"):
        arrays = {"text_input": np.array([b"x"], dtype=np.object_), name: np.array([b"{"], dtype=np.object_)}
        if name == "messages":
            del arrays["text_input"]
        with pytest.raises(ContractError, match="not valid JSON") as error:
            decode_request(arrays.get)
        assert error.value.field == name


def _raw(arrays: list[tuple[str, np.ndarray]]) -> dict[str, tuple[str, bytes]]:
    """Arrays as Triton puts them on the wire (BYTES: a 4-byte length before each element)."""
    wire = {}
    for name, array in arrays:
        if array.dtype == np.object_:
            wire[name] = ("BYTES", b"".join(struct.pack("<I", len(v)) + v for v in array))
        else:
            wire[name] = ({np.int32: "INT32", np.int64: "INT64"}[array.dtype.type], array.tobytes())
    return wire


def test_a_response_round_trips_as_the_request_asks() -> None:
    logprobs = TokenLogprobs([7], ["é"], [-0.5], [[TopLogprob("é", -0.5), TopLogprob("a", -1.5)]])
    choices = [
        ChoiceDelta(1, "é!", 4, "length", logprobs),
        ChoiceDelta(0, "", 3, None, None),
    ]
    request = decode_request(arrays_of(ModelRequest(text_input="x", return_logprobs=True)).get)
    arrays = encode_response(request, choices, num_input_tokens=9)
    response = decode_response(_raw(arrays), final=True)
    assert response.choices == choices and response.num_input_tokens == 9 and response.final
    terse = decode_request(
        arrays_of(ModelRequest(text_input="x", return_finish_reason=False, return_num_input_tokens=False)).get
    )
    names = {name for name, _ in encode_response(terse, choices, 9)}
    assert names == {"text_output", "index", "num_output_tokens"}


def test_a_malformed_response_is_a_contract_violation() -> None:
    arrays = [("text_output", np.array([b"a", b"b"], dtype=np.object_)), ("index", np.array([0], dtype=np.int32))]
    with pytest.raises(ContractError, match="same length"):
        decode_response(_raw(arrays), final=False)
    with pytest.raises(ContractError, match="truncated"):
        decode_response({"text_output": ("BYTES", b"\x05\x00\x00\x00ab")}, final=False)
    with pytest.raises(ContractError, match="logprobs"):
        decode_response(_raw([("text_output", np.array([b"a"], dtype=np.object_)), ("logprobs", np.array([b"{}"], dtype=np.object_))]), final=False)


def test_the_model_config_holds_every_tensor_of_the_tables() -> None:
    config = render_model_config("m", {"max_model_len": "64"})
    for spec in INPUTS:
        assert f'name: "{spec.name}" data_type: {spec.config_type}' in config
    for spec in OUTPUTS:
        assert f'name: "{spec.name}" data_type: {spec.config_type}' in config
    assert "decoupled: true" in config and 'key: "max_model_len"' in config


def test_capabilities_come_from_the_input_names() -> None:
    assert Capabilities.of({"input_ids"}) is None
    full = Capabilities.of({spec.name for spec in INPUTS})
    assert full == Capabilities(chat=True, completions=True, token_ids=True, cancel_in_band=True, tokenize=True)
    # A model of an older contract, without `operation`: no tokenize or detokenize requests.
    assert Capabilities.of({"text_input", "cancel"}) == Capabilities(False, True, False, False, False)


def test_error_messages_round_trip() -> None:
    error = ContractError("must be in [0, 2], got 5", "temperature")
    parsed = parse_error_message(f"in model 'x': {error.triton_message}")
    assert (parsed.kind, parsed.field, parsed.message) == (ErrorKind.INVALID_REQUEST, "temperature", "must be in [0, 2], got 5")
    too_long = ContractError("prompt of 9000 tokens", kind=ErrorKind.CONTEXT_LENGTH)
    assert parse_error_message(too_long.triton_message).kind is ErrorKind.CONTEXT_LENGTH
    assert parse_error_message("Segmentation fault").kind is None


def test_tools_travel_with_messages_and_are_checked() -> None:
    tool = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
    chat = [{"role": "user", "content": "hi"}]
    received = decode_request(arrays_of(ModelRequest(messages=chat, tools=[tool])).get)
    assert received.tools == [tool]
    for bad, message in (
        (ModelRequest(text_input="x", tools=[tool]), "go with messages"),
        (ModelRequest(messages=chat, tools=[{"type": "function"}]), "tool 0"),
    ):
        with pytest.raises(ContractError, match=message) as error:
            decode_request(arrays_of(bad).get)
        assert error.value.field == "tools"


def test_a_tokenize_request_and_its_answer_round_trip() -> None:
    sent = ModelRequest(
        messages=[{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "He"}],
        operation=Operation.TOKENIZE,  # an enum member goes on the wire as its value
        add_generation_prompt=False,
        continue_final_message=True,
        add_special_tokens=True,
        return_token_strs=True,
    )
    arrays = arrays_of(sent)
    assert arrays["operation"].tolist() == [b"tokenize"]
    received = decode_request(arrays.get)
    assert received.operation == Operation.TOKENIZE == "tokenize"
    assert (received.add_generation_prompt, received.continue_final_message) == (False, True)
    assert received.add_special_tokens is True and received.return_token_strs
    # Absent: generate; add_special_tokens stays None (the prompt kind's default).
    plain = decode_request(arrays_of(ModelRequest(text_input="x")).get)
    assert plain.operation == "generate" and plain.add_special_tokens is None
    assert (plain.add_generation_prompt, plain.continue_final_message, plain.return_token_strs) == (True, False, False)

    answer = Tokenization([1, 9906, 0], ["<|im_start|>", "Ġé", "<|endoftext|>"], 2048)
    response = decode_response(_raw(encode_tokenization(received, answer)), final=True)
    assert response.tokenization == answer and response.num_input_tokens == 3
    assert response.choices == [] and response.final
    # Token strings only when the request asks for them.
    terse = decode_response(_raw(encode_tokenization(plain, answer)), final=True)
    assert terse.tokenization == Tokenization([1, 9906, 0], None, 2048)
    # An empty prompt has no tokens, and says so.
    empty = decode_response(_raw(encode_tokenization(plain, Tokenization([], None, 64))), final=True)
    assert empty.tokenization == Tokenization([], None, 64) and empty.num_input_tokens == 0
    # A generation's response holds no tokenization.
    assert decode_response(_raw(encode_response(plain, [ChoiceDelta(0, "a", 1)], 1)), final=True).tokenization is None


def test_a_detokenize_request_and_its_answer_round_trip() -> None:
    received = decode_request(arrays_of(ModelRequest(input_ids=[5, 7], operation="detokenize")).get)
    assert received.operation == Operation.DETOKENIZE and received.input_ids == [5, 7]
    response = decode_response(_raw(encode_text("<s> héllo", 2)), final=True)
    assert [(c.index, c.text) for c in response.choices] == [(0, "<s> héllo")]
    assert response.num_input_tokens == 2 and response.tokenization is None


def test_a_malformed_tokenization_is_a_contract_violation() -> None:
    ids = ("prompt_token_ids", np.array([1, 2], dtype=np.int64))
    with pytest.raises(ContractError, match="one max_model_len"):
        decode_response(_raw([ids]), final=True)
    strings = ("token_strs", np.array([b"a"], dtype=np.object_))
    length = ("max_model_len", np.array([8], dtype=np.int32))
    with pytest.raises(ContractError, match="1 token_strs for 2 token ids"):
        decode_response(_raw([ids, length, strings]), final=True)
