"""Errors in Ollama's shape: `{"error": "..."}` with Ollama's status codes.

Ollama answers 400 for anything wrong with a request, a too-long prompt included (it
has no 413), 404 for an unknown model and 503 when its queue is full. The kind and
message come from `kronk.server.errors.classify`; only the shape and a few statuses
are Ollama's own.
"""

from __future__ import annotations

from fastapi.responses import JSONResponse

from kronk.errors import KronkError
from kronk.server.errors import ErrorInfo, ErrorKind, classify, register_renderer

# Ollama's status where it differs from kronk's (`kronk.server.errors.STATUS`).
_STATUS: dict[ErrorKind, int] = {
    "too_large": 400,
    "unsupported_media_type": 400,
}


def error_message(error: ErrorInfo | KronkError) -> str:
    info = error if isinstance(error, ErrorInfo) else classify(error)
    return info.message


def render(info: ErrorInfo, _path: str) -> JSONResponse:
    status = info.http_status or _STATUS.get(info.kind, info.status)
    return JSONResponse(
        {"error": info.message}, status_code=status, headers=info.response_headers()
    )


register_renderer(("/api/",), render)

__all__ = ["error_message", "render"]
