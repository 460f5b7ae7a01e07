"""Signing keys in `<home>/keys/`: one Ed25519 private key per PEM file.

The key id is the file name: a UTC timestamp then a random suffix, so sorting the names
sorts the keys by age and the newest one signs. Deleting a key file revokes every token
it signed, because nothing else can verify them. Files are 0600 in a 0700 folder and
written atomically (a reader never sees half a key).
"""

from __future__ import annotations

import os
import secrets
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from kronk.errors import ConfigError
from kronk.models.files import atomic_write_bytes

KEY_SUFFIX = ".pem"
ADMIN_TOKEN_FILE = "admin.token"
_STAMP = "%Y%m%dT%H%M%S%f"


@dataclass(frozen=True)
class KeyInfo:
    kid: str
    created: datetime
    path: Path


def _created(kid: str) -> datetime:
    try:
        return datetime.strptime(kid.split("-")[0], _STAMP).replace(tzinfo=UTC)
    except ValueError:
        return datetime.fromtimestamp(0, UTC)


def write_secret(path: Path, data: bytes) -> None:
    """Write `data` to `path` atomically, readable by the owner only from the first byte."""
    ensure_private_folder(path.parent)
    atomic_write_bytes(path, data, mode=0o600)


def ensure_private_folder(folder: Path) -> None:
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    folder.chmod(0o700)  # also when it existed with looser bits


class KeyStore:
    """The signing keys of one home. Public keys are cached and re-read only when the
    folder's listing changes, so a deleted key stops verifying on the next request."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._lock = threading.Lock()
        self._cache: dict[str, Ed25519PublicKey] = {}
        self._names: frozenset[str] = frozenset()

    def keys(self) -> list[KeyInfo]:
        """Every key, oldest first."""
        try:
            names = sorted(n for n in os.listdir(self.folder) if n.endswith(KEY_SUFFIX))
        except FileNotFoundError:
            return []
        out = []
        for name in names:
            kid = name.removesuffix(KEY_SUFFIX)
            out.append(KeyInfo(kid, _created(kid), self.folder / name))
        return out

    def create(self) -> KeyInfo:
        now = datetime.now(UTC)
        kid = f"{now.strftime(_STAMP)}-{secrets.token_hex(3)}"
        pem = Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        path = self.folder / f"{kid}{KEY_SUFFIX}"
        write_secret(path, pem)
        return KeyInfo(kid, now, path)

    def delete(self, kid: str) -> bool:
        if not kid or "/" in kid or kid.startswith("."):
            return False
        path = self.folder / f"{kid}{KEY_SUFFIX}"
        try:
            path.unlink()
        except FileNotFoundError:
            return False
        return True

    def newest(self) -> tuple[str, Ed25519PrivateKey]:
        """The key that signs new tokens."""
        keys = self.keys()
        if not keys:
            raise ConfigError(
                f"no signing key in {self.folder}: run `kronk security key create` first"
            )
        info = keys[-1]
        return info.kid, _load_private(info.path)

    def public_key(self, kid: str) -> Ed25519PublicKey | None:
        """The public key of `kid`, None when no such key exists (any more)."""
        try:
            names = frozenset(n for n in os.listdir(self.folder) if n.endswith(KEY_SUFFIX))
        except FileNotFoundError:
            names = frozenset()
        with self._lock:
            if names != self._names:
                self._cache = {k: v for k, v in self._cache.items() if f"{k}{KEY_SUFFIX}" in names}
                self._names = names
            if f"{kid}{KEY_SUFFIX}" not in names:
                return None
            key = self._cache.get(kid)
            if key is None:
                try:
                    key = _load_private(self.folder / f"{kid}{KEY_SUFFIX}").public_key()
                except (OSError, ValueError, ConfigError):
                    return None
                self._cache[kid] = key
            return key


def forget_admin_token(folder: Path, kid: str) -> None:
    """Remove `<folder>/admin.token` when `kid` signed it: revoked with its key, a stale
    copy would only mislead."""
    import jwt

    admin = folder / ADMIN_TOKEN_FILE
    try:
        if jwt.get_unverified_header(admin.read_text().strip()).get("kid") == kid:
            admin.unlink()
    except (OSError, jwt.PyJWTError):
        pass


def _load_private(path: Path) -> Ed25519PrivateKey:
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError(f"{path} is not an Ed25519 key")
    return key


__all__ = [
    "ADMIN_TOKEN_FILE",
    "KeyInfo",
    "KeyStore",
    "ensure_private_folder",
    "forget_admin_token",
    "write_secret",
]
