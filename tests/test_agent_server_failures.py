"""Tools that fail, on a live server with the real default model: an MCP server that
crashes (started again for the next request), hangs past call_timeout, answers too much
or fails, and a search backend that refuses the key. Each is an error result the client
sees in `server_tool_calls`, then the model answers: never a 500, never a hang."""

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
from support.web_fixture import BRAVE_PATH, Site

FIXTURE = Path(__file__).resolve().parent / "support" / "mcp_fixture.py"
CALL_TIMEOUT = 3.0


@pytest.fixture(scope="module")
def server(default_model_path: Path, site: Site) -> Iterator[LiveServer]:
    extra = {
        "tool_settings": {
            "max_rounds": 1, "call_timeout": CALL_TIMEOUT, "max_output_chars": 10_000,
            "search_backend": "brave", "search_url": site.url(BRAVE_PATH),
            "search_key": "revoked-key",
        },
        "mcp_servers": {"fx": {"command": sys.executable, "args": [str(FIXTURE), "stdio"]}},
    }  # fmt: skip
    with live_server(
        {"qwen": default_model_path},
        load_defaults={"n_ctx": 1024, "n_seq_max": 1},
        settings_extra=extra,
    ) as srv:
        yield srv


def _forced_chat(srv: LiveServer, tool: dict[str, Any], name: str, ask: str) -> dict[str, Any]:
    """A chat whose first turn must call `name`; max_rounds 1 makes the next one answer."""
    rsp = httpx.post(srv.base_url + "/v1/chat/completions", timeout=600, json={
        "model": "qwen", "max_tokens": 40, "temperature": 0,
        "messages": [{"role": "user", "content": ask}], "tools": [tool],
        "tool_choice": {"type": "function", "function": {"name": name}},
    })  # fmt: skip
    assert rsp.status_code == 200, rsp.text
    choice: dict[str, Any] = rsp.json()["choices"][0]
    return choice


def _fx(tool: str) -> dict[str, Any]:
    return {"type": "mcp", "server_label": "fx", "allowed_tools": [tool]}


def _one_error(choice: dict[str, Any], name: str) -> str:
    """The one server call's output, checked to be an error; the model answered after."""
    (ran,) = choice["message"]["server_tool_calls"]
    assert ran["name"] == name and ran["is_error"] is True, ran
    assert choice["finish_reason"] in ("stop", "length")
    assert choice["message"]["content"].strip()  # the model's answer after the error
    assert "tool_calls" not in choice["message"]
    output: str = ran["output"]
    return output


def test_a_crashed_mcp_server_is_an_error_then_starts_again(server: LiveServer) -> None:
    connection = server.state.tools.connection("fx")
    crashed = _forced_chat(server, _fx("crash"), "fx__crash", "Crash the fixture.")
    assert "MCP server 'fx'" in _one_error(crashed, "fx__crash")
    assert not connection.running  # the dead server was let go
    starts = connection.starts
    lookup = _forced_chat(server, _fx("vault_lookup"), "fx__vault_lookup",
                          "What is the vault code of ada?")  # fmt: skip
    (ran,) = lookup["message"]["server_tool_calls"]
    name = json.loads(ran["arguments"])["name"]
    assert ran["is_error"] is False and ran["output"] == vault_code(name)
    assert connection.starts == starts + 1 and connection.running


@pytest.mark.parametrize(
    ("tool", "expected"),
    [
        ("hang", f"fx__hang timed out after {CALL_TIMEOUT:.0f} s"),
        ("flood", "fx__flood returned 500000 characters, over the 10000 limit"),
        ("fail", "the fixture failed on purpose"),
    ],
)
def test_mcp_tool_failures_are_error_results(server: LiveServer, tool: str, expected: str) -> None:
    choice = _forced_chat(server, _fx(tool), f"fx__{tool}", f"Call {tool}.")
    assert expected in _one_error(choice, f"fx__{tool}")


def test_a_refused_search_key_is_an_error_result(server: LiveServer, site: Site) -> None:
    choice = _forced_chat(server, {"type": "web_search"}, "web_search", "Search for kelp.")
    output = _one_error(choice, "web_search")
    assert output == (
        "the brave search refused the key (HTTP 401): The provided subscription token is invalid."
    )
    assert site.brave_keys[-1] == "revoked-key"
    metrics = httpx.get(server.base_url + "/metrics", timeout=30).text
    assert 'kronk_tool_calls_total{outcome="error",tool="web_search"} 1.0' in metrics
