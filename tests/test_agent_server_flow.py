"""Server tools on a live server with the real default model, over the wire: a model's
own `tools:` (config.yaml's `models:`), client and server tools in one request, and a
client that disconnects while a tool runs."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from kronk.models.resolver import ResolvedModel
from support.live_server import LiveServer, live_server
from support.web_fixture import Site

DEADLINE_S = 60.0
NOTIFY = {
    "type": "function",
    "function": {
        "name": "notify",
        "description": "Send a text to the user's phone.",
        "parameters": {
            "type": "object",
            "properties": {"text": {"type": "string"}},
            "required": ["text"],
        },
    },
}


@pytest.fixture(scope="module")
def server(default_model_path: Path) -> Iterator[LiveServer]:
    # One weights file under two ids: only "fetcher" has tools of its own. The fetch
    # limits are far above any wait below, so only a cancellation ends a held fetch.
    models = {m: ResolvedModel(id=m, path=default_model_path) for m in ("qwen", "fetcher")}
    extra = {
        "models": {"fetcher": {"tools": ["web_fetch"]}},
        "tool_settings": {"allow_addresses": ["127.0.0.1"], "max_rounds": 1,
                          "call_timeout": 300, "fetch_timeout": 300},
    }  # fmt: skip
    with live_server(
        models, load_defaults={"n_ctx": 1024, "n_seq_max": 1}, settings_extra=extra
    ) as srv:
        yield srv


def _forced(name: str) -> dict[str, Any]:
    return {"type": "function", "function": {"name": name}}


def _chat(srv: LiveServer, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(srv.base_url + "/v1/chat/completions", json=body, timeout=900)


def test_a_models_own_tools_go_to_its_requests_only(server: LiveServer, site: Site) -> None:
    url = site.url("/notes.txt")
    ask = [{"role": "user", "content": f"Fetch {url} and quote it."}]
    body = {"messages": ask, "max_tokens": 48, "temperature": 0,
            "tool_choice": _forced("web_fetch")}  # fmt: skip
    ran = _chat(server, {**body, "model": "fetcher"})
    assert ran.status_code == 200, ran.text
    (call,) = ran.json()["choices"][0]["message"]["server_tool_calls"]
    assert call["name"] == "web_fetch" and call["output"] == "plain notes: KELP-4471"
    # The same weights under the other id: web_fetch is not among its tools.
    refused = _chat(server, {**body, "model": "qwen"})
    assert refused.status_code == 400, refused.text
    assert "web_fetch" in refused.json()["error"]["message"]
    # Without a forced call the prompts differ by the tool's description alone.
    plain = {"messages": ask, "max_tokens": 1, "temperature": 0}
    with_tool = _chat(server, {**plain, "model": "fetcher"}).json()["usage"]["prompt_tokens"]
    without = _chat(server, {**plain, "model": "qwen"}).json()["usage"]["prompt_tokens"]
    assert with_tool > without + 20


def test_server_call_runs_then_the_client_call_goes_back(server: LiveServer, site: Site) -> None:
    client = server.openai(timeout=900)
    url = site.url("/notes.txt")
    ask = f"First use web_fetch to fetch {url}, then use notify to send me what it says."
    messages: list[Any] = [{"role": "user", "content": ask}]
    tools: list[Any] = [{"type": "web_fetch"}, NOTIFY]
    # "required" holds on for the turns after the server's round (one, max_rounds), so
    # the answer must end in the client's call: forced by grammar, not left to the model.
    first = client.chat.completions.create(
        model="qwen", messages=messages, tools=tools, tool_choice="required",
        max_tokens=64, temperature=0,
    )  # fmt: skip
    choice = first.choices[0]
    ran = (choice.message.model_extra or {})["server_tool_calls"]
    assert [(c["name"], c["output"], c["is_error"]) for c in ran] == [
        ("web_fetch", "plain notes: KELP-4471", False)
    ]
    assert choice.finish_reason == "tool_calls"
    (call,) = choice.message.tool_calls or []
    assert call.type == "function" and call.function.name == "notify"
    assert isinstance(json.loads(call.function.arguments)["text"], str)
    assert call.id != ran[0]["id"]
    # The client ran its tool: the next request carries the result and the model goes on.
    messages += [
        {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
        {"role": "tool", "tool_call_id": call.id, "content": "sent, receipt RCPT-6620"},
    ]
    second = client.chat.completions.create(
        model="qwen", messages=messages, tools=tools, tool_choice="none",
        max_tokens=16, temperature=0,
    )  # fmt: skip
    assert second.choices[0].finish_reason in ("stop", "length")
    assert (second.choices[0].message.content or "").strip()
    assert "server_tool_calls" not in (second.choices[0].message.model_extra or {})


def test_a_call_cut_short_by_max_tokens_is_not_run(server: LiveServer, site: Site) -> None:
    # 12 tokens reach into the forced call's arguments, not to the end of its URL: the
    # call was announced, so the client sees why it did not run.
    before = list(site.paths)
    rsp = _chat(server, {
        "model": "qwen", "max_tokens": 12, "temperature": 0,
        "messages": [{"role": "user", "content": f"Fetch {site.url('/notes.txt')}"}],
        "tools": [{"type": "web_fetch"}], "tool_choice": _forced("web_fetch"),
    })  # fmt: skip
    assert rsp.status_code == 200, rsp.text
    choice = rsp.json()["choices"][0]
    assert choice["finish_reason"] == "length"
    (call,) = choice["message"]["server_tool_calls"]
    assert call["name"] == "web_fetch" and call["is_error"] is True
    assert call["output"] == "not run: the turn ended (max_tokens) before the call was complete"
    assert site.paths == before  # nothing was fetched


def _model_stats(srv: LiveServer, model: str) -> dict[str, Any]:
    models = httpx.get(srv.base_url + "/api/ps", timeout=30).json()["models"]
    return next(dict(m) for m in models if m["name"].split(":")[0] == model)


def _wait_idle(srv: LiveServer, model: str) -> dict[str, Any]:
    """Poll /api/ps (bounded) until the model holds no slot and no lease."""
    deadline = time.monotonic() + DEADLINE_S
    while time.monotonic() < deadline:
        stats = _model_stats(srv, model)
        if stats["slots_in_use"] == 0 and stats["leases"] == 0:
            return stats
        time.sleep(0.05)
    raise AssertionError(f"still busy after {DEADLINE_S}s: {_model_stats(srv, model)}")


def _held_fetch(site: Site, stream: bool) -> dict[str, Any]:
    """A chat whose forced web_fetch of /hold waits there until its connection closes."""
    site.held.clear()
    site.hold_closed.clear()
    return {
        "model": "qwen", "max_tokens": 48, "temperature": 0, "stream": stream,
        "messages": [{"role": "user", "content": f"Fetch {site.url('/hold')}"}],
        "tools": [{"type": "web_fetch"}], "tool_choice": _forced("web_fetch"),
    }  # fmt: skip


def _assert_idle_after_leaving(srv: LiveServer) -> None:
    _wait_idle(srv, "qwen")
    metrics = httpx.get(srv.base_url + "/metrics", timeout=30).text
    assert 'kronk_slots_active{model="qwen"} 0.0' in metrics
    assert 'kronk_queue_depth{model="qwen"} 0.0' in metrics
    # The call in flight is counted as cancelled (not as ok, error or timeout).
    assert 'kronk_tool_calls_total{outcome="cancelled",tool="web_fetch"}' in metrics
    # The only slot is free for the next request.
    after = _chat(srv, {"model": "qwen", "max_tokens": 2,
                        "messages": [{"role": "user", "content": "hi"}]})  # fmt: skip
    assert after.status_code == 200 and after.json()["choices"][0]["finish_reason"]


def test_a_client_that_leaves_cancels_the_tool_call(server: LiveServer, site: Site) -> None:
    body = _held_fetch(site, stream=True)
    announced: list[dict[str, Any]] = []
    with (
        httpx.Client(base_url=server.base_url, timeout=900) as http,
        http.stream("POST", "/v1/chat/completions", json=body) as rsp,
    ):
        assert rsp.status_code == 200
        lines = rsp.iter_lines()  # held: dropping it would close the connection now
        for line in lines:
            if line.startswith("data: {"):
                delta = json.loads(line[6:])["choices"][0]["delta"]
                announced += delta.get("server_tool_calls", [])
                if announced:
                    break
        assert announced[0]["name"] == "web_fetch" and "output" not in announced[0]
        # The fetch reached the site and waits there; the tool's limits are 300 s.
        assert site.held.wait(DEADLINE_S)
        assert _model_stats(server, "qwen")["leases"] == 1
        left = time.monotonic()
    # Leaving the block closed the connection while the tool ran: the fetch is dropped
    # (the site sees its connection close) long before any limit of the tool's.
    assert site.hold_closed.wait(DEADLINE_S)
    assert time.monotonic() - left < DEADLINE_S
    _assert_idle_after_leaving(server)


def test_a_non_streamed_client_that_leaves_cancels_the_tool_call(
    server: LiveServer, site: Site
) -> None:
    body = json.dumps(_held_fetch(site, stream=False)).encode()
    url = httpx.URL(server.base_url)
    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: {url.host}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    # A raw socket: the client's own connection, closed while the tool runs.
    with socket.create_connection((url.host, url.port or 80)) as sock:
        sock.sendall(head.encode() + body)
        # The model's forced call comes first: slow on a busy CPU, hence the long wait.
        assert site.held.wait(DEADLINE_S * 10)
        assert _model_stats(server, "qwen")["leases"] == 1
    assert site.hold_closed.wait(DEADLINE_S)
    _assert_idle_after_leaving(server)
