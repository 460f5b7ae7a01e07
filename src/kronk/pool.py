"""The model pool: which models are loaded, for whom, and for how long.

Requests name a model; the pool loads it on first use (in a worker thread, so the
event loop keeps serving), keeps at most `models_max` loaded, evicts the least
recently used idle one to make room, and unloads a model once it has been idle for
`ttl_seconds`. A model is never unloaded while a request or stream holds a lease on
it. Concurrent requests for a model that is loading all wait for that one load.

Everything here runs on one asyncio event loop; only the load itself and `close()`
of a model run in threads.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from kronk.engine.config import SlotState
from kronk.errors import (
    ConfigError,
    EngineBusyError,
    EngineClosedError,
    InvalidRequestError,
    KronkError,
    ModelLoadError,
)
from kronk.models.catalog import Catalog
from kronk.models.resolver import ModelResolver, ResolvedModel
from kronk.sdk import Kronk
from kronk.telemetry.tracing import span

log = logging.getLogger("kronk.pool")

PoolEventKind = Literal["loading", "progress", "loaded", "failed", "unloaded"]


@dataclass(frozen=True)
class PoolEvent:
    """Something happened to a model in the pool.

    `progress` events arrive from the loader thread; the others on the event loop.
    """

    kind: PoolEventKind
    model: str
    progress: float = 0.0  # load progress in [0, 1]
    error: str | None = None  # for "failed"
    kronk: Kronk | None = None  # the loaded model, for "loaded"


PoolListener = Callable[[PoolEvent], None]
KronkLoader = Callable[..., Kronk]


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


@dataclass(eq=False)
class _Entry:
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


class ModelLease:
    """A hold on a loaded model; release it (or leave `async with`) when done.

    While any lease is held, the pool neither evicts nor TTL-unloads the model.
    """

    def __init__(self, pool: ModelPool, entry: _Entry, kronk: Kronk) -> None:
        self._pool = pool
        self._entry = entry
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
            self._pool._release(self._entry)

    async def __aenter__(self) -> ModelLease:
        return self

    async def __aexit__(self, *_: object) -> None:
        self.release()

    def __del__(self) -> None:
        # A lease lost without release() would pin the model forever; the pool's
        # bookkeeping is loop-only, so hand the release to the loop.
        if not getattr(self, "_released", True):
            loop = self._pool._loop
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


class ModelPool:
    """Loads models on demand and shares them between requests."""

    def __init__(
        self,
        resolver: ModelResolver,
        *,
        models_max: int = 3,
        ttl_seconds: float | None = 300.0,
        load_defaults: Mapping[str, Any] | None = None,
        model_options: Mapping[str, Mapping[str, Any]] | None = None,
        loader: KronkLoader = Kronk,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """`ttl_seconds`: idle time before a model is unloaded; 0 unloads as soon as the
        last lease goes, None or a negative value keeps models until evicted.
        `load_defaults` are Kronk(...) keyword arguments from the server's own settings
        (n_ctx, n_seq_max, n_threads, ...); they override a catalog entry's
        `load_options`, because a flag the user typed beats a catalog's suggestion.
        `model_options` (model id -> Kronk(...) keyword arguments) beat both for their
        model; `sampling_defaults` merge key by key at every level.
        `loader` and `clock` exist so tests can count loads and move time."""
        if models_max < 1:
            raise ValueError("models_max must be at least 1")
        self.resolver = resolver
        self.models_max = models_max
        self.ttl_seconds = ttl_seconds if ttl_seconds is not None and ttl_seconds >= 0 else None
        self.load_defaults = dict(load_defaults or {})
        self.model_options = {k: dict(v) for k, v in (model_options or {}).items()}
        self._loader = loader
        self._clock = clock
        self._entries: dict[str, _Entry] = {}
        self._listeners: list[PoolListener] = []
        self._closed = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._reaper: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._unloading: set[asyncio.Task[None]] = set()

    # -- listeners -------------------------------------------------------------------------

    def add_listener(self, listener: PoolListener) -> Callable[[], None]:
        """Call `listener` for every PoolEvent; returns a function that removes it.
        Listeners must be quick and thread-safe ("progress" comes from the loader)."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener) if listener in self._listeners else None

    def _emit(self, event: PoolEvent) -> None:
        for listener in list(self._listeners):
            try:
                listener(event)
            except Exception:
                log.exception("pool listener failed on %s", event.kind)

    # -- using models ----------------------------------------------------------------------

    def resolve(self, name: str) -> ResolvedModel:
        """The model `name` stands for (ModelNotFoundError if none)."""
        return self.resolver.resolve(name)

    def available(self) -> list[ResolvedModel]:
        return self.resolver.available()

    async def acquire(self, name: str) -> ModelLease:
        """Lease model `name`, loading it first if needed (shared with concurrent callers).

        Raises ModelNotFoundError, ModelLoadError, EngineBusyError (every loaded model is
        busy and there is no room for another) or EngineClosedError (pool closing)."""
        self._start()
        if self._closed:
            raise EngineClosedError("the server is shutting down")
        resolved = self.resolver.resolve(name)
        entry = self._entries.get(resolved.id)
        if entry is None:
            entry = self._begin_load(resolved)
        entry.leases += 1  # pins it while we wait, so nobody evicts it under us
        try:
            if entry.kronk is not None:
                kronk = entry.kronk
            else:
                assert entry.task is not None
                # shield: a caller that gives up must not cancel the load for the others
                kronk = await asyncio.shield(entry.task)
        except BaseException:
            self._release(entry)
            raise
        entry.last_used = self._clock()
        return ModelLease(self, entry, kronk)

    @contextlib.asynccontextmanager
    async def lease(self, name: str) -> AsyncIterator[ModelLease]:
        """`async with pool.lease("qwen") as lease: await lease.kronk.achat(...)`."""
        held = await self.acquire(name)
        try:
            yield held
        finally:
            held.release()

    async def load(self, name: str) -> ResolvedModel:
        """Load `name` now (e.g. at server start) without keeping a lease on it."""
        async with self.lease(name) as held:
            return held.resolved

    def _release(self, entry: _Entry) -> None:
        entry.leases -= 1
        entry.last_used = self._clock()
        if entry.leases == 0:
            self._wake.set()  # the reaper recomputes its next deadline

    # -- loading and unloading -------------------------------------------------------------

    def _begin_load(self, resolved: ResolvedModel) -> _Entry:
        # Runs without awaiting, so the capacity check and the registration are atomic.
        victims = self._make_room()
        entry = _Entry(resolved, last_used=self._clock())
        self._entries[resolved.id] = entry
        entry.task = asyncio.create_task(self._load(entry, victims), name=f"load {resolved.id}")
        # Nobody may be waiting when it fails (all waiters gave up): don't warn about that.
        entry.task.add_done_callback(lambda t: t.cancelled() or t.exception())
        return entry

    def _make_room(self) -> list[_Entry]:
        """Take least recently used idle models out of the pool until one more fits."""
        excess = len(self._entries) + 1 - self.models_max
        if excess <= 0:
            return []
        idle = sorted(
            (e for e in self._entries.values() if e.leases == 0 and e.kronk is not None),
            key=lambda e: e.last_used,
        )
        if len(idle) < excess:
            busy = ", ".join(sorted(self._entries))
            raise EngineBusyError(
                f"all {self.models_max} model places are in use ({busy}); retry when one is "
                "idle, or raise --models-max"
            )
        victims = idle[:excess]
        for victim in victims:
            del self._entries[victim.resolved.id]
        return victims

    async def _load(self, entry: _Entry, victims: list[_Entry]) -> Kronk:
        model_id = entry.resolved.id
        try:
            for victim in victims:
                log.info("unloading %s to make room for %s", victim.resolved.id, model_id)
                await self._close_entry(victim)
            kwargs = self._with_draft_path(
                model_id,
                load_options(
                    entry.resolved.load_options,
                    self.load_defaults,
                    self.model_options.get(model_id, {}),
                ),
            )
            self._emit(PoolEvent("loading", model_id))
            log.info("loading %s from %s", model_id, entry.resolved.path)

            def on_progress(fraction: float) -> bool:
                entry.progress = fraction
                self._emit(PoolEvent("progress", model_id, progress=fraction))
                return not self._closed  # closing the pool cancels a load in flight

            try:
                with span("kronk.model_load", model=model_id, path=str(entry.resolved.path)):
                    kronk = await asyncio.to_thread(
                        self._loader,
                        entry.resolved.path,
                        model_id=model_id,
                        load_progress=on_progress,
                        **kwargs,
                    )
            except TypeError as exc:  # a load option Kronk does not take
                raise ModelLoadError(f"bad load options for {model_id}: {exc}") from None
            except InvalidRequestError as exc:  # the server's settings, not the request
                raise ConfigError(f"the settings for {model_id} are invalid: {exc}") from None
        except BaseException as exc:
            if self._entries.get(model_id) is entry:
                del self._entries[model_id]
            message = str(exc) or type(exc).__name__
            self._emit(PoolEvent("failed", model_id, error=message))
            if not isinstance(exc, KronkError | asyncio.CancelledError):
                log.exception("loading %s failed", model_id)
                raise ModelLoadError(f"loading {model_id} failed: {message}") from exc
            raise
        if self._closed:  # closed while loading: don't leak it
            await asyncio.to_thread(kronk.close)
            raise EngineClosedError("the server is shutting down")
        info = kronk.model_info()
        entry.kronk = kronk
        entry.capabilities = list(info.capabilities)
        entry.progress = 1.0
        entry.loaded_at = time.time()
        entry.last_used = self._clock()
        log.info("loaded %s (%d slots, n_ctx %d)", model_id, info.n_slots, info.n_ctx)
        self._emit(PoolEvent("loaded", model_id, progress=1.0, kronk=kronk))
        self._wake.set()
        return kronk

    def _with_draft_path(self, model_id: str, kwargs: dict[str, Any]) -> dict[str, Any]:
        """A `draft_model` given as a model id (config.yaml's, --draft-model) becomes that
        model's file; a path stays a path. `speculative: draft` without one takes the one
        the catalog names for the model; `off` loads none."""
        mode = str(kwargs.get("speculative", "auto")).lower()
        if mode in ("off", "false"):
            return {k: v for k, v in kwargs.items() if k != "draft_model"}
        draft = kwargs.get("draft_model")
        catalog = getattr(self.resolver, "catalog", None)  # a ModelStore has one
        if draft is None and mode == "draft" and isinstance(catalog, Catalog):
            draft = catalog.draft_model_of(model_id)
        if draft is None or draft == model_id:  # a model never drafts for itself
            return {k: v for k, v in kwargs.items() if k != "draft_model"}
        path = Path(str(draft)).expanduser()
        if path.suffix.lower() != ".gguf" or not path.is_file():
            path = self.resolver.resolve(str(draft)).path  # ModelNotFoundError names the pull
        return {**kwargs, "draft_model": path}

    async def _close_entry(self, entry: _Entry) -> None:
        kronk = entry.kronk
        entry.kronk = None
        if kronk is not None:
            await asyncio.to_thread(kronk.close)
            self._emit(PoolEvent("unloaded", entry.resolved.id))
            log.info("unloaded %s", entry.resolved.id)

    async def unload(self, name: str) -> bool:
        """Unload model `name` if it is loaded and idle. Returns whether it was unloaded."""
        try:
            model_id = self.resolver.resolve(name).id
        except KronkError:
            model_id = name
        entry = self._entries.get(model_id)
        if entry is None or entry.leases > 0 or entry.kronk is None:
            return False
        del self._entries[model_id]
        await self._close_entry(entry)
        return True

    def keep_alive(self, name: str, seconds: float | None) -> bool:
        """Keep model `name` loaded for `seconds` of idle time from now on (0: unload once
        idle; negative: for ever; None: the pool's ttl_seconds again). False if it is not
        loaded or loading."""
        try:
            model_id = self.resolver.resolve(name).id
        except KronkError:
            model_id = name
        entry = self._entries.get(model_id)
        if entry is None:
            return False
        entry.ttl = math.inf if seconds is not None and seconds < 0 else seconds
        self._wake.set()  # the reaper recomputes its next deadline
        return True

    def _ttl(self, entry: _Entry) -> float | None:
        if entry.ttl is None:
            return self.ttl_seconds
        return entry.ttl if math.isfinite(entry.ttl) else None

    async def reap(self) -> list[str]:
        """Unload every idle model whose TTL has run out; returns their ids."""
        now = self._clock()
        expired = [
            e
            for e in self._entries.values()
            if e.kronk is not None
            and e.leases == 0
            and (ttl := self._ttl(e)) is not None
            and now - e.last_used >= ttl
        ]
        for entry in expired:
            del self._entries[entry.resolved.id]
        for entry in expired:
            await self._close_entry(entry)
        return [e.resolved.id for e in expired]

    def _next_expiry(self) -> float | None:
        deadlines = [
            e.last_used + ttl
            for e in self._entries.values()
            if e.kronk is not None and e.leases == 0 and (ttl := self._ttl(e)) is not None
        ]
        return min(deadlines, default=None)

    def _start(self) -> None:
        if self._reaper is None and not self._closed:
            self._loop = asyncio.get_running_loop()
            self._reaper = asyncio.create_task(self._reap_forever(), name="kronk pool reaper")

    async def _reap_forever(self) -> None:
        while not self._closed:
            deadline = self._next_expiry()
            self._wake.clear()
            timeout = None if deadline is None else max(0.0, deadline - self._clock())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)
            if self._closed:
                return
            try:
                await self.reap()
            except Exception:
                log.exception("unloading idle models failed")

    # -- reporting and shutdown ------------------------------------------------------------

    def loaded(self) -> list[LoadedModel]:
        """Every model that is loaded or loading, most recently used first."""
        out: list[LoadedModel] = []
        now_wall, now = time.time(), self._clock()
        for entry in self._entries.values():
            resolved = entry.resolved
            last_used_wall = now_wall - (now - entry.last_used)
            if entry.kronk is None:
                size = resolved.path.stat().st_size if resolved.path.exists() else 0
                out.append(
                    LoadedModel(
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
                        last_used=last_used_wall,
                        expires_at=None,
                    )
                )
                continue
            stats = entry.kronk.stats()
            size = entry.kronk.model.size_bytes
            draft = getattr(entry.kronk, "draft_model", None)  # loaders in tests may lack it
            draft_bytes = draft.size_bytes + stats.draft_model_bytes if draft is not None else 0
            expires = None
            ttl = self._ttl(entry)
            if ttl is not None and entry.leases == 0:
                expires = last_used_wall + ttl
            out.append(
                LoadedModel(
                    id=resolved.id,
                    path=str(resolved.path),
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
                    last_used=last_used_wall,
                    expires_at=expires,
                    draft_model=str(draft.path) if draft is not None else None,
                    draft_bytes=draft_bytes,
                    draft_tokens=stats.draft_tokens,
                    draft_accepted=stats.draft_accepted,
                    slot_states=stats.slot_states,
                )
            )
        out.sort(key=lambda m: m.last_used, reverse=True)
        return out

    def lease_count(self) -> int:
        """Leases held over all models (requests in flight)."""
        return sum(e.leases for e in self._entries.values())

    async def close(self) -> None:
        """Unload every model (running requests end as cancelled). Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._wake.set()
        if self._reaper is not None:
            self._reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reaper
        entries = list(self._entries.values())
        self._entries.clear()
        for entry in entries:
            if entry.task is not None and not entry.task.done():
                with contextlib.suppress(BaseException):
                    await entry.task
            await self._close_entry(entry)


__all__ = ["LoadedModel", "ModelLease", "ModelPool", "PoolEvent", "PoolListener"]
