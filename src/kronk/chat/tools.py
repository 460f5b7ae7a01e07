"""Tool calling: validate `tools`/`tool_choice`, enforce calls with a grammar, parse calls out of
model output while it streams.

Each model family writes calls its own way, and the chat template says which way:

    hermes      Qwen, Hermes: <tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>
    llama3      Llama 3.x: {"name": ..., "parameters": {...}}, optionally after <|python_tag|>
    mistral     [TOOL_CALLS][{"name": ..., "arguments": {...}}]
    mistral-args  newer Mistral: [TOOL_CALLS]name[ARGS]{...}
    harmony     gpt-oss: <|channel|>commentary to=functions.NAME <|constrain|>json<|message|>{...}
                (its analysis channel is reasoning)
    deepseek    <｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>NAME
                ```json {...} ```<｜tool▁call▁end｜>...<｜tool▁calls▁end｜>
    generic     none of these: a JSON object with name and arguments

Every family also accepts the generic form when it is the whole start of the answer, as a bare
JSON object or in a ```json code block, if it names one of the tools: small models often answer
that way instead of in their trained format (the default Qwen2.5-Coder-0.5B does).

`tool_choice` "required" or a named function is enforced by a grammar in the family's own call
format. With "auto", families whose calls start with a fixed marker get a lazy grammar that
engages when the marker is generated; for the others, the output is parsed and repaired.

The streaming parser (`ToolCallParser`, in `kronk.chat.tool_parser`, re-exported here) turns
output into content and OpenAI-style tool-call deltas; see that module.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from kronk.chat.tool_parser import (
    DS_CALL_BEGIN,
    DS_CALL_END,
    DS_CALLS_BEGIN,
    DS_CALLS_END,
    DS_SEP,
    HERMES_BEGIN,
    HERMES_END,
    LLAMA_PYTHON_TAG,
    MISTRAL_ARGS,
    MISTRAL_CALLS,
    TOOL_NAME,
    ToolCall,
    ToolCallDelta,
    ToolCallParser,
    ToolFormat,
    ToolParseDelta,
    parse_tool_calls,
)
from kronk.errors import InvalidRequestError
from kronk.llama import json_schema_rules

__all__ = [
    "Reasoning",
    "ToolCall",
    "ToolCallDelta",
    "ToolCallParser",
    "ToolChoice",
    "ToolFormat",
    "ToolGrammar",
    "ToolParseDelta",
    "ToolSpec",
    "detect_tool_format",
    "parse_tool_calls",
    "tool_call_grammar",
    "tools_system_prompt",
    "validate_tool_choice",
    "validate_tools",
]


# -- requests: tools and tool_choice ----------------------------------------------------------

_ANY_OBJECT: Mapping[str, Any] = {"type": "object"}


@dataclass(frozen=True)
class ToolSpec:
    """One function the model may call (OpenAI's `tools[i].function`)."""

    name: str
    description: str | None = None
    parameters: Mapping[str, Any] = field(default_factory=lambda: dict(_ANY_OBJECT))

    def as_openai(self) -> dict[str, Any]:
        function: dict[str, Any] = {"name": self.name}
        if self.description is not None:
            function["description"] = self.description
        function["parameters"] = self.parameters
        return {"type": "function", "function": function}


@dataclass(frozen=True)
class ToolChoice:
    """What the model may or must do: "none", "auto", "required", or call `name`."""

    mode: Literal["none", "auto", "required"]
    name: str | None = None  # set: the model must call this function (mode is "required")

    @property
    def forced(self) -> bool:
        return self.mode == "required"


def validate_tools(tools: object) -> list[ToolSpec]:
    """Check OpenAI-shaped `tools`; raise InvalidRequestError(param="tools") naming the fault."""
    if tools is None:
        return []
    if not isinstance(tools, Sequence) or isinstance(tools, str):
        raise InvalidRequestError("tools must be a list of tool objects", "tools")
    specs: list[ToolSpec] = []
    for i, tool in enumerate(tools):
        where = f"tools[{i}]"
        if not isinstance(tool, Mapping):
            raise InvalidRequestError(f"{where} must be an object", "tools")
        if tool.get("type") != "function":
            raise InvalidRequestError(
                f"{where}.type must be 'function'; got {tool.get('type')!r}", "tools"
            )
        function = tool.get("function")
        if not isinstance(function, Mapping):
            raise InvalidRequestError(f"{where}.function must be an object", "tools")
        name = function.get("name")
        if not isinstance(name, str) or not TOOL_NAME.fullmatch(name):
            raise InvalidRequestError(
                f"{where}.function.name must be 1 to 64 letters, digits, '_' or '-'; got {name!r}",
                "tools",
            )
        if any(spec.name == name for spec in specs):
            raise InvalidRequestError(f"{where}: the function name {name!r} is repeated", "tools")
        description = function.get("description")
        if description is not None and not isinstance(description, str):
            raise InvalidRequestError(f"{where}.function.description must be a string", "tools")
        parameters = function.get("parameters", _ANY_OBJECT)
        if not isinstance(parameters, Mapping):
            raise InvalidRequestError(
                f"{where}.function.parameters must be a JSON Schema object", "tools"
            )
        if parameters.get("type", "object") != "object":
            raise InvalidRequestError(
                f"{where}.function.parameters must describe an object (type 'object')", "tools"
            )
        specs.append(ToolSpec(name, description, dict(parameters)))
    return specs


def validate_tool_choice(choice: object, tools: Sequence[ToolSpec]) -> ToolChoice:
    """Check `tool_choice` against the tools; the default is "auto" with tools, else "none"."""
    if choice is None:
        return ToolChoice("auto" if tools else "none")
    if choice in ("none", "auto", "required"):
        if choice == "required" and not tools:
            raise InvalidRequestError("tool_choice 'required' needs tools", "tool_choice")
        return ToolChoice(choice)  # type: ignore[arg-type]  # checked just above
    if isinstance(choice, Mapping):
        function = choice.get("function")
        name = function.get("name") if isinstance(function, Mapping) else None
        if choice.get("type") != "function" or not isinstance(name, str):
            raise InvalidRequestError(
                'tool_choice must be "none", "auto", "required" or '
                '{"type": "function", "function": {"name": ...}}',
                "tool_choice",
            )
        if not any(tool.name == name for tool in tools):
            raise InvalidRequestError(
                f"tool_choice names the function {name!r}, which is not in tools", "tool_choice"
            )
        return ToolChoice("required", name)
    raise InvalidRequestError(
        f'tool_choice must be "none", "auto", "required" or a function; got {choice!r}',
        "tool_choice",
    )


def tools_system_prompt(tools: Sequence[ToolSpec]) -> str:
    """Tell a model whose template cannot show tools what they are and how to call them
    (in the generic format, which the parser understands)."""
    listing = "\n".join(json.dumps(tool.as_openai(), ensure_ascii=False) for tool in tools)
    return (
        "You can call these tools:\n"
        f"{listing}\n\n"
        "To call a tool, answer with only a JSON object, nothing else: "
        '{"name": <tool name>, "arguments": <arguments object>}'
    )


# -- families -----------------------------------------------------------------------------------


def detect_tool_format(template: str | None, architecture: str = "") -> ToolFormat:
    """The call format a model was trained on, from its chat template (and architecture)."""
    text = template or ""
    if "<|channel|>" in text or architecture == "gpt-oss":
        return ToolFormat.HARMONY
    if DS_CALLS_BEGIN in text or DS_CALL_BEGIN in text:
        return ToolFormat.DEEPSEEK if "```json" in text else ToolFormat.DEEPSEEK_V31
    if MISTRAL_CALLS in text:
        return ToolFormat.MISTRAL_ARGS if "[ARGS]" in text else ToolFormat.MISTRAL
    if HERMES_BEGIN in text:
        return ToolFormat.HERMES
    if LLAMA_PYTHON_TAG in text or ("<|start_header_id|>" in text and "ipython" in text):
        return ToolFormat.LLAMA3
    return ToolFormat.GENERIC


# -- grammars -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ToolGrammar:
    """A GBNF grammar for tool calls; with `triggers`, it is lazy (see SamplingParams)."""

    grammar: str
    triggers: tuple[str, ...] = ()


# Where a reasoning block can be: none, optional at the start, or already open (the prompt
# ended with "<think>").
Reasoning = Literal["none", "optional", "open"]

# Any text up to "</think>" (which it cannot contain), then the tag and optional whitespace.
_THINK_RULES = (
    'think-body ::= ( [^<] | "<" ( [^/] | "/" ( [^t] | "t" ( [^h] | "h" ( [^i] | "i" ( [^n] | '
    '"n" ( [^k] | "k" [^>] ) ) ) ) ) ) )*\n'
    'think-end ::= "</think>" [ \\t\\n]*'
)


def tool_call_grammar(
    fmt: ToolFormat,
    tools: Sequence[ToolSpec],
    choice: ToolChoice,
    *,
    parallel: bool = True,
    reasoning: Reasoning = "none",
) -> ToolGrammar | None:
    """The grammar that enforces `choice` in `fmt`'s own call format, or None for no grammar.

    "required" and a named function get a grammar that only allows calls (after an optional
    reasoning block). "auto" gets a lazy grammar for families whose calls begin with a fixed
    marker: free text until the model writes the marker, a well-formed call after it.
    Raises InvalidRequestError(param="tools") for a parameters schema the converter can't
    express.
    """
    if choice.mode == "none" or not tools:
        return None
    lazy = not choice.forced
    if lazy and fmt not in _LAZY_FORMATS:
        return None
    chosen = [t for t in tools if t.name == choice.name] if choice.name else list(tools)
    many = parallel and choice.name is None
    if fmt in _ARGS_FORMATS:
        rules, names = json_schema_rules(
            {f"tool-args-{i}": tool.parameters for i, tool in enumerate(chosen)}
        )
        calls = _args_format_calls(
            fmt, [(t.name, names[f"tool-args-{i}"]) for i, t in enumerate(chosen)], many
        )
    else:
        args_key = "parameters" if fmt is ToolFormat.LLAMA3 else "arguments"
        rules, names = json_schema_rules(
            {f"tool-call-{i}": _call_schema(tool, args_key) for i, tool in enumerate(chosen)}
        )
        call = " | ".join(names[f"tool-call-{i}"] for i in range(len(chosen)))
        calls = _object_format_calls(fmt, call, many)
    lines = [rules, f"tool-calls ::= {calls}"]
    if lazy:
        lines.append("root ::= tool-calls")
        return ToolGrammar("\n".join(lines), _LAZY_FORMATS[fmt])
    if reasoning == "open":
        lines += [_THINK_RULES, "root ::= think-body think-end tool-calls"]
    elif reasoning == "optional":
        lines += [_THINK_RULES, 'root ::= ( "<think>" think-body think-end )? tool-calls']
    else:
        lines.append("root ::= tool-calls")
    return ToolGrammar("\n".join(lines))


# Families whose calls start with a fixed marker, and that marker (the lazy grammar's trigger).
_LAZY_FORMATS: dict[ToolFormat, tuple[str, ...]] = {
    ToolFormat.HERMES: (HERMES_BEGIN,),
    ToolFormat.MISTRAL: (MISTRAL_CALLS,),
    ToolFormat.MISTRAL_ARGS: (MISTRAL_CALLS,),
    ToolFormat.DEEPSEEK: (DS_CALLS_BEGIN,),
    ToolFormat.DEEPSEEK_V31: (DS_CALLS_BEGIN,),
}
# Families that write the name outside the JSON, which holds only the arguments.
_ARGS_FORMATS = frozenset(
    {ToolFormat.MISTRAL_ARGS, ToolFormat.HARMONY, ToolFormat.DEEPSEEK, ToolFormat.DEEPSEEK_V31}
)


def _call_schema(tool: ToolSpec, args_key: str) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {"name": {"const": tool.name}, args_key: tool.parameters},
        "required": ["name", args_key],
        "additionalProperties": False,
    }


def _lit(text: str) -> str:
    """A GBNF string literal (JSON's escapes are GBNF's, \\uXXXX included)."""
    return json.dumps(text)


def _object_format_calls(fmt: ToolFormat, call: str, many: bool) -> str:
    if fmt is ToolFormat.HERMES:
        one = f"{_lit(HERMES_BEGIN + chr(10))} ( {call} ) {_lit(chr(10) + HERMES_END)}"
        return f'{one} ( "\\n" {one} )*' if many else one
    if fmt is ToolFormat.MISTRAL:
        more = f' ( "," " "? ( {call} ) )*' if many else ""
        return f'{_lit(MISTRAL_CALLS + "[")} ( {call} ){more} "]"'
    return f"( {call} )"  # llama3 and generic: one bare JSON object


def _args_format_calls(fmt: ToolFormat, tools: list[tuple[str, str]], many: bool) -> str:
    if fmt is ToolFormat.MISTRAL_ARGS:
        alts = " | ".join(f"{_lit(name + MISTRAL_ARGS)} {rule}" for name, rule in tools)
        one = f"{_lit(MISTRAL_CALLS)} ( {alts} )"
        return f"{one} ( {one} )*" if many else one
    if fmt is ToolFormat.HARMONY:
        alts = " | ".join(
            f"{_lit(name + ' <|constrain|>json<|message|>')} {rule}" for name, rule in tools
        )
        return f"{_lit('<|channel|>commentary to=functions.')} ( {alts} )"
    if fmt is ToolFormat.DEEPSEEK:
        alts = " | ".join(
            f"{_lit(name + chr(10) + '```json' + chr(10))} {rule}" for name, rule in tools
        )
        head, tail = _lit(DS_CALL_BEGIN + "function" + DS_SEP), _lit("\n```" + DS_CALL_END)
        one = f"{head} ( {alts} ) {tail}"
    else:
        alts = " | ".join(f"{_lit(name + DS_SEP)} {rule}" for name, rule in tools)
        one = f"{_lit(DS_CALL_BEGIN)} ( {alts} ) {_lit(DS_CALL_END)}"
    body = f'{one} ( "\\n"? {one} )*' if many else one
    return f"{_lit(DS_CALLS_BEGIN)} {body} {_lit(DS_CALLS_END)}"


# Markers the parsers must see as text. Some vocabularies make them control tokens, which
# would otherwise render as nothing (Harmony's channels, Mistral's and DeepSeek's calls).
OUTPUT_MARKERS: tuple[str, ...] = (
    "<think>", "</think>", "<tool_call>", "</tool_call>", "<|python_tag|>",
    "[TOOL_CALLS]", "[ARGS]", "[CALL_ID]",
    "<｜tool▁calls▁begin｜>", "<｜tool▁calls▁end｜>", "<｜tool▁call▁begin｜>",
    "<｜tool▁call▁end｜>", "<｜tool▁sep｜>",
    "<|start|>", "<|channel|>", "<|message|>", "<|constrain|>", "<|end|>", "<|call|>",
)  # fmt: skip
