"""The pool loads by memory: the estimate made from a GGUF header against real loads, an
idle model evicted to make room under a small budget, a model that can never fit
refused in each protocol's shape, and the host prompt cache held to its budget."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
from pathlib import Path

import anthropic
import httpx
import openai
import pytest

from kronk import Kronk
from kronk.errors import ModelTooLargeError
from kronk.models.resolver import ResolvedModel, StaticResolver
from kronk.pool import ModelPool, PoolEvent, estimate_memory
from support.live_server import live_server

TINY = {"n_ctx": 256, "n_seq_max": 2, "n_threads": 1}

# Loads a model in a fresh process, runs a prefill of a full micro-batch (the most the
# compute buffers are touched), and prints the RSS growth: what the estimate is fitted to.
_MEASURE = """
import json, sys
from kronk import Kronk
def rss():
    with open("/proc/self/statm") as f:
        import os
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
before = rss()
k = Kronk(sys.argv[1], **json.loads(sys.argv[2]))
k.complete(" ".join(f"w{i}" for i in range(int(sys.argv[3]))), max_tokens=2, temperature=0)
print(rss() - before)
"""


def measured_rss(path: Path, options: dict[str, object], words: int) -> int:
    out = subprocess.run(
        [sys.executable, "-c", _MEASURE, str(path), json.dumps(options), str(words)],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    return int(out.stdout.strip().splitlines()[-1])


def test_the_estimate_is_within_10_percent_of_a_real_load(default_model_path: Path) -> None:
    options = {"n_ctx": 4096, "n_seq_max": 4, "n_threads": 2, "speculative": "off"}
    estimate = estimate_memory(default_model_path, options)
    real = measured_rss(default_model_path, options, words=400)  # about 800 tokens
    without_cache = estimate.total - estimate.prompt_cache  # the prompt cache starts empty
    assert abs(without_cache - real) <= 0.10 * real, (estimate, real)
    assert estimate.prompt_cache == 2**30  # the SDK's default budget, counted in full


def test_the_tiny_models_estimate_is_within_8_mib(tiny_llama_path: Path) -> None:
    options = {**TINY, "prompt_cache_bytes": 0}
    estimate = estimate_memory(tiny_llama_path, options)
    real = measured_rss(tiny_llama_path, options, words=20)
    assert estimate.prompt_cache == 0
    assert abs(estimate.total - real) <= 8 * 2**20, (estimate, real)


def test_weights_and_kv_cache_match_what_llama_cpp_allocates(tiny_llama_path: Path) -> None:
    # llama.cpp pads the whole cache, then each slot's stream, to 256 cells: 300 x 3 ->
    # 1024 / 3 = 341 -> 512 a slot.
    for n_ctx, n_seq, cache, cells in ((256, 2, "f16", 512), (300, 3, "f32", 1536)):
        options = {
            "n_ctx": n_ctx,
            "n_seq_max": n_seq,
            "cache_type_k": cache,
            "cache_type_v": "f16",
            "n_threads": 1,
        }
        estimate = estimate_memory(tiny_llama_path, options)
        with Kronk(tiny_llama_path, **options) as kronk:  # type: ignore[arg-type]
            stats = kronk.stats()
            assert estimate.weights == kronk.model.size_bytes
            assert stats.kv_cache_bytes == cells * stats.kv_bytes_per_token
            assert estimate.kv_cache == stats.kv_cache_bytes


def resolver(path: Path, *names: str) -> StaticResolver:
    return StaticResolver({n: ResolvedModel(id=n, path=path) for n in names})


def test_an_idle_model_is_evicted_to_fit_the_budget(tiny_llama_path: Path) -> None:
    one = estimate_memory(tiny_llama_path, {**TINY, "prompt_cache_bytes": 0}).total
    # Room for one model, though models_max would allow three.
    pool = ModelPool(
        resolver(tiny_llama_path, "a", "b"),
        models_max=3,
        memory_budget=one + one // 2,
        load_defaults={**TINY, "prompt_cache_bytes": 0},
    )
    events: list[PoolEvent] = []
    pool.add_listener(events.append)

    async def main() -> None:
        async with pool.lease("a"):
            assert pool.memory().planned == one
        async with pool.lease("b"):
            assert [m.id for m in pool.loaded()] == ["b"]
            (b,) = pool.loaded()
            assert b.memory_estimate is not None and b.memory_estimate["total"] == one
            assert b.memory_measured is not None
        await pool.close()

    asyncio.run(main())
    kinds = [(e.kind, e.model) for e in events if e.kind != "progress"]
    assert kinds[:5] == [
        ("loading", "a"),
        ("loaded", "a"),
        ("unloaded", "a"),  # before b started loading: never both in memory
        ("loading", "b"),
        ("loaded", "b"),
    ]


def test_a_model_that_can_never_fit_is_refused_in_every_protocol(tiny_llama_path: Path) -> None:
    budget = 2**20  # 1 MiB: less than the 1 GiB prompt cache alone
    with live_server(
        {"tiny": tiny_llama_path},
        load_defaults={"n_ctx": 256},
        settings_extra={"memory_budget": budget},
    ) as srv:
        with pytest.raises(openai.BadRequestError) as oa:
            srv.openai().chat.completions.create(
                model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=2
            )
        with pytest.raises(anthropic.BadRequestError) as an:
            srv.anthropic().messages.create(
                model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=2
            )
        with srv.http() as http:
            ollama = http.post("/api/generate", json={"model": "tiny", "prompt": "hi"})
            ps = http.get("/api/ps").json()

    message = oa.value.body["message"]  # type: ignore[index]
    assert oa.value.code == "model_too_large" and oa.value.body["param"] == "model"  # type: ignore[index]
    assert re.search(
        r"tiny needs an estimated 1\.\d\d GiB \(weights .*prompt cache 1\.00 GiB\), more than "
        r"the memory budget of 1 MiB; lower its ctx-size, parallel or prompt-cache-size",
        message,
    )
    assert an.value.status_code == 400
    assert an.value.body["error"] == {"type": "invalid_request_error", "message": message}  # type: ignore[index]
    assert (ollama.status_code, ollama.json()) == (400, {"error": message})
    assert ps["models"] == [] and ps["memory"] == {"budget": budget, "planned": 0, "waiting": 0}


def test_a_pool_refuses_before_loading_anything(tiny_llama_path: Path) -> None:
    pool = ModelPool(resolver(tiny_llama_path, "a"), memory_budget=2**20, load_defaults=TINY)
    loads: list[PoolEvent] = []
    pool.add_listener(loads.append)

    async def main() -> None:
        with pytest.raises(ModelTooLargeError, match="more than the memory budget of 1 MiB"):
            await pool.acquire("a")
        await pool.close()

    asyncio.run(main())
    assert loads == []


def words(seed: int, n: int) -> str:
    return " ".join(f"t{seed}x{i}" for i in range(n))


def test_the_prompt_cache_stays_within_its_budget(tiny_llama_path: Path) -> None:
    budget = 96 * 1024
    defaults = {"n_ctx": 512, "n_seq_max": 1, "prompt_cache_bytes": budget}
    with live_server({"tiny": tiny_llama_path}, load_defaults=defaults, preload="tiny") as srv:
        client = srv.openai()
        seen: list[int] = []
        with srv.http() as http:
            for seed in range(12):  # each prompt pushes the one before out of the only slot
                client.completions.create(model="tiny", prompt=words(seed, 60), max_tokens=1)
                (model,) = http.get("/api/ps").json()["models"]
                seen.append(model["prompt_cache_bytes"])
            metrics = http.get("/metrics").text

    assert model["prompt_cache_budget"] == budget
    assert 0 < max(seen) <= budget
    assert seen[-1] == max(seen)  # full, and evicting: never above the budget
    gauge = re.search(r'kronk_prompt_cache_host_bytes\{model="tiny"\} (\S+)', metrics)
    assert gauge is not None and float(gauge.group(1)) == seen[-1]
    limit = re.search(r'kronk_prompt_cache_budget_bytes\{model="tiny"\} (\S+)', metrics)
    assert limit is not None and float(limit.group(1)) == budget


def test_memory_settings_from_the_config_file_reach_the_pool(tmp_path: Path) -> None:
    from kronk.server.settings import ServerSettings

    (tmp_path / "config.yaml").write_text(
        "server:\n  prompt-cache-size: 256MiB\n  memory-budget: 8GiB\n  queue-timeout: 5\n"
        "models:\n  big:\n    prompt-cache-size: 0\n"
    )
    settings = ServerSettings.load({"home": tmp_path}, environ={"KRONK_QUEUE_SIZE": "3"})
    pool = settings.pool_options()
    assert pool["memory_budget"] == 8 * 2**30
    assert (pool["queue_size"], pool["queue_timeout"]) == (3, 5.0)
    assert pool["load_defaults"]["prompt_cache_bytes"] == 256 * 2**20
    assert pool["model_options"]["big"] == {"prompt_cache_bytes": 0}
    with pytest.raises(Exception, match="memory_budget from --memory-budget"):
        ServerSettings.load({"home": tmp_path, "memory_budget": "lots"}, environ={})


def test_ps_reports_the_pool_memory_over_http(tiny_llama_path: Path) -> None:
    with live_server(
        {"tiny": tiny_llama_path}, load_defaults={"n_ctx": 256}, preload="tiny"
    ) as srv:
        ps = httpx.get(f"{srv.base_url}/api/ps", timeout=30).json()
    (model,) = ps["models"]
    assert ps["memory"]["planned"] == model["size"] == model["memory_estimate"]["total"]
    assert ps["memory"]["budget"] > model["size"] and ps["memory"]["waiting"] == 0
    assert model["size_vram"] == 0
