"""Tool calls read back from model text (streamed in any pieces), their structural tags,
and the generic tool prompt."""

from __future__ import annotations

import json

import pytest

from contract.tools import (
    FORMATS,
    ToolCall,
    ToolCallParser,
    detect_format,
    render_generic,
    structural_tag,
)

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


def parse_in_pieces(format_name: str, text: str, size: int) -> tuple[str, list[ToolCall]]:
    parser = ToolCallParser(format_name, ["get_weather", "add"])
    content, calls = [], []
    for start in range(0, len(text), size):
        piece, new = parser.feed(text[start : start + size])
        content.append(piece)
        calls += new
    piece, new = parser.finish()
    return "".join(content) + piece, calls + new


CASES = {
    "hermes": (
        'Let me check.<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>\n'
        '<tool_call>\n{"name": "add", "arguments": {"a": 1, "b": 2}}\n</tool_call>',
        "Let me check.",
    ),
    "generic": ('<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>'
                '<tool_call>{"name": "add", "arguments": "{\\"a\\": 1, \\"b\\": 2}"}</tool_call>', ""),
    "llama3_json": ('<|python_tag|>{"name": "get_weather", "parameters": {"city": "Paris"}}; '
                    '{"name": "add", "parameters": {"a": 1, "b": 2}}', ""),
    "mistral": ('[TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "Paris"}}, '
                '{"name": "add", "arguments": {"a": 1, "b": 2}}]', ""),
}


@pytest.mark.parametrize("format_name", sorted(CASES))
@pytest.mark.parametrize("size", [1, 3, 7, 1000])
def test_calls_are_read_whatever_the_pieces(format_name: str, size: int) -> None:
    text, content = CASES[format_name]
    got_content, calls = parse_in_pieces(format_name, text, size)
    assert got_content == content
    assert [(c.name, json.loads(c.arguments)) for c in calls] == [
        ("get_weather", {"city": "Paris"}),
        ("add", {"a": 1, "b": 2}),
    ]
    assert all(c.id.startswith("call_") and len(c.id) == 29 for c in calls)
    assert len({c.id for c in calls}) == 2


@pytest.mark.parametrize("format_name", sorted(CASES))
def test_text_without_calls_is_content_and_streams(format_name: str) -> None:
    parser = ToolCallParser(format_name, ["get_weather"])
    text = "The weather is fine, <b>really</b> [1] {ok}"
    content, calls = parse_in_pieces(format_name, text, 4)
    assert (content, calls) == (text, [])
    if format_name in ("hermes", "generic"):  # text streams at once, but a possible marker
        assert parser.feed("Sunny <tool") == ("Sunny ", [])
        assert parser.feed("box>") == ("<toolbox>", [])


def test_what_looks_like_a_call_but_is_not_stays_text() -> None:
    for text in (
        '<tool_call>{"name": "unknown_tool", "arguments": {}}</tool_call>',
        "<tool_call>not json</tool_call>",
        '<tool_call>{"name": "get_weather", "arguments": {"city": "Pa',  # cut by max_tokens
    ):
        assert parse_in_pieces("generic", text, 5) == (text, [])


def test_formats_are_detected_from_the_chat_template() -> None:
    assert detect_format(None) == "generic"
    assert detect_format("{% for m in messages %}{{ m.content }}{% endfor %}") == "generic"
    assert detect_format("{% if tools %}<tool_call>{% endif %}") == "hermes"
    assert detect_format("{% if tools %}[TOOL_CALLS]{% endif %}") == "mistral"
    assert detect_format("{% if tools %}<|python_tag|>{% endif %}") == "llama3_json"


@pytest.mark.parametrize("format_name", sorted(FORMATS))
def test_structural_tags_write_calls_the_parser_reads(format_name: str) -> None:
    tag = structural_tag(format_name, [WEATHER], required=True, parallel=False)
    (spec,) = tag["format"]["tags"]
    assert tag["format"]["type"] == "tags_with_separator" and tag["format"]["at_least_one"]
    assert spec["content"]["json_schema"] == WEATHER["function"]["parameters"]
    written = spec["begin"] + '{"city": "Oslo"}' + spec["end"]
    _, calls = parse_in_pieces(format_name, written, 3)
    assert [(c.name, json.loads(c.arguments)) for c in calls] == [("get_weather", {"city": "Oslo"})]
    auto = structural_tag(format_name, [WEATHER], required=False, parallel=True)
    assert auto["format"]["type"] == "triggered_tags"
    assert all(t["begin"].startswith(auto["format"]["triggers"][0]) for t in auto["format"]["tags"])


def test_the_generic_prompt_turns_tools_calls_and_results_into_plain_messages() -> None:
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}
        ]},
        {"role": "tool", "tool_call_id": "call_1", "content": "18 C"},
    ]
    out = render_generic(messages, [WEATHER])
    assert [m["role"] for m in out] == ["system", "user", "assistant", "user"]
    assert out[0]["content"].startswith("Be brief.") and '"name": "get_weather"' in out[0]["content"]
    assert out[2]["content"] == '<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>'
    assert out[3]["content"] == "<tool_response>\n18 C\n</tool_response>"
    assert all(set(m) <= {"role", "content", "name"} for m in out)
    assert render_generic([{"role": "user", "content": "hi"}], [WEATHER])[0]["role"] == "system"
