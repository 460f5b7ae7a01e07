"""A request's hold on a loaded model, the pool's record of one model, and the load
options a model gets."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kronk.models.catalog import Catalog
from kronk.models.resolver import ModelResolver, ResolvedModel
from kronk.pool.memory import MemoryEstimate
from kronk.sdk import Kronk


@dataclass(eq=False)
class Entry:
    """One model in the pool: loading (a task) or loaded (a Kronk)."""

    resolved: ResolvedModel
    task: asyncio.Task[Kronk] | None = None
    kronk: Kronk | None = None
    leases: int = 0  # holders plus waiters for the load: both pin the model
    progress: float = 0.0
    loaded_at: float | None = None
    last_used: float = 0.0  # pool clock
    capabilities: list[str] = field(default_factory=list)
    # A request's keep-alive for this model (Ollama's keep_alive): idle seconds before it
    # is unloaded, inf for ever; None follows the pool's ttl_seconds.
    ttl: float | None = None
    estimate: MemoryEstimate | None = None  # None: the header could not be read
    measured_bytes: int | None = None  # process RSS growth over the load

    @property
    def planned_bytes(self) -> int:
        """What the pool counts this model as taking."""
        return self.estimate.total if self.estimate is not None else 0


class ModelLease:
    """A hold on a loaded model; release it (or leave `async with`) when done.

    While any lease is held, the pool neither evicts nor TTL-unloads the model.
    """

    def __init__(
        self,
        entry: Entry,
        kronk: Kronk,
        release: Callable[[Entry], None],
        loop: asyncio.AbstractEventLoop | None,
    ) -> None:
        self._entry = entry
        self._give_back = release
        self._loop = loop
        self.kronk = kronk
        self.resolved = entry.resolved
        self._released = False

    @property
    def model_id(self) -> str:
        return self.resolved.id

    def release(self) -> None:
        """Give the model back. Idempotent."""
        if not self._released:
            self._released = True
            self._give_back(self._entry)

    async def __aenter__(self) -> ModelLease:
        return self

    async def __aexit__(self, *_: object) -> None:
        self.release()

    def __del__(self) -> None:
        # A lease lost without release() would pin the model forever; the pool's
        # bookkeeping is loop-only, so hand the release to the loop.
        if not getattr(self, "_released", True):
            loop = self._loop
            if loop is not None and not loop.is_closed():
                with contextlib.suppress(RuntimeError):
                    loop.call_soon_threadsafe(self.release)


def load_options(*layers: Mapping[str, Any]) -> dict[str, Any]:
    """Kronk(...) keyword arguments from layers of settings, later ones winning; the
    sampling defaults merge key by key, so a user's temperature keeps the catalog's top_k."""
    merged: dict[str, Any] = {}
    sampling: dict[str, Any] = {}
    for layer in layers:
        merged.update(layer)
        sampling.update(layer.get("sampling_defaults") or {})
    if sampling:
        merged["sampling_defaults"] = sampling
    return merged


def with_draft_path(
    resolver: ModelResolver, model_id: str, kwargs: dict[str, Any]
) -> dict[str, Any]:
    """A `draft_model` given as a model id (config.yaml's, --draft-model) becomes that
    model's file; a path stays a path. `speculative: draft` without one takes the one
    the catalog names for the model; `off` loads none."""
    mode = str(kwargs.get("speculative", "auto")).lower()
    if mode in ("off", "false"):
        return {k: v for k, v in kwargs.items() if k != "draft_model"}
    draft = kwargs.get("draft_model")
    catalog = getattr(resolver, "catalog", None)  # a ModelStore has one
    if draft is None and mode == "draft" and isinstance(catalog, Catalog):
        draft = catalog.draft_model_of(model_id)
    if draft is None or draft == model_id:  # a model never drafts for itself
        return {k: v for k, v in kwargs.items() if k != "draft_model"}
    path = Path(str(draft)).expanduser()
    if path.suffix.lower() != ".gguf" or not path.is_file():
        path = resolver.resolve(str(draft)).path  # ModelNotFoundError names the pull
    return {**kwargs, "draft_model": path}


__all__ = ["Entry", "ModelLease", "load_options", "with_draft_path"]
