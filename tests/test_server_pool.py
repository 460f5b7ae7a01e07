"""Mechanics of the model pool on tiny models: one load per model, LRU eviction that
never touches a leased model, the idle TTL, load failures, progress and stats."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from kronk import Kronk
from kronk.errors import (
    ConfigError,
    EngineBusyError,
    EngineClosedError,
    InvalidModelFileError,
    ModelNotFoundError,
)
from kronk.models.resolver import ResolvedModel, StaticResolver
from kronk.pool import ModelPool, PoolEvent
from support.tiny_gguf import write_not_gguf

FAST = {"n_threads": 1, "n_ctx": 128, "n_seq_max": 2}


class CountingLoader:
    """Kronk(...) that counts loads, records their kwargs, and can be held at a gate."""

    def __init__(self, gated: bool = False) -> None:
        self.calls: list[dict[str, Any]] = []
        self.gate = threading.Event()
        self.started = threading.Event()
        if not gated:
            self.gate.set()

    def __call__(self, path: Path, **kwargs: Any) -> Kronk:
        self.calls.append(kwargs)
        self.started.set()
        assert self.gate.wait(60), "test never opened the load gate"
        return Kronk(path, **kwargs)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def resolver_for(path: Path, *names: str, **options: Any) -> StaticResolver:
    return StaticResolver({n: ResolvedModel(id=n, path=path, load_options=options) for n in names})


def make_pool(path: Path, *names: str, **kwargs: Any) -> ModelPool:
    kwargs.setdefault("load_defaults", FAST)
    return ModelPool(resolver_for(path, *names), **kwargs)


async def until(check: Callable[[], bool], deadline_s: float = 60.0) -> None:
    """Poll the pool's real state (bounded), giving the loop its turns meanwhile."""
    deadline = time.monotonic() + deadline_s
    while not check():
        assert time.monotonic() < deadline, "the state never came"
        await asyncio.sleep(0.005)


def run(coro_fn: Callable[[], Any]) -> Any:
    return asyncio.run(coro_fn())


def test_concurrent_requests_share_one_load(tiny_llama_path: Path) -> None:
    loader = CountingLoader(gated=True)
    pool = make_pool(tiny_llama_path, "a", loader=loader)

    async def main() -> None:
        first = asyncio.create_task(pool.acquire("a"))
        second = asyncio.create_task(pool.acquire("a"))
        await asyncio.to_thread(loader.started.wait, 60)
        (loading,) = pool.loaded()
        assert loading.status == "loading"
        assert loading.leases == 2  # both waiters pin it
        loader.gate.set()
        lease1, lease2 = await asyncio.gather(first, second)
        assert lease1.kronk is lease2.kronk
        assert len(loader.calls) == 1
        lease1.release()
        lease2.release()
        await pool.close()

    run(main)


def test_a_waiter_that_gives_up_does_not_cancel_the_load(tiny_llama_path: Path) -> None:
    loader = CountingLoader(gated=True)
    pool = make_pool(tiny_llama_path, "a", loader=loader)

    async def main() -> None:
        impatient = asyncio.create_task(pool.acquire("a"))
        await asyncio.to_thread(loader.started.wait, 60)
        impatient.cancel()
        with pytest.raises(asyncio.CancelledError):
            await impatient
        loader.gate.set()
        async with pool.lease("a") as lease:
            assert lease.kronk.model_id == "a"
        assert len(loader.calls) == 1
        (model,) = pool.loaded()
        assert model.leases == 0
        await pool.close()

    run(main)


def test_least_recently_used_idle_model_is_evicted(tiny_llama_path: Path) -> None:
    events: list[PoolEvent] = []
    pool = make_pool(tiny_llama_path, "a", "b", "c", models_max=2)
    pool.add_listener(events.append)

    async def main() -> None:
        for name in ("a", "b", "a"):  # "b" is now the least recently used
            async with pool.lease(name):
                pass
        async with pool.lease("c"):
            assert {m.id for m in pool.loaded()} == {"a", "c"}
        await pool.close()

    run(main)
    unloaded = [e.model for e in events if e.kind == "unloaded"]
    assert unloaded[0] == "b"


def test_a_leased_model_is_never_evicted(tiny_llama_path: Path) -> None:
    pool = make_pool(tiny_llama_path, "a", "b", models_max=1, queue_timeout=0)

    async def main() -> None:
        held = await pool.acquire("a")
        # No wait allowed: busy at once, naming what holds the place and how to get more.
        with pytest.raises(EngineBusyError, match=r"busy or loading: a; 1 of 1 places.*models-max"):
            await pool.acquire("b")
        assert [m.id for m in pool.loaded()] == ["a"]
        held.release()
        async with pool.lease("b"):
            assert [m.id for m in pool.loaded()] == ["b"]
        await pool.close()

    run(main)


def test_a_request_waiting_for_room_loads_when_a_model_goes_idle(tiny_llama_path: Path) -> None:
    pool = make_pool(tiny_llama_path, "a", "b", "c", models_max=1, queue_size=1)

    async def main() -> None:
        held = await pool.acquire("a")
        waiter = asyncio.create_task(pool.acquire("b"))
        await until(lambda: pool.memory().waiting == 1)  # the waiter reaches the queue
        with pytest.raises(EngineBusyError, match=r"1 requests already wait.*--queue-size"):
            await pool.acquire("c")  # the queue holds one
        held.release()  # a is idle: evicted for b
        async with await waiter:
            assert [m.id for m in pool.loaded()] == ["b"]
        assert pool.memory().waiting == 0
        # Closing the pool ends a wait at once, not at its timeout.
        held = await pool.acquire("b")
        waiter = asyncio.create_task(pool.acquire("a"))
        await until(lambda: pool.memory().waiting == 1)
        await pool.close()
        with pytest.raises(EngineClosedError):
            await waiter
        held.release()

    run(main)


def test_idle_ttl_unloads_only_idle_models(tiny_llama_path: Path) -> None:
    clock = FakeClock()
    pool = make_pool(tiny_llama_path, "a", "b", ttl_seconds=10, clock=clock)

    async def main() -> None:
        async with pool.lease("a"):
            pass
        held = await pool.acquire("b")
        clock.now += 5
        assert await pool.reap() == []
        clock.now += 6
        assert await pool.reap() == ["a"]  # b is busy: its age does not matter
        assert [m.id for m in pool.loaded()] == ["b"]
        held.release()
        clock.now += 9
        assert await pool.reap() == []
        clock.now += 1
        assert await pool.reap() == ["b"]
        assert pool.loaded() == []
        await pool.close()

    run(main)


def test_background_reaper_unloads_after_the_ttl(tiny_llama_path: Path) -> None:
    pool = make_pool(tiny_llama_path, "a", ttl_seconds=0)

    async def main() -> None:
        unloaded = asyncio.Event()
        loop = asyncio.get_running_loop()
        pool.add_listener(
            lambda e: loop.call_soon_threadsafe(unloaded.set) if e.kind == "unloaded" else None
        )
        async with pool.lease("a"):
            (model,) = pool.loaded()
            assert model.expires_at is None  # busy: no expiry
        await asyncio.wait_for(unloaded.wait(), 30)
        assert pool.loaded() == []
        await pool.close()

    run(main)


def test_negative_ttl_keeps_models_loaded(tiny_llama_path: Path) -> None:
    clock = FakeClock()
    pool = make_pool(tiny_llama_path, "a", ttl_seconds=-1, clock=clock)

    async def main() -> None:
        async with pool.lease("a"):
            pass
        clock.now += 10**9
        assert await pool.reap() == []
        assert pool.loaded()[0].expires_at is None
        await pool.close()

    run(main)


def test_load_failure_reaches_every_waiter_and_is_retried(tmp_path: Path) -> None:
    bad = write_not_gguf(tmp_path / "bad.gguf")
    events: list[PoolEvent] = []
    pool = make_pool(bad, "bad")
    pool.add_listener(events.append)

    async def main() -> None:
        # Several rounds: the file fails within microseconds, and both callers must still
        # share one load (they share the header estimate that comes before it).
        for _ in range(10):
            results = await asyncio.gather(
                pool.acquire("bad"), pool.acquire("bad"), return_exceptions=True
            )
            assert all(isinstance(r, InvalidModelFileError) for r in results)
        assert pool.loaded() == []
        with pytest.raises(InvalidModelFileError):
            await pool.acquire("bad")  # a new attempt, not a cached failure
        await pool.close()

    run(main)
    assert [e.kind for e in events].count("failed") == 11


def test_unknown_model_and_closed_pool(tiny_llama_path: Path) -> None:
    pool = make_pool(tiny_llama_path, "a")

    async def main() -> None:
        with pytest.raises(ModelNotFoundError) as info:
            await pool.acquire("nope")
        assert info.value.model == "nope"
        async with pool.lease("a"):
            pass
        await pool.close()
        assert pool.loaded() == []
        with pytest.raises(EngineClosedError):
            await pool.acquire("a")

    run(main)


def test_progress_events_and_server_flags_over_catalog_options(tiny_llama_path: Path) -> None:
    events: list[PoolEvent] = []
    resolver = resolver_for(tiny_llama_path, "a", n_ctx=96, n_seq_max=3, n_threads=1)
    pool = ModelPool(resolver, load_defaults={"n_seq_max": 2})
    pool.add_listener(events.append)

    async def main() -> None:
        async with pool.lease("a"):
            (model,) = pool.loaded()
            assert model.slots == 2  # the server's flag beats the catalog's 3
            assert model.n_ctx == 96  # the catalog's value where the server set none
            assert model.memory_bytes == model.size_bytes + model.kv_cache_bytes
            assert model.kv_cache_bytes > 0
            assert "chat" in model.capabilities
        await pool.close()

    run(main)
    kinds = [e.kind for e in events]
    assert kinds[0] == "loading"
    assert kinds.index("loaded") > kinds.index("loading")
    progress = [e.progress for e in events if e.kind == "progress"]
    assert progress and progress == sorted(progress) and progress[-1] == 1.0
    loaded = next(e for e in events if e.kind == "loaded")
    assert loaded.kronk is not None


def test_a_models_own_settings_beat_the_servers_and_bad_ones_are_a_config_error(
    tiny_llama_path: Path,
) -> None:
    resolver = resolver_for(tiny_llama_path, "a", "b", n_ctx=96, n_threads=1)
    pool = ModelPool(
        resolver,
        load_defaults={"n_seq_max": 2},
        model_options={"a": {"n_seq_max": 3}, "b": {"sampling_defaults": {"temperature": -1}}},
    )

    async def main() -> None:
        async with pool.lease("a"):
            (model,) = pool.loaded()
            assert model.slots == 3  # the model's own setting beats the server's 2
            assert model.n_ctx == 96
        with pytest.raises(ConfigError, match=r"settings for b are invalid.*temperature"):
            async with pool.lease("b"):
                pass
        await pool.close()

    run(main)


def test_stats_count_slots_in_use(tiny_llama_path: Path) -> None:
    pool = make_pool(tiny_llama_path, "a")

    async def main() -> None:
        async with pool.lease("a") as lease:
            stream = lease.kronk.achat_stream(
                [{"role": "user", "content": "hi"}], max_tokens=64, ignore_eos=True
            )
            await anext(stream)
            (busy,) = pool.loaded()
            await stream.aclose()
            (idle,) = pool.loaded()
        assert busy.leases == 1
        assert idle.slots_in_use == 0
        assert pool.loaded()[0].leases == 0
        await pool.close()

    run(main)
