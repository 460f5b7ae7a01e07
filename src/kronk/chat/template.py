"""Render a model's Jinja2 chat template into a prompt string.

GGUF files carry the Hugging Face chat template in `tokenizer.chat_template`.
Those templates were written for HF transformers, so we render them the way
transformers does: a sandboxed, immutable Jinja2 environment with
trim_blocks/lstrip_blocks, the loopcontrols extension, a `tojson` filter that
does not HTML-escape, and the `raise_exception` / `strftime_now` globals. The
sandbox matters because a template is code that arrives inside a downloaded
model file.

Messages arrive in OpenAI form; the few places where OpenAI and HF disagree
(list-of-parts content, tool-call arguments as a JSON string) are normalised
here, once, so every protocol adapter gets the same prompt.
"""

from __future__ import annotations

import json
import types
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, NoReturn

import jinja2
import jinja2.ext
import jinja2.meta
import jinja2.nodes
import jinja2.parser
from jinja2.sandbox import ImmutableSandboxedEnvironment

from kronk.errors import InvalidRequestError, TemplateError

__all__ = ["CHATML_TEMPLATE", "ChatTemplate", "template_supports_tools"]

# Used when a model ships no template (base models such as Gemma 3 270M). ChatML is
# what llama.cpp falls back to and what transformers long used as its default, so
# it is the least surprising choice; it renders roles and text only (no tools).
CHATML_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' }}"
    "{%- if message['content'] is string %}{{- message['content'] }}{%- endif %}"
    "{{- '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

# Part types whose `text` is plain text: Chat Completions uses "text", the
# Responses API "input_text"/"output_text".
_TEXT_PART_TYPES = frozenset({"text", "input_text", "output_text"})

# Jinja's rewritten tracebacks put template frames under this file name.
_TEMPLATE_FILENAME = "<template>"


class _RaisedByTemplate(Exception):
    """`raise_exception(msg)` was called: the template rejects these messages on purpose."""


def _raise_exception(message: object) -> NoReturn:
    raise _RaisedByTemplate(str(message))


def _strftime_now(fmt: str) -> str:
    # Local time, as transformers does: templates print "today's date" with it.
    return datetime.now().strftime(fmt)


def _tojson(
    value: Any,
    ensure_ascii: bool = False,
    indent: int | str | None = None,
    separators: tuple[str, str] | None = None,
    sort_keys: bool = False,
) -> str:
    # Jinja's own tojson escapes <, >, & and ' for HTML; prompts must see them verbatim.
    return json.dumps(
        value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
    )


class _GenerationTag(jinja2.ext.Extension):
    """`{% generation %}...{% endgeneration %}` renders its body unchanged.

    transformers uses the tag to mark assistant tokens for training masks; some
    templates contain it, so it must compile, but inference needs no marking.
    """

    tags = {"generation"}  # noqa: RUF012 - the shape Jinja's Extension base class declares

    def parse(self, parser: jinja2.parser.Parser) -> jinja2.nodes.Node:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        call = self.call_method("_render_body")
        return jinja2.nodes.CallBlock(call, [], [], body).set_lineno(lineno)

    def _render_body(self, caller: Callable[[], str]) -> str:
        return caller()


def _new_environment() -> ImmutableSandboxedEnvironment:
    env = ImmutableSandboxedEnvironment(
        trim_blocks=True,
        lstrip_blocks=True,
        extensions=[_GenerationTag, jinja2.ext.loopcontrols],
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    return env


def template_supports_tools(source: str) -> bool:
    """Whether the template reads a `tools` variable: a hint that the model was trained for tools.

    We look at the variables the template expects from its caller rather than at
    the raw text, so a template that merely says "tools" in prose does not count.
    A template that does not compile supports nothing.
    """
    try:
        ast = _new_environment().parse(source)
    except jinja2.TemplateError:
        return False
    return "tools" in jinja2.meta.find_undeclared_variables(ast)


class ChatTemplate:
    """A compiled chat template; `render` turns OpenAI-style messages into a prompt.

    Compiling happens once, here; rendering keeps no state between calls, so one
    `ChatTemplate` can serve many threads at once.
    """

    def __init__(
        self,
        source: str,
        *,
        bos_token: str = "",
        eos_token: str = "",
        name: str = "chat template",
    ) -> None:
        self.source = source
        self.bos_token = bos_token
        self.eos_token = eos_token
        # `name` says where the template came from (a file path for overrides) in errors.
        self.name = name
        env = _new_environment()
        try:
            ast = env.parse(source)
            # One parse serves both the capability hint and the compiled template.
            self.supports_tools = "tools" in jinja2.meta.find_undeclared_variables(ast)
            self._template = env.from_string(ast)
        except jinja2.TemplateSyntaxError as exc:
            raise TemplateError(
                f"{name} does not compile: line {exc.lineno}: {exc.message}"
            ) from exc
        except jinja2.TemplateError as exc:
            raise TemplateError(f"{name} does not compile: {exc}") from exc

    @classmethod
    def from_file(
        cls, path: str | Path, *, bos_token: str = "", eos_token: str = ""
    ) -> ChatTemplate:
        """Load an override template from a file (UTF-8); `TemplateError` names the path."""
        try:
            source = Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise TemplateError(f"cannot read chat template file {str(path)!r}: {exc}") from exc
        return cls(source, bos_token=bos_token, eos_token=eos_token, name=f"chat template {path}")

    @classmethod
    def default(cls, *, bos_token: str = "", eos_token: str = "") -> ChatTemplate:
        """The fallback for models without a template: plain ChatML (see `CHATML_TEMPLATE`)."""
        return cls(
            CHATML_TEMPLATE,
            bos_token=bos_token,
            eos_token=eos_token,
            name="default ChatML template",
        )

    def render(
        self,
        messages: Sequence[Mapping[str, Any]],
        *,
        tools: Sequence[Mapping[str, Any]] | None = None,
        add_generation_prompt: bool = True,
        **extra: Any,
    ) -> str:
        """Render the prompt text. `extra` reaches the template as variables
        (e.g. `enable_thinking`, `documents`).

        Raises `TemplateError` for anything that goes wrong inside the template,
        including a template that rejects the messages with `raise_exception`, and
        `InvalidRequestError` for a message that is not a mapping at all. Message
        fields are otherwise passed on as sent (a `None` content stays `None`): what
        a template accepts is the template's business.
        """
        context: dict[str, Any] = {
            "bos_token": self.bos_token,
            "eos_token": self.eos_token,
            **{key: _plain(value) for key, value in extra.items()},
            "messages": [_normalise_message(message, i) for i, message in enumerate(messages)],
            # An empty list means "no tools"; templates that test `tools is not none`
            # would otherwise print an empty tools section.
            "tools": [_plain(tool) for tool in tools] if tools else None,
            "add_generation_prompt": add_generation_prompt,
        }
        try:
            return self._template.render(context)
        except _RaisedByTemplate as exc:
            # The template author's message is meant for the caller; pass it on as is.
            raise TemplateError(str(exc)) from exc
        except Exception as exc:
            where = _template_line(exc.__traceback__)
            at = f" at line {where}" if where is not None else ""
            raise TemplateError(
                f"{self.name} failed to render{at}: {type(exc).__name__}: {exc}"
            ) from exc


def _template_line(tb: types.TracebackType | None) -> int | None:
    """The template line of the innermost template frame in a rendering traceback."""
    line = None
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == _TEMPLATE_FILENAME:
            line = tb.tb_lineno
        tb = tb.tb_next
    return line


def _plain(value: Any) -> Any:
    """A deep copy made of plain dicts and lists.

    Templates call dict methods (`message.get`, `tool.items()`) and test
    `is mapping`/`is sequence`, which other Mapping/Sequence types may fail;
    copying also keeps the caller's objects out of the template's reach.
    """
    if isinstance(value, Mapping):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    return value


def _normalise_message(message: Mapping[str, Any], index: int) -> dict[str, Any]:
    if not isinstance(message, Mapping):
        raise InvalidRequestError(
            f"message {index} is a {type(message).__name__}, not an object", f"messages[{index}]"
        )
    normalised: dict[str, Any] = _plain(message)
    content = normalised.get("content")
    if isinstance(content, list):
        normalised["content"] = _join_text_parts(content)
    tool_calls = normalised.get("tool_calls")
    if isinstance(tool_calls, list):
        for call in tool_calls:
            function = call.get("function") if isinstance(call, dict) else None
            if isinstance(function, dict) and isinstance(function.get("arguments"), str):
                function["arguments"] = _parse_arguments(function["arguments"])
    return normalised


def _join_text_parts(parts: list[Any]) -> Any:
    """Text-only part lists become one string (parts joined by newlines, as llama.cpp does).

    A list with any other part (an image, say) is left alone for a template that
    understands typed content.
    """
    texts: list[str] = []
    for part in parts:
        if not (
            isinstance(part, dict)
            and part.get("type") in _TEXT_PART_TYPES
            and isinstance(part.get("text"), str)
        ):
            return parts
        texts.append(part["text"])
    return "\n".join(texts)


def _parse_arguments(arguments: str) -> Any:
    """OpenAI sends tool-call arguments as a JSON string; HF templates expect the object.

    Only a JSON object replaces the string: anything else (invalid JSON, a bare
    number) is not a valid argument object, so the model sees what was sent.
    """
    try:
        parsed = json.loads(arguments)
    except ValueError:
        return arguments
    return parsed if isinstance(parsed, dict) else arguments
