"""What keeps a web page from driving a local server, in every auth mode.

A page can make the browser send "simple" cross-site requests without asking first:
GET, or a POST whose body is text/plain, form data or has no type at all. So:

- POST bodies must be JSON (`application/json` or `application/*+json`, parameters
  allowed); anything else is 415 before a route reads it. A JSON POST from another
  origin needs a CORS preflight, which only allowed origins pass.
- A request carrying an `Origin` must come from an allowed origin (default: the server's
  own, where its UI lives; more from `--allowed-origins`, globs as in OLLAMA_ORIGINS).
- Bound to loopback, the `Host` must name loopback: a page on a DNS name that was
  re-pointed at 127.0.0.1 (DNS rebinding) is same-origin to the browser, but its
  requests still say `Host: attacker.example`.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass
from fnmatch import fnmatchcase
from urllib.parse import urlsplit

# Request headers a preflight may ask for: what the OpenAI, Anthropic and Ollama clients send.
EXPOSED_HEADERS = "Retry-After, RateLimit-Limit, RateLimit-Remaining, RateLimit-Reset, request-id"
ALLOWED_METHODS = "GET, POST, DELETE, OPTIONS"


def is_loopback(host: str) -> bool:
    host = host.strip("[]").lower()
    if host in ("localhost", "") or host.endswith(".localhost"):
        return host != ""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def is_json(content_type: str | None) -> bool:
    if content_type is None:
        return False
    media = content_type.split(";", 1)[0].strip().lower()
    if media == "application/json":
        return True
    kind, _, subtype = media.partition("/")
    return kind == "application" and subtype.endswith("+json") and len(subtype) > 5


def host_name(host_header: str) -> str:
    """The name in a Host header, without the port (`[::1]:80` -> `::1`)."""
    if host_header.startswith("["):
        return host_header[1:].partition("]")[0].lower()
    return host_header.rpartition(":")[0].lower() if ":" in host_header else host_header.lower()


@dataclass(frozen=True)
class BrowserPolicy:
    own_origins: frozenset[str]  # the server's own, always allowed
    patterns: tuple[str, ...]  # --allowed-origins, lower case, globs allowed
    check_host: bool  # bound to loopback: refuse Hosts that are not
    extra_hosts: frozenset[str]  # host names of exact allowed origins (a local proxy)

    @classmethod
    def build(cls, host: str, port: int, allowed: Iterable[str]) -> BrowserPolicy:
        loopback = is_loopback(host)
        names = {"127.0.0.1", "localhost", "[::1]"} if loopback else set()
        if host not in ("0.0.0.0", "::", ""):
            names.add(f"[{host}]" if ":" in host else host)
        own = frozenset(f"http://{name}:{port}".lower() for name in names)
        patterns = tuple(p.strip().lower().rstrip("/") for p in allowed if p.strip())
        extra = frozenset(
            (urlsplit(p).hostname or "") for p in patterns if "*" not in p and "://" in p
        )
        return cls(own, patterns, loopback, extra - {""})

    def origin_allowed(self, origin: str, host_header: str | None = None) -> bool:
        origin = origin.strip().lower().rstrip("/")
        if origin in self.own_origins:
            return True
        if not self.check_host and host_header and origin == f"http://{host_header.lower()}":
            # Bound to a LAN address or all of them: the UI is reached by whatever name or
            # address the network gives this machine. A page that rebinds its own name here
            # gets what any LAN peer gets, which auth manage|all (required here) limits.
            return True
        if origin == "null":  # sandboxed frames and file:// pages: never, unless listed
            return "null" in self.patterns
        return any(fnmatchcase(origin, p) for p in self.patterns)

    def host_allowed(self, host_header: str | None) -> bool:
        if not self.check_host or host_header is None:
            return True  # no Host: HTTP/1.0, not a browser
        name = host_name(host_header.strip())
        return is_loopback(name) or name in self.extra_hosts


def preflight_headers(origin: str, requested_headers: str | None) -> list[tuple[bytes, bytes]]:
    headers = [
        (b"access-control-allow-origin", origin.encode("latin-1")),
        (b"access-control-allow-methods", ALLOWED_METHODS.encode()),
        (b"access-control-max-age", b"600"),
        (b"vary", b"Origin, Access-Control-Request-Method, Access-Control-Request-Headers"),
        # Chrome asks before a public page reaches a private address; allowed origins may.
        (b"access-control-allow-private-network", b"true"),
    ]
    if requested_headers:
        headers.append((b"access-control-allow-headers", requested_headers.encode("latin-1")))
    return headers


def cors_headers(origin: str) -> list[tuple[bytes, bytes]]:
    return [
        (b"access-control-allow-origin", origin.encode("latin-1")),
        (b"access-control-expose-headers", EXPOSED_HEADERS.encode()),
        (b"vary", b"Origin"),
    ]


__all__ = [
    "BrowserPolicy",
    "cors_headers",
    "host_name",
    "is_json",
    "is_loopback",
    "preflight_headers",
]
