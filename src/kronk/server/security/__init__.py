"""Server security: browser protections, tokens and grants, rate limits, the audit log.

    install_security(app, settings)   # once, in create_app

docs/security.md explains the modes, tokens, grants and limits, and the threat model.
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from starlette.exceptions import HTTPException

from kronk.home import KronkHome
from kronk.server.security.audit import AuditLog
from kronk.server.security.browser import BrowserPolicy
from kronk.server.security.families import FAMILIES, Family, family_for
from kronk.server.security.keys import KeyStore
from kronk.server.security.limits import RateLimiter
from kronk.server.security.middleware import (
    MODE_KEY,
    Security,
    SecurityMiddleware,
    may_see_paths,
    request_caller,
)
from kronk.server.security.tokens import Caller
from kronk.server.settings import AuthMode, ServerSettings


def build_security(settings: ServerSettings) -> Security:
    home = KronkHome.resolve(settings.home)
    return Security(
        mode=settings.auth,
        browser=BrowserPolicy.build(settings.host, settings.port, settings.allowed_origins),
        keys=KeyStore(home.keys_dir),
        limiter=RateLimiter(home.limits_file),  # opened on the first limited request
        audit=AuditLog(home.audit_file),
    )


def install_security(app: FastAPI, settings: ServerSettings) -> Security:
    security = build_security(settings)
    app.state.security = security
    app.add_middleware(SecurityMiddleware, security=security)
    return security


def require_grant(request: Request, family: Family) -> None:
    """For checks inside a route (server-side tools run inside a chat request): with
    auth `all`, the caller's token must grant `family`, else 403 in the route's shape."""
    if request.scope.get(MODE_KEY, "open") != "all":
        return
    caller = request_caller(request)
    if caller is None or not caller.may(family):
        raise HTTPException(403, f"this token is not granted the {family!r} endpoints")


def open_bind_problem(settings: ServerSettings) -> str | None:
    """Why these settings must not start (open mode off loopback without --insecure)."""
    from kronk.server.security.browser import is_loopback

    if settings.auth != "open" or settings.insecure or is_loopback(settings.host):
        return None
    return (
        f"auth mode 'open' serves every endpoint (model downloads and deletes included) to "
        f"anyone who can reach {settings.host}:{settings.port}; bind 127.0.0.1, or use "
        f"--auth manage|all with tokens (kronk security key create), or pass --insecure "
        f"if this network is trusted"
    )


__all__ = [
    "FAMILIES",
    "AuthMode",
    "Caller",
    "Family",
    "Security",
    "SecurityMiddleware",
    "build_security",
    "family_for",
    "install_security",
    "may_see_paths",
    "open_bind_problem",
    "request_caller",
    "require_grant",
]
