"""What the server's model pool needs from model management.

The pool loads models by name; a resolver turns a name (a catalog id or a local id)
into a file on disk plus what the catalog says about it. `ModelStore` implements this
protocol; tests may use `StaticResolver` over explicit paths.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from kronk.errors import ModelNotFoundError


@dataclass(frozen=True)
class ResolvedModel:
    id: str
    path: Path  # the GGUF file to load
    # What the model can do (chat, tools, reasoning, fim, embedding, ...); None = unknown,
    # in which case the loaded model's own metadata decides.
    capabilities: frozenset[str] | None = None
    # Kronk(...) keyword arguments (n_ctx, n_seq_max, sampling_defaults, chat_template...)
    # from the catalog entry, under the user's own config.
    load_options: Mapping[str, Any] = field(default_factory=dict)
    owned_by: str = "kronk"
    created: int = 0


class ModelResolver(Protocol):
    def resolve(self, name: str) -> ResolvedModel:
        """Raise ModelNotFoundError (with the command that would fetch it) if unknown."""
        ...

    def available(self) -> list[ResolvedModel]:
        """Every model that can be loaded now (present on disk)."""
        ...


class StaticResolver:
    """A fixed name -> path mapping (tests, `kronk server start --model PATH`)."""

    def __init__(self, models: Mapping[str, ResolvedModel]) -> None:
        self._models = dict(models)

    @classmethod
    def from_paths(cls, paths: Mapping[str, Path]) -> StaticResolver:
        return cls({name: ResolvedModel(id=name, path=path) for name, path in paths.items()})

    def resolve(self, name: str) -> ResolvedModel:
        try:
            return self._models[name]
        except KeyError:
            known = ", ".join(sorted(self._models)) or "none"
            raise ModelNotFoundError(
                f"model {name!r} not found (available: {known})", name
            ) from None

    def available(self) -> list[ResolvedModel]:
        return list(self._models.values())
