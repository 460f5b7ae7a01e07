"""Errors, protocol by protocol, from one classification of kronk's exceptions.

`classify` turns a `KronkError` into an `ErrorInfo` (status, kind, message, parameter);
each protocol renders an ErrorInfo in its own shape (`server/<protocol>/errors.py`).
A router's routes use `protocol_route(render)` so everything they raise, bad JSON and
validation errors included, leaves in that router's protocol; `render_for_path` does
the same for what happens outside any route (unknown paths, draining, middlewares).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException

from kronk.errors import (
    ConfigError,
    ContextFullError,
    EngineBusyError,
    EngineClosedError,
    GrammarError,
    InvalidRequestError,
    KronkError,
    ModelNotFoundError,
    ModelTooLargeError,
    TemplateError,
    UnsupportedFeatureError,
)

log = logging.getLogger("kronk.server")

# What went wrong, in words every protocol has a status and an error type for.
ErrorKind = Literal[
    "invalid_request",  # 400: the caller's mistake
    "authentication",  # 401
    "permission",  # 403
    "not_found",  # 404
    "too_large",  # 413: the prompt does not fit the context
    "unsupported_media_type",  # 415
    "rate_limit",  # 429: a token's quota
    "overloaded",  # 503/529: every slot busy and the queue full, or no room came in time
    "unavailable",  # 503: model unloaded or server draining
    "server",  # 500: kronk's own fault
]

STATUS: dict[ErrorKind, int] = {
    "invalid_request": 400,
    "authentication": 401,
    "permission": 403,
    "not_found": 404,
    "too_large": 413,
    "unsupported_media_type": 415,
    "rate_limit": 429,
    "overloaded": 503,
    "unavailable": 503,
    "server": 500,
}


@dataclass(frozen=True)
class ErrorInfo:
    kind: ErrorKind
    message: str
    param: str | None = None  # the request field at fault, in kronk's (OpenAI's) names
    code: str | None = None  # a machine-readable detail, e.g. "model_not_found"
    retry_after: float | None = None  # seconds, for 429 and 503
    headers: tuple[tuple[str, str], ...] = ()
    http_status: int | None = None  # a status that no kind stands for (405, ...)

    @property
    def status(self) -> int:
        return self.http_status or STATUS[self.kind]

    def response_headers(self) -> dict[str, str]:
        out = dict(self.headers)
        if self.retry_after is not None:
            out.setdefault("Retry-After", str(max(1, round(self.retry_after))))
        return out


def classify(exc: KronkError) -> ErrorInfo:
    """The ErrorInfo for one of kronk's exceptions; the class is the contract."""
    message = str(exc) or type(exc).__name__
    if isinstance(exc, ModelNotFoundError):
        return ErrorInfo("not_found", message, "model", "model_not_found")
    if isinstance(exc, ContextFullError):
        return ErrorInfo("too_large", message, "messages", "context_length_exceeded")
    if isinstance(exc, ModelTooLargeError):  # these settings can never load it: no retry
        return ErrorInfo("invalid_request", message, "model", "model_too_large")
    if isinstance(exc, EngineBusyError):
        return ErrorInfo("overloaded", message, None, "server_busy", retry_after=1)
    if isinstance(exc, EngineClosedError):
        return ErrorInfo("unavailable", message, None, "model_unavailable", retry_after=1)
    if isinstance(exc, GrammarError):
        return ErrorInfo("invalid_request", message, exc.param, "invalid_grammar")
    if isinstance(exc, UnsupportedFeatureError):
        return ErrorInfo("invalid_request", message, exc.param, "unsupported")
    if isinstance(exc, InvalidRequestError):
        return ErrorInfo("invalid_request", message, exc.param)
    if isinstance(exc, TemplateError):
        # Templates reject message sequences they can't render (e.g. roles that don't
        # alternate): that is the request's content, so 400.
        return ErrorInfo("invalid_request", message, "messages", "template_error")
    # kronk's own failures (a model that will not load, bad settings) name files in the
    # home; a client sees the reason without the layout, the server's log keeps it all.
    if isinstance(exc, ConfigError):
        return ErrorInfo("server", redact_paths(message), None, "config_error")
    return ErrorInfo("server", redact_paths(message), None, type(exc).__name__)


_ABSOLUTE_PATH = re.compile(r"(?<![\w.:/])(?:~|/)(?:[^\s'\"(),;:]+/)+[^\s'\"(),;:]*")


def redact_paths(message: str) -> str:
    """`message` with absolute file paths replaced by `<path>`."""
    return _ABSOLUTE_PATH.sub("<path>", message)


def http_error(exc: HTTPException) -> ErrorInfo:
    """Starlette's own HTTP errors (unknown path, wrong method, ...)."""
    kinds: dict[int, ErrorKind] = {
        401: "authentication",
        403: "permission",
        404: "not_found",
        413: "too_large",
        415: "unsupported_media_type",
        429: "rate_limit",
        503: "unavailable",
    }
    kind = kinds.get(exc.status_code, "invalid_request" if exc.status_code < 500 else "server")
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
    headers = tuple((exc.headers or {}).items())
    status = None if STATUS[kind] == exc.status_code else exc.status_code
    return ErrorInfo(kind, str(exc.detail), None, code, headers=headers, http_status=status)


# -- validation errors (pydantic) ------------------------------------------------------------


def param_path(loc: Sequence[int | str]) -> str | None:
    """Pydantic's error location as a parameter path: `messages[0].content`."""
    parts = list(loc)
    if parts and parts[0] == "body":
        parts = parts[1:]
    out = ""
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        elif not _is_wrapper(part):
            out += f".{part}" if out else part
    return out or None


def _is_wrapper(part: str) -> bool:
    """Union members and validator wrappers that pydantic puts into an error's location."""
    return (
        any(c in part for c in "[]-")
        or part in ("str", "int", "float", "bool", "list", "dict", "none", "tagged-union")
        or part.startswith(("function-", "literal["))
    )


def validation_error(errors: Sequence[Any]) -> ErrorInfo:
    """FastAPI's RequestValidationError (pydantic's errors) as one 400."""
    if not errors:
        return ErrorInfo("invalid_request", "invalid request")
    err = errors[0]
    kind = err.get("type", "")
    param = param_path(err.get("loc", ()))
    if kind == "json_invalid":
        detail = err.get("ctx", {}).get("error", "")
        message = f"the request body is not valid JSON: {detail}".rstrip(": ")
        return ErrorInfo("invalid_request", message)
    if param is None:
        if kind == "missing":
            return ErrorInfo("invalid_request", "the request body is missing")
        return ErrorInfo("invalid_request", "the request body must be a JSON object")
    if kind == "extra_forbidden":
        return ErrorInfo("invalid_request", f"unknown parameter {param!r}", param)
    if kind == "missing":
        return ErrorInfo("invalid_request", f"missing required parameter {param!r}", param)
    # A union (prompt: text or token ids ...) fails once per member: say all of it.
    field = tuple(err.get("loc", ()))[:2]
    same = [e for e in errors if tuple(e.get("loc", ()))[:2] == field]
    reasons = list(dict.fromkeys(str(e.get("msg", "invalid")) for e in same))[:4]
    return ErrorInfo(
        "invalid_request", f"invalid value for {param!r}: {'; or '.join(reasons)}", param
    )


# -- rendering ---------------------------------------------------------------------------------

# Renders an ErrorInfo raised while serving a path, in one protocol's shape.
Renderer = Callable[[ErrorInfo, str], JSONResponse]

_RENDERERS: list[tuple[str, Renderer]] = []  # (path prefix, renderer), longest prefix first
_DEFAULT: list[Renderer] = []


def register_renderer(prefixes: Sequence[str], render: Renderer, *, default: bool = False) -> None:
    """Make `render` the error shape of every path under `prefixes` (called once per
    protocol at import). The default renders paths no protocol claims."""
    for prefix in prefixes:
        _RENDERERS.append((prefix, render))
    _RENDERERS.sort(key=lambda item: len(item[0]), reverse=True)
    if default:
        _DEFAULT[:] = [render]


def renderer_for(path: str) -> Renderer:
    for prefix, render in _RENDERERS:
        if path.startswith(prefix):
            return render
    return _DEFAULT[0]


def render_for_path(info: ErrorInfo, path: str) -> JSONResponse:
    """`info` in the shape of the protocol that serves `path`."""
    if info.kind == "server":  # a busy or draining server is working as meant
        log.error("%s failed: %s", path, info.message)
    return renderer_for(path)(info, path)


def error_info(exc: Exception) -> ErrorInfo | None:
    """The ErrorInfo of an exception a route may raise; None for a crash."""
    if isinstance(exc, KronkError):
        return classify(exc)
    if isinstance(exc, RequestValidationError):
        return validation_error(exc.errors())
    if isinstance(exc, HTTPException):
        return http_error(exc)
    return None


def protocol_route(render: Renderer) -> type[APIRoute]:
    """An APIRoute class whose errors leave in `render`'s protocol shape (use it as a
    router's `route_class`): the router that received a request renders its errors."""

    class ProtocolRoute(APIRoute):
        def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
            handler = super().get_route_handler()

            async def handle(request: Request) -> Response:
                try:
                    return await handler(request)
                except Exception as exc:
                    info = error_info(exc)
                    if info is None:
                        raise  # kronk's own bug: the app's last-resort handler logs it
                    if info.kind == "server":
                        log.error("%s %s failed: %s", request.method, request.url.path, exc)
                    return render(info, request.url.path)

            return handle

    return ProtocolRoute


__all__ = [
    "ErrorInfo",
    "ErrorKind",
    "classify",
    "error_info",
    "param_path",
    "protocol_route",
    "redact_paths",
    "register_renderer",
    "render_for_path",
    "renderer_for",
    "validation_error",
]
