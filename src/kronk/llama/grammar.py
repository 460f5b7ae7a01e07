"""JSON Schema -> GBNF, for structured output enforced by llama.cpp's grammar sampler."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from kronk.errors import InvalidRequestError

# Any JSON object (OpenAI's response_format {"type": "json_object"}).
JSON_OBJECT_SCHEMA: Mapping[str, Any] = {"type": "object"}


def json_schema_to_grammar(schema: Mapping[str, Any]) -> str:
    """Convert a JSON Schema to a GBNF grammar whose root matches conforming JSON.

    Uses the converter that ships with llama-cpp-python (a port of llama.cpp's own),
    so there is one implementation of the schema subset llama.cpp supports.
    """
    from llama_cpp.llama_grammar import json_schema_to_gbnf

    try:
        return str(json_schema_to_gbnf(json.dumps(schema)))
    except Exception as exc:  # the converter raises assorted errors on schemas it can't express
        raise InvalidRequestError(f"unsupported JSON schema: {exc}", "response_format") from exc
