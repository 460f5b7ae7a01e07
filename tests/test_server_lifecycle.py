"""Slots and shutdown: a full queue answers 503 with Retry-After, a client that disconnects
frees its slot at once, and a graceful shutdown lets in-flight streams finish while new
requests get 503.

These need a request that stays busy for a while, so they run on the real default
model (tens of tokens per second here) with `ignore_eos` and a long `max_tokens`;
every assertion that something stopped early compares token counts, not times.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from support.live_server import LiveServer, live_server

LONG = 1500  # tokens a held request asks for: far more than any test waits for
DEADLINE_S = 60.0


def long_chat(stream: bool) -> dict[str, Any]:
    return {
        "model": "qwen",
        "messages": [{"role": "user", "content": "Count from 1 to 10000."}],
        "max_tokens": LONG,
        "ignore_eos": True,
        "temperature": 0,
        "stream": stream,
    }


def model_stats(srv: LiveServer) -> dict[str, Any]:
    with srv.http() as http:
        (model,) = http.get("/api/ps").json()["models"]
    return dict(model)


def wait_until_idle(srv: LiveServer) -> dict[str, Any]:
    """Poll /api/ps (bounded) until no slot or lease is held."""
    deadline = time.monotonic() + DEADLINE_S
    while time.monotonic() < deadline:
        stats = model_stats(srv)
        if stats["slots_in_use"] == 0 and stats["leases"] == 0:
            return stats
        time.sleep(0.05)
    raise AssertionError(f"slot still held after {DEADLINE_S}s: {model_stats(srv)}")


def first_content_line(lines: Iterator[str]) -> dict[str, Any]:
    for line in lines:
        if line.startswith("data: ") and '"content"' in line:
            chunk = json.loads(line[len("data: ") :])
            if chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
                return dict(chunk)
    raise AssertionError("stream ended before any content")


@pytest.fixture
def one_slot(default_model_path: Path) -> Iterator[LiveServer]:
    defaults = {"n_ctx": 2048, "n_seq_max": 1, "max_queue": 0, "n_threads": 2}
    with live_server(
        {"qwen": default_model_path},
        load_defaults=defaults,
        preload="qwen",
        graceful_timeout=600,  # a loaded machine must not cut the drained stream short
    ) as s:
        yield s


def test_busy_then_a_disconnect_frees_the_slot(one_slot: LiveServer) -> None:
    srv = one_slot
    before = model_stats(srv)["tokens_generated"]
    with (
        httpx.Client(base_url=srv.base_url, timeout=120) as holder,
        holder.stream("POST", "/v1/chat/completions", json=long_chat(True)) as resp,
    ):
        assert resp.status_code == 200
        # Hold the iterator: dropping it would close the connection (httpcore does).
        lines = resp.iter_lines()
        first_content_line(lines)
        busy = model_stats(srv)
        assert (busy["slots_in_use"], busy["leases"]) == (1, 1)
        # The only slot is taken and nothing may wait: the next request is turned away.
        with pytest.raises(openai.InternalServerError) as info:
            srv.openai().chat.completions.create(
                model="qwen", messages=[{"role": "user", "content": "hi"}], max_tokens=1
            )
        assert info.value.status_code == 503 and info.value.code == "server_busy"
        assert info.value.response.headers["retry-after"] == "1"
        assert model_stats(srv)["slots_in_use"] == 1  # still streaming to us
    # Leaving the block closed the connection mid-stream.
    idle = wait_until_idle(srv)
    assert idle["tokens_generated"] - before < LONG  # cancelled, not run to the end
    after = srv.openai().chat.completions.create(
        model="qwen", messages=[{"role": "user", "content": "hi"}], max_tokens=2
    )
    assert after.choices[0].finish_reason in ("stop", "length")


def test_a_non_streamed_request_is_cancelled_when_its_client_leaves(one_slot: LiveServer) -> None:
    srv = one_slot
    before = model_stats(srv)["tokens_generated"]
    # The client gives up after a second and closes its connection.
    with (
        httpx.Client(base_url=srv.base_url, timeout=httpx.Timeout(120, read=1.0)) as impatient,
        pytest.raises(httpx.ReadTimeout),
    ):
        impatient.post("/v1/chat/completions", json=long_chat(False))
    idle = wait_until_idle(srv)
    assert idle["tokens_generated"] - before < LONG


def test_graceful_shutdown_finishes_streams_and_refuses_new_requests(
    one_slot: LiveServer,
) -> None:
    srv = one_slot
    body = {**long_chat(True), "max_tokens": 60, "stream_options": {"include_usage": True}}
    with (
        httpx.Client(base_url=srv.base_url, timeout=120) as http,
        http.stream("POST", "/v1/chat/completions", json=body) as resp,
    ):
        lines = resp.iter_lines()
        first_content_line(lines)
        srv.server.begin_shutdown()
        deadline = time.monotonic() + DEADLINE_S
        while (ready := http.get("/health/ready")).status_code != 503:  # starts on its loop
            assert time.monotonic() < deadline, "the server never started draining"
            time.sleep(0.02)
        assert ready.json()["status"] == "draining"
        refused = http.post("/v1/chat/completions", json={**long_chat(False), "max_tokens": 1})
        assert refused.status_code == 503
        assert refused.json()["error"]["code"] == "shutting_down"
        assert http.get("/health").status_code == 200  # still alive while draining
        rest = list(lines)
    # The stream in flight ran to its end: every token, then usage, then [DONE].
    data = [line[len("data: ") :] for line in rest if line.startswith("data: ")]
    assert data[-1] == "[DONE]"
    usage = json.loads(data[-2])["usage"]
    assert usage["completion_tokens"] == 60
    srv.thread.join(DEADLINE_S)
    assert not srv.thread.is_alive()
