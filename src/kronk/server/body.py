"""Checks every protocol's request bodies share, before their fields are validated."""

from __future__ import annotations

import re
from typing import Any

from kronk.errors import InvalidRequestError

# JSON nesting a request may have. Real ones stay far below (a deep tool schema is a
# dozen levels); deeper input would only exhaust the recursion of the code that walks it
# (template rendering, schema-to-grammar conversion).
MAX_DEPTH = 64


def check_body(body: Any) -> None:
    """Raise InvalidRequestError naming the first place in `body` nested deeper than
    MAX_DEPTH or holding text that is not valid Unicode. (Raised inside a validator, it
    passes through pydantic as is: it is not a ValueError.)"""
    stack: list[tuple[Any, str, int]] = [(body, "", 0)]
    while stack:
        value, where, depth = stack.pop()
        if isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError as exc:
                code = ord(value[exc.start])
                raise InvalidRequestError(
                    f"{where or 'the request'} holds a lone surrogate (\\u{code:04x}); "
                    "send valid Unicode text",
                    where or None,
                ) from None
            continue
        if not isinstance(value, dict | list):
            continue
        if depth >= MAX_DEPTH:
            field = re.split(r"[.\[]", where, maxsplit=1)[0]
            raise InvalidRequestError(f"{field} is nested more than {MAX_DEPTH} levels deep", field)
        children: list[tuple[Any, str, int]] = []
        if isinstance(value, dict):
            for key, item in value.items():
                children.append((key, where, depth))
                children.append((item, f"{where}.{key}" if where else str(key), depth + 1))
        else:
            children.extend((item, f"{where}[{i}]", depth + 1) for i, item in enumerate(value))
        stack.extend(reversed(children))  # popped in document order


__all__ = ["MAX_DEPTH", "check_body"]
