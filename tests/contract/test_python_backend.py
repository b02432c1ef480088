"""contract.python_backend answers tokenize and detokenize requests itself, with what the
model's `tokenize` / `detokenize` return, and refuses them by name for a model without a
tokenizer (the base's default, which the null model keeps); a fake `pb_utils` stands in
for Triton's Python backend."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from contract.errors import ContractError, parse_error_message
from contract.outputs import Tokenization
from contract.python_backend import ContractModel
from contract.tensors import ModelRequest

FINAL = 1


class FakeSender:
    def __init__(self) -> None:
        self.sent: list[tuple[Any, int]] = []

    def send(self, response: Any = None, flags: int = 0) -> None:
        self.sent.append((response, flags))


def fake_pb_utils() -> SimpleNamespace:
    return SimpleNamespace(
        TRITONSERVER_RESPONSE_COMPLETE_FINAL=FINAL,
        Tensor=lambda name, array: (name, array),
        InferenceResponse=lambda output_tensors=(), error=None: SimpleNamespace(
            tensors=dict(output_tensors), error=error
        ),
        TritonError=lambda message: message,
        get_input_tensor_by_name=lambda request, name: request.inputs.get(name),
    )


def triton_request(request: ModelRequest) -> SimpleNamespace:
    sender = FakeSender()
    inputs = {spec.name: SimpleNamespace(as_numpy=lambda a=array: a) for spec, array in request.to_arrays()}
    return SimpleNamespace(inputs=inputs, sender=sender, get_response_sender=lambda: sender)


class Tokenizing(ContractModel):
    def __init__(self) -> None:
        self.pb_utils = fake_pb_utils()
        self.cancellable = {}
        self.submitted: list[ModelRequest] = []

    def submit(self, request: ModelRequest, sender: Any) -> Any:
        self.submitted.append(request)

    def tokenize(self, request: ModelRequest) -> Tokenization:
        words = (request.text_input or "").split()
        return Tokenization(list(range(len(words))), words, 64)

    def detokenize(self, request: ModelRequest) -> str:
        if any(i > 9 for i in request.input_ids or []):
            raise ContractError("token id 10 is not in [0, 10) (the vocabulary)", "tokens")
        return " ".join(str(i) for i in request.input_ids or [])


class NoTokenizer(Tokenizing):
    tokenize = ContractModel.tokenize
    detokenize = ContractModel.detokenize


def answer(model: ContractModel, request: ModelRequest) -> tuple[Any, int]:
    triton = triton_request(request)
    model.execute([triton])
    assert len(triton.sender.sent) == 1  # one response, the final one
    return triton.sender.sent[0]


def test_tokenize_and_detokenize_are_answered_at_once_and_nothing_is_submitted() -> None:
    model = Tokenizing()
    response, flags = answer(model, ModelRequest(text_input="a b c", operation="tokenize", return_token_strs=True))
    assert flags == FINAL and response.error is None
    assert response.tensors["prompt_token_ids"].tolist() == [0, 1, 2]
    assert response.tensors["token_strs"].tolist() == [b"a", b"b", b"c"]
    assert response.tensors["max_model_len"].tolist() == [64]
    response, flags = answer(model, ModelRequest(input_ids=[3, 4], operation="detokenize"))
    assert response.tensors["text_output"].tolist() == [b"3 4"] and flags == FINAL
    response, _ = answer(model, ModelRequest(input_ids=[3, 12], operation="detokenize"))
    parsed = parse_error_message(response.error)
    assert parsed.field == "tokens" and "vocabulary" in parsed.message
    assert model.submitted == []
    model.execute([triton_request(ModelRequest(text_input="x"))])
    assert len(model.submitted) == 1  # a generation still goes to submit


def test_a_model_without_a_tokenizer_refuses_by_name() -> None:
    for request in (
        ModelRequest(text_input="a", operation="tokenize"),
        ModelRequest(input_ids=[1], operation="detokenize"),
    ):
        response, flags = answer(NoTokenizer(), request)
        parsed = parse_error_message(response.error)
        assert flags == FINAL and parsed.field == "operation"
        assert "no tokenizer" in parsed.message and response.tensors == {}
