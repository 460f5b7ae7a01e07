"""Model aliases: names that stand for other models, for every protocol.

Anthropic clients send their own model names (`claude-sonnet-4-5`), OpenAI clients
theirs; an alias map routes them to a local model. Keys may be globs
(`claude-*`); an exact alias wins over a glob, and a glob over nothing. An alias
always resolves to its target's `ResolvedModel`, so every name for a model shares one
loaded copy.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping

from kronk.errors import ConfigError, InvalidRequestError, ModelNotFoundError
from kronk.models.resolver import ModelResolver, ResolvedModel

_GLOB_CHARS = frozenset("*?[")


def is_glob(name: str) -> bool:
    return any(c in _GLOB_CHARS for c in name)


def parse_alias(text: str) -> tuple[str, str]:
    """`NAME=MODEL` (as `--alias` takes it) -> (NAME, MODEL)."""
    name, sep, target = text.partition("=")
    name, target = name.strip(), target.strip()
    if not sep or not name or not target:
        raise ConfigError(f"--alias {text!r}: write it as NAME=MODEL (e.g. 'claude-*=qwen')")
    return name, target


class AliasResolver:
    """Wraps a resolver; names in `aliases` resolve to their targets."""

    def __init__(self, base: ModelResolver, aliases: Mapping[str, str] | None = None) -> None:
        self.base = base
        self._aliases: dict[str, str] = {}
        for name, target in (aliases or {}).items():
            self._check(name, target)
            self._aliases[name] = target

    def _check(self, name: str, target: str) -> None:
        if not name or not target:
            raise ConfigError("an alias needs a name and a target model")
        if is_glob(target):
            raise ConfigError(f"alias {name!r}: its target {target!r} must be a model, not a glob")
        if name == target:
            raise ConfigError(f"alias {name!r} names itself")

    @property
    def aliases(self) -> dict[str, str]:
        return dict(self._aliases)

    def add_alias(self, name: str, target: str) -> ResolvedModel:
        """Add (or replace) an alias at run time; the target must resolve."""
        if not name or not target or is_glob(name) or is_glob(target):
            raise InvalidRequestError("an alias needs a plain name and a model", "name")
        resolved = self.resolve(target)
        if name == resolved.id:
            raise InvalidRequestError(f"{name!r} is already the model's own name", "name")
        self._aliases[name] = resolved.id
        return resolved

    def remove_alias(self, name: str) -> bool:
        return self._aliases.pop(name, None) is not None

    def target(self, name: str) -> str | None:
        """The model `name` is an alias of (exact aliases first, then globs), if any."""
        if name in self._aliases:
            return self._aliases[name]
        for pattern, target in self._aliases.items():
            if is_glob(pattern) and fnmatch.fnmatchcase(name, pattern):
                return target
        return None

    def resolve(self, name: str) -> ResolvedModel:
        if name in self._aliases:
            return self.base.resolve(self._aliases[name])
        try:
            return self.base.resolve(name)  # a real model's name beats a matching glob
        except ModelNotFoundError:
            target = self.target(name)
            if target is None:
                raise
        return self.base.resolve(target)

    def available(self) -> list[ResolvedModel]:
        return self.base.available()


__all__ = ["AliasResolver", "is_glob", "parse_alias"]
