"""Turn the almost-JSON that small models write into strict JSON, while it streams.

Models that call tools without a grammar write JSON with single quotes, Python literals
(`True`, `None`), unquoted keys, trailing commas, missing closing brackets, or text after the
value. `JsonRepairer` reads such text one character at a time and writes strict JSON: what it
has written is always the prefix of a valid document, and `close()` completes it. So a tool
call's arguments can be streamed as they are generated and still add up to valid JSON, and a
repair never changes text that was already sent.

Output lags the input only by what cannot be decided yet: a bare word (`True` or `Tru...`), a
comma that may turn out to be trailing, an escape sequence in progress.
"""

from __future__ import annotations

import json
import math
import re
from enum import Enum, auto

__all__ = ["JsonRepairer", "repair_json"]

_WHITESPACE = frozenset(" \t\n\r")  # JSON's whitespace; other Unicode spaces are dropped
_WORD_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-+.$")
_QUOTES = frozenset("\"'")
_SIMPLE_ESCAPES = frozenset('"\\/bfnrt')
_HEX = frozenset("0123456789abcdefABCDEF")
_JSON_NUMBER = re.compile(r"-?(?:0|[1-9]\d*)(?:\.\d+)?(?:[eE][-+]?\d+)?")
_LITERALS = {
    "true": "true",
    "false": "false",
    "null": "null",
    "True": "true",
    "False": "false",
    "None": "null",
    "undefined": "null",
    "NaN": "null",
    "Infinity": "null",
    "-Infinity": "null",
}
_CLOSERS = {"{": "}", "[": "]"}


class _Expect(Enum):
    VALUE = auto()  # after ':' or ',' in an array, or at the top
    VALUE_OR_END = auto()  # just after '['
    KEY = auto()  # after ',' in an object
    KEY_OR_END = auto()  # just after '{'
    COLON = auto()
    COMMA_OR_END = auto()
    DONE = auto()


class JsonRepairer:
    """Streaming lenient-to-strict JSON converter for one top-level value.

    `feed(text)` returns the strict JSON now known and how many characters of `text` belong to
    the value; once the value is complete (`complete`), the rest is left to the caller.
    `close()` returns what completes an unfinished value (closing quotes and brackets, `null`
    for a key without a value). Output whitespace is the input's, outside dropped separators.
    """

    def __init__(self) -> None:
        self._stack: list[str] = []
        self._expect = _Expect.VALUE
        self._started = False
        self._in_string = False
        self._quote = '"'
        self._string_is_key = False
        self._escape = ""  # an escape sequence in progress, e.g. "\\u00"
        self._word = ""  # a bare word in progress (literal, number or unquoted text)
        self._word_is_key = False
        self._separator = ""  # a held comma (plus whitespace): dropped if a closer follows

    @property
    def complete(self) -> bool:
        return self._expect is _Expect.DONE

    @property
    def started(self) -> bool:
        """Whether the value has begun (the first character that is not whitespace)."""
        return self._started

    def feed(self, text: str) -> tuple[str, int]:
        out: list[str] = []
        for i, char in enumerate(text):
            if self._expect is _Expect.DONE or not self._char(char, out):
                return "".join(out), i
        return "".join(out), len(text)

    def close(self) -> str:
        """The text that completes the value; afterwards the repairer is `complete`."""
        if self._expect is _Expect.DONE or not self._started:
            self._expect = _Expect.DONE
            return ""
        out: list[str] = []
        if self._in_string:
            self._in_string = False
            self._escape = ""
            out.append('"')
            if self._string_is_key:
                out.append(":null")
            self._after_value()
        if self._word:
            self._end_word(out)
        self._separator = ""
        if self._expect is _Expect.COLON:
            out.append(":null")
        elif self._expect is _Expect.VALUE and self._stack and self._stack[-1] == "{":
            out.append("null")  # a key and its colon, but no value
        out.extend(_CLOSERS[opener] for opener in reversed(self._stack))
        self._stack.clear()
        self._expect = _Expect.DONE
        return "".join(out)

    # -- one character ---------------------------------------------------------------

    def _char(self, char: str, out: list[str]) -> bool:
        """Process one character; False if it is not part of the value (the value ended)."""
        if self._in_string:
            self._string_char(char, out)
            return True
        if self._word:
            if char in _WORD_CHARS:
                self._word += char
                return True
            self._end_word(out)
            if self._expect is _Expect.DONE:
                return False
        if char in _WHITESPACE:
            if self._separator:
                self._separator += char
            elif self._started:
                out.append(char)
            return True
        expect = self._expect
        if char in "{[":
            if not self._to_value_position(out):
                return True
            self._start(out)
            self._stack.append(char)
            out.append(char)
            self._expect = _Expect.KEY_OR_END if char == "{" else _Expect.VALUE_OR_END
        elif char in "}]":
            self._close_container(char, out)
        elif char == ",":
            if expect is _Expect.COMMA_OR_END:
                self._separator = ","
                self._expect = _Expect.KEY if self._stack[-1] == "{" else _Expect.VALUE
        elif char == ":":
            if expect is _Expect.COLON:
                out.append(":")
                self._expect = _Expect.VALUE
        elif char in _QUOTES or char in _WORD_CHARS:
            is_key = self._to_key_or_value_position(out)
            if is_key is None:
                return True
            self._start(out)
            if char in _QUOTES:
                self._in_string = True
                self._quote = char
                self._string_is_key = is_key
                out.append('"')
            else:
                self._word = char
                self._word_is_key = is_key
        # Anything else outside a string (comments, stray punctuation) is dropped.
        return True

    def _start(self, out: list[str]) -> None:
        self._started = True
        if self._separator:
            out.append(self._separator)
            self._separator = ""

    def _to_value_position(self, out: list[str]) -> bool:
        """Make the current position one where a value may start; False if it can't be."""
        expect = self._expect
        if expect in (_Expect.VALUE, _Expect.VALUE_OR_END):
            return True
        if expect is _Expect.COLON:  # {"a" {...}}: the colon is missing
            out.append(":")
            self._expect = _Expect.VALUE
            return True
        if expect is _Expect.COMMA_OR_END and self._stack[-1] == "[":  # [1 2]: comma missing
            self._separator = ","
            self._expect = _Expect.VALUE
            return True
        return False  # a container where a key belongs cannot be repaired: drop the bracket

    def _to_key_or_value_position(self, out: list[str]) -> bool | None:
        """Prepare for a string or word; True if it is a key, None if it must be dropped."""
        expect = self._expect
        if expect in (_Expect.KEY, _Expect.KEY_OR_END):
            return True
        if expect in (_Expect.VALUE, _Expect.VALUE_OR_END):
            return False
        if expect is _Expect.COLON:
            out.append(":")
            self._expect = _Expect.VALUE
            return False
        if expect is _Expect.COMMA_OR_END:  # missing comma
            self._separator = ","
            in_object = self._stack[-1] == "{"
            self._expect = _Expect.KEY if in_object else _Expect.VALUE
            return in_object
        return None

    def _close_container(self, char: str, out: list[str]) -> None:
        opener = "{" if char == "}" else "["
        if opener not in self._stack:
            return  # a stray closer
        while True:
            top = self._stack[-1]
            self._separator = ""  # a trailing comma
            if self._expect is _Expect.COLON:
                out.append(":null")
            elif self._expect is _Expect.VALUE and top == "{":
                out.append("null")
            self._stack.pop()
            out.append(_CLOSERS[top])
            self._after_value()
            if top == opener:
                return

    def _after_value(self) -> None:
        self._expect = _Expect.COMMA_OR_END if self._stack else _Expect.DONE

    def _string_char(self, char: str, out: list[str]) -> None:
        if self._escape:
            self._escape_char(char, out)
        elif char == "\\":
            self._escape = "\\"
        elif char == self._quote:
            self._in_string = False
            out.append('"')
            if self._string_is_key:
                self._expect = _Expect.COLON
            else:
                self._after_value()
        elif char == '"':  # inside a single-quoted string
            out.append('\\"')
        elif ord(char) < 0x20:
            out.append(json.dumps(char)[1:-1])
        else:
            out.append(char)

    def _escape_char(self, char: str, out: list[str]) -> None:
        if self._escape == "\\":
            if char in _SIMPLE_ESCAPES:
                out.append("\\" + char)
                self._escape = ""
            elif char == "u":
                self._escape = "\\u"
            elif char == "'":  # \' is how single-quoted strings escape their quote
                self._escape = ""
                out.append("'")
            else:  # an escape JSON lacks (a Windows path, say): keep the backslash as text
                self._escape = ""
                out.append("\\\\")
                self._string_char(char, out)
            return
        if char in _HEX:
            self._escape += char
            if len(self._escape) == 6:
                out.append(self._escape)
                self._escape = ""
            return
        # A broken \\u escape: keep its text literally, then read the character as usual.
        out.append("\\\\" + self._escape[1:])
        self._escape = ""
        self._string_char(char, out)

    def _end_word(self, out: list[str]) -> None:
        word, self._word = self._word, ""
        if self._word_is_key:
            out.append(json.dumps(word))
            self._expect = _Expect.COLON
            return
        out.append(_word_value(word))
        self._after_value()


def _word_value(word: str) -> str:
    """A bare word in value position as JSON: a literal, a number, or else a string."""
    if word in _LITERALS:
        return _LITERALS[word]
    if _JSON_NUMBER.fullmatch(word):
        return word
    try:
        number = float(word)  # "1.", ".5", "+3", "01"
    except ValueError:
        return json.dumps(word)
    if not math.isfinite(number):
        return "null"
    return str(int(number)) if number.is_integer() and "." not in word else json.dumps(number)


def repair_json(text: str) -> tuple[str, str] | None:
    """Repair one JSON value at the start of `text` (after whitespace).

    Returns (strict JSON, the text after the value), or None if `text` holds no value.
    """
    repairer = JsonRepairer()
    out, used = repairer.feed(text)
    if not repairer.started:
        return None
    out += repairer.close()
    return out, text[used:]
