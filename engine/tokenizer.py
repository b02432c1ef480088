"""The model's tokenizer and chat template, loaded from the model directory only.

Chat templates are code that ships with a model (often from the Hub), so they are
rendered here in jinja2's immutable sandbox, never through
`PreTrainedTokenizerBase.apply_chat_template`; the template always comes from the model
directory, never from a request. The environment mirrors what Hugging Face templates
expect (trim_blocks, lstrip_blocks, loop controls, `raise_exception`, `strftime_now`,
the special tokens, `tools=None`), so that prompts equal transformers' own rendering.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, NoReturn

import jinja2
import jinja2.ext
import jinja2.nodes
import jinja2.parser
import jinja2.utils
from jinja2.sandbox import ImmutableSandboxedEnvironment

from contract.tools import detect_format, render_generic

ROLES = ("system", "user", "assistant", "tool")
_MESSAGE_FIELDS = ("content", "name", "role", "tool_calls", "tool_call_id")
_TEMPLATE_FILE = "chat_template.jinja"


class MessagesError(ValueError):
    """A bad chat message; `field` names it, e.g. `messages[2].role`."""

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
        # Compiled once so that a broken template fails at model load, not per request.
        self._template = _compile(self.chat_template) if self.chat_template is not None else None

    @property
    def vocab_size(self) -> int:
        """Number of token ids the tokenizer knows, added tokens included."""
        return len(self.hf)

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return list(self.hf.encode(text, add_special_tokens=add_special_tokens))

    def decode(self, token_ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        return self.hf.decode(list(token_ids), skip_special_tokens=skip_special_tokens)

    def apply_chat_template(self, messages: Any, tools: list[dict[str, Any]] | None = None) -> str:
        """Validate OpenAI-style messages and render the prompt, generation prompt included."""
        plain_messages = validate_messages(messages)
        if self.tool_call_format == "generic":
            # The template takes no tools: tools, calls and results become plain messages.
            if tools or any(m["role"] == "tool" or "tool_calls" in m for m in plain_messages):
                plain_messages = render_generic(plain_messages, tools or [])
            tools = None
        if self._template is None:
            raise ChatTemplateError(
                "this model has no chat template (no chat_template in tokenizer_config.json "
                f"and no {_TEMPLATE_FILE}); send a raw prompt instead of messages"
            )
        special_tokens = {
            name: value
            for name, value in self.hf.special_tokens_map.items()
            if isinstance(value, str)
        }
        return self._template.render(
            **special_tokens,
            messages=plain_messages,
            tools=tools or None,
            documents=None,
            add_generation_prompt=True,
        )

    def token_text(self, token_id: int) -> str:
        """One token's text, special tokens included (for logprobs entries)."""
        return self.hf.decode([token_id], skip_special_tokens=False)

    def encode_chat(self, messages: Any) -> list[int]:
        """Prompt token ids of a conversation; the template already holds any BOS token."""
        return self.encode(self.apply_chat_template(messages), add_special_tokens=False)


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
        "content": "" if content is None and calls is not None else _content_text(
            f"{where}.content", content
        ),
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


def _raise_exception(message: str) -> NoReturn:
    raise ChatTemplateError(f"chat template: {message}")


def _strftime_now(format_string: str) -> str:
    return datetime.now().strftime(format_string)


def _tojson(
    value: Any,
    ensure_ascii: bool = False,
    indent: int | None = None,
    separators: tuple[str, str] | None = None,
    sort_keys: bool = False,
) -> str:
    # Jinja's own tojson escapes HTML characters (<, >, &), which changes prompts.
    return json.dumps(
        value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
    )


class _Namespace(jinja2.utils.Namespace):
    """`namespace()` for templates; underscore names could reach CPython internals."""

    def __init__(*args: Any, **kwargs: Any) -> None:  # noqa: N805 - mirrors jinja's signature
        self, rest = args[0], args[1:]
        attributes = dict(*rest, **kwargs)
        for name in attributes:
            _Namespace._check(name)
        jinja2.utils.Namespace.__init__(self, attributes)

    def __setitem__(self, name: str, value: Any) -> None:
        _Namespace._check(name)
        jinja2.utils.Namespace.__setitem__(self, name, value)

    @staticmethod
    def _check(name: Any) -> None:
        if isinstance(name, str) and name.startswith("_"):
            raise jinja2.exceptions.SecurityError(
                f"chat templates cannot set underscore names on a namespace, got {name!r}"
            )


class _GenerationTag(jinja2.ext.Extension):
    """Accept `{% generation %}...{% endgeneration %}` (assistant masks in training) as plain text."""

    tags = {"generation"}

    def parse(self, parser: jinja2.parser.Parser) -> jinja2.nodes.Node:
        line = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return jinja2.nodes.Scope(body).set_lineno(line)


def _compile(chat_template: str) -> jinja2.Template:
    environment = ImmutableSandboxedEnvironment(
        trim_blocks=True,
        lstrip_blocks=True,
        extensions=[_GenerationTag, jinja2.ext.loopcontrols],
    )
    environment.filters["tojson"] = _tojson
    environment.globals["raise_exception"] = _raise_exception
    environment.globals["strftime_now"] = _strftime_now
    environment.globals["namespace"] = _Namespace
    return environment.from_string(chat_template)
