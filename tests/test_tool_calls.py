"""Tool calling: per-family parsing (streamed at every split point), JSON repair, request
validation, grammars, and behaviour on the real default model (Qwen2.5-Coder-0.5B, greedy).
"""

from __future__ import annotations

import asyncio
import json
import queue
import random
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from kronk import InvalidRequestError, Kronk
from kronk.chat.json_repair import JsonRepairer, repair_json
from kronk.chat.tools import (
    ToolCall,
    ToolCallParser,
    ToolChoice,
    ToolFormat,
    detect_tool_format,
    parse_tool_calls,
    tool_call_grammar,
    validate_tool_choice,
    validate_tools,
)
from kronk.engine.request import Failed, Finished, GenerationRequest, TextDelta
from kronk.llama import LlamaModel, ModelParams, SamplerChain, SamplingParams

NAMES = ("get_weather", "get_time")
F = ToolFormat

# -- the parser: every family, streamed at every split point -------------------------------------


def stream(
    fmt: ToolFormat, pieces: Sequence[str], *, parallel: bool = True
) -> tuple[str, str, list[tuple[str, str]], list[ToolCall]]:
    """Feed `pieces`; return (content, reasoning, [(name, concatenated argument fragments)],
    final calls), checking OpenAI's delta order on the way: a call's id, name and index come
    first and alone, then only argument fragments for it."""
    parser = ToolCallParser(fmt, tool_names=NAMES, parallel=parallel)
    content, reasoning = [], []
    heads: dict[int, tuple[str, str]] = {}
    fragments: dict[int, list[str]] = {}
    for delta in [*(parser.push(p) for p in pieces), parser.flush()]:
        content.append(delta.content)
        reasoning.append(delta.reasoning)
        for call in delta.tool_calls:
            if call.name is not None:
                assert call.index == len(heads), "calls are announced in order"
                assert call.id is not None and call.id.startswith("call_")
                assert call.arguments == ""
                heads[call.index] = (call.id, call.name)
                fragments[call.index] = []
            else:
                assert call.index in heads, "arguments before the name"
                assert call.id is None
                fragments[call.index].append(call.arguments)
    streamed = [(heads[i][1], "".join(fragments[i])) for i in sorted(heads)]
    calls = parser.tool_calls
    assert [c.id for c in calls] == [heads[i][0] for i in sorted(heads)]
    return "".join(content), "".join(reasoning), streamed, calls


def assert_split_invariant(
    fmt: ToolFormat, text: str, *, parallel: bool = True
) -> tuple[str, str, list[tuple[str, str]]]:
    """Parsing `text` whole, in two pieces at every split point, and one character at a time
    gives the same content, reasoning and calls; streamed fragments equal final arguments."""
    content, reasoning, calls = parse_tool_calls(text, fmt, tool_names=NAMES, parallel=parallel)
    expected = (content, reasoning, [(c.name, c.arguments) for c in calls])
    splits = [[text[:i], text[i:]] for i in range(len(text) + 1)] + [list(text)]
    for pieces in splits:
        got_content, got_reasoning, streamed, final = stream(fmt, pieces, parallel=parallel)
        got = (got_content, got_reasoning, [(c.name, c.arguments) for c in final])
        assert got == expected, f"split {[len(p) for p in pieces][:2]}"
        assert streamed == expected[2]
    for _, arguments in expected[2]:
        json.loads(arguments)  # always valid JSON
    return expected


FAMILY_CASES: list[tuple[ToolFormat, str, str, str, list[tuple[str, dict[str, Any]]]]] = [
    (
        F.HERMES,
        'Let me check.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n'
        '</tool_call>\n<tool_call>\n{"name": "get_time", "arguments": {}}\n</tool_call>',
        "Let me check.",
        "",
        [("get_weather", {"city": "Paris"}), ("get_time", {})],
    ),
    (
        F.HERMES,  # the second call forgot the first's end tag
        '<tool_call>{"name": "get_weather", "arguments": {"city": "A"}}'
        '<tool_call>{"name": "get_time", "arguments": {}}</tool_call>\nDone.',
        "Done.",
        "",
        [("get_weather", {"city": "A"}), ("get_time", {})],
    ),
    (
        F.HERMES,  # what the default model writes with tool_choice "auto"
        '```json\n{\n  "name": "get_weather",\n  "arguments": {\n    "city": "Paris"\n  }\n}\n```',
        "",
        "",
        [("get_weather", {"city": "Paris"})],
    ),
    (
        F.HERMES,
        '{"name": "get_weather", "arguments": {"city": "Tokyo", "unit": "celsius"}}',
        "",
        "",
        [("get_weather", {"city": "Tokyo", "unit": "celsius"})],
    ),
    (
        F.HERMES,  # OpenAI's own shape, arguments as a JSON string
        '{"type": "function", "function": {"name": "get_weather", '
        '"arguments": "{\\"city\\": \\"Oslo\\"}"}}',
        "",
        "",
        [("get_weather", {"city": "Oslo"})],
    ),
    (
        F.HERMES,  # arguments before the name
        '{"arguments": {"city": "Rome"}, "name": "get_weather"}',
        "",
        "",
        [("get_weather", {"city": "Rome"})],
    ),
    (
        F.LLAMA3,
        '{"name": "get_weather", "parameters": {"city": "Paris"}}',
        "",
        "",
        [("get_weather", {"city": "Paris"})],
    ),
    (
        F.LLAMA3,
        '<|python_tag|>{"name": "get_weather", "parameters": {"city": "Paris"}}; '
        '{"name": "get_time", "parameters": {"timezone": "UTC"}}',
        "",
        "",
        [("get_weather", {"city": "Paris"}), ("get_time", {"timezone": "UTC"})],
    ),
    (
        F.MISTRAL,
        'Sure [TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "Paris"}, '
        '"id": "abc123def"}, {"name": "get_time", "arguments": {}}]',
        "Sure",
        "",
        [("get_weather", {"city": "Paris"}), ("get_time", {})],
    ),
    (
        F.MISTRAL_ARGS,
        '[TOOL_CALLS]get_weather[ARGS]{"city": "Paris"}[TOOL_CALLS]get_time[CALL_ID]a1b2[ARGS]{}',
        "",
        "",
        [("get_weather", {"city": "Paris"}), ("get_time", {})],
    ),
    (
        F.DEEPSEEK,
        "ok<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>get_weather\n"
        '```json\n{"city": "Paris"}\n```<｜tool▁call▁end｜>\n<｜tool▁call▁begin｜>function'
        "<｜tool▁sep｜>get_time\n```json\n{}\n```<｜tool▁call▁end｜><｜tool▁calls▁end｜>",
        "ok",
        "",
        [("get_weather", {"city": "Paris"}), ("get_time", {})],
    ),
    (
        F.DEEPSEEK_V31,
        "<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>get_weather<｜tool▁sep｜>"
        '{"city": "Paris"}<｜tool▁call▁end｜><｜tool▁calls▁end｜>',
        "",
        "",
        [("get_weather", {"city": "Paris"})],
    ),
    (
        F.HARMONY,
        "<|channel|>analysis<|message|>Need the weather.<|end|><|start|>assistant<|channel|>"
        'commentary to=functions.get_weather <|constrain|>json<|message|>{"city":"Paris"}',
        "",
        "Need the weather.",
        [("get_weather", {"city": "Paris"})],
    ),
    (
        F.HARMONY,
        "<|channel|>analysis<|message|>Easy.<|end|><|start|>assistant<|channel|>final"
        "<|message|>It is sunny.",
        "It is sunny.",
        "Easy.",
        [],
    ),
    (
        F.GENERIC,
        '```json\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n```\nThat calls it.',
        "That calls it.",
        "",
        [("get_weather", {"city": "Paris"})],
    ),
]


@pytest.mark.parametrize(
    ("fmt", "text", "content", "reasoning", "calls"),
    FAMILY_CASES,
    ids=[f"{case[0].value}-{i}" for i, case in enumerate(FAMILY_CASES)],
)
def test_family_calls_parse_the_same_at_every_split_point(
    fmt: ToolFormat,
    text: str,
    content: str,
    reasoning: str,
    calls: list[tuple[str, dict[str, Any]]],
) -> None:
    got_content, got_reasoning, got_calls = assert_split_invariant(fmt, text)
    assert got_content == content
    assert got_reasoning == reasoning
    assert [(name, json.loads(args)) for name, args in got_calls] == calls


PLAIN_TEXTS = [
    "Sea whispers,\nWhispers of the sea.",
    '{"name": "Alice", "age": 3}',  # JSON, but not naming a tool: an answer, not a call
    '{"title": "Weather", "name": "get_weather"}',  # a key no call has
    "```python\nprint({1: 2})\n```",
    "  `x` is a variable; <tool is not a tag",
    "[TOOL_CALL] almost a marker",
]


@pytest.mark.parametrize("text", PLAIN_TEXTS)
@pytest.mark.parametrize("fmt", [F.HERMES, F.LLAMA3, F.MISTRAL, F.GENERIC])
def test_text_that_is_no_call_comes_back_unchanged(fmt: ToolFormat, text: str) -> None:
    assert assert_split_invariant(fmt, text) == (text, "", [])


def test_harmony_without_channels_is_plain_content() -> None:
    assert assert_split_invariant(F.HARMONY, "plain answer") == ("plain answer", "", [])


def test_mutated_calls_never_raise_and_stream_like_whole_text(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Calls with random damage (deleted, inserted and cut text) parse without error, give
    valid JSON arguments, and give the same result streamed as whole."""
    rng = random.Random(4)
    inserts = [*"{}[]:,\"'\\ \n<>|`", "<tool_call>", "</tool_call>", "[ARGS]", "<|message|>", "```"]
    for _ in range(400):
        fmt, text, *_ = rng.choice(FAMILY_CASES)
        if rng.random() < 0.3:
            fmt = rng.choice(list(ToolFormat))
        chars = list(text)
        for _ in range(rng.randint(1, 6)):
            at = rng.randrange(len(chars) + 1)
            roll = rng.random()
            if roll < 0.4 and chars:
                del chars[min(at, len(chars) - 1)]
            elif roll < 0.8:
                chars.insert(at, rng.choice(inserts))
            else:
                chars = chars[:at]
        damaged = "".join(chars)
        parallel = rng.random() < 0.7
        expected = parse_tool_calls(damaged, fmt, tool_names=NAMES, parallel=parallel)
        for call in expected[2]:
            json.loads(call.arguments)
        cuts = sorted(rng.sample(range(len(damaged) + 1), min(3, len(damaged) + 1)))
        pieces = [damaged[a:b] for a, b in zip([0, *cuts], [*cuts, len(damaged)], strict=True)]
        content, reasoning, streamed, final = stream(fmt, pieces, parallel=parallel)
        assert (content, reasoning) == expected[:2], damaged
        assert [(c.name, c.arguments) for c in final] == [
            (c.name, c.arguments) for c in expected[2]
        ], damaged
        assert streamed == [(c.name, c.arguments) for c in final]
    assert not [r for r in caplog.records if r.name == "kronk.tools"], "the parser hit a bug"


# -- malformed calls ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "arguments"),
    [
        # missing closing braces, cut by the end tag
        ('<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}\n</tool_call>',
         {"city": "Paris"}),
        # single quotes, Python literals, a trailing comma, extra braces and text after
        ("<tool_call>\n{'name': 'get_weather', 'arguments': {'city': 'Paris', 'metric': True,"
         "}}}} oops\n</tool_call>", {"city": "Paris", "metric": True}),
        # unquoted keys and a missing comma
        ('<tool_call>{name: "get_weather", arguments: {city: "Oslo" unit: "celsius"}}</tool_call>',
         {"city": "Oslo", "unit": "celsius"}),
        # output cut off in the middle of the arguments
        ('<tool_call>\n{"name": "get_weather", "arguments": {"city": "Par', {"city": "Par"}),
        # no arguments at all
        ('<tool_call>{"name": "get_time"}</tool_call>', {}),
    ],
)  # fmt: skip
def test_malformed_call_json_is_repaired(text: str, arguments: dict[str, Any]) -> None:
    content, _, calls = assert_split_invariant(F.HERMES, text)
    assert content == ""
    assert len(calls) == 1
    assert json.loads(calls[0][1]) == arguments


@pytest.mark.parametrize(
    "text",
    [
        "<tool_call>\nnot json at all\n</tool_call> after",
        '<tool_call>{"arguments": {"city": "Paris"}}</tool_call>',  # nameless
        "[TOOL_CALLS] no name here",
    ],
)
def test_a_call_without_a_name_is_returned_as_content(text: str) -> None:
    fmt = F.MISTRAL_ARGS if text.startswith("[TOOL") else F.HERMES
    content, _, calls = assert_split_invariant(fmt, text)
    assert calls == []
    assert content == text


def test_parallel_off_keeps_only_the_first_call_and_says_done() -> None:
    text = (
        '<tool_call>{"name": "get_weather", "arguments": {"city": "A"}}</tool_call>\n'
        '<tool_call>{"name": "get_time", "arguments": {}}</tool_call> and more'
    )
    content, _, calls = assert_split_invariant(F.HERMES, text, parallel=False)
    assert (content, [name for name, _ in calls]) == ("", ["get_weather"])
    parser = ToolCallParser(F.HERMES, tool_names=NAMES, parallel=False)
    parser.push(text[: text.index("\n")])
    assert parser.done


def test_with_parse_calls_off_everything_is_content() -> None:
    text = '<tool_call>{"name": "get_weather", "arguments": {}}</tool_call>'
    parser = ToolCallParser(F.HERMES, tool_names=NAMES, parse_calls=False)
    assert parser.push(text).content + parser.flush().content == text
    assert parser.tool_calls == []


# -- JSON repair ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "repaired", "rest"),
    [
        ('{"a": 1}', '{"a": 1}', ""),
        ("{'a': 'it\\'s', 'b': True, c: None,}", '{"a": "it\'s", "b": true, "c": null}', ""),
        ('{"a": [1, 2', '{"a": [1, 2]}', ""),
        ('{"a": 1}} trailing', '{"a": 1}', "} trailing"),
        ('{"path": "C:\\Users"}', '{"path": "C:\\\\Users"}', ""),
        ('{"x": .5, "y": 01, "z": +3}', '{"x": 0.5, "y": 1, "z": 3}', ""),
        ('{"a": "line\nbreak"}', '{"a": "line\\nbreak"}', ""),
        ('{"a": }', '{"a": null}', ""),
        ('{"a"', '{"a":null}', ""),
        ("[1, 2,]", "[1, 2]", ""),
        ('"text" after', '"text"', " after"),
    ],
)
def test_repair_json_makes_strict_json(text: str, repaired: str, rest: str) -> None:
    assert repair_json(text) == (repaired, rest)
    json.loads(repaired)
    # Fed one character at a time, the output is the same and every prefix of it is the
    # prefix of the final document.
    repairer = JsonRepairer()
    out = ""
    for char in text:
        piece, _ = repairer.feed(char)
        out += piece
        assert repaired.startswith(out)
    assert out + repairer.close() == repaired


def test_repair_json_finds_no_value_in_whitespace() -> None:
    assert repair_json("   ") is None


# -- requests -------------------------------------------------------------------------------------

WEATHER_PARAMETERS = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "description": "City name"},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
    },
    "required": ["city"],
    "additionalProperties": False,
}
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Get the current weather in a city",
            "parameters": WEATHER_PARAMETERS,
        },
    },
    {
        "type": "function",
        "function": {
            "name": "get_time",
            "description": "Get the current time in a timezone",
            "parameters": {
                "type": "object",
                "properties": {"timezone": {"type": "string"}},
                "required": ["timezone"],
            },
        },
    },
]


@pytest.mark.parametrize(
    ("tools", "message"),
    [
        ("get_weather", "must be a list"),
        ([1], "must be an object"),
        ([{"type": "retrieval"}], "type must be 'function'"),
        ([{"type": "function"}], "function must be an object"),
        ([{"type": "function", "function": {"name": "bad name!"}}], "letters, digits"),
        ([{"type": "function", "function": {"name": "f", "parameters": []}}], "JSON Schema"),
        ([{"type": "function", "function": {"name": "f", "parameters": {"type": "string"}}}],
         "describe an object"),
        ([TOOLS[0], TOOLS[0]], "repeated"),
    ],
)  # fmt: skip
def test_bad_tools_name_the_tools_param(tools: Any, message: str) -> None:
    with pytest.raises(InvalidRequestError, match=message) as err:
        validate_tools(tools)
    assert err.value.param == "tools"


@pytest.mark.parametrize(
    ("choice", "message"),
    [
        ("sometimes", "tool_choice must be"),
        ({"type": "function", "function": {"name": "get_stock"}}, "not in tools"),
        ({"type": "function"}, "tool_choice must be"),
        ({"type": "retrieval", "function": {"name": "get_weather"}}, "tool_choice must be"),
    ],
)
def test_bad_tool_choice_names_the_tool_choice_param(choice: Any, message: str) -> None:
    with pytest.raises(InvalidRequestError, match=message) as err:
        validate_tool_choice(choice, validate_tools(TOOLS))
    assert err.value.param == "tool_choice"


def test_tool_choice_defaults_and_forms() -> None:
    specs = validate_tools(TOOLS)
    assert validate_tool_choice(None, specs) == ToolChoice("auto")
    assert validate_tool_choice(None, []) == ToolChoice("none")
    named = validate_tool_choice({"type": "function", "function": {"name": "get_time"}}, specs)
    assert named == ToolChoice("required", "get_time") and named.forced
    with pytest.raises(InvalidRequestError) as err:
        validate_tool_choice("required", [])
    assert err.value.param == "tool_choice"


@pytest.mark.parametrize(
    ("template", "architecture", "fmt"),
    [
        ("{{ '<tool_call>' }}{{ '<|im_start|>' }}", "qwen2", F.HERMES),
        ("{{ '<|start_header_id|>ipython<|end_header_id|>' }}", "llama", F.LLAMA3),
        ("{{ '<|python_tag|>' }}", "llama", F.LLAMA3),
        ("{{ '[TOOL_CALLS]' }}", "llama", F.MISTRAL),
        ("{{ '[TOOL_CALLS]' + name + '[ARGS]' }}", "llama", F.MISTRAL_ARGS),
        ("{{ '<|channel|>' }}", "gpt-oss", F.HARMONY),
        ("{{ 'plain' }}", "gpt-oss", F.HARMONY),
        ("{{ '<｜tool▁calls▁begin｜>' + '```json' }}", "deepseek2", F.DEEPSEEK),
        ("{{ '<｜tool▁calls▁begin｜>' }}", "deepseek2", F.DEEPSEEK_V31),
        ("{{ '<|im_start|>' }}", "qwen2", F.GENERIC),
        (None, "gemma3", F.GENERIC),
    ],
)
def test_the_format_follows_the_template(
    template: str | None, architecture: str, fmt: ToolFormat
) -> None:
    assert detect_tool_format(template, architecture) is fmt


# -- grammars -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_model(tiny_llama_path: Path) -> Iterator[LlamaModel]:
    model = LlamaModel.load(tiny_llama_path, ModelParams(n_gpu_layers=0))
    yield model
    model.close()


@pytest.mark.parametrize("fmt", list(ToolFormat))
@pytest.mark.parametrize(
    "choice", [ToolChoice("required"), ToolChoice("required", "get_time"), ToolChoice("auto")]
)
def test_every_family_grammar_is_accepted_by_llama_cpp(
    tiny_model: LlamaModel, fmt: ToolFormat, choice: ToolChoice
) -> None:
    grammar = tool_call_grammar(fmt, validate_tools(TOOLS), choice, reasoning="optional")
    if not choice.forced and fmt in (F.LLAMA3, F.GENERIC, F.HARMONY):
        assert grammar is None  # no fixed marker to trigger a lazy grammar on
        return
    assert grammar is not None
    assert bool(grammar.triggers) == (not choice.forced)
    if choice.name:
        assert "get_weather" not in grammar.grammar
    params = SamplingParams(
        temperature=0, grammar=grammar.grammar, grammar_triggers=grammar.triggers
    )
    SamplerChain(tiny_model.vocab, params).close()  # raises GrammarError if it does not parse


def test_unsupported_parameter_schema_names_tools() -> None:
    tools = [{"type": "function", "function": {"name": "f", "parameters": {
        "type": "object", "properties": {"x": {"$ref": "#/missing"}}}}}]  # fmt: skip
    with pytest.raises(InvalidRequestError) as err:
        tool_call_grammar(F.HERMES, validate_tools(tools), ToolChoice("required"))
    assert err.value.param == "tools"


def test_grammar_triggers_need_a_grammar() -> None:
    with pytest.raises(InvalidRequestError) as err:
        SamplingParams(grammar_triggers=("<tool_call>",)).validate(100)
    assert err.value.param == "grammar_triggers"


# -- the real default model -----------------------------------------------------------------------

GREEDY = {"temperature": 0}


@pytest.fixture(scope="module")
def qwen(default_model_path: Path) -> Iterator[Kronk]:
    with Kronk(default_model_path, model_id="qwen", n_ctx=2048, n_seq_max=2, n_threads=2) as k:
        yield k


def ask(text: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": text}]


def test_the_default_model_uses_the_hermes_format(qwen: Kronk) -> None:
    assert qwen.tool_format is F.HERMES
    assert "tools" in qwen.model_info().capabilities


def test_lazy_grammar_applies_only_after_its_trigger(qwen: Kronk) -> None:
    """The facade's lazy grammar: free text until the trigger ends the output, then the
    grammar. Greedy, the model answers "Hello! How can I assist you today?"."""

    def generate(**sampling: Any) -> str:
        events: queue.SimpleQueue[Any] = queue.SimpleQueue()
        prompt = qwen.tokenize(qwen.render_chat(ask("Say hello.")), parse_special=True)
        request = GenerationRequest(
            prompt=prompt, sampling=SamplingParams(temperature=0, **sampling), max_tokens=30
        )
        qwen.engine.submit(request, events.put)
        text = []
        while not isinstance(event := events.get(), Finished | Failed):
            if isinstance(event, TextDelta):
                text.append(event.text)
        return "".join(text)

    free = generate()
    assert free.startswith("Hello!")
    grammar = 'root ::= "Hello" " banana banana."'
    assert generate(grammar=grammar, grammar_triggers=("Hello",)) == "Hello banana banana."
    untriggered = 'root ::= "zebra" " banana."'
    assert generate(grammar=untriggered, grammar_triggers=("zebra",)) == free


def weather_call(calls: Sequence[Any]) -> dict[str, Any]:
    assert calls is not None and len(calls) >= 1
    call = calls[0]
    assert call.type == "function" and call.id.startswith("call_")
    assert call.function.name == "get_weather"
    arguments = json.loads(call.function.arguments)
    jsonschema.validate(arguments, WEATHER_PARAMETERS)
    return dict(arguments)


def test_required_tool_choice_returns_a_valid_call(qwen: Kronk) -> None:
    resp = qwen.chat(
        ask("What is the weather in Paris?"), tools=TOOLS, tool_choice="required", **GREEDY
    )
    choice = resp.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    assert weather_call(choice.message.tool_calls or [])["city"] == "Paris"


def test_a_named_tool_choice_forces_that_function(qwen: Kronk) -> None:
    # The question is about time; the named choice still makes it call get_weather.
    forced = {"type": "function", "function": {"name": "get_weather"}}
    resp = qwen.chat(ask("What time is it in Tokyo?"), tools=TOOLS, tool_choice=forced, **GREEDY)
    calls = resp.choices[0].message.tool_calls or []
    assert len(calls) == 1
    assert weather_call(calls)["city"] == "Tokyo"
    assert resp.choices[0].finish_reason == "tool_calls"


def test_auto_turns_the_models_json_code_block_into_a_call(qwen: Kronk) -> None:
    # Unconstrained, the model answers with a ```json block (llama-server returns it as content).
    resp = qwen.chat(ask("What is the weather in Paris?"), tools=TOOLS, **GREEDY)
    assert resp.choices[0].finish_reason == "tool_calls"
    assert resp.choices[0].message.content is None
    assert weather_call(resp.choices[0].message.tool_calls or [])["city"] == "Paris"


def test_auto_leaves_an_ordinary_answer_alone(qwen: Kronk) -> None:
    resp = qwen.chat(ask("Write a haiku about the sea."), tools=TOOLS, max_tokens=60, **GREEDY)
    choice = resp.choices[0]
    assert choice.message.tool_calls is None
    assert choice.finish_reason == "stop"
    assert "sea" in (choice.message.content or "").lower()


def test_parallel_calls_and_parallel_off(qwen: Kronk) -> None:
    messages = ask("What is the weather in Paris, and what time is it in Tokyo?")
    both = qwen.chat(messages, tools=TOOLS, tool_choice="required", **GREEDY)
    names = [c.function.name for c in both.choices[0].message.tool_calls or []]
    assert names == ["get_weather", "get_time"]
    one = qwen.chat(
        messages, tools=TOOLS, tool_choice="required", parallel_tool_calls=False, **GREEDY
    )
    assert [c.function.name for c in one.choices[0].message.tool_calls or []] == ["get_weather"]
    assert one.choices[0].finish_reason == "tool_calls"
    assert one.usage.completion_tokens < both.usage.completion_tokens


def test_streamed_call_deltas_arrive_in_openais_order(qwen: Kronk) -> None:
    messages = ask("What is the weather in Paris?")
    whole = qwen.chat(messages, tools=TOOLS, tool_choice="required", **GREEDY)
    chunks = list(qwen.chat_stream(messages, tools=TOOLS, tool_choice="required", **GREEDY))
    deltas = [d for c in chunks for d in c.choices[0].delta.tool_calls or []]
    head, rest = deltas[0], deltas[1:]
    assert head.index == 0 and head.type == "function" and head.id and head.id.startswith("call_")
    assert head.function is not None and head.function.name == "get_weather"
    assert len(rest) > 1, "arguments stream in fragments"
    assert all(d.index == 0 and d.id is None and d.function.name is None for d in rest)  # type: ignore[union-attr]
    arguments = "".join(d.function.arguments or "" for d in rest)  # type: ignore[union-attr]
    assert json.loads(arguments) == json.loads(
        whole.choices[0].message.tool_calls[0].function.arguments
    )  # type: ignore[index]
    assert not any(c.choices[0].delta.content for c in chunks)
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


def test_a_tool_round_trip_answers_with_the_result(qwen: Kronk) -> None:
    """The model calls get_weather, we run it, and the model answers with its result.

    The assistant turn carries the model's own call and a one-line preface, as larger models
    write themselves: the 0.5B model copies the shape of its previous turn, and after a bare
    call it writes JSON again instead of an answer. The follow-up offers no tools (with tools
    offered, the 0.5B model calls get_weather again whatever the result says).
    """
    messages = ask("What is the weather in Paris?")
    first = qwen.chat(messages, tools=TOOLS, tool_choice="required", **GREEDY)
    call = (first.choices[0].message.tool_calls or [])[0]
    city = weather_call([call])["city"]
    result = {"city": city, "temperature": 17, "unit": "celsius", "condition": "light rain"}
    messages += [
        {
            "role": "assistant",
            "content": "Let me check the weather for you.",
            "tool_calls": [call.model_dump()],
        },
        {"role": "tool", "tool_call_id": call.id, "content": json.dumps(result)},
    ]
    prompt = qwen.render_chat(messages)
    assert '{"name": "get_weather", "arguments": {"city": "Paris"' in prompt
    assert "<tool_response>\n" + json.dumps(result) in prompt
    answer = qwen.chat(messages, max_tokens=60, **GREEDY).choices[0]
    assert answer.finish_reason == "stop"
    assert "17" in (answer.message.content or "")
    assert "{" not in (answer.message.content or "")


def test_async_chat_makes_the_same_call(qwen: Kronk) -> None:
    messages = ask("What is the weather in Paris?")
    sync = qwen.chat(messages, tools=TOOLS, tool_choice="required", **GREEDY)
    async_ = asyncio.run(qwen.achat(messages, tools=TOOLS, tool_choice="required", **GREEDY))
    sync_call = (sync.choices[0].message.tool_calls or [])[0].function
    async_call = (async_.choices[0].message.tool_calls or [])[0].function
    assert (async_call.name, async_call.arguments) == (sync_call.name, sync_call.arguments)


@pytest.mark.parametrize(
    ("params", "param"),
    [
        ({"tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice"),
        ({"tool_choice": "required", "response_format": {"type": "json_object"}}, "tool_choice"),
        ({"tool_choice": "required", "grammar": 'root ::= "x"'}, "tool_choice"),
        ({"parallel_tool_calls": "yes"}, "parallel_tool_calls"),
        ({"tools": [{"type": "function", "function": {"name": ""}}]}, "tools"),
    ],
)
def test_bad_tool_requests_are_invalid_request_errors(
    qwen: Kronk, params: dict[str, Any], param: str
) -> None:
    params = {"tools": TOOLS, **params}
    with pytest.raises(InvalidRequestError) as err:
        qwen.chat(ask("hi"), **params)
    assert err.value.param == param


def test_tool_choice_none_returns_text_only(qwen: Kronk) -> None:
    resp = qwen.chat(
        ask("What is the weather in Paris?"), tools=TOOLS, tool_choice="none", **GREEDY
    )
    choice = resp.choices[0]
    assert choice.message.tool_calls is None
    assert choice.finish_reason == "stop"
    assert "get_weather" in (choice.message.content or "")  # the model's JSON, left as text


def test_auto_with_parallel_off_ends_at_the_first_call(qwen: Kronk) -> None:
    messages = ask("What is the weather in Paris, and what time is it in Tokyo?")
    resp = qwen.chat(messages, tools=TOOLS, parallel_tool_calls=False, **GREEDY)
    choice = resp.choices[0]
    # The stream stops the generation once the call is complete; that still reads as a call.
    assert choice.finish_reason == "tool_calls"
    assert [c.function.name for c in choice.message.tool_calls or []] == ["get_weather"]


# -- wiring without a real model -----------------------------------------------------------------


def test_a_template_without_tools_gets_them_in_the_system_message(tiny_llama_path: Path) -> None:
    with Kronk(tiny_llama_path, n_ctx=256, n_seq_max=1, n_threads=1) as k:
        assert k.tool_format is F.GENERIC
        plain = k.render_chat(ask("hi"))
        prompt = k.render_chat(
            [{"role": "system", "content": "Be brief."}, *ask("hi")], tools=TOOLS
        )
    assert "get_weather" not in plain
    system = prompt.split("<|im_end|>")[0]
    assert system.startswith("<|im_start|>system\nBe brief.\n\nYou can call these tools:")
    assert '"name": "get_weather"' in system and '"name": "get_time"' in system


def test_reasoning_is_split_off_before_calls_are_parsed() -> None:
    from kronk.chat.turn import ChatTurn
    from kronk.engine.request import Usage
    from kronk.openai_objects import ChatCompletionBuilder

    turn = ChatTurn(
        "m", starts_in_reasoning=False, tool_parser=ToolCallParser(F.HERMES, tool_names=NAMES)
    )
    builder = ChatCompletionBuilder("m")
    text = (
        "<think>The user wants weather; <tool_call> is how I call.</think>\n\n"
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
    )
    chunks = [
        c
        for i in range(0, len(text), 7)
        for c in builder.on_events(turn.on_event(TextDelta(text[i : i + 7])))
    ]
    chunks += builder.on_events(
        turn.on_event(Finished("stop", Usage(10, 20, 0, 0.0, 0.0, 0.0, 0.0)))
    )
    message = builder.result().choices[0].message
    assert message.reasoning_content == "The user wants weather; <tool_call> is how I call."
    assert message.content is None
    assert [(c.function.name, c.function.arguments) for c in message.tool_calls or []] == [
        ("get_weather", '{"city": "Paris"}')
    ]
    assert chunks[-1].choices[0].finish_reason == "tool_calls"
    streamed = "".join(c.choices[0].delta.reasoning_content or "" for c in chunks)
    assert streamed == message.reasoning_content
