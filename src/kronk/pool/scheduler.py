"""The scheduler: which models are loaded, and who waits for what.

Requests name a model; the pool loads it on first use (in a worker thread, so the
event loop keeps serving). A load goes ahead when it fits: at most `models_max` models,
and their memory estimates (`kronk.pool.memory`) within `memory_budget`. To make room it
unloads the least recently used idle models; a model that can never fit the budget is
refused at once. When nothing can make room because every model is busy or loading, the
request waits in a bounded queue (`queue_size` requests, `queue_timeout` seconds each)
and then gets EngineBusyError. A model is never unloaded while a request or stream holds
a lease on it; it is unloaded once idle for `ttl_seconds`. Concurrent requests for a
model that is loading all wait for that one load, and share its failure.

Everything here runs on one asyncio event loop; only reading a header, the load itself
and `close()` of a model run in threads.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from kronk.errors import (
    ConfigError,
    EngineBusyError,
    EngineClosedError,
    InvalidRequestError,
    KronkError,
    ModelLoadError,
    ModelTooLargeError,
)
from kronk.models.resolver import ModelResolver, ResolvedModel
from kronk.pool.lease import Entry, ModelLease, load_options, with_draft_path
from kronk.pool.memory import (
    MemoryEstimate,
    default_budget,
    process_rss,
    size_text,
    too_large,
    try_estimate,
)
from kronk.pool.report import LoadedModel, loading_snapshot, ready_snapshot
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
class PoolMemory:
    """The pool's memory as `/api/ps` reports it."""

    budget: int  # 0: no limit
    planned: int  # the estimates of every loaded and loading model
    waiting: int  # requests queued for room


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
        memory_budget: int | None = None,
        queue_size: int = 64,
        queue_timeout: float = 300.0,
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
        `memory_budget`: bytes the loaded models' estimates may add up to (None: the RAM
        available now less a margin; 0: no limit). `queue_size` requests may wait up to
        `queue_timeout` seconds for room to load their model.
        `loader` and `clock` exist so tests can count loads and move time."""
        if models_max < 1:
            raise ValueError("models_max must be at least 1")
        if queue_size < 0 or queue_timeout < 0:
            raise ValueError("queue_size and queue_timeout must be >= 0")
        self.resolver = resolver
        self.models_max = models_max
        self.ttl_seconds = ttl_seconds if ttl_seconds is not None and ttl_seconds >= 0 else None
        self.load_defaults = dict(load_defaults or {})
        self.model_options = {k: dict(v) for k, v in (model_options or {}).items()}
        self.memory_budget = default_budget() if memory_budget is None else max(0, memory_budget)
        self.queue_size = queue_size
        self.queue_timeout = queue_timeout
        self._loader = loader
        self._clock = clock
        self._entries: dict[str, Entry] = {}
        # Header estimates under way, shared by everyone admitting the same model at once.
        self._estimating: dict[str, asyncio.Future[MemoryEstimate | None]] = {}
        self._listeners: list[PoolListener] = []
        self._closed = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._reaper: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._room = asyncio.Event()  # set (and replaced) whenever room may have appeared
        self._waiting = 0  # requests queued for room

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

        Raises ModelNotFoundError, ModelLoadError, ModelTooLargeError (it can never fit
        the memory budget), EngineBusyError (no room came within the queue's timeout, or
        the queue is full) or EngineClosedError (pool closing)."""
        self._start()
        if self._closed:
            raise EngineClosedError("the server is shutting down")
        resolved = self.resolver.resolve(name)
        entry = self._entries.get(resolved.id)
        if entry is None:
            entry = await self._admit(resolved)
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
        return ModelLease(entry, kronk, self._release, self._loop)

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

    def _release(self, entry: Entry) -> None:
        entry.leases -= 1
        entry.last_used = self._clock()
        if entry.leases == 0:
            self._wake.set()  # the reaper recomputes its next deadline
            self._room_changed()  # an idle model can be evicted for a waiting one

    def _room_changed(self) -> None:
        self._room.set()
        self._room = asyncio.Event()

    # -- admission: what fits, and the queue for room --------------------------------------

    async def _admit(self, resolved: ResolvedModel) -> Entry:
        """The entry for a model that is not in the pool: its load begun once room is made
        (shared with whoever asked meanwhile), after waiting in the queue if need be."""
        options = self._options_for(resolved)
        estimate = await self._estimate(resolved, options)
        deadline: float | None = None
        while True:
            entry = self._entries.get(resolved.id)  # someone else began it meanwhile
            if entry is not None:
                return entry
            if self._closed:
                raise EngineClosedError("the server is shutting down")
            needed = estimate.total if estimate is not None else 0
            if estimate is not None and self.memory_budget and needed > self.memory_budget:
                raise ModelTooLargeError(too_large(resolved.id, estimate, self.memory_budget))
            victims = self._make_room(needed)
            if victims is not None:  # no await since the check: the registration is atomic
                return self._begin_load(resolved, options, estimate, victims)
            if deadline is None:
                if self._waiting >= self.queue_size:
                    raise EngineBusyError(
                        f"server busy: {self._waiting} requests already wait for a model to "
                        f"load ({self._busy_reason()}); retry later, or raise --queue-size"
                    )
                deadline = time.monotonic() + self.queue_timeout
            await self._wait_for_room(resolved.id, deadline)

    async def _estimate(
        self, resolved: ResolvedModel, options: dict[str, Any]
    ) -> MemoryEstimate | None:
        """The model's memory estimate (read from its header in a worker thread), one for
        all callers admitting it at once. They resume in the order they asked, so the
        first registers the load before the others look and they all join it; with an
        estimate each, a load that failed fast could end before a later caller looked,
        and that caller would load again."""
        key = resolved.id
        future = self._estimating.get(key)
        if future is None:
            future = asyncio.ensure_future(asyncio.to_thread(try_estimate, resolved.path, options))
            self._estimating[key] = future
            future.add_done_callback(lambda _: self._estimating.pop(key, None))
        return await asyncio.shield(future)  # one caller giving up stops it for none

    async def _wait_for_room(self, model_id: str, deadline: float) -> None:
        remaining = deadline - time.monotonic()
        if remaining > 0:
            self._waiting += 1
            try:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._room.wait(), remaining)
            finally:
                self._waiting -= 1
        if time.monotonic() >= deadline:
            raise EngineBusyError(
                f"server busy: no room to load {model_id} within {self.queue_timeout:g} s "
                f"({self._busy_reason()}); retry later, or raise --models-max or --memory-budget"
            )

    def _busy_reason(self) -> str:
        busy = ", ".join(sorted(self._entries)) or "none"
        out = f"busy or loading: {busy}; {len(self._entries)} of {self.models_max} places"
        if self.memory_budget:
            used = sum(e.planned_bytes for e in self._entries.values())
            out += f", {size_text(used)} of the {size_text(self.memory_budget)} memory budget"
        return out

    def _make_room(self, needed: int) -> list[Entry] | None:
        """Take least recently used idle models out of the pool until one more of
        `needed` bytes fits; None (and nothing taken) when no choice of idle ones does."""
        idle = sorted(
            (e for e in self._entries.values() if e.leases == 0 and e.kronk is not None),
            key=lambda e: e.last_used,
        )
        count = len(self._entries) + 1
        used = sum(e.planned_bytes for e in self._entries.values()) + needed
        victims: list[Entry] = []
        for victim in idle:
            if count <= self.models_max and (not self.memory_budget or used <= self.memory_budget):
                break
            victims.append(victim)
            count -= 1
            used -= victim.planned_bytes
        if count > self.models_max or (self.memory_budget and used > self.memory_budget):
            return None
        for victim in victims:
            del self._entries[victim.resolved.id]
        return victims

    # -- loading and unloading -------------------------------------------------------------

    def _options_for(self, resolved: ResolvedModel) -> dict[str, Any]:
        """Kronk(...) keyword arguments for `resolved`: catalog < server < its own section,
        over the pool's queue timeout (a wait for a slot is bounded as one for room)."""
        own = self.model_options.get(resolved.id, {})
        pool = {"queue_timeout": self.queue_timeout}
        return with_draft_path(
            self.resolver,
            resolved.id,
            load_options(pool, resolved.load_options, self.load_defaults, own),
        )

    def _begin_load(
        self,
        resolved: ResolvedModel,
        options: dict[str, Any],
        estimate: MemoryEstimate | None,
        victims: list[Entry],
    ) -> Entry:
        entry = Entry(resolved, last_used=self._clock(), estimate=estimate)
        self._entries[resolved.id] = entry
        entry.task = asyncio.create_task(
            self._load(entry, options, victims), name=f"load {resolved.id}"
        )
        # Nobody may be waiting when it fails (all waiters gave up): don't warn about that.
        entry.task.add_done_callback(lambda t: t.cancelled() or t.exception())
        return entry

    async def _load(self, entry: Entry, kwargs: dict[str, Any], victims: list[Entry]) -> Kronk:
        model_id = entry.resolved.id
        try:
            for victim in victims:
                log.info("unloading %s to make room for %s", victim.resolved.id, model_id)
                await self._close_entry(victim)
            self._emit(PoolEvent("loading", model_id))
            log.info("loading %s from %s", model_id, entry.resolved.path)

            def on_progress(fraction: float) -> bool:
                entry.progress = fraction
                self._emit(PoolEvent("progress", model_id, progress=fraction))
                return not self._closed  # closing the pool cancels a load in flight

            def load() -> tuple[Kronk, int]:
                before = process_rss()
                kronk = self._loader(
                    entry.resolved.path, model_id=model_id, load_progress=on_progress, **kwargs
                )
                return kronk, max(0, process_rss() - before)

            try:
                with span("kronk.model_load", model=model_id, path=str(entry.resolved.path)):
                    kronk, entry.measured_bytes = await asyncio.to_thread(load)
            except TypeError as exc:  # a load option Kronk does not take
                raise ModelLoadError(f"bad load options for {model_id}: {exc}") from None
            except InvalidRequestError as exc:  # the server's settings, not the request
                raise ConfigError(f"the settings for {model_id} are invalid: {exc}") from None
        except BaseException as exc:
            if self._entries.get(model_id) is entry:
                del self._entries[model_id]
            self._room_changed()
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
        log.info(
            "loaded %s (%d slots, n_ctx %d; memory estimated %s, measured %s)",
            model_id,
            info.n_slots,
            info.n_ctx,
            size_text(entry.planned_bytes),
            size_text(entry.measured_bytes or 0),
        )
        self._emit(PoolEvent("loaded", model_id, progress=1.0, kronk=kronk))
        self._wake.set()
        self._room_changed()
        return kronk

    async def _close_entry(self, entry: Entry) -> None:
        kronk = entry.kronk
        entry.kronk = None
        if kronk is not None:
            await asyncio.to_thread(kronk.close)
            self._emit(PoolEvent("unloaded", entry.resolved.id))
            log.info("unloaded %s", entry.resolved.id)
        self._room_changed()

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

    def _ttl(self, entry: Entry) -> float | None:
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
            last_used = now_wall - (now - entry.last_used)
            if entry.kronk is None:
                out.append(loading_snapshot(entry, last_used))
                continue
            ttl = self._ttl(entry)
            expires = last_used + ttl if ttl is not None and entry.leases == 0 else None
            out.append(ready_snapshot(entry, last_used, expires))
        out.sort(key=lambda m: m.last_used, reverse=True)
        return out

    def memory(self) -> PoolMemory:
        """The budget, what the models in the pool are estimated to take, and who waits."""
        planned = sum(e.planned_bytes for e in self._entries.values())
        return PoolMemory(self.memory_budget, planned, self._waiting)

    def lease_count(self) -> int:
        """Leases held over all models (requests in flight)."""
        return sum(e.leases for e in self._entries.values())

    async def close(self) -> None:
        """Unload every model (running requests end as cancelled). Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._wake.set()
        self._room_changed()  # requests waiting for room give up now, not at their timeout
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


__all__ = ["ModelPool", "PoolEvent", "PoolListener", "PoolMemory"]
