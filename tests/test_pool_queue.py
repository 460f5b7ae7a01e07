"""Waiting instead of refusing: a request for a slot or for room to load its model waits
in a bounded queue, completes when room comes, and gets 503 (Anthropic: 529) with
Retry-After when the queue is full or its wait times out; concurrent first requests for
a model share one load, and a failed load fails them all alike.

A model that stays busy needs the real default model (tens of tokens a second here) on
a long `ignore_eos` answer; every wait is synchronised on /api/ps, never on sleeps.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import pytest

from support.live_server import LiveServer, live_server
from support.tiny_gguf import write_not_gguf

DEADLINE_S = 120.0
HOLD = {
    "model": "qwen",
    "messages": [{"role": "user", "content": "Count from 1 to 10000."}],
    "max_tokens": 200,  # 5-20 s here: longer than any check made while it runs
    "ignore_eos": True,
    "temperature": 0,
    "stream": True,
}
HI = [{"role": "user", "content": "hi"}]


def ps(srv: LiveServer) -> dict[str, Any]:
    with srv.http() as http:
        return dict(http.get("/api/ps").json())


def wait_for(srv: LiveServer, what: str, check: Callable[[dict[str, Any]], bool]) -> None:
    """Poll /api/ps (bounded) until `check` holds."""
    deadline = time.monotonic() + DEADLINE_S
    while not check(state := ps(srv)):
        assert time.monotonic() < deadline, f"never {what}: {state}"
        time.sleep(0.02)


@contextmanager
def holding(srv: LiveServer) -> Iterator[None]:
    """A stream of HOLD_TOKENS on `qwen`, read until its first content: it holds a slot
    and a lease inside the block, and is read to its end when the block ends (so the
    model becomes idle by finishing, not by a disconnect)."""
    with (
        httpx.Client(base_url=srv.base_url, timeout=DEADLINE_S) as http,
        http.stream("POST", "/v1/chat/completions", json=HOLD) as resp,
    ):
        assert resp.status_code == 200
        lines = resp.iter_lines()  # held: dropping it would close the connection
        for line in lines:
            if line.startswith("data: ") and '"content"' in line:
                break
        yield
        assert [line for line in lines if line][-1] == "data: [DONE]"


def assert_busy_everywhere(srv: LiveServer, model: str, message: str) -> None:
    """OpenAI and Ollama answer 503, Anthropic 529 overloaded_error; all with Retry-After."""
    with pytest.raises(openai.InternalServerError) as oa:
        srv.openai().chat.completions.create(model=model, messages=HI, max_tokens=1)  # type: ignore[arg-type]
    assert oa.value.status_code == 503 and oa.value.code == "server_busy"
    assert oa.value.response.headers["retry-after"] == "1"
    assert re.search(message, oa.value.message)
    with pytest.raises(anthropic.APIStatusError) as an:
        srv.anthropic().messages.create(model=model, messages=HI, max_tokens=1)  # type: ignore[arg-type]
    assert an.value.status_code == 529 and an.value.response.headers["retry-after"] == "1"
    assert an.value.body["error"]["type"] == "overloaded_error"  # type: ignore[index]
    with srv.http() as http:
        ollama = http.post("/api/generate", json={"model": model, "prompt": "hi", "stream": False})
    assert ollama.status_code == 503 and ollama.headers["retry-after"] == "1"
    assert re.search(message, ollama.json()["error"])


def test_a_request_waits_for_the_slot_and_one_past_the_queue_gets_503(
    default_model_path: Path,
) -> None:
    defaults = {"n_ctx": 2048, "n_seq_max": 1, "max_queue": 1}
    with (
        live_server({"qwen": default_model_path}, load_defaults=defaults, preload="qwen") as srv,
        concurrent.futures.ThreadPoolExecutor(1) as pool,
    ):
        with holding(srv):
            waiter = pool.submit(
                srv.openai().chat.completions.create,
                model="qwen",
                messages=HI,  # type: ignore[arg-type]
                max_tokens=3,
                temperature=0,
            )
            wait_for(srv, "queued", lambda s: s["models"][0]["queued"] == 1)
            # The one slot is busy and the one queue place taken: the next is turned away.
            assert_busy_everywhere(srv, "qwen", r"all 1 slots in use and 1 requests waiting")
            assert not waiter.done()
        # The holder finished: the waiter gets the slot and completes.
        answer = waiter.result(DEADLINE_S)
    assert answer.choices[0].finish_reason in ("stop", "length")
    assert answer.usage is not None and answer.usage.completion_tokens >= 1


def test_a_wait_for_a_slot_times_out_with_503(default_model_path: Path) -> None:
    defaults = {"n_ctx": 2048, "n_seq_max": 1, "queue_timeout": 0.5}
    with (
        live_server({"qwen": default_model_path}, load_defaults=defaults, preload="qwen") as srv,
        holding(srv),
    ):
        assert_busy_everywhere(srv, "qwen", r"no slot of 1 came free within 0\.5 s")
        # A stream has its 200 before it waits: the timeout is its last event.
        with srv.http() as http:
            body = {**HOLD, "max_tokens": 2}
            events = [
                line
                for line in http.post("/v1/chat/completions", json=body).text.split("\n")
                if line
            ]
        assert events[-1] == "data: [DONE]"
        error = json.loads(events[-2].removeprefix("data: "))["error"]
        assert error["code"] == "server_busy" and "within 0.5 s" in error["message"]
        assert ps(srv)["models"][0]["queued"] == 0  # nobody left in the queue


@pytest.fixture
def two_models(default_model_path: Path, tiny_llama_path: Path) -> dict[str, Path]:
    return {"qwen": default_model_path, "tiny": tiny_llama_path}


def one_place(models: dict[str, Path], **settings: Any) -> Any:
    """A server with room for one model, qwen loaded, and `settings` for its queue."""
    return live_server(
        models,
        load_defaults={"n_ctx": 2048, "n_seq_max": 1},
        models_max=1,
        preload="qwen",
        settings_extra=settings,
    )


def test_a_request_waits_for_room_to_load_its_model_then_completes(
    two_models: dict[str, Path],
) -> None:
    with (
        one_place(two_models, queue_size=1, queue_timeout=DEADLINE_S) as srv,
        concurrent.futures.ThreadPoolExecutor(1) as pool,
    ):
        with holding(srv):
            waiter = pool.submit(
                srv.openai().completions.create, model="tiny", prompt="hello", max_tokens=2
            )
            wait_for(srv, "waiting for room", lambda s: s["memory"]["waiting"] == 1)
            # One request waits already, and the queue holds one.
            assert_busy_everywhere(srv, "tiny", r"1 requests already wait for a model to load")
            assert not waiter.done()
            assert [m["name"] for m in ps(srv)["models"]] == ["qwen"]
        # qwen is idle now: evicted for tiny, which serves the waiting request.
        answer = waiter.result(DEADLINE_S)
        assert answer.choices[0].text is not None
        state = ps(srv)
    assert [m["name"] for m in state["models"]] == ["tiny"]
    assert state["memory"]["waiting"] == 0


def test_a_wait_for_room_times_out_with_503(two_models: dict[str, Path]) -> None:
    with one_place(two_models, queue_timeout=0.5) as srv, holding(srv):
        assert_busy_everywhere(
            srv,
            "tiny",
            r"no room to load tiny within 0\.5 s \(busy or loading: qwen; 1 of 1 places",
        )
        assert ps(srv)["memory"]["waiting"] == 0  # nobody left behind in the queue


def load_count(srv: LiveServer, model: str) -> float:
    with srv.http() as http:
        text = http.get("/metrics").text
    found = re.search(rf'kronk_model_load_seconds_count\{{model="{model}"\}} (\S+)', text)
    return float(found.group(1)) if found else 0.0


def test_concurrent_first_requests_share_one_load(tiny_llama_path: Path) -> None:
    with live_server({"tiny": tiny_llama_path}, load_defaults={"n_ctx": 256}) as srv:
        assert load_count(srv, "tiny") == 0

        async def burst() -> list[str]:
            client = srv.async_openai()
            answers = await asyncio.gather(
                *(
                    client.completions.create(model="tiny", prompt=f"hi {i}", max_tokens=2)
                    for i in range(8)
                )
            )
            return [a.model for a in answers]

        assert asyncio.run(burst()) == ["tiny"] * 8
        assert load_count(srv, "tiny") == 1


def test_a_failed_load_fails_every_waiter_alike(tmp_path: Path) -> None:
    broken = write_not_gguf(tmp_path / "broken.gguf")
    with live_server({"broken": broken}) as srv:

        async def burst() -> list[tuple[int, str]]:
            async with httpx.AsyncClient(base_url=srv.base_url, timeout=DEADLINE_S) as http:
                body = {"model": "broken", "messages": HI, "max_tokens": 1}
                answers = await asyncio.gather(
                    *(http.post("/v1/chat/completions", json=body) for _ in range(4))
                )
            return [(a.status_code, json.dumps(a.json())) for a in answers]

        answers = asyncio.run(burst())
        state = ps(srv)
    assert len(set(answers)) == 1, answers  # one load, one error, for everyone
    status, body = answers[0]
    assert status == 500 and "not a GGUF" in body
    assert state["models"] == [] and state["memory"]["waiting"] == 0
