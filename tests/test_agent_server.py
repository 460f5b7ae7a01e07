"""Server tools through Chat Completions and Ollama's /api/chat, on a live server with
the real default model; the first turn's call forced by grammar, the rest free."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from support.live_server import LiveServer, live_server
from support.mcp_fixture import vault_code
from support.web_fixture import Site, web_site

FIXTURE = Path(__file__).resolve().parent / "support" / "mcp_fixture.py"
MODEL = "qwen"


@pytest.fixture(scope="module")
def site() -> Iterator[Site]:
    with web_site() as s:
        yield s


@pytest.fixture(scope="module")
def server(default_model_path: Path) -> Iterator[LiveServer]:
    extra = {
        "tools": ("mcp:fx/vault_lookup",),  # offered to every request (--tools)
        "tool_settings": {"allow_addresses": ["127.0.0.1"], "max_rounds": 1},
        "mcp_servers": {"fx": {"command": sys.executable, "args": [str(FIXTURE), "stdio"]}},
    }
    with live_server(
        {MODEL: default_model_path},
        load_defaults={"n_ctx": 1024, "n_seq_max": 1},
        settings_extra=extra,
    ) as srv:
        yield srv


def _post(srv: LiveServer, path: str, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(srv.base_url + path, json=body, timeout=300)


def _forced(name: str) -> dict[str, Any]:
    return {"type": "function", "function": {"name": name}}


def test_chat_runs_web_fetch_named_in_the_request(server: LiveServer, site: Site) -> None:
    url = site.url("/notes.txt")
    rsp = _post(server, "/v1/chat/completions", {
        "model": MODEL, "max_tokens": 48, "temperature": 0,
        "messages": [{"role": "user", "content": f"Fetch {url} and quote it."}],
        "tools": [{"type": "web_fetch"}], "tool_choice": _forced("web_fetch"),
    })  # fmt: skip
    assert rsp.status_code == 200, rsp.text
    message = rsp.json()["choices"][0]["message"]
    (ran,) = message["server_tool_calls"]
    assert ran["name"] == "web_fetch" and ran["source"] == "builtin"
    assert json.loads(ran["arguments"])["url"] == url
    assert ran["output"] == "plain notes: KELP-4471" and ran["is_error"] is False
    assert "tool_calls" not in message  # nothing for the client to run
    assert rsp.json()["choices"][0]["finish_reason"] in ("stop", "length")
    assert site.paths[-1] == "/notes.txt"
    metrics = httpx.get(server.base_url + "/metrics").text
    assert 'kronk_tool_calls_total{outcome="ok",tool="web_fetch"} 1.0' in metrics
    assert 'kronk_tool_call_seconds_count{tool="web_fetch"} 1.0' in metrics


def test_chat_stream_shows_the_server_wide_mcp_tool(server: LiveServer) -> None:
    body = {
        "model": MODEL, "max_tokens": 48, "temperature": 0, "stream": True,
        "messages": [{"role": "user", "content": "What is the vault code for ada?"}],
        "tool_choice": _forced("fx__vault_lookup"),
    }  # fmt: skip
    seen: list[dict[str, Any]] = []
    with httpx.stream("POST", server.base_url + "/v1/chat/completions", json=body,
                      timeout=300) as rsp:  # fmt: skip
        assert rsp.status_code == 200
        for line in rsp.iter_lines():
            if line.startswith("data: {"):
                delta = json.loads(line[6:])["choices"][0]["delta"]
                seen += delta.get("server_tool_calls", [])
    call, result = seen
    name = json.loads(call["arguments"])["name"]
    assert call["name"] == "fx__vault_lookup" and call["source"] == "mcp:fx"
    assert result["id"] == call["id"] and result["output"] == vault_code(name)


@pytest.mark.parametrize(
    ("tool", "message"),
    [
        ({"type": "mcp", "server_label": "nope"}, "unknown MCP server 'nope'"),
        ({"type": "mcp", "server_label": "fx", "require_approval": "always"}, "never"),
        ({"type": "mcp", "server_label": "fx", "server_url": "http://x/mcp"}, "server_url"),
        ({"type": "mcp", "server_label": "fx", "allowed_tools": ["gone"]}, "no tool 'gone'"),
    ],
)
def test_bad_server_tools_are_400s(server: LiveServer, tool: dict[str, Any], message: str) -> None:
    chat = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "tools": [tool]}
    rsp = _post(server, "/v1/chat/completions", chat)
    assert rsp.status_code == 400 and message in rsp.json()["error"]["message"]
    ollama = _post(server, "/api/chat", {**chat, "stream": False})
    assert ollama.status_code == 400 and message in ollama.json()["error"]


def test_ollama_chat_runs_server_tools(server: LiveServer, site: Site) -> None:
    # Ollama has no tool_choice, so what the model does is its own choice: whatever it
    # did, every call kronk ran is shown with its result, and the reply is complete.
    url = site.url("/notes.txt")
    rsp = _post(server, "/api/chat", {
        "model": MODEL, "stream": False, "options": {"num_predict": 48, "temperature": 0},
        "messages": [{"role": "user", "content": f"Use web_fetch to fetch {url}."}],
        "tools": [{"type": "web_fetch"}],
    })  # fmt: skip
    assert rsp.status_code == 200, rsp.text
    data = rsp.json()
    assert data["done"] is True
    for ran in data["message"].get("server_tool_calls", []):
        assert ran["name"] in ("web_fetch", "fx__vault_lookup") and "output" in ran


def test_server_tools_need_the_tools_grant(tiny_llama_path: Path, tmp_path: Path) -> None:
    from kronk.server.security.keys import KeyStore
    from kronk.server.security.tokens import create_token, parse_endpoints

    store = KeyStore(tmp_path / "keys")
    store.create()
    chat_only = create_token(store, parse_endpoints("chat"), duration_s=600)
    with_tools = create_token(store, parse_endpoints("chat,tools"), duration_s=600)
    body = {"model": "tiny", "max_tokens": 1, "tools": [{"type": "web_fetch"}],
            "messages": [{"role": "user", "content": "hi"}]}  # fmt: skip
    plain = {k: v for k, v in body.items() if k != "tools"}
    with live_server(
        {"tiny": tiny_llama_path}, load_defaults={"n_ctx": 256}, home=tmp_path, auth="all"
    ) as srv:
        url = srv.base_url + "/v1/chat/completions"

        def post(token: str, data: dict[str, Any]) -> httpx.Response:
            headers = {"authorization": f"Bearer {token}"}
            return httpx.post(url, json=data, headers=headers, timeout=120)

        refused = post(chat_only, body)
        assert refused.status_code == 403 and "'tools'" in refused.text
        assert post(chat_only, plain).status_code == 200  # chat alone still works
        # Past the grant check: what the tiny model makes of the tool prompt is its affair
        # (its context may be too small for it: 413).
        assert post(with_tools, body).status_code in (200, 413)
        # /mcp (kronk as an MCP server) is the tools family too.
        mcp = httpx.post(
            srv.base_url + "/mcp", json={}, headers={"authorization": f"Bearer {chat_only}"}
        )
        assert mcp.status_code == 403


def test_kronk_is_an_mcp_server(tiny_llama_path: Path, site: Site) -> None:
    import asyncio

    from mcp.client import Client

    extra = {"tool_settings": {"allow_addresses": ["127.0.0.1"]}}
    with live_server({"tiny": tiny_llama_path}, settings_extra=extra) as srv:

        async def run() -> tuple[list[str], Any, Any]:
            async with Client(srv.base_url + "/mcp") as client:
                names = sorted(t.name for t in (await client.list_tools()).tools)
                ok = await client.call_tool("web_fetch", {"url": site.url("/notes.txt")})
                refused = await client.call_tool("web_fetch", {"url": "http://10.0.0.1/"})
                return names, ok, refused

        names, ok, refused = asyncio.run(run())
        metrics = httpx.get(srv.base_url + "/metrics").text
    assert names == ["web_fetch", "web_search"]
    assert not ok.is_error and ok.content[0].text == "plain notes: KELP-4471"
    assert refused.is_error and "private" in refused.content[0].text
    assert 'kronk_tool_calls_total{outcome="error",tool="web_fetch"} 1.0' in metrics
