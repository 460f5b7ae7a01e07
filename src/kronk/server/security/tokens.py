"""Tokens: JWTs signed with the newest key (EdDSA), naming their key id in the header.

Claims: `iss` kronk, `sub` (a free label), `jti` (the token's id, which rate limits are
counted under), `iat` / `nbf` / `exp`, `admin`, and `grants`: family -> list of
`[limit, window]` pairs (an empty list is unlimited). Verification refuses anything
it cannot fully account for: a malformed grant is as bad as a bad signature.
"""

from __future__ import annotations

import re
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

import jwt

from kronk.errors import ConfigError
from kronk.server.security.families import FAMILIES, Family
from kronk.server.security.keys import KeyStore

ISSUER = "kronk"
ALGORITHM = "EdDSA"
Window = Literal["minute", "hour", "day", "month"]
WINDOWS: tuple[Window, ...] = get_args(Window)
_WINDOW_NAMES: dict[str, Window] = {
    **{w: w for w in WINDOWS},
    **{f"{w}s": w for w in WINDOWS},
    "min": "minute",
    "m": "minute",
    "h": "hour",
    "d": "day",
    "mo": "month",
}
_DURATION = re.compile(r"(\d+)(s|m|h|d)")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


@dataclass(frozen=True)
class Limit:
    count: int
    window: Window


# family -> its limits (all of them must admit a request); no limits: unlimited
Grants = Mapping[Family, tuple[Limit, ...]]


class TokenError(Exception):
    """A token that must be refused with 401; the message never quotes the token."""


@dataclass(frozen=True)
class Caller:
    """Who sent a request, once its token checked out."""

    token_id: str
    key_id: str
    subject: str
    admin: bool
    grants: Grants = field(default_factory=dict)

    def may(self, family: Family) -> bool:
        return family in self.grants


def parse_endpoints(text: str) -> dict[Family, tuple[Limit, ...]]:
    """`chat:1000/day,embeddings:unlimited,chat:10/minute` -> grants. A family named
    twice gets both limits; a family alone (`tokenize`) is unlimited."""
    out: dict[Family, list[Limit]] = {}
    for raw in text.split(","):
        item = raw.strip()
        if not item:
            continue
        name, _, limit = item.partition(":")
        family = _family(name.strip())
        limits = out.setdefault(family, [])
        limit = limit.strip().lower()
        if limit in ("", "unlimited"):
            continue
        count, slash, window = limit.partition("/")
        if not slash or not count.isdigit() or int(count) < 1:
            raise ConfigError(f"bad limit {item!r}: use FAMILY:COUNT/WINDOW or FAMILY:unlimited")
        if window.strip() not in _WINDOW_NAMES:
            raise ConfigError(f"bad window in {item!r}: one of {', '.join(WINDOWS)}")
        limits.append(Limit(int(count), _WINDOW_NAMES[window.strip()]))
    if not out:
        raise ConfigError("no endpoints granted: e.g. --endpoints chat:1000/day,models")
    return {family: tuple(limits) for family, limits in out.items()}


def _family(name: str) -> Family:
    for family in FAMILIES:
        if family == name:
            return family
    raise ConfigError(f"unknown endpoint family {name!r}: one of {', '.join(FAMILIES)}")


def parse_duration(text: str) -> int:
    """`720h`, `30d`, `1h30m`, `90s` -> seconds."""
    text = text.strip().lower()
    parts = _DURATION.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ConfigError(f"bad duration {text!r}: e.g. 720h, 30d, 1h30m")
    seconds = sum(int(n) * _UNITS[u] for n, u in parts)
    if seconds <= 0:
        raise ConfigError("the duration must be longer than 0")
    return seconds


def create_token(
    store: KeyStore,
    grants: Grants,
    *,
    duration_s: int,
    admin: bool = False,
    subject: str = "",
    not_before: float | None = None,
    now: Callable[[], float] = time.time,
) -> str:
    """A token signed by the newest key. Admin tokens hold every family (unlimited,
    unless `grants` limits one)."""
    kid, key = store.newest()
    issued = int(now())
    full: dict[Family, tuple[Limit, ...]] = dict.fromkeys(FAMILIES, ()) if admin else {}
    full.update(grants)
    claims = {
        "iss": ISSUER,
        "sub": subject or ("admin" if admin else "user"),
        "jti": secrets.token_urlsafe(12),
        "iat": issued,
        "nbf": int(not_before) if not_before is not None else issued,
        "exp": issued + duration_s,
        "admin": admin,
        "grants": {f: [[lim.count, lim.window] for lim in limits] for f, limits in full.items()},
    }
    return jwt.encode(claims, key, algorithm=ALGORITHM, headers={"kid": kid})


def verify_token(store: KeyStore, token: str) -> Caller:
    """The caller a token stands for; TokenError for every way it can be bad."""
    try:
        header = jwt.get_unverified_header(token)
    except jwt.PyJWTError:
        raise TokenError("the token is malformed") from None
    kid = header.get("kid")
    if not isinstance(kid, str) or header.get("alg") != ALGORITHM:
        raise TokenError("the token is malformed")
    key = store.public_key(kid)
    if key is None:
        raise TokenError("the token's key does not exist (revoked or never created)")
    try:
        claims = jwt.decode(
            token,
            key,
            algorithms=[ALGORITHM],
            issuer=ISSUER,
            options={"require": ["exp", "nbf", "iat", "jti", "iss"]},
        )
    except jwt.ExpiredSignatureError:
        raise TokenError("the token has expired") from None
    except jwt.ImmatureSignatureError:
        raise TokenError("the token is not valid yet") from None
    except jwt.InvalidSignatureError:
        raise TokenError("the token's signature does not verify") from None
    except jwt.PyJWTError:
        raise TokenError("the token is invalid") from None
    return Caller(
        token_id=_text(claims.get("jti")),
        key_id=kid,
        subject=_text(claims.get("sub", "")),
        admin=claims.get("admin") is True,
        grants=_grants(claims.get("grants")),
    )


def _text(value: Any) -> str:
    if not isinstance(value, str) or len(value) > 200:
        raise TokenError("the token is malformed")
    return value


def _grants(value: Any) -> Grants:
    if not isinstance(value, dict):
        raise TokenError("the token has no valid grants")
    out: dict[Family, tuple[Limit, ...]] = {}
    for name, limits in value.items():
        if name not in FAMILIES or not isinstance(limits, list):
            raise TokenError("the token has no valid grants")
        parsed = []
        for item in limits:
            ok = isinstance(item, list) and len(item) == 2
            if not ok or type(item[0]) is not int or item[0] < 1 or item[1] not in WINDOWS:
                raise TokenError("the token has no valid grants")
            parsed.append(Limit(item[0], item[1]))
        out[_family(name)] = tuple(parsed)
    return out


def describe_grants(grants: Grants) -> str:
    """`chat:1000/day,embeddings:unlimited`: what parse_endpoints reads back."""
    parts = []
    for family, limits in grants.items():
        if not limits:
            parts.append(f"{family}:unlimited")
        parts += [f"{family}:{lim.count}/{lim.window}" for lim in limits]
    return ",".join(parts)


__all__ = [
    "WINDOWS",
    "Caller",
    "Grants",
    "Limit",
    "TokenError",
    "Window",
    "create_token",
    "describe_grants",
    "parse_duration",
    "parse_endpoints",
    "verify_token",
]
