"""Errors of registry pushes and pulls (the CLI prints them as one line with a hint)."""

from __future__ import annotations

from kronk.errors import DownloadError


class RegistryError(DownloadError):
    """The registry refused or failed a request; `status` is its HTTP status when it had
    one. A `DownloadError`, so everything that reports failed pulls reports these too."""


class RegistryAuthError(RegistryError):
    """The registry wants credentials kronk does not have, or refused the ones it sent."""
