"""Request bodies of the OpenAI API (chat and completions) and of vLLM's /tokenize and
/detokenize, as pydantic models.

Every model forbids unknown fields: a typo or a field we do not know is a 400 that
names it, never silently dropped. OpenAI fields we know but do not implement are
declared here so that `check_supported` can answer "not supported yet" with the
field's name. docs/api.md lists every field; tests/adapter/test_docs.py keeps the
two in step. Response objects are in `adapter.objects`.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, create_model, field_validator

from adapter.errors import InvalidRequest, NotSupported
from contract.errors import ContractError
from contract.sampling import (
    FIELDS_BY_NAME,
    MAX_TOP_LOGPROBS,
    SAMPLING_FIELDS,
    Exposure,
    Kind,
    SamplingField,
)

MAX_COMPLETION_LOGPROBS = 5


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid")


class StreamOptions(StrictModel):
    # Send one more chunk before [DONE] with empty choices and the request's usage.
    include_usage: bool | None = None
    # Accepted and ignored: we never pad chunks.
    include_obfuscation: bool | None = None


class _RequestBase(StrictModel):
    """Fields shared by chat and completions requests that are not sampling fields."""

    model: str = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1)
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    user: str | None = None  # accepted, only logged

    @property
    def include_usage(self) -> bool:
        return bool(self.stream and self.stream_options and self.stream_options.include_usage)

    def check_stream_options(self) -> None:
        if self.stream_options is not None and not self.stream:
            raise InvalidRequest(
                "stream_options is only allowed when stream is true", param="stream_options"
            )


_ANNOTATIONS: dict[Kind, Any] = {
    Kind.INT: int | None,
    Kind.FLOAT: float | None,
    Kind.BOOL: bool | None,
    Kind.STRINGS: str | list[str] | None,
    Kind.TOKEN_IDS: list[int] | None,
    # JSON object keys are strings: the token id, as text
    Kind.BIAS: dict[str, float] | None,
    Kind.STRUCTURED: dict[str, Any] | None,
}


def _request_field(spec: SamplingField) -> tuple[Any, Any]:
    """A request field for a contract sampling field: its type, range and description."""
    bounds: dict[str, float] = {}
    if spec.minimum is not None:
        bounds["gt" if spec.minimum_exclusive else "ge"] = spec.minimum
    if spec.maximum is not None:
        bounds["le"] = spec.maximum
    return _ANNOTATIONS[spec.kind], Field(default=None, description=spec.doc, **bounds)


def _check_with_the_contract(value: Any, info: ValidationInfo) -> Any:
    """The contract's own rules for the field (stop strings, token ids, bias keys)."""
    if value is not None:
        try:
            FIELDS_BY_NAME[info.field_name].check(value)
        except ContractError as error:
            raise ValueError(error.reason) from None
    return value


SAME_FIELDS = tuple(spec for spec in SAMPLING_FIELDS if spec.exposure is Exposure.SAME)

# The contract's sampling fields that the API offers under their own name (docs/api.md,
# "Sampling fields"), written from the contract's table: a field added there is a request
# field here, with the same range.
SamplingRequest = create_model(
    "SamplingRequest",
    __base__=_RequestBase,
    __validators__={
        "check_with_the_contract": field_validator(*(spec.name for spec in SAME_FIELDS))(
            _check_with_the_contract
        )
    },
    **{spec.name: _request_field(spec) for spec in SAME_FIELDS},
)


class ContentPart(StrictModel):
    type: str
    text: str | None = None
    # Other part types, known so that they get "not supported yet" rather than "unknown".
    image_url: Any | None = None
    input_audio: Any | None = None
    file: Any | None = None
    refusal: str | None = None


class FunctionCall(StrictModel):
    name: str = Field(min_length=1)
    arguments: str  # a JSON object, as text


class ToolCallIn(StrictModel):
    """A call the assistant made, in a message of the conversation."""

    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatMessage(StrictModel):
    # "developer" is OpenAI's newer name for "system"; the model sees "system".
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCallIn] | None = None  # assistant messages: the calls it made
    tool_call_id: str | None = None  # tool messages: the call this is the result of
    # Known, not supported: OpenAI's deprecated function calling, audio.
    function_call: Any | None = None
    refusal: str | None = None
    audio: Any | None = None

    def for_model(self, position: int) -> dict[str, Any]:
        """The message as the model's chat template receives it."""
        where = f"messages.{position}"
        if self.role == "function":
            raise NotSupported(f"{where}.role", "role 'function' (use tools and role 'tool')")
        for name in ("function_call", "audio"):
            if getattr(self, name) is not None:
                raise NotSupported(f"{where}.{name}", f"'{name}' in messages")
        if self.tool_calls is not None and self.role != "assistant":
            raise InvalidRequest(
                f"Only assistant messages carry tool_calls ('{where}.tool_calls')",
                param=f"{where}.tool_calls",
            )
        if self.role == "tool" and not self.tool_call_id:
            raise InvalidRequest(
                f"A tool message names the call it answers ('{where}.tool_call_id')",
                param=f"{where}.tool_call_id",
            )
        if self.content is None and not self.tool_calls:
            raise InvalidRequest(
                f"Messages need content; '{where}.content' is null", param=f"{where}.content"
            )
        message: dict[str, Any] = {
            "role": "system" if self.role == "developer" else self.role,
            "content": None if self.content is None else _join_text_parts(self.content, where),
        }
        if self.name is not None:
            message["name"] = self.name
        if self.tool_calls:
            message["tool_calls"] = [call.model_dump() for call in self.tool_calls]
        if self.tool_call_id is not None:
            message["tool_call_id"] = self.tool_call_id
        return message


class FunctionDefinition(StrictModel):
    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")
    description: str | None = None
    parameters: dict[str, Any] | None = None  # a JSON schema of the arguments object
    strict: bool | None = None  # calls always follow the schema here (when enforced)


class Tool(StrictModel):
    type: Literal["function"]
    function: FunctionDefinition


class NamedFunction(StrictModel):
    name: str


class NamedToolChoice(StrictModel):
    type: Literal["function"]
    function: NamedFunction


class JsonSchemaFormat(StrictModel):
    name: str = Field(min_length=1, max_length=64)
    description: str | None = None
    # OpenAI's field is `schema`; pydantic keeps that name for its own method.
    json_schema: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: bool | None = None  # the schema is always enforced here

    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class ResponseFormat(StrictModel):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None


def _join_text_parts(content: str | list[ContentPart], where: str) -> str:
    if isinstance(content, str):
        return content
    texts = []
    for position, part in enumerate(content):
        param = f"{where}.content.{position}"
        if part.type != "text":
            raise NotSupported(f"{param}.type", f"content parts of type '{part.type}'", plural=True)
        if part.text is None:
            raise InvalidRequest(
                f"Text content parts need 'text' ('{param}.text')", param=f"{param}.text"
            )
        texts.append(part.text)
    return "\n".join(texts)


class ChatCompletionRequest(SamplingRequest):
    messages: list[ChatMessage] = Field(min_length=1)
    # Newer name of max_tokens; wins when both are given.
    max_completion_tokens: int | None = Field(default=None, ge=1)
    logprobs: bool | None = None
    top_logprobs: int | None = Field(default=None, ge=0, le=MAX_TOP_LOGPROBS)
    # Accepted and ignored (metadata about the request, not about generation).
    metadata: dict[str, str] | None = None
    service_tier: str | None = None
    prompt_cache_key: str | None = None  # prefix caching is automatic
    safety_identifier: str | None = None
    response_format: ResponseFormat | None = None
    tools: list[Tool] | None = None
    # Extra variables for the model's chat template (vLLM's field), e.g. enable_thinking.
    chat_template_kwargs: dict[str, Any] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None  # default true, as OpenAI
    modalities: list[str] | None = None
    store: bool | None = None
    # Not supported yet: any value is a 400.
    functions: list[Any] | None = None
    function_call: Any | None = None
    audio: Any | None = None
    prediction: Any | None = None
    reasoning_effort: str | None = None
    verbosity: str | None = None
    web_search_options: Any | None = None

    @property
    def completion_tokens_limit(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    def check_supported(self) -> None:
        self.check_stream_options()
        for name in (
            "functions",
            "function_call",
            "audio",
            "prediction",
            "reasoning_effort",
            "verbosity",
            "web_search_options",
        ):
            if getattr(self, name) is not None:
                raise NotSupported(name, f"'{name}'")
        check_response_format(self.response_format, self.structured_outputs)
        self._check_tools()
        if self.modalities not in (None, ["text"]):
            raise NotSupported("modalities", "modalities other than ['text']", plural=True)
        if self.store:
            raise NotSupported("store", "storing completions (store=true)")
        if self.top_logprobs and not self.logprobs:
            raise InvalidRequest("top_logprobs needs logprobs=true", param="top_logprobs")

    def _check_tools(self) -> None:
        choice = self.tool_choice
        if self.tools is None:
            if choice not in (None, "none"):
                raise InvalidRequest("tool_choice needs tools", param="tool_choice")
            return
        names = [tool.function.name for tool in self.tools]
        if len(set(names)) != len(names):
            raise InvalidRequest("tools must have different names", param="tools")
        if isinstance(choice, NamedToolChoice) and choice.function.name not in names:
            raise InvalidRequest(
                f"tool_choice names '{choice.function.name}', which is not in tools",
                param="tool_choice",
            )
        if self.uses_tools and (
            self.structured_outputs is not None
            or (self.response_format is not None and self.response_format.type != "text")
        ):
            raise NotSupported(
                "response_format", "response_format or structured_outputs together with tools"
            )

    @property
    def uses_tools(self) -> bool:
        """The model is told about tools and its calls are read back."""
        return bool(self.tools) and self.tool_choice != "none"

    def messages_for_model(self) -> list[dict[str, Any]]:
        return [message.for_model(position) for position, message in enumerate(self.messages)]


def check_response_format(
    response_format: ResponseFormat | None, structured_outputs: dict[str, Any] | None
) -> None:
    if response_format is None or response_format.type == "text":
        return
    if structured_outputs is not None:
        raise InvalidRequest(
            "give response_format or structured_outputs, not both", param="response_format"
        )
    if response_format.type == "json_schema" and (
        response_format.json_schema is None or response_format.json_schema.json_schema is None
    ):
        raise InvalidRequest(
            "response_format of type json_schema needs json_schema.schema",
            param="response_format.json_schema",
        )


class CompletionRequest(SamplingRequest):
    prompt: str | list[str] | list[int] | list[list[int]]
    # OpenAI's default for the legacy completions API.
    max_tokens: int | None = Field(default=16, ge=1)
    echo: bool | None = False
    # Return logprobs of the chosen token and this many alternatives (0..5).
    logprobs: int | None = Field(default=None, ge=0, le=MAX_COMPLETION_LOGPROBS)
    best_of: int | None = Field(default=None, ge=1)
    suffix: str | None = None
    response_format: ResponseFormat | None = None  # as for chat (an extension here)

    def check_supported(self) -> None:
        self.check_stream_options()
        check_response_format(self.response_format, self.structured_outputs)
        if self.suffix is not None:
            raise NotSupported("suffix", "'suffix' (insertion)")
        if self.best_of is not None and self.best_of != (self.n or 1):
            raise NotSupported("best_of", "best_of different from n")
        if self.echo and self.logprobs is not None:
            raise NotSupported("echo", "echo together with logprobs (prompt logprobs)")

    def prompts(self) -> list[str | list[int]]:
        """One entry per prompt: its text, or its token ids (a list of ints is one prompt)."""
        prompt = self.prompt
        if isinstance(prompt, str):
            return [prompt]
        if not prompt:
            raise InvalidRequest("prompt must not be an empty list", param="prompt")
        if all(isinstance(item, int) for item in prompt):
            prompts: list[str | list[int]] = [list(prompt)]  # type: ignore[arg-type]
        else:
            prompts = list(prompt)  # type: ignore[arg-type]
        for position, item in enumerate(prompts):
            if isinstance(item, list) and not item:
                raise InvalidRequest(
                    f"prompt {position} is an empty list of token ids", param="prompt"
                )
            if isinstance(item, list) and any(token_id < 0 for token_id in item):
                raise InvalidRequest("token ids must be >= 0", param="prompt")
        return prompts


class TokenizeRequest(StrictModel):
    """POST /tokenize (vLLM's): a raw prompt or chat messages, exactly one of them."""

    model: str = Field(min_length=1)
    prompt: str | None = None
    messages: list[ChatMessage] | None = Field(default=None, min_length=1)
    # Default: true for a prompt, false for messages (the chat template writes them), as vLLM.
    add_special_tokens: bool | None = None
    return_token_strs: bool | None = False
    # With messages only.
    add_generation_prompt: bool | None = None  # default true, false with continue_final_message
    continue_final_message: bool | None = None
    tools: list[Tool] | None = None
    chat_template_kwargs: dict[str, Any] | None = None
    # vLLM's, not supported: the model's own template only, text only.
    chat_template: str | None = None
    mm_processor_kwargs: dict[str, Any] | None = None

    _CHAT_ONLY = (
        "add_generation_prompt",
        "continue_final_message",
        "tools",
        "chat_template_kwargs",
    )

    def check_supported(self) -> None:
        if self.prompt is None and self.messages is None:
            raise InvalidRequest(
                "Either 'prompt' (a string) or 'messages' (a chat) is required",
                param="prompt",
                code="missing",
            )
        if self.prompt is not None and self.messages is not None:
            raise InvalidRequest("Give 'prompt' or 'messages', not both", param="messages")
        if self.chat_template is not None:
            raise NotSupported(
                "chat_template", "a chat template in the request (the model's own is used)"
            )
        if self.mm_processor_kwargs is not None:
            raise NotSupported("mm_processor_kwargs", "'mm_processor_kwargs' (text models only)")
        if self.prompt is not None:
            for name in self._CHAT_ONLY:
                if getattr(self, name) is not None:
                    raise InvalidRequest(f"'{name}' goes with 'messages', not 'prompt'", param=name)
        if self.continue_final_message and self.add_generation_prompt:
            raise InvalidRequest(
                "Cannot set both 'continue_final_message' and 'add_generation_prompt' to true",
                param="continue_final_message",
            )
        if self.tools is not None:
            names = [tool.function.name for tool in self.tools]
            if len(set(names)) != len(names):
                raise InvalidRequest("tools must have different names", param="tools")

    @property
    def generation_prompt(self) -> bool | None:
        """add_generation_prompt as sent to the model: off when the last message goes on."""
        if self.add_generation_prompt is None and self.continue_final_message:
            return False
        return self.add_generation_prompt

    def messages_for_model(self) -> list[dict[str, Any]] | None:
        if self.messages is None:
            return None
        return [message.for_model(position) for position, message in enumerate(self.messages)]


class DetokenizeRequest(StrictModel):
    """POST /detokenize (vLLM's): token ids back to text."""

    model: str = Field(min_length=1)
    tokens: list[Annotated[int, Field(ge=0)]] = Field(min_length=1)
