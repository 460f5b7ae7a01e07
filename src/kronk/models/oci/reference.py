"""Image references: `[oci://]REGISTRY[:PORT]/NAMESPACE/NAME[:TAG][@sha256:DIGEST]`.

The registry is always named: kronk has no default registry to fall back on, and guessing
one (as docker does with Docker Hub) would send a push somewhere the user did not mean.
Repository and tag follow the OCI distribution spec's grammar, so a name the registry
would refuse is refused here first, with a message that says which part is wrong.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from kronk.errors import InvalidRequestError

SCHEME = "oci://"
DEFAULT_TAG = "latest"

# The distribution spec's grammar for repository path components and tags.
_COMPONENT = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*")
_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}")
_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
_HOST = re.compile(r"(?:\[[0-9a-fA-F:.]+\]|[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?)(?::\d+)?")
# Docker Hub's API does not live at the name people write.
_API_HOSTS = {"docker.io": "registry-1.docker.io", "index.docker.io": "registry-1.docker.io"}


@dataclass(frozen=True)
class Reference:
    """One manifest in one repository of one registry."""

    registry: str  # host[:port], as written
    repository: str  # namespace/name
    tag: str | None
    digest: str | None  # "sha256:<hex>" when pinned

    @property
    def reference(self) -> str:
        """What goes after /manifests/: the digest when pinned, else the tag."""
        return self.digest or self.tag or DEFAULT_TAG

    @property
    def name(self) -> str:
        """The last path component of the repository (the model's name)."""
        return self.repository.rsplit("/", 1)[-1]

    def api_base(self, *, insecure: bool) -> str:
        host = _API_HOSTS.get(self.registry, self.registry)
        return f"{'http' if insecure else 'https'}://{host}"

    def __str__(self) -> str:
        text = f"{self.registry}/{self.repository}"
        if self.tag is not None:
            text += f":{self.tag}"
        if self.digest is not None:
            text += f"@{self.digest}"
        return text

    def pinned(self, digest: str) -> str:
        """The reference with its manifest digest: what a pull records as its source."""
        return f"{SCHEME}{self.registry}/{self.repository}@{digest}"


def is_oci_reference(text: str) -> bool:
    return text.startswith(SCHEME)


def parse_reference(text: str, *, param: str = "reference") -> Reference:
    """Parse `text` (with or without `oci://`); raise `InvalidRequestError` saying what is
    wrong and what a good reference looks like."""
    example = "e.g. localhost:5000/library/qwen:0.5b"
    raw = text.strip().removeprefix(SCHEME)
    if not raw or "/" not in raw:
        raise InvalidRequestError(
            f"{text!r} is not a registry reference: name the registry and repository ({example})",
            param,
        )
    host, _, rest = raw.partition("/")
    if not _HOST.fullmatch(host) or not ("." in host or ":" in host or host == "localhost"):
        raise InvalidRequestError(
            f"{text!r} does not start with a registry host ({example}); kronk has no default "
            "registry",
            param,
        )
    digest: str | None = None
    if "@" in rest:
        rest, _, digest = rest.partition("@")
        if not _DIGEST.fullmatch(digest):
            raise InvalidRequestError(
                f"{text!r}: the digest must be sha256: and 64 lower-case hex digits", param
            )
    tag: str | None = None
    last_slash = rest.rfind("/")
    if ":" in rest[last_slash + 1 :]:
        rest, _, tag = rest.rpartition(":")
        if not _TAG.fullmatch(tag):
            raise InvalidRequestError(
                f"{text!r}: invalid tag {tag!r} (letters, digits, _ . -; at most 128)", param
            )
    components = rest.split("/")
    bad = next((c for c in components if not _COMPONENT.fullmatch(c)), None)
    if bad is not None:
        raise InvalidRequestError(
            f"{text!r}: invalid repository component {bad!r} (lower-case letters, digits and "
            "single separators . _ -)",
            param,
        )
    if len(rest) > 255:
        raise InvalidRequestError(f"{text!r}: the repository name is longer than 255", param)
    if tag is None and digest is None:
        tag = DEFAULT_TAG
    return Reference(host, rest, tag, digest)
