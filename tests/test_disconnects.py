"""Clients that hang up mid-stream, at any point, give back their slot and model lease.

A hang-up races with the engine's last event: the stream's read is being cancelled
while the response's cleanup waits for that event to close the stream. The soak
(bench/soak.py) found leases leaking there (the cleanup waited for ever); this runs many
hang-ups at early points on a tiny model, where the race is most likely, in each
protocol, and then requires every lease and slot back.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from support.live_server import LiveServer, live_server

ROUNDS = 15
SETTLE_DEADLINE_S = 30.0
MODEL = "tiny"

STREAMS: dict[str, dict[str, Any]] = {
    "/v1/chat/completions": {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 16},
    "/v1/completions": {"prompt": "Write a poem:\n", "max_tokens": 16},
    "/v1/messages": {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 16},
    "/api/generate": {"prompt": "Write a poem:\n", "options": {"num_predict": 16}},
}


@pytest.fixture(scope="module")
def server(tiny_llama_path: Path) -> Iterator[LiveServer]:
    with live_server({MODEL: tiny_llama_path}, load_defaults={"n_ctx": 512}) as srv:
        yield srv


def held(srv: LiveServer) -> list[tuple[int, int]]:
    models = httpx.get(f"{srv.base_url}/api/ps").json()["models"]
    return [(m["slots_in_use"], m["leases"]) for m in models]


@pytest.mark.parametrize("path", sorted(STREAMS))
def test_hanging_up_at_any_point_frees_the_lease(server: LiveServer, path: str) -> None:
    body = {"model": MODEL, "stream": True, **STREAMS[path]}
    with httpx.Client(base_url=server.base_url, timeout=60) as http:
        for _ in range(ROUNDS):
            for cut_after in (1, 2, 3):
                with http.stream("POST", path, json=body) as response:
                    assert response.status_code == 200
                    lines = response.iter_lines()
                    for _ in range(cut_after):
                        next(lines, None)
                # Leaving the block closed the connection, however far the stream was.
    deadline = time.monotonic() + SETTLE_DEADLINE_S
    while any(state != (0, 0) for state in held(server)):
        assert time.monotonic() < deadline, f"(slots, leases) still held: {held(server)}"
        time.sleep(0.05)
