"""Tool calls: how a model writes them, how they are read back, and how they are enforced.

A model of the repository declares its tool-call format in its config parameter
`tool_call_format` (`tritium package` picks it from the chat template, `detect_format`).
The adapter reads it: it parses the model's text into OpenAI `tool_calls` (`ToolCallParser`,
streaming) and, for `tool_choice` = `required` or a named function, sends a structural tag
(`structural_tag`) that makes the model's output a call whose arguments match the
function's JSON schema. The model's side renders the tools: its chat template when the
template takes `tools`, else the documented generic tool prompt (`render_generic`).

Formats (`FORMATS`):

    hermes       <tool_call>\\n{"name": …, "arguments": {…}}\\n</tool_call>  (Qwen2.5/3, Hermes)
    generic      <tool_call>{"name": …, "arguments": {…}}</tool_call>      (our tool prompt,
                 for templates without tool support)
    llama3_json  {"name": …, "parameters": {…}}, calls separated by "; "   (Llama 3.1+)
    mistral      [TOOL_CALLS][{"name": …, "arguments": {…}}, …]           (Mistral v3)

Every call is written `call_prefix(name) + arguments + call_suffix`; that is also what
the structural tag enforces.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class ToolCall:
    name: str
    arguments: str  # the arguments object as JSON text (OpenAI's `function.arguments`)
    id: str = field(default_factory=lambda: f"call_{uuid.uuid4().hex[:24]}")


@dataclass(frozen=True)
class ToolCallFormat:
    name: str
    # Where a call starts in free text: the parser holds text back from here; a trigger of
    # the structural tag for tool_choice "auto".
    trigger: str
    # The text of one call is prefix(name) + arguments JSON + suffix; calls follow each
    # other with `separator` between them.
    call_prefix: str  # with {name}
    call_suffix: str
    separator: str
    arguments_key: str  # "arguments" or "parameters"
    # Calls only at the start of the output: the whole output is either text or calls.
    calls_only_at_start: bool

    def call_text(self, call: ToolCall) -> str:
        """How the model writes one call (for assistant messages in the generic prompt)."""
        prefix = self.call_prefix.replace("{name}", json.dumps(call.name)[1:-1])
        return prefix + call.arguments + self.call_suffix


FORMATS: dict[str, ToolCallFormat] = {
    "hermes": ToolCallFormat(
        "hermes", "<tool_call>", '<tool_call>\n{"name": "{name}", "arguments": ', "}\n</tool_call>",
        "\n", "arguments", calls_only_at_start=False,
    ),
    "generic": ToolCallFormat(
        "generic", "<tool_call>", '<tool_call>{"name": "{name}", "arguments": ', "}</tool_call>",
        "\n", "arguments", calls_only_at_start=False,
    ),
    "llama3_json": ToolCallFormat(
        "llama3_json", '{"name": "', '{"name": "{name}", "parameters": ', "}", "; ", "parameters",
        calls_only_at_start=True,
    ),
    "mistral": ToolCallFormat(
        "mistral", "[TOOL_CALLS]", '[TOOL_CALLS][{"name": "{name}", "arguments": ', "}]", "",
        "arguments", calls_only_at_start=True,
    ),
}  # fmt: skip


def detect_format(chat_template: str | None) -> str:
    """The format a chat template writes calls in; "generic" when it takes no tools."""
    if not chat_template or "tools" not in chat_template:
        return "generic"
    if "<tool_call>" in chat_template:
        return "hermes"
    if "[TOOL_CALLS]" in chat_template:
        return "mistral"
    if "<|python_tag|>" in chat_template or "ipython" in chat_template:
        return "llama3_json"
    return "generic"


# -- reading calls back -------------------------------------------------------------------


class ToolCallParser:
    """Splits one choice's streamed text into content and tool calls.

    `feed` returns the content that is certainly not part of a call (text that may still
    turn into a call marker is held back) and the calls completed so far; `finish` returns
    what is left. Text that looks like a call but does not parse is content, as written."""

    def __init__(self, format_name: str, tool_names: Sequence[str]) -> None:
        self.format = FORMATS[format_name]
        self.tool_names = set(tool_names)
        self._pending = ""  # text not yet given out
        self._in_calls = False  # a call marker was seen (or the output starts as calls)
        self._started = False  # any non-space text seen
        self._after_call = False  # whitespace after a call separates calls: not content
        self.calls: list[ToolCall] = []

    def feed(self, text: str) -> tuple[str, list[ToolCall]]:
        self._pending += text
        if self.format.calls_only_at_start:
            return self._feed_calls_at_start()
        return self._feed_tagged()

    def _feed_calls_at_start(self) -> tuple[str, list[ToolCall]]:
        if not self._started:
            stripped = self._pending.lstrip()
            if not stripped:
                return "", []
            self._started = True
            starts = [self.format.trigger[0]] + (
                ["<|python_tag|>"] if self.format.name == "llama3_json" else []
            )
            self._in_calls = any(stripped.startswith(s[: len(stripped)]) for s in starts)
        if self._in_calls:
            return "", []  # the whole output is read at the end
        out, self._pending = self._pending, ""
        return out, []

    def _feed_tagged(self) -> tuple[str, list[ToolCall]]:
        content, calls = [], []
        trigger, end = self.format.trigger, "</tool_call>"
        while True:
            if self._in_calls:
                stop = self._pending.find(end)
                if stop == -1:
                    break
                body = self._pending[len(trigger) : stop]
                call = self._parse_call(body)
                if call is None:  # not a call after all: it is text
                    content.append(self._pending[: stop + len(end)])
                else:
                    calls.append(call)
                self._after_call = call is not None
                self._pending = self._pending[stop + len(end) :]
                self._in_calls = False
                continue
            if self._after_call:
                stripped = self._pending.lstrip()
                if not stripped:
                    break  # only whitespace yet: a separator, or the start of more text
                self._pending, self._after_call = stripped, False
            start = self._pending.find(trigger)
            if start == -1:
                keep = _partial_suffix(self._pending, trigger)
                content.append(self._pending[: len(self._pending) - keep])
                self._pending = self._pending[len(self._pending) - keep :]
                break
            content.append(self._pending[:start])
            self._pending = self._pending[start:]
            self._in_calls = True
        self.calls += calls
        return "".join(content), calls

    def finish(self) -> tuple[str, list[ToolCall]]:
        """The end of the choice: everything still held back."""
        rest, self._pending = self._pending, ""
        if not self._in_calls:
            return ("" if self._after_call and not rest.strip() else rest), []
        if self.format.calls_only_at_start:
            calls = self._parse_call_list(rest)
            if calls is None:
                return rest, []
            self.calls += calls
            return "", calls
        return rest, []  # an unterminated call (max_tokens): left as text

    def _parse_call_list(self, text: str) -> list[ToolCall] | None:
        body = text.strip()
        items: list[Any] = []
        if self.format.name == "mistral":
            for piece in body.split("[TOOL_CALLS]"):
                if not piece.strip():
                    continue
                try:
                    parsed = json.loads(piece)
                except ValueError:
                    return None
                items += parsed if isinstance(parsed, list) else [parsed]
        else:
            body = body.removeprefix("<|python_tag|>").strip()
            for piece in _split_top_level(body, self.format.separator.strip()):
                try:
                    items.append(json.loads(piece))
                except ValueError:
                    return None
        calls = [self._call_from(item) for item in items]
        if not calls or any(call is None for call in calls):
            return None
        return calls  # type: ignore[return-value]

    def _parse_call(self, body: str) -> ToolCall | None:
        try:
            return self._call_from(json.loads(body))
        except ValueError:
            return None

    def _call_from(self, item: Any) -> ToolCall | None:
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            return None
        arguments = item.get(self.format.arguments_key, item.get("arguments", {}))
        if isinstance(arguments, str):  # some models write the arguments as JSON text
            try:
                arguments = json.loads(arguments)
            except ValueError:
                return None
        if not isinstance(arguments, dict) or (
            self.tool_names and item["name"] not in self.tool_names
        ):
            return None
        return ToolCall(item["name"], json.dumps(arguments, ensure_ascii=False))


def _partial_suffix(text: str, marker: str) -> int:
    """How many characters at the end of `text` could be the start of `marker`."""
    for size in range(min(len(marker) - 1, len(text)), 0, -1):
        if marker.startswith(text[-size:]):
            return size
    return 0


def _split_top_level(text: str, separator: str) -> list[str]:
    """`text` split at `separator` where no JSON object or string is open."""
    pieces, depth, in_string, escaped, start = [], 0, False, False, 0
    for position, char in enumerate(text):
        if in_string:
            escaped = char == "\\" and not escaped
            if char == '"' and not escaped:
                in_string = False
            continue
        if char == '"':
            in_string, escaped = True, False
        elif char in "{[":
            depth += 1
        elif char in "}]":
            depth -= 1
        elif depth == 0 and text.startswith(separator, position):
            pieces.append(text[start:position])
            start = position + len(separator)
    pieces.append(text[start:])
    return [piece.strip() for piece in pieces if piece.strip()]


# -- enforcing calls ----------------------------------------------------------------------


def structural_tag(
    format_name: str, tools: Sequence[dict[str, Any]], *, required: bool, parallel: bool
) -> dict[str, Any]:
    """The structural tag (`structured_outputs.structural_tag`) for a tool choice.

    `tools` are OpenAI function tools (`{"type": "function", "function": {"name",
    "parameters"}}`). required: the output is one call (or several when `parallel`) of
    these tools and nothing else; otherwise (`auto`) free text in which a call, once its
    marker is written, follows the schema of the function it names."""
    fmt = FORMATS[format_name]
    tags = [
        {
            "begin": fmt.call_prefix.replace("{name}", tool["function"]["name"]),
            "content": {
                "type": "json_schema",
                "json_schema": tool["function"].get("parameters") or {"type": "object"},
            },
            "end": fmt.call_suffix,
        }
        for tool in tools
    ]
    if required:
        calls = {
            "type": "tags_with_separator",
            "tags": tags,
            "separator": fmt.separator,
            "at_least_one": True,
            "stop_after_first": not parallel,
        }
        return {"type": "structural_tag", "format": calls}
    triggered = {
        "type": "triggered_tags",
        "triggers": [fmt.trigger],
        "tags": tags,
        "at_least_one": False,
        "stop_after_first": not parallel,
    }
    return {"type": "structural_tag", "format": triggered}


# -- the generic tool prompt --------------------------------------------------------------

GENERIC_TOOLS_PROMPT = """You can call functions. Their definitions, as JSON:
<tools>
{tools}
</tools>
To call a function, answer with one line per call and nothing else:
<tool_call>{{"name": "<function name>", "arguments": <the arguments as a JSON object>}}</tool_call>
A function's result comes back in a message <tool_response>…</tool_response>."""


def render_generic(
    messages: list[dict[str, Any]], tools: Sequence[dict[str, Any]]
) -> list[dict[str, Any]]:
    """Messages with tools, calls and results -> plain messages any chat template takes.

    The tools are described in the system message (`GENERIC_TOOLS_PROMPT`); an
    assistant's calls become `generic` call text; a tool result becomes a user message
    `<tool_response>…</tool_response>`."""
    fmt = FORMATS["generic"]
    prompt = GENERIC_TOOLS_PROMPT.format(
        tools="\n".join(json.dumps(tool.get("function", tool), ensure_ascii=False) for tool in tools)
    )
    out: list[dict[str, Any]] = []
    for message in messages:
        role = message.get("role")
        if role == "tool":
            result = f"<tool_response>\n{message.get('content') or ''}\n</tool_response>"
            out.append({"role": "user", "content": result})
        elif role == "assistant" and message.get("tool_calls"):
            calls = [
                fmt.call_text(ToolCall(c["function"]["name"], _arguments_text(c), c.get("id", "")))
                for c in message["tool_calls"]
            ]
            text = message.get("content") or ""
            out.append({"role": "assistant", "content": "\n".join([text, *calls]).strip()})
        else:
            out.append({k: v for k, v in message.items() if k in ("role", "content", "name")})
    if tools:
        if out and out[0]["role"] == "system":
            out[0] = {**out[0], "content": f"{out[0]['content']}\n\n{prompt}"}
        else:
            out.insert(0, {"role": "system", "content": prompt})
    return out


def _arguments_text(call: dict[str, Any]) -> str:
    arguments = call["function"].get("arguments") or "{}"
    return arguments if isinstance(arguments, str) else json.dumps(arguments)


_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def check_tool_name(name: str) -> bool:
    """OpenAI's rule for a function name."""
    return bool(_NAME.match(name))
