"""The model's tokenizer and chat template, loaded from the model directory only.

Chat templates are code that ships with a model (often from the Hub). They are rendered
by transformers' `apply_chat_template`, in its immutable jinja2 sandbox (no underscore
attributes, no mutation of the inputs, underscore-free namespaces, no file loader), with
the template always from the model directory, never from a request. A request adds
only variables (`chat_template_kwargs`, e.g. `enable_thinking`): each must be one the
template reads, and none may replace what the engine passes (messages, tools, the
template itself).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jinja2
import jinja2.ext
import jinja2.meta
import jinja2.nodes
import jinja2.parser

from contract.tools import detect_format, render_generic

ROLES = ("system", "user", "assistant", "tool")
_MESSAGE_FIELDS = ("content", "name", "role", "tool_calls", "tool_call_id")
_TEMPLATE_FILE = "chat_template.jinja"


# What the engine passes to a template; a request's chat_template_kwargs cannot replace it.
_RESERVED_TEMPLATE_VARIABLES = frozenset(
    {"messages", "tools", "add_generation_prompt", "chat_template", "continue_final_message",
     "tokenize", "return_dict", "return_assistant_tokens_mask", "conversation"}
)  # fmt: skip


class MessagesError(ValueError):
    """A bad chat input; `field` names it, e.g. `messages[2].role`, `chat_template_kwargs.x`."""

    def __init__(self, field_name: str, message: str) -> None:
        super().__init__(f"{field_name}: {message}")
        self.field = field_name


class ChatTemplateError(ValueError):
    """The chat template refused the conversation (its `raise_exception(...)`)."""


class Tokenizer:
    """A Hugging Face tokenizer plus the model's sandboxed chat template and EOS ids."""

    def __init__(self, model_dir: str | Path, tool_call_format: str = "") -> None:
        """Load tokenizer files, chat template and EOS ids from `model_dir`; never contacts a hub.

        `tool_call_format` (contract.tools.FORMATS; "" = read from the template): "generic"
        renders tools with the generic tool prompt instead of the template."""
        from transformers import AutoTokenizer  # heavy import, only where the engine runs

        directory = Path(model_dir)
        if (
            not (directory / "tokenizer.json").is_file()
            and not (directory / "tokenizer_config.json").is_file()
        ):
            raise FileNotFoundError(
                f"{directory} has no tokenizer.json or tokenizer_config.json; "
                "package the model with its tokenizer files"
            )
        # The transformers tokenizer; the detokenizer decodes with it.
        self.hf = AutoTokenizer.from_pretrained(
            str(directory), local_files_only=True, trust_remote_code=False
        )
        self.chat_template = read_chat_template(directory)
        self.eos_token_ids = _read_eos_token_ids(directory, self.hf)
        self.tool_call_format = tool_call_format or detect_format(self.chat_template)
        # Parsed once so that a broken template fails at model load, not per request; the
        # variables it reads are the chat_template_kwargs a request may set.
        self.template_variables = (
            _template_variables(self.chat_template) if self.chat_template is not None else None
        )

    @property
    def vocab_size(self) -> int:
        """Number of token ids the tokenizer knows, added tokens included."""
        return len(self.hf)

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return list(self.hf.encode(text, add_special_tokens=add_special_tokens))

    def decode(self, token_ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        return self.hf.decode(list(token_ids), skip_special_tokens=skip_special_tokens)

    def apply_chat_template(
        self,
        messages: Any,
        tools: list[dict[str, Any]] | None = None,
        template_kwargs: Mapping[str, Any] | None = None,
        add_generation_prompt: bool = True,
        continue_final_message: bool = False,
    ) -> str:
        """Validate OpenAI-style messages and render the prompt, by default with the
        generation prompt (an assistant turn opened); `continue_final_message` leaves the
        last message open instead. `template_kwargs` are a request's extra template
        variables (checked here)."""
        plain_messages = validate_messages(messages)
        if self.tool_call_format == "generic":
            # The template takes no tools: tools, calls and results become plain messages.
            if tools or any(m["role"] == "tool" or "tool_calls" in m for m in plain_messages):
                plain_messages = render_generic(plain_messages, tools or [])
            tools = None
        if self.chat_template is None or self.template_variables is None:
            raise ChatTemplateError(
                "this model has no chat template (no chat_template in tokenizer_config.json "
                f"and no {_TEMPLATE_FILE}); send a raw prompt instead of messages"
            )
        variables = self._checked_template_kwargs(template_kwargs or {})
        documents = variables.pop("documents", None)
        try:
            return self.hf.apply_chat_template(
                plain_messages,
                tools=tools or None,
                documents=documents,
                chat_template=self.chat_template,
                add_generation_prompt=add_generation_prompt,
                continue_final_message=continue_final_message,
                tokenize=False,
                **variables,
            )
        except jinja2.exceptions.SecurityError:
            raise  # a template that tried to leave the sandbox: not the request's fault
        except jinja2.exceptions.TemplateError as error:  # its raise_exception(...)
            raise ChatTemplateError(f"chat template: {error}") from None

    def _checked_template_kwargs(self, template_kwargs: Any) -> dict[str, Any]:
        """A request's chat_template_kwargs: an object of variables the template reads."""
        if not isinstance(template_kwargs, Mapping):
            raise MessagesError(
                "chat_template_kwargs", f"must be an object; got {type(template_kwargs).__name__}"
            )
        assert self.template_variables is not None
        for name in template_kwargs:
            where = f"chat_template_kwargs.{name}"
            if name in _RESERVED_TEMPLATE_VARIABLES:
                raise MessagesError(where, "is set by the server, not by a request")
            if name not in self.template_variables:
                known = ", ".join(sorted(self.template_variables)) or "none"
                raise MessagesError(
                    where, f"this model's chat template does not read it (it reads: {known})"
                )
        return dict(template_kwargs)

    def token_strings(self, token_ids: Sequence[int]) -> list[str]:
        """Each id's entry in the vocabulary (e.g. `Ġworld`), as vLLM's /tokenize shows them."""
        return [str(token) for token in self.hf.convert_ids_to_tokens(list(token_ids))]

    def token_text(self, token_id: int) -> str:
        """One token's text, special tokens included (for logprobs entries)."""
        return self.hf.decode([token_id], skip_special_tokens=False)

    def encode_chat(
        self, messages: Any, template_kwargs: Mapping[str, Any] | None = None
    ) -> list[int]:
        """Prompt token ids of a conversation; the template already holds any BOS token."""
        prompt = self.apply_chat_template(messages, template_kwargs=template_kwargs)
        return self.encode(prompt, add_special_tokens=False)


def validate_messages(messages: Any) -> list[dict[str, Any]]:
    """Check OpenAI chat messages; text parts are joined so every template sees a string."""
    if not isinstance(messages, list):
        raise MessagesError(
            "messages", f"must be a list of messages; got {type(messages).__name__}"
        )
    if not messages:
        raise MessagesError("messages", "must not be empty")
    return [_validate_message(f"messages[{index}]", m) for index, m in enumerate(messages)]


def _validate_message(where: str, message: Any) -> dict[str, Any]:
    if not isinstance(message, dict):
        raise MessagesError(
            where, f"must be an object with role and content; got {type(message).__name__}"
        )
    for key in message:
        if key not in _MESSAGE_FIELDS:
            raise MessagesError(
                f"{where}.{key}", f"unsupported field; supported: {', '.join(_MESSAGE_FIELDS)}"
            )
    if "role" not in message:
        raise MessagesError(f"{where}.role", "is required")
    role = message["role"]
    if role not in ROLES:
        raise MessagesError(f"{where}.role", f"must be one of {', '.join(ROLES)}; got {role!r}")
    calls = message.get("tool_calls")
    if calls is not None and role != "assistant":
        raise MessagesError(f"{where}.tool_calls", "only assistant messages carry tool calls")
    if "content" not in message and calls is None:
        raise MessagesError(f"{where}.content", "is required")
    content = message.get("content")
    plain: dict[str, Any] = {
        "role": role,
        # An assistant message of calls only has no text (null content).
        "content": ""
        if content is None and calls is not None
        else _content_text(f"{where}.content", content),
    }
    if calls is not None:
        plain["tool_calls"] = _validate_tool_calls(f"{where}.tool_calls", calls)
    if role == "tool":
        if not isinstance(message.get("tool_call_id"), str):
            raise MessagesError(f"{where}.tool_call_id", "a tool message names the call it answers")
        plain["tool_call_id"] = message["tool_call_id"]
    if "name" in message:
        if not isinstance(message["name"], str):
            raise MessagesError(f"{where}.name", f"must be a string; got {message['name']!r}")
        plain["name"] = message["name"]
    return plain


def _validate_tool_calls(where: str, calls: Any) -> list[dict[str, Any]]:
    """OpenAI tool calls, with `arguments` as an object as chat templates expect them."""
    if not isinstance(calls, list) or not calls:
        raise MessagesError(where, "must be a non-empty list of tool calls")
    checked = []
    for index, call in enumerate(calls):
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise MessagesError(f"{where}[{index}].function", "needs a name and arguments")
        arguments = function.get("arguments") or "{}"
        if isinstance(arguments, str):
            try:
                arguments = json.loads(arguments)
            except ValueError:
                raise MessagesError(
                    f"{where}[{index}].function.arguments", "must be a JSON object"
                ) from None
        if not isinstance(arguments, dict):
            raise MessagesError(f"{where}[{index}].function.arguments", "must be a JSON object")
        checked.append(
            {
                "id": str(call.get("id") or ""),
                "type": "function",
                "function": {"name": function["name"], "arguments": arguments},
            }
        )
    return checked


def _content_text(where: str, content: Any) -> str:
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise MessagesError(
            where, f"must be a string or a list of text parts; got {type(content).__name__}"
        )
    texts = []
    for index, part in enumerate(content):
        part_where = f"{where}[{index}]"
        if not isinstance(part, dict):
            raise MessagesError(part_where, 'must be an object {"type": "text", "text": ...}')
        if part.get("type") != "text":
            raise MessagesError(f"{part_where}.type", f"must be 'text'; got {part.get('type')!r}")
        if not isinstance(part.get("text"), str):
            raise MessagesError(f"{part_where}.text", f"must be a string; got {part.get('text')!r}")
        texts.append(part["text"])
    # Parts are joined by newlines, as OpenAI-compatible servers do for text-only templates.
    return "\n".join(texts)


def read_chat_template(model_dir: str | Path) -> str | None:
    """The template from chat_template.jinja, else tokenizer_config.json; None if neither."""
    directory = Path(model_dir)
    template_file = directory / _TEMPLATE_FILE
    if template_file.is_file():
        return template_file.read_text(encoding="utf-8")
    template = _read_json(directory / "tokenizer_config.json").get("chat_template")
    if isinstance(template, list):
        # Named templates ([{"name": ..., "template": ...}]): the "default" one is for chat.
        named = {entry.get("name"): entry.get("template") for entry in template}
        template = named.get("default") or next(iter(named.values()), None)
    if template is not None and not isinstance(template, str):
        raise ValueError(f"{directory / 'tokenizer_config.json'}: chat_template must be a string")
    return template


def _read_eos_token_ids(model_dir: Path, hf: Any) -> tuple[int, ...]:
    """EOS ids from the tokenizer, generation_config.json and config.json, in that order."""
    found: list[int] = []
    if hf.eos_token_id is not None:
        found.append(int(hf.eos_token_id))
    for name in ("generation_config.json", "config.json"):
        value = _read_json(model_dir / name).get("eos_token_id")
        found.extend(
            int(v) for v in (value if isinstance(value, list) else [value]) if v is not None
        )
    return tuple(dict.fromkeys(found))  # de-duplicated, first-seen order


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    return json.loads(path.read_text(encoding="utf-8"))


class _GenerationTag(jinja2.ext.Extension):
    """Parses `{% generation %}...{% endgeneration %}` (transformers renders it)."""

    tags = {"generation"}

    def parse(self, parser: jinja2.parser.Parser) -> jinja2.nodes.Node:
        line = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return jinja2.nodes.Scope(body).set_lineno(line)


def _template_variables(chat_template: str) -> frozenset[str]:
    """The variables a template reads but does not set (a syntax error raises here)."""
    environment = jinja2.Environment(extensions=[_GenerationTag, jinja2.ext.loopcontrols])
    try:
        parsed = environment.parse(chat_template)
    except jinja2.exceptions.TemplateSyntaxError as error:
        raise ValueError(f"the model's chat template does not parse: {error}") from None
    return frozenset(jinja2.meta.find_undeclared_variables(parsed) - _RESERVED_TEMPLATE_VARIABLES)
