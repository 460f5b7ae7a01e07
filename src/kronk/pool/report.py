"""What the pool shows of a model: `/api/ps`, the manage API and `kronk model ps`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from kronk.engine.config import SlotState
from kronk.pool.lease import Entry


@dataclass(frozen=True)
class LoadedModel:
    """A snapshot of one model in the pool (what `/api/ps` reports)."""

    id: str
    path: str
    status: Literal["loading", "ready"]
    progress: float  # load progress, 1.0 once ready
    slots: int  # parallel sequences the engine serves
    slots_in_use: int
    queued: int  # requests waiting for a slot
    leases: int  # requests and streams holding the model
    size_bytes: int  # the model file's weights
    kv_cache_bytes: int  # all slots' KV cache
    memory_bytes: int  # size_bytes + kv_cache_bytes + draft_bytes
    slot_tokens: list[int]  # tokens each slot's KV cache holds (in use or kept for reuse)
    slot_kv_bytes: list[int]  # the KV cache bytes those tokens take, per slot
    n_ctx: int  # context window per slot
    requests_total: int  # requests the engine has taken since the load
    tokens_generated: int
    capabilities: list[str]
    loaded_at: float | None  # wall-clock seconds since the epoch
    last_used: float  # wall-clock seconds since the epoch
    expires_at: float | None  # when the idle TTL unloads it (None: busy or never)
    # Speculative decoding: the draft model's file (None: none loaded), its weights and KV
    # cache, and the draft tokens verified and accepted since the load.
    draft_model: str | None = None
    draft_bytes: int = 0
    draft_tokens: int = 0
    draft_accepted: int = 0
    slot_states: list[SlotState] = field(default_factory=list)  # what each slot is doing
    # Memory (kronk.pool.memory): the estimate made before the load, by part, with its
    # "total" (None: the header could not be read); the process RSS growth measured over
    # the load (None: still loading); the host prompt cache's bytes and budget.
    memory_estimate: dict[str, int] | None = None
    memory_measured: int | None = None
    prompt_cache_bytes: int = 0
    prompt_cache_budget: int = 0


def loading_snapshot(entry: Entry, last_used: float) -> LoadedModel:
    """A model whose load has not finished."""
    resolved = entry.resolved
    size = resolved.path.stat().st_size if resolved.path.exists() else 0
    return LoadedModel(
        id=resolved.id,
        path=str(resolved.path),
        status="loading",
        progress=entry.progress,
        slots=0,
        slots_in_use=0,
        queued=0,
        leases=entry.leases,
        size_bytes=size,
        kv_cache_bytes=0,
        memory_bytes=size,
        slot_tokens=[],
        slot_kv_bytes=[],
        n_ctx=0,
        requests_total=0,
        tokens_generated=0,
        capabilities=[],
        loaded_at=None,
        last_used=last_used,
        expires_at=None,
        memory_estimate=entry.estimate.as_dict() if entry.estimate is not None else None,
    )


def ready_snapshot(entry: Entry, last_used: float, expires_at: float | None) -> LoadedModel:
    """A loaded model, with its engine's counters."""
    kronk = entry.kronk
    assert kronk is not None
    stats = kronk.stats()
    size = kronk.model.size_bytes
    draft = getattr(kronk, "draft_model", None)  # loaders in tests may lack it
    draft_bytes = draft.size_bytes + stats.draft_model_bytes if draft is not None else 0
    return LoadedModel(
        id=entry.resolved.id,
        path=str(entry.resolved.path),
        status="ready",
        progress=1.0,
        slots=stats.slots,
        slots_in_use=stats.slots_busy,
        queued=stats.queued,
        leases=entry.leases,
        size_bytes=size,
        kv_cache_bytes=stats.kv_cache_bytes,
        memory_bytes=size + stats.kv_cache_bytes + draft_bytes,
        slot_tokens=stats.slot_tokens,
        slot_kv_bytes=[int(n * stats.kv_bytes_per_token) for n in stats.slot_tokens],
        n_ctx=stats.n_ctx,
        requests_total=stats.requests_total,
        tokens_generated=stats.tokens_generated,
        capabilities=list(entry.capabilities),
        loaded_at=entry.loaded_at,
        last_used=last_used,
        expires_at=expires_at,
        draft_model=str(draft.path) if draft is not None else None,
        draft_bytes=draft_bytes,
        draft_tokens=stats.draft_tokens,
        draft_accepted=stats.draft_accepted,
        slot_states=stats.slot_states,
        memory_estimate=entry.estimate.as_dict() if entry.estimate is not None else None,
        memory_measured=entry.measured_bytes,
        prompt_cache_bytes=stats.prompt_cache_bytes,
        prompt_cache_budget=stats.prompt_cache_budget,
    )


__all__ = ["LoadedModel", "loading_snapshot", "ready_snapshot"]
