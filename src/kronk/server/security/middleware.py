"""The security middleware: browser protections, then credentials, grants and rate limits.

Order matters: the browser checks come first and hold in every mode (a page must not
reach even the open endpoints); a CORS preflight from an allowed origin is answered
before credentials, since browsers send none with it; then the auth mode decides
whether the path needs a token, and the token's grant and limits are checked.
Every refusal is rendered by `render_for_path`, in the shape of the protocol that owns
the path, and written to the audit log.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from fastapi import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from kronk.server.errors import ErrorInfo, render_for_path
from kronk.server.security.audit import AuditLog
from kronk.server.security.browser import (
    BrowserPolicy,
    cors_headers,
    is_json,
    preflight_headers,
)
from kronk.server.security.families import Family, family_for, is_open
from kronk.server.security.keys import KeyStore
from kronk.server.security.limits import Decision, RateLimiter
from kronk.server.security.tokens import Caller, TokenError, verify_token
from kronk.server.settings import AuthMode

CALLER_KEY = "kronk.caller"  # scope key: the verified Caller, or None
MODE_KEY = "kronk.auth"  # scope key: the auth mode the request was served under
_BODY_METHODS = ("POST",)


@dataclass
class Security:
    """Everything the middleware consults; `app.state.security` (tests swap the clock
    of `limiter`)."""

    mode: AuthMode
    browser: BrowserPolicy
    keys: KeyStore
    limiter: RateLimiter
    audit: AuditLog


@dataclass(frozen=True)
class _Refusal:
    info: ErrorInfo
    event: str
    reason: str


def credential(headers: dict[str, str]) -> str | None:
    """The token from `Authorization: Bearer ...`, else from `x-api-key`."""
    auth = headers.get("authorization", "").strip()
    scheme, _, value = auth.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    key = headers.get("x-api-key", "").strip()
    return key or (auth or None)  # a non-Bearer Authorization is still a (bad) credential


def _headers(scope: Scope) -> dict[str, str]:
    out: dict[str, str] = {}
    for name, value in scope["headers"]:
        out.setdefault(name.decode("latin-1").lower(), value.decode("latin-1"))
    return out


def _unauthorized(message: str, reason: str) -> _Refusal:
    info = ErrorInfo(
        "authentication", message, None, "invalid_api_key",
        headers=(("WWW-Authenticate", 'Bearer realm="kronk"'),),
    )  # fmt: skip
    return _Refusal(info, "auth_failed", reason)


def rate_headers(decision: Decision) -> list[tuple[str, str]]:
    return [
        ("RateLimit-Limit", str(decision.limit)),
        ("RateLimit-Remaining", str(decision.remaining)),
        ("RateLimit-Reset", str(max(1, round(decision.reset_s)))),
    ]


class SecurityMiddleware:
    def __init__(self, app: ASGIApp, security: Security) -> None:
        self.app = app
        self.security = security

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        sec = self.security
        path: str = scope["path"]
        method: str = scope["method"]
        headers = _headers(scope)
        origin = headers.get("origin")
        cors = cors_headers(origin) if origin is not None else []

        refusal = self._browser_refusal(method, headers)
        if refusal is not None:
            await self._refuse(refusal, scope, receive, send, [], None)
            return
        if method == "OPTIONS" and origin and "access-control-request-method" in headers:
            extra = preflight_headers(origin, headers.get("access-control-request-headers"))
            await send({"type": "http.response.start", "status": 204, "headers": extra})
            await send({"type": "http.response.body", "body": b""})
            return

        family = family_for(path)
        caller, refusal, limited = await self._authorize(path, family, headers)
        if refusal is not None:
            await self._refuse(refusal, scope, receive, send, cors, caller)
            return
        scope = {**scope, CALLER_KEY: caller, MODE_KEY: sec.mode}
        extra = cors + [(k.encode(), v.encode()) for k, v in limited]
        started = False

        def audit(status: int | None) -> None:
            sec.audit.record(
                "manage", method=method, path=path, status=status, **_who(caller),
                client=_client(scope),
            )  # fmt: skip

        async def send_with_headers(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                if family == "manage":  # written before the client can see the answer
                    audit(message["status"])
                if extra:
                    message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        try:
            await self.app(scope, receive, send_with_headers)
        finally:
            if family == "manage" and not started:
                audit(None)  # crashed or cancelled before answering

    def _browser_refusal(self, method: str, headers: dict[str, str]) -> _Refusal | None:
        policy = self.security.browser
        if not policy.host_allowed(headers.get("host")):
            info = ErrorInfo("permission", "the Host header does not name this server", None,
                             "host_not_allowed")  # fmt: skip
            return _Refusal(info, "browser_refused", "host")
        origin = headers.get("origin")
        if origin is not None and not policy.origin_allowed(origin, headers.get("host")):
            info = ErrorInfo(
                "permission",
                "requests from this origin are not allowed (see --allowed-origins)",
                None,
                "origin_not_allowed",
            )
            return _Refusal(info, "browser_refused", "origin")
        if method in _BODY_METHODS and not is_json(headers.get("content-type")):
            info = ErrorInfo("unsupported_media_type",
                             "the request body must be JSON (Content-Type: application/json)",
                             None, "unsupported_media_type")  # fmt: skip
            return _Refusal(info, "browser_refused", "content_type")
        return None

    async def _authorize(
        self, path: str, family: Family | None, headers: dict[str, str]
    ) -> tuple[Caller | None, _Refusal | None, list[tuple[str, str]]]:
        sec = self.security
        if sec.mode == "open":
            return None, None, []
        token = credential(headers)
        required = not is_open(path) and (sec.mode == "all" or family == "manage")
        if not required:
            # Open in this mode: a token only tells who is asking (admins see paths); a bad
            # one is ignored, since clients send placeholder keys to open servers.
            try:
                return (verify_token(sec.keys, token) if token else None), None, []
            except TokenError:
                return None, None, []
        if token is None:
            message = "this endpoint needs a token (Authorization: Bearer, or x-api-key)"
            return None, _unauthorized(message, "missing"), []
        try:
            caller = verify_token(sec.keys, token)
        except TokenError as exc:
            return None, _unauthorized(str(exc), str(exc)), []
        if family is None:
            return caller, None, []
        if not caller.may(family):
            info = ErrorInfo("permission", f"this token is not granted the {family!r} endpoints",
                             None, "missing_grant")  # fmt: skip
            return caller, _Refusal(info, "forbidden", family), []
        limits = caller.grants[family]
        if not limits:
            return caller, None, []
        decision = await asyncio.to_thread(sec.limiter.hit, caller.token_id, family, limits)
        limited = rate_headers(decision)
        if not decision.allowed:
            info = ErrorInfo("rate_limit", f"this token's {family!r} limit is used up",
                             None, "rate_limit_exceeded", retry_after=decision.retry_after_s,
                             headers=tuple(limited))  # fmt: skip
            return caller, _Refusal(info, "rate_limited", family), limited
        return caller, None, limited

    async def _refuse(
        self,
        refusal: _Refusal,
        scope: Scope,
        receive: Receive,
        send: Send,
        cors: list[tuple[bytes, bytes]],
        caller: Caller | None,
    ) -> None:
        self.security.audit.record(
            refusal.event, reason=refusal.reason, status=refusal.info.status,
            method=scope["method"], path=scope["path"], **_who(caller), client=_client(scope),
        )  # fmt: skip
        response = render_for_path(refusal.info, scope["path"])
        for name, value in cors:
            response.headers.append(name.decode(), value.decode())
        await response(scope, receive, send)


def _who(caller: Caller | None) -> dict[str, str]:
    # Ids only: the token itself is a secret and never written down.
    if caller is None:
        return {"token_id": "", "key_id": ""}
    return {"token_id": caller.token_id, "key_id": caller.key_id, "subject": caller.subject}


def _client(scope: Scope) -> str:
    client = scope.get("client")
    return str(client[0]) if client else ""


def may_see_paths(request: Request) -> bool:
    """Whether the caller may see file paths and the home's layout: always with auth
    open (loopback only), else only with the `manage` grant."""
    if request.scope.get(MODE_KEY, "open") == "open":
        return True
    caller = request.scope.get(CALLER_KEY)
    return isinstance(caller, Caller) and caller.may("manage")


def request_caller(request: Request) -> Caller | None:
    """The verified caller of a request (None: no token, or auth open)."""
    caller = request.scope.get(CALLER_KEY)
    return caller if isinstance(caller, Caller) else None


__all__ = [
    "CALLER_KEY",
    "MODE_KEY",
    "Security",
    "SecurityMiddleware",
    "credential",
    "may_see_paths",
    "request_caller",
]
