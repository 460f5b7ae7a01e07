"""The OpenAPI schema (`/openapi.json`) as the server really answers.

FastAPI declares a 422 with its own `HTTPValidationError` body on every route that
takes input; kronk answers invalid input with a 400 in the shape of the protocol whose
path it is (`errors.py`). So each such 422 becomes that 400, its example rendered by the
path's own error renderer, so the schema cannot drift from what is sent.
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import FastAPI

from kronk.server.errors import ErrorInfo, renderer_for

_EXAMPLE = ErrorInfo("invalid_request", "invalid value for 'temperature'", "temperature")


def _invalid_request(path: str) -> dict[str, Any]:
    body = json.loads(bytes(renderer_for(path)(_EXAMPLE, path).body))
    return {
        "description": "Invalid request, in this protocol's error shape",
        "content": {"application/json": {"example": body}},
    }


def install_openapi(app: FastAPI) -> None:
    """Serve the schema with kronk's error answers in place of FastAPI's 422."""

    fastapi_schema = app.openapi

    def schema() -> dict[str, Any]:
        if app.openapi_schema is None:
            doc = fastapi_schema()  # built once, and cached by FastAPI: edited in place
            for path, operations in doc.get("paths", {}).items():
                for operation in operations.values():
                    responses = operation.get("responses", {})
                    if responses.pop("422", None) is not None:
                        responses["400"] = _invalid_request(path)
            schemas = doc.get("components", {}).get("schemas", {})
            for unused in ("HTTPValidationError", "ValidationError"):
                schemas.pop(unused, None)
        return app.openapi_schema or {}

    app.openapi = schema  # type: ignore[method-assign]


__all__ = ["install_openapi"]
