"""`/manage/security/...`: signing keys and tokens for the Server page, admins only.

The same operations as `kronk security key create|list|delete` and `kronk security token
create`, through the security package's own functions. Private keys never leave the
server; a created token is in the answer once and stored nowhere (only its id reaches the
audit log). Key files are written and read in a worker thread.
"""

from __future__ import annotations

import asyncio
from typing import Any

import jwt
from fastapi import Request
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException

from kronk.errors import ConfigError
from kronk.server.manage.routes import router
from kronk.server.security import Security, request_caller
from kronk.server.security.keys import KeyInfo, forget_admin_token
from kronk.server.security.tokens import (
    create_token,
    describe_grants,
    parse_duration,
    parse_endpoints,
)


class TokenBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    endpoints: str | None = None  # FAMILY[:COUNT/WINDOW|:unlimited],... as the CLI's --endpoints
    duration: str = Field(default="720h", min_length=1)
    admin: bool = False
    subject: str = Field(default="", max_length=200)


def admin_security(request: Request) -> Security:
    """The server's security, for an admin caller only (403 otherwise)."""
    security: Security | None = getattr(request.app.state, "security", None)
    caller = request_caller(request)
    if security is None or security.mode == "open":
        raise HTTPException(403, "security is off: keys and tokens need --auth manage or all")
    if caller is None or not caller.admin:
        raise HTTPException(403, "managing keys and tokens needs an admin token")
    return security


def key_json(info: KeyInfo, newest: bool) -> dict[str, Any]:
    # The id and age only: the file's path and its private key stay on the server.
    return {"id": info.kid, "created": info.created.timestamp(), "signs_new_tokens": newest}


def _keys_json(keys: list[KeyInfo]) -> list[dict[str, Any]]:
    return [key_json(k, n == len(keys) - 1) for n, k in enumerate(keys)]


@router.get("/security/keys")
async def list_keys(request: Request) -> dict[str, Any]:
    """The signing keys, oldest first; the last signs new tokens."""
    security = admin_security(request)
    return {"object": "list", "keys": _keys_json(await asyncio.to_thread(security.keys.keys))}


@router.post("/security/keys")
async def create_key(request: Request) -> dict[str, Any]:
    """A new signing key; it signs every token created from now on."""
    security = admin_security(request)
    info = await asyncio.to_thread(security.keys.create)
    security.audit.record("key_created", key_id=info.kid, source="manage")
    return {"key": key_json(info, True)}


@router.delete("/security/keys/{kid}")
async def delete_key(kid: str, request: Request) -> dict[str, Any]:
    """Delete a key: every token it signed (maybe the caller's own) stops working."""
    security = admin_security(request)
    if not await asyncio.to_thread(security.keys.delete, kid):
        raise HTTPException(404, f"no signing key {kid!r}")
    await asyncio.to_thread(forget_admin_token, security.keys.folder, kid)
    security.audit.record("key_deleted", key_id=kid, source="manage")
    return {"id": kid, "deleted": True}


@router.post("/security/tokens")
async def new_token(body: TokenBody, request: Request) -> dict[str, Any]:
    """A token signed by the newest key, shown once: it is kept nowhere."""
    security = admin_security(request)
    if not body.endpoints and not body.admin:
        raise HTTPException(
            400, "say what the token may use: endpoints (chat:1000/day,...) or admin"
        )
    try:
        grants = parse_endpoints(body.endpoints) if body.endpoints else {}
        seconds = parse_duration(body.duration)
    except ConfigError as exc:
        raise HTTPException(400, str(exc)) from None

    def make() -> str:
        return create_token(
            security.keys, grants, duration_s=seconds, admin=body.admin, subject=body.subject
        )

    try:
        token = await asyncio.to_thread(make)
    except ConfigError:  # no signing key left
        raise HTTPException(409, "no signing key: create one first") from None
    claims = jwt.decode(token, options={"verify_signature": False})
    kid = jwt.get_unverified_header(token)["kid"]
    security.audit.record(
        "token_created", key_id=kid, token_id=claims["jti"], subject=claims["sub"],
        admin=body.admin, grants=describe_grants(grants), source="manage",
    )  # fmt: skip
    return {
        "token": token,
        "id": claims["jti"],
        "key_id": kid,
        "subject": claims["sub"],
        "admin": body.admin,
        "grants": describe_grants(grants) or ("every endpoint" if body.admin else ""),
        "expires_at": claims["exp"],
    }
