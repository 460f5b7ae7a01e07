"""Model ids and file names that are safe to use as paths inside the models folder.

Ids and file names arrive from the network (URLs, a downloaded catalog), from a catalog
file and from users; each becomes one path component under the models folder. Anything
that could leave that folder or hide from it is rejected rather than cleaned up, so a
hostile name fails loudly: separators, `..`, absolute paths, NUL, a leading dot (kronk's
own hidden files: the index, `.partial` downloads), or characters outside a portable set.
Names derived from URLs go through `sanitize_*` first, which maps them into that set.
"""

from __future__ import annotations

import re
from pathlib import Path

from kronk.errors import InvalidRequestError

MAX_NAME_LENGTH = 200
PARTIAL_SUFFIX = ".partial"

# Portable on every file system kronk runs on; starts with a letter or digit, so never
# "..", ".hidden" or "-option".
_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*")
_UNSAFE_CHARS = re.compile(r"[^A-Za-z0-9._+-]+")


def check_model_id(value: str) -> str:
    """Return `value` if it is a safe model id, else raise `InvalidRequestError`."""
    return _check(value, "model id", "model")


def check_file_name(value: str) -> str:
    """Return `value` if it is a safe file name for a model file, else raise."""
    name = _check(value, "model file name", "file")
    if name.endswith(PARTIAL_SUFFIX):
        # `.partial` marks an unfinished download; a model file may never look like one.
        raise InvalidRequestError(
            f"invalid model file name {value!r}: it may not end with {PARTIAL_SUFFIX}", "file"
        )
    return name


def partial_path(dest: Path) -> Path:
    """Where `dest` is written until it is verified (downloads and chunk assemblies resume it)."""
    return dest.with_name(dest.name + PARTIAL_SUFFIX)


def is_safe_name(value: str) -> bool:
    return bool(_SAFE_NAME.fullmatch(value)) and len(value) <= MAX_NAME_LENGTH


def sanitize_file_name(text: str) -> str:
    """Map `text` (e.g. the last segment of a URL) onto a safe file name, or raise."""
    base = text.replace("\\", "/").rsplit("/", 1)[-1]
    cleaned = _UNSAFE_CHARS.sub("-", base).lstrip("._+-")
    if cleaned.endswith(PARTIAL_SUFFIX):
        cleaned = cleaned[: -len(PARTIAL_SUFFIX)]
    cleaned = cleaned[:MAX_NAME_LENGTH].rstrip(".")
    if not cleaned:
        raise InvalidRequestError(f"cannot derive a file name from {text!r}", "file")
    return check_file_name(cleaned)


def sanitize_model_id(text: str) -> str:
    """Map `text` (a file name or stem) onto a lower-case safe model id, or raise."""
    stem = text.removesuffix(".gguf").removesuffix(".GGUF")
    cleaned = _UNSAFE_CHARS.sub("-", stem.lower()).strip("._+-")[:MAX_NAME_LENGTH].rstrip(".")
    if not cleaned:
        raise InvalidRequestError(f"cannot derive a model id from {text!r}", "model")
    return check_model_id(cleaned)


def _check(value: str, what: str, param: str) -> str:
    if not isinstance(value, str) or not value:
        raise InvalidRequestError(f"invalid {what}: it is empty", param)
    if "\x00" in value:
        raise InvalidRequestError(f"invalid {what} {value!r}: it contains a NUL byte", param)
    if "/" in value or "\\" in value or value in (".", ".."):
        raise InvalidRequestError(
            f"invalid {what} {value!r}: it may not contain path separators or be . or ..",
            param,
        )
    if len(value) > MAX_NAME_LENGTH:
        raise InvalidRequestError(
            f"invalid {what}: longer than {MAX_NAME_LENGTH} characters", param
        )
    if not _SAFE_NAME.fullmatch(value):
        raise InvalidRequestError(
            f"invalid {what} {value!r}: use letters, digits and . _ + - "
            "(starting with a letter or digit)",
            param,
        )
    return value
