"""Errors in Anthropic's shape:

    {"type": "error", "error": {"type": "invalid_request_error", "message": "..."}}

with Anthropic's status codes: a full queue or a model going away is 529
`overloaded_error` (its clients retry that), a prompt that does not fit 413
`request_too_large`. Streams that fail midway send the same object as an `error` event.
"""

from __future__ import annotations

from typing import Any

from fastapi.responses import JSONResponse

from kronk.errors import KronkError
from kronk.server.errors import ErrorInfo, ErrorKind, classify, register_renderer

# kind -> (status, Anthropic error type)
_ANTHROPIC: dict[ErrorKind, tuple[int, str]] = {
    "invalid_request": (400, "invalid_request_error"),
    "authentication": (401, "authentication_error"),
    "permission": (403, "permission_error"),
    "not_found": (404, "not_found_error"),
    "too_large": (413, "request_too_large"),
    "unsupported_media_type": (415, "invalid_request_error"),
    "rate_limit": (429, "rate_limit_error"),
    "overloaded": (529, "overloaded_error"),
    "unavailable": (529, "overloaded_error"),
    "server": (500, "api_error"),
}


def _status_and_type(info: ErrorInfo) -> tuple[int, str]:
    status, kind = _ANTHROPIC[info.kind]
    if info.http_status is not None:  # e.g. 405 for a wrong method
        status = info.http_status
    return status, kind


def error_body(error: ErrorInfo | KronkError) -> dict[str, Any]:
    info = error if isinstance(error, ErrorInfo) else classify(error)
    _, kind = _status_and_type(info)
    return {"type": "error", "error": {"type": kind, "message": info.message}}


def render(info: ErrorInfo, path: str) -> JSONResponse:
    status, _ = _status_and_type(info)
    return JSONResponse(error_body(info), status_code=status, headers=info.response_headers())


register_renderer(("/v1/messages",), render)

__all__ = ["error_body", "render"]
