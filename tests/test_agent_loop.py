"""The server-side tool loop driven by the real default model: the first turn's call is
forced by grammar (a named tool choice), later turns are free so the model answers."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kronk import Kronk
from kronk.agent.config import ToolsConfig, parse_mcp_servers
from kronk.agent.loop import ToolLoop
from kronk.agent.registry import ToolRegistry
from kronk.chat.events import (
    ChatEvent,
    ContentDelta,
    ServerToolCall,
    ServerToolResult,
    ToolCallEnd,
    ToolCallStart,
    TurnFinished,
    TurnStarted,
)
from kronk.streams import AsyncEventStream
from support.mcp_fixture import vault_code
from support.web_fixture import Site, web_site

FIXTURE = Path(__file__).resolve().parent / "support" / "mcp_fixture.py"
SERVERS = parse_mcp_servers({"fx": {"command": sys.executable, "args": [str(FIXTURE), "stdio"]}})
QUESTION = [{"role": "user", "content": "What is the vault code stored under the name ada?"}]


@pytest.fixture(scope="module")
def kronk(default_model_path: Path) -> Iterator[Kronk]:
    with Kronk(default_model_path, n_ctx=1024, n_seq_max=2, n_threads=2) as k:
        yield k


@pytest.fixture(scope="module")
def site() -> Iterator[Site]:
    with web_site() as s:
        yield s


def _forced(name: str) -> dict[str, Any]:
    return {"type": "function", "function": {"name": name}}


async def _run(loop: ToolLoop) -> list[ChatEvent]:
    events: list[ChatEvent] = []
    try:
        async for event in loop:
            events.append(event)
    finally:
        await loop.aclose()
    return events


def _starter(kronk: Kronk, seen: list[dict[str, Any]]) -> Any:
    def start(messages: list[dict[str, Any]], kwargs: dict[str, Any]) -> AsyncEventStream:
        seen.append(kwargs)
        return kronk.achat_events(messages, **kwargs)

    return start


def test_loop_runs_an_mcp_tool_and_answers(kronk: Kronk) -> None:
    # One round: the small model would call again and again; the limit makes it answer.
    registry = ToolRegistry(ToolsConfig(mcp_servers=SERVERS, max_rounds=1))
    seen: list[dict[str, Any]] = []

    async def run() -> tuple[list[ChatEvent], ToolLoop]:
        try:
            specs = await registry.resolve(["mcp:fx/vault_lookup"])
            kwargs = {"tool_choice": _forced("fx__vault_lookup"), "max_tokens": 48,
                      "temperature": 0.0}  # fmt: skip
            loop = ToolLoop(_starter(kronk, seen), QUESTION, kwargs, registry, specs)
            return await _run(loop), loop
        finally:
            await registry.aclose()

    events, loop = asyncio.run(run())
    calls = [e for e in events if isinstance(e, ServerToolCall)]
    results = [e for e in events if isinstance(e, ServerToolResult)]
    assert len(calls) == 1 and calls[0].name == "fx__vault_lookup" and calls[0].round == 1
    assert calls[0].source == "mcp:fx" and calls[0].tool == "vault_lookup"
    name = json.loads(calls[0].arguments)["name"]
    assert results[0].id == calls[0].id and not results[0].is_error
    assert results[0].content == vault_code(name)
    # The server's calls never reach the client as client tool calls.
    assert not any(isinstance(e, ToolCallStart | ToolCallEnd) for e in events)
    assert sum(isinstance(e, TurnStarted) for e in events) == 1
    finished = [e for e in events if isinstance(e, TurnFinished)]
    assert len(finished) == 1 and finished[0].reason in ("end", "max_tokens")
    assert events[-1] is finished[0]
    # The second turn read the result and was free to answer.
    assert loop.rounds == 1 and len(seen) == 2 and "tool_choice" not in seen[1]
    assert seen[1]["tools"] is None
    assert loop.messages[-1]["role"] == "tool" and loop.messages[-1]["content"] == vault_code(name)
    # What the small model writes then is its own affair; that it wrote is the loop's.
    assert "".join(e.text for e in events if isinstance(e, ContentDelta)).strip()
    assert finished[0].usage.completion_tokens > 0


def test_rounds_limit_takes_the_server_tools_away(kronk: Kronk, site: Site) -> None:
    config = ToolsConfig(allow_addresses=("127.0.0.1",), max_rounds=1)
    registry = ToolRegistry(config)
    client_tool = {"type": "function", "function": {"name": "notify", "parameters": {
        "type": "object", "properties": {"text": {"type": "string"}}}}}  # fmt: skip
    seen: list[dict[str, Any]] = []
    question = [{"role": "user", "content": f"Fetch {site.url('/notes.txt')} and tell me."}]

    async def run() -> list[ChatEvent]:
        specs = await registry.resolve(["web_fetch"])
        kwargs = {"tools": [client_tool], "tool_choice": _forced("web_fetch"),
                  "max_tokens": 48, "temperature": 0.0}  # fmt: skip
        return await _run(ToolLoop(_starter(kronk, seen), question, kwargs, registry, specs))

    events = asyncio.run(run())
    (result,) = [e for e in events if isinstance(e, ServerToolResult)]
    assert result.name == "web_fetch"
    first_names = [t["function"]["name"] for t in seen[0]["tools"]]
    assert first_names == ["notify", "web_fetch"]
    # After one round the limit is reached: the next turn keeps only the client's tool.
    assert [t["function"]["name"] for t in seen[1]["tools"]] == ["notify"]


def test_client_tools_go_back_to_the_client(kronk: Kronk) -> None:
    registry = ToolRegistry(ToolsConfig())
    client_tool = {"type": "function", "function": {"name": "lookup_weather", "parameters": {
        "type": "object", "properties": {"city": {"type": "string"}}}}}  # fmt: skip
    seen: list[dict[str, Any]] = []

    async def run() -> list[ChatEvent]:
        specs = await registry.resolve(["web_search"])
        kwargs = {"tools": [client_tool], "tool_choice": _forced("lookup_weather"),
                  "max_tokens": 48, "temperature": 0.0}  # fmt: skip
        question = [{"role": "user", "content": "Weather in Oslo?"}]
        return await _run(ToolLoop(_starter(kronk, seen), question, kwargs, registry, specs))

    events = asyncio.run(run())
    (end,) = [e for e in events if isinstance(e, ToolCallEnd)]
    assert end.name == "lookup_weather" and end.index == 0
    assert not any(isinstance(e, ServerToolCall) for e in events)
    assert isinstance(events[-1], TurnFinished) and events[-1].reason == "tool_calls"
    assert len(seen) == 1


def test_closing_the_loop_cancels_tool_calls_in_flight(kronk: Kronk, site: Site) -> None:
    registry = ToolRegistry(ToolsConfig(allow_addresses=("127.0.0.1",), call_timeout=60.0))
    question = [{"role": "user", "content": f"Fetch {site.url('/slow')}"}]
    site.arrived.clear()
    site.release.clear()

    async def run() -> tuple[bool, float]:
        specs = await registry.resolve(["web_fetch"])
        kwargs = {"tool_choice": _forced("web_fetch"), "max_tokens": 48, "temperature": 0.0}
        loop = ToolLoop(_starter(kronk, []), question, kwargs, registry, specs)
        while not any(isinstance(e, ServerToolCall) for e in await loop.next_batch()):
            pass
        pending = asyncio.ensure_future(loop.next_batch())  # runs the fetch
        await asyncio.to_thread(site.arrived.wait, 30)  # the fetch reached the site
        assert not pending.done()
        started = asyncio.get_running_loop().time()
        pending.cancel()  # as the server does when the client goes away
        with pytest.raises(asyncio.CancelledError):
            await pending
        took = asyncio.get_running_loop().time() - started
        await loop.aclose()
        return pending.cancelled(), took

    try:
        cancelled, took = asyncio.run(run())
    finally:
        site.release.set()
    assert cancelled and took < 5  # not held until the slow page answers (30 s)
