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


def json_schema_rules(
    schemas: Mapping[str, Mapping[str, Any]], *, param: str = "tools"
) -> tuple[str, dict[str, str]]:
    """GBNF rules for several JSON Schemas at once, for callers that build their own root.

    Returns the rules (no `root`: the caller adds it) and, for each key of `schemas`, the
    name of the rule matching JSON that conforms to that schema. One converter serves all
    schemas, so helper rules (`string`, `space`, ...) are shared and names never collide;
    each schema's `$ref`s resolve within that schema. Errors name `param`.
    """
    from llama_cpp.llama_grammar import SchemaConverter

    converter = SchemaConverter(prop_order={}, allow_fetch=False, dotall=False, raw_pattern=False)
    names: dict[str, str] = {}
    try:
        for i, (name, schema) in enumerate(schemas.items()):
            # The converter names a $ref's rule after the definition's last path segment,
            # so two schemas defining the same name would share one rule: prefix them.
            plain = _prefix_local_refs(json.loads(json.dumps(schema)), f"s{i}-")
            resolved = converter.resolve_refs(plain, f"schema{i}")
            names[name] = str(converter.visit(resolved, name))
        return str(converter.format_grammar()), names
    except Exception as exc:  # the converter raises assorted errors on schemas it can't express
        raise InvalidRequestError(f"unsupported JSON schema: {exc}", param) from exc


def _prefix_local_refs(node: Any, prefix: str) -> Any:
    """Rename the definitions in `$defs`/`definitions` and the local `$ref`s to them."""
    if isinstance(node, list):
        return [_prefix_local_refs(item, prefix) for item in node]
    if not isinstance(node, dict):
        return node
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in ("$defs", "definitions") and isinstance(value, dict):
            out[key] = {prefix + name: _prefix_local_refs(v, prefix) for name, v in value.items()}
        elif key == "$ref" and isinstance(value, str) and value.startswith("#/"):
            head, _, last = value.rpartition("/")
            out[key] = f"{head}/{prefix}{last}" if head != "#" else value
        else:
            out[key] = _prefix_local_refs(value, prefix)
    return out
