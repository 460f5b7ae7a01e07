"""Chat template rendering, against the real Qwen2.5-Coder template and small hand-written ones."""

from __future__ import annotations

import copy
import json
from datetime import datetime
from pathlib import Path
from typing import Any

import gguf
import pytest

from kronk.chat.template import CHATML_TEMPLATE, ChatTemplate, template_supports_tools
from kronk.errors import InvalidRequestError, KronkError, TemplateError

DATA = Path(__file__).parent / "data"
# Written once from the default model's GGUF (see test_committed_copy_matches_the_model_file),
# so these tests run without the 491 MB model.
QWEN_TEMPLATE_FILE = DATA / "qwen2.5_chat_template.jinja"
QWEN_DEFAULT_SYSTEM = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."

WEATHER_TOOL: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}


def chat_template_from_gguf(path: Path) -> str:
    """The `tokenizer.chat_template` string of a GGUF file."""
    field = gguf.GGUFReader(path).fields["tokenizer.chat_template"]
    return bytes(field.parts[field.data[0]]).decode("utf-8")


@pytest.fixture(scope="module")
def qwen() -> ChatTemplate:
    return ChatTemplate(
        QWEN_TEMPLATE_FILE.read_text(encoding="utf-8"),
        bos_token="<|endoftext|>",
        eos_token="<|im_end|>",
    )


def test_committed_copy_matches_the_model_file(default_model_path: Path) -> None:
    expected = QWEN_TEMPLATE_FILE.read_text(encoding="utf-8")
    assert chat_template_from_gguf(default_model_path) == expected


def test_system_and_user_end_with_the_generation_prompt(qwen: ChatTemplate) -> None:
    prompt = qwen.render(
        [{"role": "system", "content": "Be terse."}, {"role": "user", "content": "Hi!"}]
    )
    assert prompt == (
        "<|im_start|>system\nBe terse.<|im_end|>\n"
        "<|im_start|>user\nHi!<|im_end|>\n"
        "<|im_start|>assistant\n"
    )


def test_without_generation_prompt_the_prompt_ends_after_the_last_message(
    qwen: ChatTemplate,
) -> None:
    prompt = qwen.render([{"role": "user", "content": "Hi!"}], add_generation_prompt=False)
    assert prompt.endswith("<|im_start|>user\nHi!<|im_end|>\n")


def test_default_system_prompt_is_inserted_when_none_is_given(qwen: ChatTemplate) -> None:
    prompt = qwen.render([{"role": "user", "content": "Hi!"}])
    assert prompt.startswith(f"<|im_start|>system\n{QWEN_DEFAULT_SYSTEM}<|im_end|>\n")
    assert prompt.count("<|im_start|>system") == 1


def test_tools_are_listed_in_the_system_prompt(qwen: ChatTemplate) -> None:
    prompt = qwen.render([{"role": "user", "content": "Weather in Paris?"}], tools=[WEATHER_TOOL])
    tools_block = prompt.split("<tools>\n", 1)[1].split("\n</tools>", 1)[0]
    assert json.loads(tools_block) == WEATHER_TOOL
    assert '"name": "get_weather"' in tools_block
    assert "<tool_call></tool_call> XML tags" in prompt


def test_empty_tools_list_means_no_tools(qwen: ChatTemplate) -> None:
    messages = [{"role": "user", "content": "Hi!"}]
    assert qwen.render(messages, tools=[]) == qwen.render(messages)
    assert "<tools>" not in qwen.render(messages, tools=[])


def test_tool_call_with_json_string_arguments_and_tool_result(qwen: ChatTemplate) -> None:
    messages: list[dict[str, Any]] = [
        {"role": "user", "content": "Weather in Paris?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": '{"temp_c": 21}'},
    ]
    original = copy.deepcopy(messages)

    prompt = qwen.render(messages, tools=[WEATHER_TOOL])

    # Arguments were parsed: the template's tojson prints an object, not a quoted string.
    assert (
        "<|im_start|>assistant\n<tool_call>\n"
        '{"name": "get_weather", "arguments": {"city": "Paris"}}\n'
        "</tool_call><|im_end|>\n"
    ) in prompt
    assert (
        '<|im_start|>user\n<tool_response>\n{"temp_c": 21}\n</tool_response><|im_end|>\n'
        "<|im_start|>assistant\n"
    ) in prompt
    assert messages == original, "render must not change the caller's messages"


def test_tool_call_arguments_that_are_not_a_json_object_are_left_as_sent(
    qwen: ChatTemplate,
) -> None:
    def call(arguments: str) -> dict[str, Any]:
        return {
            "id": "call_1",
            "type": "function",
            "function": {"name": "get_weather", "arguments": arguments},
        }

    prompt = qwen.render(
        [
            {"role": "user", "content": "?"},
            {"role": "assistant", "content": None, "tool_calls": [call("{not json"), call("42")]},
        ]
    )
    assert '"arguments": "{not json"}' in prompt
    assert '"arguments": "42"}' in prompt


def test_list_of_text_parts_becomes_one_string(qwen: ChatTemplate) -> None:
    prompt = qwen.render(
        [
            {
                "role": "user",
                "content": [{"type": "text", "text": "first"}, {"type": "text", "text": "second"}],
            }
        ]
    )
    assert "<|im_start|>user\nfirst\nsecond<|im_end|>\n" in prompt


def test_list_with_a_non_text_part_is_passed_to_the_template_unchanged() -> None:
    template = ChatTemplate("{{ messages[0].content | tojson }}")
    parts = [{"type": "text", "text": "look"}, {"type": "image_url", "image_url": {"url": "x"}}]
    assert json.loads(template.render([{"role": "user", "content": parts}])) == parts


def test_extra_variables_reach_the_template() -> None:
    template = ChatTemplate(
        "{% if enable_thinking %}think{% else %}no-think{% endif %}|{{ documents[0].title }}"
    )
    docs = [{"title": "Doc A"}]
    assert template.render([], enable_thinking=True, documents=docs) == "think|Doc A"
    assert template.render([], enable_thinking=False, documents=docs) == "no-think|Doc A"


def test_bos_and_eos_tokens_are_template_variables() -> None:
    template = ChatTemplate("{{ bos_token }}x{{ eos_token }}", bos_token="<s>", eos_token="</s>")
    assert template.render([]) == "<s>x</s>"
    assert ChatTemplate("[{{ bos_token }}]").render([]) == "[]"


def test_raise_exception_becomes_template_error_with_the_templates_message() -> None:
    template = ChatTemplate(
        "{% if messages[0].role != 'user' %}"
        "{{ raise_exception('Conversation roles must start with user') }}"
        "{% endif %}ok"
    )
    assert template.render([{"role": "user", "content": "hi"}]) == "ok"
    with pytest.raises(TemplateError, match=r"^Conversation roles must start with user$"):
        template.render([{"role": "assistant", "content": "hi"}])


def test_syntax_error_is_a_template_error_with_the_line_number() -> None:
    with pytest.raises(TemplateError, match=r"line 3: .*") as info:
        ChatTemplate("ok\n{{ messages }}\n{% for m in messages %}{{ m }}")
    assert isinstance(info.value, KronkError)
    assert "endfor" in str(info.value)


@pytest.mark.parametrize(
    ("source", "content", "expected"),
    [
        ("line one\n{{ messages[0].content + 1 }}", "text", r"at line 2: TypeError"),
        (
            "{{ no_such_variable.field }}",
            "text",
            r"UndefinedError: 'no_such_variable' is undefined",
        ),
        ("{{ messages[0] | tojson }}", b"bytes", r"TypeError: .*not JSON serializable"),
        ("{{ messages[1]['role'] }}", "text", r"UndefinedError"),
    ],
)
def test_errors_while_rendering_become_template_errors(
    source: str, content: object, expected: str
) -> None:
    template = ChatTemplate(source)
    with pytest.raises(TemplateError, match=expected):
        template.render([{"role": "user", "content": content}])


@pytest.mark.parametrize(
    "source",
    [
        "{{ ''.__class__.__mro__ }}",
        "{{ messages.__class__.__base__.__subclasses__() }}",
        "{{ raise_exception.__globals__['json'] }}",
        "{{ messages.append(1) }}",
    ],
)
def test_sandbox_blocks_unsafe_access(source: str) -> None:
    with pytest.raises(TemplateError, match="unsafe"):
        ChatTemplate(source).render([{"role": "user", "content": "hi"}])


def test_printing_an_unsafe_attribute_prints_nothing() -> None:
    # Jinja's sandbox turns the attribute into an undefined value, which prints as "".
    assert ChatTemplate("[{{ raise_exception.__globals__ }}]").render([]) == "[]"


def test_strftime_now_formats_the_current_time() -> None:
    template = ChatTemplate("{{ strftime_now('%Y-%m-%d %H:%M:%S') }}")
    before = datetime.now().replace(microsecond=0)
    rendered = datetime.strptime(template.render([]), "%Y-%m-%d %H:%M:%S")
    after = datetime.now()
    assert before <= rendered <= after


def test_tojson_keeps_non_ascii_and_html_characters() -> None:
    template = ChatTemplate("{{ messages[0].content | tojson }}")
    assert template.render([{"role": "user", "content": "héllo 日本 <b>&'"}]) == (
        '"héllo 日本 <b>&\'"'
    )


def test_tojson_indent_and_sort_keys() -> None:
    template = ChatTemplate("{{ tools[0] | tojson(indent=2, sort_keys=true) }}")
    tool = {"b": 1, "a": [1]}
    assert template.render([], tools=[tool]) == '{\n  "a": [\n    1\n  ],\n  "b": 1\n}'


def test_loop_controls_and_generation_tag_are_available() -> None:
    template = ChatTemplate(
        "{% for m in messages %}{% if loop.index > 2 %}{% break %}{% endif %}"
        "{% generation %}{{ m.content }}{% endgeneration %}{% endfor %}"
    )
    assert template.render([{"role": "user", "content": c} for c in "abcd"]) == "ab"


def test_override_from_file(tmp_path: Path) -> None:
    path = tmp_path / "override.jinja"
    path.write_text("{% for m in messages %}[{{ m.role }}: {{ m.content }}]{% endfor %}")
    template = ChatTemplate.from_file(path, bos_token="<s>")
    assert template.render([{"role": "user", "content": "hi"}]) == "[user: hi]"
    assert template.bos_token == "<s>"


def test_override_from_missing_file_names_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "nope.jinja"
    with pytest.raises(TemplateError, match=r"nope\.jinja"):
        ChatTemplate.from_file(missing)


def test_override_file_that_does_not_compile_names_the_path(tmp_path: Path) -> None:
    path = tmp_path / "broken.jinja"
    path.write_text("{% if %}")
    with pytest.raises(TemplateError, match=r"broken\.jinja does not compile: line 1"):
        ChatTemplate.from_file(path)


def test_default_template_is_chatml() -> None:
    template = ChatTemplate.default()
    assert template.source == CHATML_TEMPLATE
    prompt = template.render(
        [
            {"role": "system", "content": "S"},
            {"role": "user", "content": [{"type": "text", "text": "U"}]},
            {"role": "assistant", "content": None},
        ]
    )
    assert prompt == (
        "<|im_start|>system\nS<|im_end|>\n"
        "<|im_start|>user\nU<|im_end|>\n"
        "<|im_start|>assistant\n<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    assert template.render([{"role": "user", "content": "U"}], add_generation_prompt=False) == (
        "<|im_start|>user\nU<|im_end|>\n"
    )


def test_tool_support_hint(qwen: ChatTemplate) -> None:
    assert qwen.supports_tools
    assert template_supports_tools(qwen.source)
    assert not ChatTemplate.default().supports_tools
    assert not template_supports_tools("{# tools are not supported #}Use no tools.{{ messages }}")
    assert template_supports_tools("{% set t = tools or [] %}{{ t | length }}")
    assert not template_supports_tools("{% set tools = [] %}{{ tools }}")
    assert not template_supports_tools("{% if tools %")


def test_message_that_is_not_an_object_is_an_invalid_request(qwen: ChatTemplate) -> None:
    with pytest.raises(InvalidRequestError) as info:
        qwen.render(["hello"])  # type: ignore[list-item]
    assert info.value.param == "messages[0]"
