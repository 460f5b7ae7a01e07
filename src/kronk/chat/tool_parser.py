"""Parse tool calls out of model output while it streams, for every model family.

`ToolCallParser` is fed text deltas and returns content, reasoning (harmony's analysis channel)
and tool-call deltas as OpenAI streams them: a call's index, id and name first, as soon as the
name is known, then argument fragments. Text that may be the start of a call marker is held
back until it is decided. Arguments are repaired on the fly (see `kronk.chat.json_repair`), so
the fragments always add up to the final arguments, which are valid JSON. A call that cannot be
made sense of (no name) comes back as content. Nothing here raises on model output.

How it works: the family's start marker opens a section; the section feeds the call's JSON
through a `JsonRepairer` (lenient -> strict) and a `_CallReader` (strict JSON -> name and
arguments), which fill `_CallRecord`s; the parser turns records into deltas, in order.
"""

from __future__ import annotations

import json
import logging
import re
import uuid
from collections.abc import Collection
from dataclasses import dataclass, field
from enum import Enum, auto
from typing import Any

from kronk.chat.json_repair import JsonRepairer, repair_json

__all__ = [
    "DS_CALLS_BEGIN",
    "DS_CALLS_END",
    "DS_CALL_BEGIN",
    "DS_CALL_END",
    "DS_SEP",
    "HERMES_BEGIN",
    "HERMES_END",
    "LLAMA_PYTHON_TAG",
    "MISTRAL_ARGS",
    "MISTRAL_CALLS",
    "MISTRAL_CALL_ID",
    "TOOL_NAME",
    "ToolCall",
    "ToolCallDelta",
    "ToolCallParser",
    "ToolFormat",
    "ToolParseDelta",
    "new_call_id",
    "parse_tool_calls",
]

log = logging.getLogger("kronk.tools")

# OpenAI's rule for function names.
TOOL_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")


class ToolFormat(Enum):
    """The call format a model family was trained on (the list is in `kronk.chat.tools`)."""

    HERMES = "hermes"
    LLAMA3 = "llama3"
    MISTRAL = "mistral"
    MISTRAL_ARGS = "mistral-args"
    HARMONY = "harmony"
    DEEPSEEK = "deepseek"  # V3 / R1: "function<｜tool▁sep｜>NAME\n```json\n{...}\n```"
    DEEPSEEK_V31 = "deepseek-v3.1"  # "NAME<｜tool▁sep｜>{...}"
    GENERIC = "generic"


HERMES_BEGIN, HERMES_END = "<tool_call>", "</tool_call>"
LLAMA_PYTHON_TAG = "<|python_tag|>"
MISTRAL_CALLS, MISTRAL_ARGS, MISTRAL_CALL_ID = "[TOOL_CALLS]", "[ARGS]", "[CALL_ID]"
DS_CALLS_BEGIN, DS_CALLS_END = "<｜tool▁calls▁begin｜>", "<｜tool▁calls▁end｜>"
DS_CALL_BEGIN, DS_CALL_END, DS_SEP = (
    "<｜tool▁call▁begin｜>",
    "<｜tool▁call▁end｜>",
    "<｜tool▁sep｜>",
)

# Text that opens a call section, per family (harmony has a parser of its own).
_START_MARKERS: dict[ToolFormat, tuple[str, ...]] = {
    ToolFormat.HERMES: (HERMES_BEGIN,),
    ToolFormat.LLAMA3: (LLAMA_PYTHON_TAG,),
    ToolFormat.MISTRAL: (MISTRAL_CALLS,),
    ToolFormat.MISTRAL_ARGS: (MISTRAL_CALLS,),
    ToolFormat.DEEPSEEK: (DS_CALLS_BEGIN, DS_CALL_BEGIN),
    ToolFormat.DEEPSEEK_V31: (DS_CALLS_BEGIN, DS_CALL_BEGIN),
    ToolFormat.GENERIC: (),
    ToolFormat.HARMONY: (),
}

# Keys of a call object. Others mean "this JSON is not a call" for the bare-JSON fallback.
_NAME_KEYS = frozenset({"name", "function"})
_ARGUMENT_KEYS = frozenset({"arguments", "parameters", "args"})
_KNOWN_KEYS = _NAME_KEYS | _ARGUMENT_KEYS | frozenset({"type", "id", "index"})


# -- parsed output ------------------------------------------------------------------------------


@dataclass(frozen=True)
class ToolCall:
    """A complete call: `arguments` is JSON text (an object, when the model wrote one)."""

    id: str
    name: str
    arguments: str


@dataclass(frozen=True)
class ToolCallDelta:
    """Part of a streamed call. The first delta of a call has `id` and `name` (and no
    arguments); later ones carry argument fragments only."""

    index: int
    id: str | None = None
    name: str | None = None
    arguments: str = ""


@dataclass(frozen=True)
class ToolParseDelta:
    """What one `push` (or `flush`) made known."""

    content: str = ""
    reasoning: str = ""  # harmony's analysis channel
    tool_calls: tuple[ToolCallDelta, ...] = ()


def new_call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


# -- reading calls out of (repaired) JSON ---------------------------------------------------------


@dataclass(eq=False)
class _CallRecord:
    """One call as it is read; the parser turns records into deltas."""

    name: str | None = None
    args: list[str] = field(default_factory=list)  # strict JSON text of the arguments value
    args_kind: str = ""  # first character of the arguments: "{" streams, others wait
    complete: bool = False
    committed: bool = True  # False while the bare-JSON fallback has not decided
    foreign: bool = False  # a key no call has came before the name: likely not a call
    has_args: bool = False  # an arguments key was seen (later ones are ignored)
    # Emission state, kept by the parser.
    index: int | None = None
    id: str = ""
    sent_parts: int = 0
    finished: bool = False
    dropped: bool = False

    def final_arguments(self) -> str:
        text = "".join(self.args)
        if self.args_kind == "{":
            return text
        if not text or text == "null":
            return "{}"
        if self.args_kind == '"':  # arguments sent as a JSON string holding the object
            try:
                inner = json.loads(text)
            except ValueError:
                return "{}"
            repaired = repair_json(inner)
            return repaired[0] if repaired and repaired[0].startswith("{") else "{}"
        return text


_JSON_SPACE = frozenset(" \t\n\r")


class _CallReader:
    """Reads strict JSON (the repairer's output) holding a call object, an array of call
    objects, or (with `args_only`) just the arguments of a call named elsewhere."""

    def __init__(
        self,
        records: list[_CallRecord],
        *,
        args_only: bool = False,
        name: str | None = None,
        committed: bool = True,
    ) -> None:
        self._records = records
        self._committed = committed
        self._depth = 0
        self._top_array = False
        self._in_string = False
        self._escape = False
        self._collected: list[str] | None = None  # raw text of a key or name string
        self._collecting_key = False
        self._call_depths: list[int] = []  # the open call object, plus nested "function" ones
        self._expect_key = False
        self._key: str | None = None
        self._value_role = ""  # after a call-level key's colon: "name", "function" or ""
        self._capture: _CallRecord | None = None
        self._capture_depth = 0
        self._cap_depth = 0
        self._cap_in_string = False
        self._cap_escape = False
        self._record: _CallRecord | None = None
        if args_only:
            self._record = _CallRecord(name=name, committed=committed)
            records.append(self._record)
            self._begin_capture(self._record)

    def feed(self, text: str) -> None:
        for char in text:
            if self._capture is not None and self._capture_char(char):
                continue
            self._char(char)

    def finish(self) -> None:
        """The JSON ended: whatever is open is complete."""
        if self._capture is not None:
            self._end_capture()
        if self._record is not None:
            self._record.complete = True
            self._record = None

    def _char(self, char: str) -> None:
        if self._in_string:
            if self._escape:
                self._escape = False
            elif char == "\\":
                self._escape = True
            elif char == '"':
                self._in_string = False
                self._end_string()
                return
            if self._collected is not None:
                self._collected.append(char)
            return
        if char in _JSON_SPACE:
            return
        at_call_level = bool(self._call_depths) and self._depth == self._call_depths[-1]
        if char == '"':
            self._in_string = True
            self._collecting_key = at_call_level and self._expect_key
            wants_name = at_call_level and self._value_role in ("name", "function")
            self._collected = [] if self._collecting_key or wants_name else None
            self._expect_key = False
        elif char == ":":
            if at_call_level and self._key is not None:
                self._start_value(self._key)
                self._key = None
        elif char in "{[":
            self._depth += 1
            if char == "[":
                self._top_array = self._top_array or self._depth == 1
            elif self._depth == 1 or (self._depth == 2 and self._top_array):
                self._record = _CallRecord(committed=self._committed)
                self._records.append(self._record)
                self._call_depths = [self._depth]
                self._expect_key = True
            elif at_call_level and self._value_role == "function":
                self._call_depths.append(self._depth)  # {"function": {"name": ..., ...}}
                self._expect_key = True
            if at_call_level:
                self._value_role = ""
        elif char in "}]":
            if self._call_depths and self._depth == self._call_depths[-1]:
                self._call_depths.pop()
                if not self._call_depths and self._record is not None:
                    self._record.complete = True
                    self._record = None
            self._depth -= 1
        elif char == "," and at_call_level:
            self._expect_key = True
            self._value_role = ""

    def _end_string(self) -> None:
        collected, self._collected = self._collected, None
        if collected is None:
            return
        try:
            text = json.loads('"' + "".join(collected) + '"')
        except ValueError:
            return
        if self._collecting_key:
            self._key = text
        elif self._record is not None and self._record.name is None:
            self._record.name = text
        self._value_role = ""

    def _start_value(self, key: str) -> None:
        if key in _NAME_KEYS:
            self._value_role = key
        elif key in _ARGUMENT_KEYS and self._record is not None and not self._record.has_args:
            self._begin_capture(self._record)
        else:
            record = self._record
            if key not in _KNOWN_KEYS and record is not None and record.name is None:
                record.foreign = True
            self._value_role = ""

    def _begin_capture(self, record: _CallRecord) -> None:
        record.has_args = True
        self._capture = record
        self._capture_depth = self._cap_depth = self._depth
        self._cap_in_string = self._cap_escape = False

    def _end_capture(self) -> None:
        self._capture = None

    def _capture_char(self, char: str) -> bool:
        """Take `char` into the arguments; False when it is past their end."""
        record = self._capture
        assert record is not None
        if not record.args_kind:
            if char in _JSON_SPACE:
                return True
            record.args_kind = char
        if record.args_kind not in '{["':  # a bare literal ends at the next delimiter
            if char in ",}]" or char in _JSON_SPACE:
                self._end_capture()
                return False
            record.args.append(char)
            return True
        record.args.append(char)
        if self._cap_in_string:
            if self._cap_escape:
                self._cap_escape = False
            elif char == "\\":
                self._cap_escape = True
            elif char == '"':
                self._cap_in_string = False
                if self._cap_depth == self._capture_depth:
                    self._end_capture()
        elif char == '"':
            self._cap_in_string = True
        elif char in "{[":
            self._cap_depth += 1
        elif char in "}]":
            self._cap_depth -= 1
            if self._cap_depth == self._capture_depth:
                self._end_capture()
        return True


class _JsonCalls:
    """Lenient JSON with calls in it, as it streams: repaired, then read."""

    def __init__(
        self,
        records: list[_CallRecord],
        *,
        args_only: bool = False,
        name: str | None = None,
        committed: bool = True,
    ) -> None:
        self._repairer = JsonRepairer()
        self.reader = _CallReader(records, args_only=args_only, name=name, committed=committed)

    @property
    def complete(self) -> bool:
        return self._repairer.complete

    @property
    def started(self) -> bool:
        return self._repairer.started

    def feed(self, text: str) -> int:
        """Feed text; return how much of it belongs to the JSON value."""
        out, used = self._repairer.feed(text)
        self.reader.feed(out)
        if self._repairer.complete:
            self.reader.finish()
        return used

    def close(self) -> None:
        if not self._repairer.complete:
            self.reader.feed(self._repairer.close())
        self.reader.finish()


# -- the streaming parser -------------------------------------------------------------------------


def _partial_suffix(text: str, markers: Collection[str]) -> int:
    """Length of the longest end of `text` that is a proper start of one of `markers`."""
    best = 0
    for marker in markers:
        for length in range(min(len(text), len(marker) - 1), best, -1):
            if text.endswith(marker[:length]):
                best = length
                break
    return best


def _find_first(text: str, markers: Collection[str]) -> tuple[int, str]:
    """The earliest occurrence of any marker: (position, marker), or (-1, "")."""
    found, which = -1, ""
    for marker in markers:
        at = text.find(marker)
        if at >= 0 and (found < 0 or at < found):
            found, which = at, marker
    return found, which


class _Mode(Enum):
    START = auto()  # only whitespace so far: a bare JSON call may still come
    FENCE = auto()  # a ``` code block opened the answer: is it a JSON call?
    BARE = auto()  # a bare JSON object opened the answer: is it a call?
    AFTER_BARE = auto()  # after a bare call: its closing fence, another call, or content
    CONTENT = auto()
    SECTION = auto()  # inside a family's call section
    DONE = auto()  # one call made and parallel calls are off: ignore the rest


class ToolCallParser:
    """Streaming splitter of model output into content and tool calls: `push`, then `flush`.

    `tool_names` are the functions offered; the bare-JSON fallback only accepts those (calls
    behind a family's marker are taken whatever they name). With `parallel=False`, output after
    the first call is ignored (`done` tells the caller it may stop generating). With
    `parse_calls=False` (tool_choice "none"), calls are not parsed: harmony output is still
    split into reasoning and content, everything else is content.

    For any split of the same text, the concatenated content and the final calls are the same.
    """

    def __init__(
        self,
        fmt: ToolFormat,
        *,
        tool_names: Collection[str] = (),
        parallel: bool = True,
        parse_calls: bool = True,
    ) -> None:
        self.format = fmt
        self._names = frozenset(tool_names)
        self._parallel = parallel
        self._parse_calls = parse_calls
        self._records: list[_CallRecord] = []
        self._calls: list[ToolCall] = []
        self._n_announced = 0
        self._content: list[str] = []
        self._reasoning: list[str] = []
        self._deltas: list[ToolCallDelta] = []
        self._harmony = _Harmony(self) if fmt is ToolFormat.HARMONY else None
        self._markers = _START_MARKERS[fmt] if parse_calls else ()
        self._buf = ""
        self._mode = _Mode.START if parse_calls and fmt is not ToolFormat.HARMONY else _Mode.CONTENT
        self._strip_content = False  # after calls: drop whitespace before any content
        self._bare: _JsonCalls | None = None
        self._bare_raw: list[str] = []
        self._bare_record = 0
        self._fenced = False
        self._section: _Section | None = None
        self._failed = False

    @property
    def tool_calls(self) -> list[ToolCall]:
        """The calls completed so far (all of them after `flush`)."""
        return list(self._calls)

    @property
    def done(self) -> bool:
        """True once nothing more the model writes will be used (one call, parallel off)."""
        return self._mode is _Mode.DONE

    def push(self, text: str) -> ToolParseDelta:
        return self._guarded(text, final=False)

    def flush(self) -> ToolParseDelta:
        return self._guarded("", final=True)

    def _guarded(self, text: str, *, final: bool) -> ToolParseDelta:
        if self._failed:
            return ToolParseDelta(content=text)
        try:
            if self._harmony is not None:
                self._harmony.push(text, final=final)
            else:
                self._buf += text
                self._advance(final=final)
            return self._take()
        except Exception:  # a parser bug must not fail the request: pass the rest through
            log.exception("tool-call parsing failed; the rest of the output is plain text")
            self._failed = True
            held = self._harmony.held() if self._harmony is not None else self._buf
            return ToolParseDelta(content="".join(self._content) + held)

    # -- output bookkeeping ------------------------------------------------------------

    def _take(self) -> ToolParseDelta:
        self._emit_calls()
        delta = ToolParseDelta(
            "".join(self._content), "".join(self._reasoning), tuple(self._deltas)
        )
        self._content.clear()
        self._reasoning.clear()
        self._deltas.clear()
        return delta

    def _emit_content(self, text: str) -> None:
        if self._strip_content:
            text = text.lstrip()
            if not text:
                return
            self._strip_content = False
        if text:
            self._content.append(text)

    def _emit_calls(self) -> None:
        """Turn records into deltas, in order: a call is announced once it has a name and
        the calls before it are finished."""
        for record in self._records:
            if record.dropped or record.finished:
                continue
            if record.index is None:
                if record.complete and record.name is None:
                    record.dropped = True  # no name: its section decides what it was
                    continue
                if record.name is None or not record.committed:
                    return
                if not self._parallel and self._calls:
                    record.dropped = True
                    continue
                record.index = self._n_announced
                record.id = new_call_id()
                self._n_announced += 1
                self._deltas.append(ToolCallDelta(record.index, record.id, record.name))
            if record.args_kind == "{" and record.sent_parts < len(record.args):
                fragment = "".join(record.args[record.sent_parts :])
                record.sent_parts = len(record.args)
                self._deltas.append(ToolCallDelta(record.index, arguments=fragment))
            if not record.complete:
                return
            arguments = record.final_arguments()
            sent = len("".join(record.args[: record.sent_parts]))
            if arguments[sent:]:
                self._deltas.append(ToolCallDelta(record.index, arguments=arguments[sent:]))
            record.finished = True
            assert record.name is not None
            self._calls.append(ToolCall(record.id, record.name, arguments))
        if not self._parallel and self._calls and self._harmony is None:
            self._mode = _Mode.DONE
            self._buf = ""

    # -- the state machine -------------------------------------------------------------------

    def _advance(self, *, final: bool) -> None:
        while True:
            mode = self._mode
            if mode is _Mode.DONE:
                self._buf = ""
                return
            progressed = {
                _Mode.START: self._start,
                _Mode.FENCE: self._fence,
                _Mode.BARE: self._bare_json,
                _Mode.AFTER_BARE: self._after_bare,
                _Mode.CONTENT: self._content_mode,
                _Mode.SECTION: self._in_section,
            }[mode](final)
            if not progressed:
                return
            self._emit_calls()

    def _start(self, final: bool) -> bool:
        stripped = self._buf.lstrip()
        if not stripped:
            if final:
                self._mode = _Mode.CONTENT
                return True
            return False
        if stripped.startswith("{"):
            self._begin_bare(len(self._buf) - len(stripped), fenced=False)
        elif stripped.startswith("```"):
            self._mode = _Mode.FENCE
        elif "```".startswith(stripped) and not final:
            return False
        else:
            self._mode = _Mode.CONTENT
        return True

    def _begin_bare(self, skip: int, *, fenced: bool) -> None:
        self._bare_raw = [self._buf[:skip]]
        self._buf = self._buf[skip:]
        self._bare_record = len(self._records)  # the record the JSON will make
        self._bare = _JsonCalls(self._records, committed=False)
        self._fenced = fenced
        self._mode = _Mode.BARE

    def _fence(self, final: bool) -> bool:
        stripped = self._buf.lstrip()
        after = stripped[3:]
        newline = after.find("\n")
        info = after if newline < 0 else after[:newline]
        if info.strip() not in ("", "json", "tool_call", "tool_code") and newline >= 0:
            return self._not_a_call()
        if newline < 0:
            if final or len(info) > 16:
                return self._not_a_call()
            return False
        body = after[newline + 1 :].lstrip()
        if not body:
            if final:
                return self._not_a_call()
            return False
        if not body.startswith("{"):
            return self._not_a_call()
        self._begin_bare(len(self._buf) - len(body), fenced=True)
        return True

    def _bare_json(self, final: bool) -> bool:
        bare = self._bare
        assert bare is not None
        used = bare.feed(self._buf)
        self._bare_raw.append(self._buf[:used])
        self._buf = self._buf[used:]
        if final and not bare.complete:
            bare.close()
        record = (
            self._records[self._bare_record] if len(self._records) > self._bare_record else None
        )
        if record is None or record.committed:
            pass
        elif record.foreign or (record.name is not None and not self._accepts(record.name)):
            return self._reject_bare()
        elif record.name is not None:
            record.committed = True
        elif bare.complete:
            return self._reject_bare()
        if not bare.complete:
            return False
        self._mode = _Mode.AFTER_BARE
        self._bare = None
        return True

    def _accepts(self, name: str) -> bool:
        return name in self._names if self._names else bool(TOOL_NAME.fullmatch(name))

    def _reject_bare(self) -> bool:
        """The bare JSON was not a call after all: everything held back is content."""
        del self._records[self._bare_record :]
        self._bare = None
        self._buf = "".join(self._bare_raw) + self._buf
        self._bare_raw = []
        return self._not_a_call()

    def _not_a_call(self) -> bool:
        self._mode = _Mode.CONTENT
        return True

    def _after_bare(self, final: bool) -> bool:
        if self._fenced:
            stripped = self._buf.lstrip()
            if stripped.startswith("```"):
                self._buf = stripped[3:]
                self._fenced = False
            elif "```".startswith(stripped) and not final:
                return False
            else:
                self._fenced = False
        stripped = self._buf.lstrip(" \t\r\n;,")
        if not stripped and not final:
            return False
        self._buf = stripped
        if self._parallel and (stripped.startswith("{") or stripped.startswith("`")):
            self._mode = _Mode.START
        else:
            self._mode = _Mode.CONTENT
            self._strip_content = True
        return True

    def _content_mode(self, final: bool) -> bool:
        at, marker = _find_first(self._buf, self._markers)
        if at >= 0:
            self._emit_content(self._buf[:at].rstrip())
            self._buf = self._buf[at + len(marker) :]
            self._section = _new_section(self, marker)
            self._mode = _Mode.SECTION
            return True
        if final:
            text = self._buf
            self._buf = ""
            self._emit_content(text.rstrip() if self._n_announced else text)
            return False
        keep = _partial_suffix(self._buf, self._markers)
        text = self._buf[: len(self._buf) - keep]
        # Whitespace right before a call is layout, not content: hold it until text follows.
        body = text.rstrip()
        self._emit_content(body)
        self._buf = text[len(body) :] + self._buf[len(text) :]
        return False

    def _in_section(self, final: bool) -> bool:
        section = self._section
        assert section is not None
        used, ended = section.feed(self._buf, final)
        self._buf = self._buf[used:]
        if not ended:
            return False
        self._emit_calls()
        if not section.made_calls():
            self._emit_content(section.raw())
        else:
            self._strip_content = True
        self._section = None
        self._mode = _Mode.CONTENT
        return True


# -- call sections, one kind per family --------------------------------------------------------


class _Section:
    """The text after a start marker, up to the end of the calls it opens."""

    def __init__(self, parser: ToolCallParser, marker: str) -> None:
        self._parser = parser
        self._raw = [marker]
        self._records_before = len(parser._records)

    def raw(self) -> str:
        return "".join(self._raw)

    def made_calls(self) -> bool:
        return any(r.name is not None for r in self._parser._records[self._records_before :])

    def feed(self, text: str, final: bool) -> tuple[int, bool]:
        """Consume a prefix of `text`; return (characters consumed, whether the section ended)."""
        used, ended = self._feed(text, final)
        self._raw.append(text[:used])
        return used, ended

    def _feed(self, text: str, final: bool) -> tuple[int, bool]:
        raise NotImplementedError

    def _json(self, **kwargs: Any) -> _JsonCalls:
        return _JsonCalls(self._parser._records, **kwargs)


def _delimited(text: str, end: str, final: bool) -> tuple[str, int, bool]:
    """Split off the body before `end`: (body available now, characters consumed, ended).
    A possible start of `end` at the end of `text` is held back."""
    at = text.find(end)
    if at >= 0:
        return text[:at], at + len(end), True
    if final:
        return text, len(text), True
    keep = _partial_suffix(text, (end,))
    return text[: len(text) - keep], len(text) - keep, False


class _HermesSection(_Section):
    """<tool_call> {json} </tool_call>"""

    def __init__(self, parser: ToolCallParser, marker: str) -> None:
        super().__init__(parser, marker)
        self._calls = self._json()

    def _feed(self, text: str, final: bool) -> tuple[int, bool]:
        if self._calls.complete:
            return self._after_json(text, final)
        body, used, ended = _delimited(text, HERMES_END, final)
        taken = self._calls.feed(body)
        if self._calls.complete:
            more, ended = self._after_json(text[taken:], final)
            return taken + more, ended
        if ended:
            self._calls.close()
        return used, ended

    def _after_json(self, text: str, final: bool) -> tuple[int, bool]:
        """Past the JSON: skip to the end tag, or stop at a new call that forgot it."""
        at, marker = _find_first(text, (HERMES_END, HERMES_BEGIN))
        if at >= 0:
            return (at + len(marker) if marker == HERMES_END else at), True
        if final:
            return len(text), True
        return len(text) - _partial_suffix(text, (HERMES_END, HERMES_BEGIN)), False


class _Llama3Section(_Section):
    """<|python_tag|> {json} (; {json})*  -- the calls end where their JSON ends."""

    def __init__(self, parser: ToolCallParser, marker: str) -> None:
        super().__init__(parser, marker)
        self._calls: _JsonCalls | None = None

    def _feed(self, text: str, final: bool) -> tuple[int, bool]:
        used = 0
        while True:
            if self._calls is not None:
                used += self._calls.feed(text[used:])
                if not self._calls.complete:
                    if final:
                        self._calls.close()
                        return used, True
                    return used, False
                self._calls = None
                if not self._parser._parallel:
                    return used, True
            rest = text[used:]
            stripped = rest.lstrip(" \t\r\n;")
            if not stripped:
                return used, final  # separators are only taken with the call they precede
            if not stripped.startswith("{"):
                return used, True
            used += len(rest) - len(stripped)
            self._calls = self._json()


class _MistralSection(_Section):
    """[TOOL_CALLS] [{json}, ...]  or  [TOOL_CALLS] name [CALL_ID] id [ARGS] {json}"""

    def __init__(self, parser: ToolCallParser, marker: str) -> None:
        super().__init__(parser, marker)
        self._calls: _JsonCalls | None = None

    def _feed(self, text: str, final: bool) -> tuple[int, bool]:
        if self._calls is None:
            stripped = text.lstrip()
            if not stripped:
                return 0, final
            skipped = len(text) - len(stripped)
            if stripped[0] in "[{":
                self._calls = self._json()
                return self._feed_json(text, skipped, final)
            at = stripped.find(MISTRAL_ARGS)
            if at < 0:
                if final or len(stripped) > 200:
                    return len(text), True  # no [ARGS]: not a call
                return 0, False
            name = stripped[:at].split(MISTRAL_CALL_ID)[0].strip()
            if not TOOL_NAME.fullmatch(name):
                return skipped + at + len(MISTRAL_ARGS), True
            self._calls = self._json(args_only=True, name=name)
            return self._feed_json(text, skipped + at + len(MISTRAL_ARGS), final)
        return self._feed_json(text, 0, final)

    def _feed_json(self, text: str, start: int, final: bool) -> tuple[int, bool]:
        assert self._calls is not None
        used = start + self._calls.feed(text[start:])
        if self._calls.complete:
            return used, True
        if final:
            self._calls.close()
            return used, True
        return used, False


class _DeepSeekSection(_Section):
    """<｜tool▁calls▁begin｜> (<｜tool▁call▁begin｜> [function<｜tool▁sep｜>]NAME ... args ...
    <｜tool▁call▁end｜>)* <｜tool▁calls▁end｜>"""

    def __init__(self, parser: ToolCallParser, marker: str) -> None:
        super().__init__(parser, marker)
        self._in_call = marker == DS_CALL_BEGIN  # the outer marker was left out
        self._name: str | None = None
        self._calls: _JsonCalls | None = None
        self._fence_checked = False

    def _feed(self, text: str, final: bool) -> tuple[int, bool]:
        used = 0
        while True:
            rest = text[used:]
            if self._in_call:
                step, call_ended = self._feed_call(rest, final)
                used += step
                if not call_ended:
                    return used, final
                self._in_call, self._name, self._calls = False, None, None
                self._fence_checked = False
                if not self._parser._parallel:
                    return used, True
                continue
            stripped = rest.lstrip()
            skipped = len(rest) - len(stripped)
            if stripped.startswith(DS_CALL_BEGIN):
                used += skipped + len(DS_CALL_BEGIN)
                self._in_call = True
            elif stripped.startswith(DS_CALLS_END):
                return used + skipped + len(DS_CALLS_END), True
            elif not final and (
                DS_CALL_BEGIN.startswith(stripped) or DS_CALLS_END.startswith(stripped)
            ):
                return used, False
            else:
                return used, True

    def _feed_call(self, text: str, final: bool) -> tuple[int, bool]:
        used = 0
        if self._name is None:
            sep = text.find(DS_SEP)
            end = text.find(DS_CALL_END)
            if end >= 0 and (sep < 0 or end < sep):  # a call without a name
                return end + len(DS_CALL_END), True
            if sep < 0:
                return (len(text), True) if final else (0, False)
            after = text[sep + len(DS_SEP) :]
            head = after.lstrip()
            if not head and not final:
                return 0, False
            if head.startswith("{") or head.startswith("`") or not head:
                self._name = text[:sep].strip()  # V3.1: NAME<｜tool▁sep｜>{...}
                used = sep + len(DS_SEP)
            else:
                newline = after.find("\n")
                if newline < 0 and not final:
                    return 0, False
                line = after if newline < 0 else after[:newline]
                self._name = line.strip()
                used = sep + len(DS_SEP) + len(line)
            if not TOOL_NAME.fullmatch(self._name):
                self._name = ""  # not a call; skip it
            else:
                self._calls = self._json(args_only=True, name=self._name)
        body, taken, ended = _delimited(text[used:], DS_CALL_END, final)
        if self._calls is not None and not self._calls.complete:
            if not self._fence_checked:  # the arguments may sit in a ```json fence
                stripped = body.lstrip()
                if not stripped and not ended:
                    return used, False
                if stripped.startswith("`"):
                    newline = stripped.find("\n")
                    if newline < 0 and not ended:
                        return used, False
                    body = stripped[newline + 1 :] if newline >= 0 else ""
                self._fence_checked = True
            self._calls.feed(body)
        if ended and self._calls is not None:
            self._calls.close()
        return used + taken, ended


def _new_section(parser: ToolCallParser, marker: str) -> _Section:
    if marker == HERMES_BEGIN:
        return _HermesSection(parser, marker)
    if marker == LLAMA_PYTHON_TAG:
        return _Llama3Section(parser, marker)
    if marker == MISTRAL_CALLS:
        return _MistralSection(parser, marker)
    return _DeepSeekSection(parser, marker)


# -- harmony (gpt-oss) ---------------------------------------------------------------------------

_H_START, _H_CHANNEL, _H_MESSAGE = "<|start|>", "<|channel|>", "<|message|>"
_H_BODY_ENDS = ("<|end|>", "<|call|>", "<|return|>", _H_START)
_H_RECIPIENT = re.compile(r"to=(?:functions\.)?([^\s<]+)")
_H_CHANNEL_NAME = re.compile(r"<\|channel\|>\s*(\w+)")
_H_MAX_HEADER = 512  # a longer "header" is text that merely mentions <|message|>


class _Harmony:
    """gpt-oss output: messages of `header<|message|>body<|end|>`, the header naming the
    channel (analysis: reasoning; final: content; commentary to=functions.X: a call)."""

    def __init__(self, parser: ToolCallParser) -> None:
        self._parser = parser
        self._buf = ""
        self._in_body = False
        self._plain = False  # the output is not in harmony form: all content
        self._route = ""  # "reasoning", "content" or "call"
        self._calls: _JsonCalls | None = None

    def push(self, text: str, *, final: bool) -> None:
        parser = self._parser
        self._buf += text
        while True:
            if parser.done:
                self._buf = ""
                return
            if self._plain:
                parser._emit_content(self._buf)
                self._buf = ""
                return
            if not self._in_body:
                if not self._header(final):
                    return
                continue
            at, marker = _find_first(self._buf, _H_BODY_ENDS)
            if at < 0:
                keep = 0 if final else _partial_suffix(self._buf, _H_BODY_ENDS)
                self._body(self._buf[: len(self._buf) - keep])
                self._buf = self._buf[len(self._buf) - keep :]
                if final:
                    self._end_body()
                return
            self._body(self._buf[:at])
            self._buf = self._buf[at + (0 if marker == _H_START else len(marker)) :]
            self._end_body()

    def held(self) -> str:
        """Text not yet handed on (for the parser's last-resort fallback)."""
        return self._buf

    def _header(self, final: bool) -> bool:
        """Read a message header; False if more text is needed. Each decision depends only on
        the text it has seen, so any split of the output decides the same way."""
        head = self._buf.lstrip()
        if not head and not final:
            return False
        starts_right = head.startswith(("<|", "to=")) or (
            not final and ("<|".startswith(head) or "to=".startswith(head))
        )
        at = self._buf.find(_H_MESSAGE)
        too_long = at > _H_MAX_HEADER or (
            at < 0 and len(self._buf) >= _H_MAX_HEADER + len(_H_MESSAGE)
        )
        if not head or not starts_right or too_long or (at < 0 and final):
            self._plain = True  # not (or no longer) harmony: the rest is plain text
            return True
        if at < 0:
            return False
        header, self._buf = self._buf[:at], self._buf[at + len(_H_MESSAGE) :]
        channel = _H_CHANNEL_NAME.search(header)
        recipient = _H_RECIPIENT.search(header)
        self._in_body = True
        if recipient and self._parser._parse_calls:
            self._route = "call"
            self._calls = _JsonCalls(self._parser._records, args_only=True, name=recipient.group(1))
        elif channel and channel.group(1) == "analysis":
            self._route = "reasoning"
        else:
            self._route = "content"
        return True

    def _body(self, text: str) -> None:
        if not text:
            return
        if self._route == "reasoning":
            self._parser._reasoning.append(text)
        elif self._route == "call":
            assert self._calls is not None
            if not self._calls.complete:
                self._calls.feed(text)
        else:
            self._parser._emit_content(text)

    def _end_body(self) -> None:
        if self._calls is not None:
            self._calls.close()
            self._calls = None
            self._parser._emit_calls()
            if not self._parser._parallel and self._parser._calls:
                self._parser._mode = _Mode.DONE
        self._in_body = False


def parse_tool_calls(
    text: str,
    fmt: ToolFormat,
    *,
    tool_names: Collection[str] = (),
    parallel: bool = True,
) -> tuple[str, str, list[ToolCall]]:
    """Parse a complete output: (content, reasoning, tool calls)."""
    parser = ToolCallParser(fmt, tool_names=tool_names, parallel=parallel)
    first = parser.push(text)
    last = parser.flush()
    return first.content + last.content, first.reasoning + last.reasoning, parser.tool_calls
