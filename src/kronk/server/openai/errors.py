"""KronkError classes -> OpenAI's error object and HTTP status.

    {"error": {"message": "...", "type": "invalid_request_error", "param": "model", "code": ...}}

The class is the contract (see kronk.errors): the caller's mistake is 400 with the
parameter named, an unknown model 404, a prompt that does not fit 413, a full queue
429, a model or server going away 503. Only kronk's own faults are 500.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from fastapi.responses import JSONResponse

from kronk.errors import (
    ConfigError,
    ContextFullError,
    EngineBusyError,
    EngineClosedError,
    GrammarError,
    InvalidRequestError,
    KronkError,
    ModelNotFoundError,
    TemplateError,
    UnsupportedFeatureError,
)

# Where a too-long prompt sits in each endpoint's request.
_PROMPT_PARAM = {
    "/v1/chat/completions": "messages",
    "/v1/completions": "prompt",
    "/v1/responses": "input",
    "/v1/embeddings": "input",
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


def _param(param: str | None, path: str) -> str | None:
    """`param` as the endpoint at `path` calls it."""
    if param is None or path != "/v1/responses":
        return param
    if param == "messages" or param.startswith(("messages[", "messages.")):
        return "input"
    head, dot, rest = param.partition(".")
    return _RESPONSES_PARAMS.get(head, head) + dot + rest


@dataclass(frozen=True)
class APIError:
    status: int
    message: str
    type: str
    param: str | None = None
    code: str | None = None

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }

    def response(self) -> JSONResponse:
        headers = {"Retry-After": "1"} if self.status in (429, 503) else None
        return JSONResponse(self.body(), status_code=self.status, headers=headers)


def api_error(exc: KronkError, path: str = "") -> APIError:
    """The OpenAI error for a KronkError raised while serving `path`."""
    message = str(exc) or type(exc).__name__
    if isinstance(exc, ModelNotFoundError):
        return APIError(404, message, "invalid_request_error", "model", "model_not_found")
    if isinstance(exc, ContextFullError):
        param = _PROMPT_PARAM.get(path)
        return APIError(413, message, "invalid_request_error", param, "context_length_exceeded")
    if isinstance(exc, EngineBusyError):
        return APIError(429, message, "server_busy_error", None, "server_busy")
    if isinstance(exc, EngineClosedError):
        return APIError(503, message, "service_unavailable_error", None, "model_unavailable")
    if isinstance(exc, GrammarError):
        param = _param(exc.param, path)
        return APIError(400, message, "invalid_request_error", param, "invalid_grammar")
    if isinstance(exc, UnsupportedFeatureError):
        param = _param(exc.param, path)
        return APIError(400, message, "invalid_request_error", param, "unsupported")
    if isinstance(exc, InvalidRequestError):
        return APIError(400, message, "invalid_request_error", _param(exc.param, path))
    if isinstance(exc, TemplateError):
        # Templates reject message sequences they can't render (e.g. roles that don't
        # alternate): that is the request's content, so 400.
        param = _param("messages", path)
        return APIError(400, message, "invalid_request_error", param, "template_error")
    if isinstance(exc, ConfigError):
        return APIError(500, message, "server_error", None, "config_error")
    return APIError(500, message, "server_error", None, type(exc).__name__)


# Union members and validator wrappers that pydantic puts into an error's location.
_NOT_A_FIELD = re.compile(r"[\[\]\-]|^(str|int|float|bool|list|dict|none|tagged-union)$")


def param_path(loc: Sequence[int | str]) -> str | None:
    """Pydantic's error location as OpenAI spells a parameter: `messages[0].content`."""
    parts = list(loc)
    if parts and parts[0] == "body":
        parts = parts[1:]
    out = ""
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        elif not _NOT_A_FIELD.search(part):
            out += f".{part}" if out else part
    return out or None


def validation_error(errors: Sequence[Any]) -> APIError:
    """FastAPI's RequestValidationError (pydantic's errors) as one 400."""
    if not errors:
        return APIError(400, "invalid request", "invalid_request_error")
    err = errors[0]
    kind = err.get("type", "")
    param = param_path(err.get("loc", ()))
    if kind == "json_invalid":
        detail = err.get("ctx", {}).get("error", "")
        return APIError(
            400,
            f"the request body is not valid JSON: {detail}".rstrip(": "),
            "invalid_request_error",
        )
    if param is None:
        if kind == "missing":
            return APIError(400, "the request body is missing", "invalid_request_error")
        return APIError(400, "the request body must be a JSON object", "invalid_request_error")
    if kind == "extra_forbidden":
        return APIError(400, f"unknown parameter {param!r}", "invalid_request_error", param)
    if kind == "missing":
        return APIError(
            400, f"missing required parameter {param!r}", "invalid_request_error", param
        )
    # A union (prompt: text or token ids ...) fails once per member: say all of it.
    field = tuple(err.get("loc", ()))[:2]
    same = [e for e in errors if tuple(e.get("loc", ()))[:2] == field]
    reasons = list(dict.fromkeys(str(e.get("msg", "invalid")) for e in same))[:4]
    return APIError(
        400, f"invalid value for {param!r}: {'; or '.join(reasons)}", "invalid_request_error", param
    )


__all__ = ["APIError", "api_error", "param_path", "validation_error"]
