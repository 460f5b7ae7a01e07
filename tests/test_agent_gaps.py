"""The tool runtime's edges with real parts, no model: the Brave Search backend against
a loopback fixture speaking Brave's API (key from config or the environment, a refused
key, garbled answers), and web_fetch refusals not covered in test_agent_tools.py
(addresses in other spellings, more content types)."""

from __future__ import annotations

import asyncio
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from kronk.agent.config import ToolsConfig, parse_mcp_servers
from kronk.agent.registry import ToolRegistry
from kronk.agent.result import ToolResult
from support.mcp_fixture import vault_code
from support.web_fixture import BRAVE_KEY, BRAVE_PATH, Site

MCP_FIXTURE = Path(__file__).resolve().parent / "support" / "mcp_fixture.py"
SEARCH_ENV = ("KRONK_SEARCH_URL", "KRONK_SEARCH_KEY", "BRAVE_API_KEY")


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in SEARCH_ENV:
        monkeypatch.delenv(name, raising=False)


def _call(config: ToolsConfig, name: str, args: dict[str, Any]) -> ToolResult:
    registry = ToolRegistry(config)

    async def run() -> ToolResult:
        return await registry.call(await registry.find(name), args)

    return asyncio.run(run())


def _brave(site: Site, path: str = BRAVE_PATH, **settings: Any) -> ToolsConfig:
    return ToolsConfig(search_backend="brave", search_url=site.url(path), **settings)


def test_brave_search_with_the_key_from_config(site: Site) -> None:
    config = _brave(site, search_key=BRAVE_KEY, search_results=2)
    result = _call(config, "web_search", {"query": "tidal pools"})
    assert not result.is_error, result.content
    assert site.brave_keys[-1] == BRAVE_KEY and site.brave_counts[-1] == "2"
    assert site.queries[-1] == "tidal pools"
    assert result.data == [
        {"title": f"Brave {i} for tidal pools", "url": site.url(f"/b{i}"),
         "snippet": f"BRAVE-{i}-LICHEN on tidal pools"}
        for i in (1, 2)
    ]  # fmt: skip
    assert "BRAVE-2-LICHEN" in result.content and "BRAVE-3-LICHEN" not in result.content


@pytest.mark.parametrize("variable", ["KRONK_SEARCH_KEY", "BRAVE_API_KEY"])
def test_brave_search_with_the_key_from_the_environment(
    site: Site, monkeypatch: pytest.MonkeyPatch, variable: str
) -> None:
    monkeypatch.setenv(variable, BRAVE_KEY)
    result = _call(_brave(site), "web_search", {"query": f"kelp via {variable}"})
    assert not result.is_error, result.content
    assert site.brave_keys[-1] == BRAVE_KEY
    assert result.data[0]["snippet"] == f"BRAVE-1-LICHEN on kelp via {variable}"


def test_brave_key_in_config_beats_the_environment(
    site: Site, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BRAVE_API_KEY", "stale-key")
    result = _call(_brave(site, search_key=BRAVE_KEY), "web_search", {"query": "q"})
    assert not result.is_error and site.brave_keys[-1] == BRAVE_KEY


def test_brave_refused_key_is_a_clear_error_result(site: Site) -> None:
    result = _call(_brave(site, search_key="wrong-key"), "web_search", {"query": "q"})
    assert result.is_error
    assert result.content == (
        "the brave search refused the key (HTTP 401): The provided subscription token is invalid."
    )
    assert site.brave_keys[-1] == "wrong-key"


def test_brave_without_a_key_sends_nothing(site: Site) -> None:
    before = len(site.brave_keys)
    result = _call(_brave(site), "web_search", {"query": "q"})
    assert result.is_error and "needs a key" in result.content
    assert len(site.brave_keys) == before


@pytest.mark.parametrize(
    ("prefix", "why"),
    [("/brave-garbled", "Expecting value"), ("/brave-misshapen", "not a list of objects")],
)
def test_brave_unreadable_answers_are_error_results(site: Site, prefix: str, why: str) -> None:
    config = _brave(site, prefix + BRAVE_PATH[len("/brave") :], search_key=BRAVE_KEY)
    result = _call(config, "web_search", {"query": "q"})
    assert result.is_error
    assert result.content.startswith("the brave search answered something unreadable")
    assert why in result.content


def test_searxng_failure_status_is_an_error_result(site: Site) -> None:
    # /nowhere/search is a 404 on the fixture: the status, not a stack trace.
    result = _call(ToolsConfig(search_url=site.url("/nowhere")), "web_search", {"query": "q"})
    assert result.is_error and result.content == "the searxng search answered HTTP 404"


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("http://[::ffff:10.0.0.1]/", "10.0.0.1 is a private"),  # IPv4-mapped IPv6
        ("http://2852039166/latest/meta-data/", "cloud metadata"),  # 169.254.169.254
        ("http://0x0a000001/", "10.0.0.1 is a private"),  # hexadecimal
        ("http://[fd00:ec2::254]/", "cloud metadata"),
        ("http://0.0.0.0:9/", "private or reserved"),
        ("http://100.100.100.200/", "cloud metadata"),
    ],
)
def test_fetch_refuses_private_addresses_in_any_spelling(
    url: str, why: str, connects: list[str]
) -> None:
    result = _call(ToolsConfig(), "web_fetch", {"url": url})
    assert result.is_error and why in result.content, result.content
    assert connects == []


@pytest.mark.parametrize(
    ("url", "why"),
    [("http://0177.0.0.1/", "not a valid URL"), ("gopher://example.org/", "http and https")],
)
def test_fetch_refuses_bad_urls_without_connecting(url: str, why: str, connects: list[str]) -> None:
    result = _call(ToolsConfig(), "web_fetch", {"url": url})
    assert result.is_error and why in result.content, result.content
    assert connects == []


@pytest.mark.parametrize("ctype", ["image/png", "application/pdf", "audio/mpeg", ""])
def test_fetch_refuses_content_that_is_not_text(site: Site, ctype: str) -> None:
    config = ToolsConfig(allow_addresses=("127.0.0.1",))
    result = _call(config, "web_fetch", {"url": site.url(f"/as?type={quote(ctype)}")})
    assert result.is_error and "web_fetch reads text and HTML only" in result.content
    assert (ctype or "of no stated type") in result.content


@pytest.mark.parametrize("ctype", ["application/ld+json", "text/csv", "application/xml"])
def test_fetch_reads_text_types(site: Site, ctype: str) -> None:
    config = ToolsConfig(allow_addresses=("127.0.0.1",))
    result = _call(config, "web_fetch", {"url": site.url(f"/as?type={quote(ctype)}")})
    assert not result.is_error and result.data["content_type"] == ctype


def test_fetch_network_failures_are_error_results(site: Site) -> None:
    with socket.socket() as closed:  # a loopback port nobody listens on
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    config = ToolsConfig(allow_addresses=("127.0.0.1",), fetch_timeout=1.0)
    refused = _call(config, "web_fetch", {"url": f"http://127.0.0.1:{port}/"})
    assert refused.is_error
    assert refused.content.startswith(f"fetching http://127.0.0.1:{port}/ failed:")
    site.release.clear()
    try:
        slow = _call(config, "web_fetch", {"url": site.url("/slow")})
    finally:
        site.release.set()
    assert slow.is_error and slow.content.startswith(f"fetching {site.url('/slow')} failed:")


def test_a_cancelled_mcp_call_is_cancelled_on_the_server(tmp_path: Path) -> None:
    marker = tmp_path / "hold"
    stdio = {"command": sys.executable, "args": [str(MCP_FIXTURE), "stdio"]}
    config = ToolsConfig(mcp_servers=parse_mcp_servers({"fx": stdio}), call_timeout=120.0)
    registry = ToolRegistry(config)

    async def until(done: Callable[[], bool]) -> None:
        deadline = time.monotonic() + 30
        while not done():  # polls the fixture's file, a real state, with a deadline
            assert time.monotonic() < deadline, "the MCP fixture did not get there"
            await asyncio.sleep(0.02)

    async def run() -> tuple[ToolResult, int]:
        try:
            (hold,) = await registry.resolve(["mcp:fx/hold"])
            (lookup,) = await registry.resolve(["mcp:fx/vault_lookup"])
            call = asyncio.ensure_future(registry.call(hold, {"marker": str(marker)}))
            await until(marker.exists)
            call.cancel()  # as the loop does when the client goes away
            with pytest.raises(asyncio.CancelledError):
                await call
            await until(lambda: marker.read_text() == "cancelled")
            # The session is still good: the next call needs no restart.
            return await registry.call(lookup, {"name": "eve"}), registry.connection("fx").starts
        finally:
            await registry.aclose()

    after, starts = asyncio.run(run())
    assert not after.is_error and after.content == vault_code("eve")
    assert starts == 1
