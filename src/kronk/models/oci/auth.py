"""Registry credentials and the two ways registries ask for them.

Credentials come from kronk's own file, `<home>/registry-auth.json` (written by
`kronk registry login`, mode 0600, docker's `auths` layout), else from docker's
`config.json` (`$DOCKER_CONFIG`, else `~/.docker`), so a `docker login` is honoured too.

`RegistryAuth` is an `httpx.Auth`: a request goes out as it is (or with the header that
worked last time); a 401 names the scheme. `Basic` gets the credentials; `Bearer` (the
distribution spec's token flow, Docker Hub, Ollama's registry) sends them to the realm the
challenge names, for the scope it names, and retries with the token. Being an `httpx.Auth`
is what lets the existing `Downloader` fetch blobs from a registry unchanged.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import os
import re
import threading
from collections.abc import Generator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from kronk.home import KronkHome
from kronk.models.files import atomic_write_bytes
from kronk.models.oci.errors import RegistryAuthError

log = logging.getLogger("kronk.models.oci")

AUTH_FILE_NAME = "registry-auth.json"
DOCKER_CONFIG_ENV = "DOCKER_CONFIG"
_CHALLENGE = re.compile(r'(\w+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,]+))')
# Docker stores Docker Hub under its old index URL.
_DOCKER_HUB_KEYS = ("https://index.docker.io/v1/", "index.docker.io", "docker.io")


@dataclass(frozen=True)
class Credentials:
    username: str
    password: str
    origin: str  # which file they came from, for messages

    def basic_header(self) -> str:
        pair = f"{self.username}:{self.password}".encode()
        return "Basic " + base64.b64encode(pair).decode("ascii")


def kronk_auth_file(home: KronkHome) -> Path:
    return home.root / AUTH_FILE_NAME


def docker_config_file(env: Mapping[str, str] | None = None) -> Path:
    env = os.environ if env is None else env
    folder = env.get(DOCKER_CONFIG_ENV)
    return (
        Path(folder).expanduser() / "config.json" if folder else Path.home() / ".docker/config.json"
    )


def lookup_credentials(
    registry: str, home: KronkHome, env: Mapping[str, str] | None = None
) -> Credentials | None:
    """The credentials for `registry` (host[:port]): kronk's file first, then docker's."""
    for path in (kronk_auth_file(home), docker_config_file(env)):
        found = _from_file(path, registry)
        if found is not None:
            return found
    return None


def save_credentials(home: KronkHome, registry: str, username: str, password: str) -> Path:
    """Store credentials for `registry` in kronk's file (created 0600, replaced atomically)."""
    path = kronk_auth_file(home)
    document = _read_json(path)
    auths = document.setdefault("auths", {})
    pair = f"{username}:{password}".encode()
    auths[registry] = {"auth": base64.b64encode(pair).decode("ascii")}
    _write_private(path, document)
    return path


def remove_credentials(home: KronkHome, registry: str) -> bool:
    """Forget `registry` in kronk's file; False when it had nothing for it."""
    path = kronk_auth_file(home)
    document = _read_json(path)
    auths = document.get("auths", {})
    if registry not in auths:
        return False
    del auths[registry]
    _write_private(path, document)
    return True


class RegistryAuth(httpx.Auth):
    """Answers a registry's 401 with Basic credentials or a bearer token (see module doc).

    `scope` is asked for on top of what a challenge names (a push asks for
    `repository:NAME:pull,push` once, instead of a pull token first and a push token later).
    Shared by parallel downloads: the header that worked is reused by all of them.
    """

    def __init__(self, credentials: Credentials | None, scope: str | None = None) -> None:
        self.credentials = credentials
        self.scope = scope
        self._header: str | None = None
        self._lock = threading.Lock()

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        with self._lock:
            header = self._header
        if header is not None:
            request.headers["Authorization"] = header
        response = yield request
        if response.status_code != 401:
            return
        challenge = parse_challenge(response.headers.get("WWW-Authenticate", ""))
        if challenge is None:
            return
        scheme, params = challenge
        if scheme == "basic":
            if self.credentials is None:
                return  # the caller reports the 401 with a hint to log in
            header = self.credentials.basic_header()
        elif scheme == "bearer":
            token_request = self._token_request(params)
            token_response = yield token_request
            token_response.read()
            header = f"Bearer {self._token_from(token_response, token_request)}"
        else:
            return
        if header == request.headers.get("Authorization"):
            return  # this very header was refused: retrying it would loop
        with self._lock:
            self._header = header
        request.headers["Authorization"] = header
        yield request

    def _token_request(self, params: dict[str, str]) -> httpx.Request:
        realm = params.get("realm")
        if not realm or not realm.startswith(("http://", "https://")):
            raise RegistryAuthError(f"the registry named no usable token realm ({realm!r})", "")
        scopes = [s for s in (params.get("scope"), self.scope) if s]
        query: list[tuple[str, str | int | float | bool | None]] = []
        if params.get("service"):
            query.append(("service", params["service"]))
        query += [("scope", s) for s in dict.fromkeys(scopes)]
        headers = {}
        if self.credentials is not None:
            headers["Authorization"] = self.credentials.basic_header()
        return httpx.Request("GET", realm, params=query, headers=headers)

    def _token_from(self, response: httpx.Response, request: httpx.Request) -> str:
        realm = str(request.url.copy_with(query=None))
        if response.status_code in (401, 403):
            who = (
                f"the credentials from {self.credentials.origin}"
                if self.credentials is not None
                else "anonymous access"
            )
            raise RegistryAuthError(
                f"the token service {realm} refused {who} (HTTP {response.status_code})",
                realm,
                response.status_code,
            )
        if response.status_code != 200:
            raise RegistryAuthError(
                f"the token service {realm} answered HTTP {response.status_code}",
                realm,
                response.status_code,
            )
        try:
            body = response.json()
            token = body.get("token") or body.get("access_token")
        except (ValueError, AttributeError):
            token = None
        if not isinstance(token, str) or not token:
            raise RegistryAuthError(f"the token service {realm} sent no token", realm)
        return token


def parse_challenge(header: str) -> tuple[str, dict[str, str]] | None:
    """`Bearer realm="...",service="...",scope="..."` -> ("bearer", {...}); None if empty."""
    scheme, _, rest = header.strip().partition(" ")
    if not scheme:
        return None
    params = {
        m.group(1).lower(): (m.group(2) if m.group(2) is not None else m.group(3))
        for m in _CHALLENGE.finditer(rest)
    }
    return scheme.lower(), {k: v.replace('\\"', '"') for k, v in params.items()}


# -- files ------------------------------------------------------------------------------------


def _from_file(path: Path, registry: str) -> Credentials | None:
    document = _read_json(path, strict=False)
    auths = document.get("auths")
    if not isinstance(auths, dict):
        return None
    wanted = {registry, *(_DOCKER_HUB_KEYS if registry in _DOCKER_HUB_KEYS else ())}
    for key, value in auths.items():
        if _host_of(str(key)) in wanted or key in wanted:
            found = _decode(value, path)
            if found is not None:
                return found
    return None


def _host_of(key: str) -> str:
    """Docker writes keys as hosts or as URLs ("https://host/v1/")."""
    return key.split("://", 1)[-1].split("/", 1)[0]


def _decode(value: Any, path: Path) -> Credentials | None:
    if not isinstance(value, dict):
        return None
    if isinstance(value.get("auth"), str) and value["auth"]:
        try:
            username, sep, password = base64.b64decode(value["auth"]).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            log.warning("ignoring an unreadable `auth` entry in %s", path)
            return None
        return Credentials(username, password, str(path)) if sep else None
    if isinstance(value.get("username"), str) and isinstance(value.get("password"), str):
        return Credentials(value["username"], value["password"], str(path))
    return None  # identity tokens and credential helpers: not supported (see the docs)


def _read_json(path: Path, *, strict: bool = True) -> dict[str, Any]:
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        if strict:
            raise RegistryAuthError(
                f"{path} is not a readable credentials file ({exc}); fix or delete it", str(path)
            ) from None
        log.warning("ignoring %s: %s", path, exc)
        return {}
    return document if isinstance(document, dict) else {}


def _write_private(path: Path, document: dict[str, Any]) -> None:
    """Readable by the owner only from the first byte, then renamed into place."""
    atomic_write_bytes(path, json.dumps(document, indent=2).encode(), mode=0o600)
