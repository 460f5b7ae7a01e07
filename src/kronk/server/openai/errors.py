"""Errors in OpenAI's shape:

    {"error": {"message": "...", "type": "invalid_request_error", "param": "model", "code": ...}}

The status and kind come from `kronk.server.errors.classify`; this module names the
parameter as each endpoint spells it and picks OpenAI's error type.
"""

from __future__ import annotations

from typing import Any

from fastapi.responses import JSONResponse

from kronk.errors import KronkError
from kronk.server.errors import ErrorInfo, ErrorKind, classify, register_renderer

_TYPES: dict[ErrorKind, str] = {
    "invalid_request": "invalid_request_error",
    "authentication": "authentication_error",
    "permission": "permission_error",
    "not_found": "invalid_request_error",
    "too_large": "invalid_request_error",
    "unsupported_media_type": "invalid_request_error",
    "rate_limit": "rate_limit_error",
    "overloaded": "server_busy_error",
    "unavailable": "service_unavailable_error",
    "server": "server_error",
}

# Where a too-long prompt sits in each endpoint's request.
_PROMPT_PARAM = {
    "completions": "prompt",
    "responses": "input",
    "embeddings": "input",
}

# The SDK names the chat parameter at fault; the Responses API spells some differently.
# Its `input` does not map onto messages one to one (instructions come first), so an
# index into messages is left out rather than pointing at the wrong input item.
_RESPONSES_PARAMS = {
    "response_format": "text.format",
    "max_tokens": "max_output_tokens",
    "max_completion_tokens": "max_output_tokens",
    "logprobs": "top_logprobs",
}


def _endpoint(path: str) -> str:
    """`/v1/chat/completions` and `/chat/completions` -> "chat/completions"."""
    return path.removeprefix("/v1").strip("/")


def _param(info: ErrorInfo, path: str) -> str | None:
    """The parameter at fault as the endpoint at `path` calls it."""
    endpoint, param = _endpoint(path), info.param
    if info.kind == "too_large":
        return _PROMPT_PARAM.get(endpoint, "messages")
    if param is None or not endpoint.startswith("responses"):
        return param
    if param == "messages" or param.startswith(("messages[", "messages.")):
        return "input"
    head, dot, rest = param.partition(".")
    return _RESPONSES_PARAMS.get(head, head) + dot + rest


def error_body(error: ErrorInfo | KronkError, path: str) -> dict[str, Any]:
    """OpenAI's error object (also sent as a stream's last event when a stream fails)."""
    info = error if isinstance(error, ErrorInfo) else classify(error)
    return {
        "error": {
            "message": info.message,
            "type": _TYPES[info.kind],
            "param": _param(info, path),
            "code": info.code,
        }
    }


def render(info: ErrorInfo, path: str) -> JSONResponse:
    return JSONResponse(
        error_body(info, path), status_code=info.status, headers=info.response_headers()
    )


register_renderer(("/v1/", "/"), render, default=True)

__all__ = ["error_body", "render"]
