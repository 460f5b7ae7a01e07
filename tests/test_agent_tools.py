"""The tool runtime with real parts: web_fetch against a loopback site, web_search
against a SearXNG-format fixture, MCP servers (stdio and HTTP) written with the SDK."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

import pytest

from kronk.agent.config import ToolsConfig, load_mcp_config, parse_mcp_servers
from kronk.agent.registry import ToolRegistry
from kronk.errors import InvalidRequestError
from support.mcp_fixture import mcp_http_server, vault_code
from support.web_fixture import Site

FIXTURE = Path(__file__).resolve().parent / "support" / "mcp_fixture.py"
STDIO = {"command": sys.executable, "args": [str(FIXTURE), "stdio"]}


def _call(registry: ToolRegistry, name: str, args: dict[str, Any]) -> Any:
    async def run() -> Any:
        try:
            return await registry.call(await registry.find(name), args)
        finally:
            await registry.aclose()

    return asyncio.run(run())


LOOPBACK = ToolsConfig(allow_addresses=("127.0.0.1",))


def test_fetch_html_becomes_markdown(site: Site, connects: list[str]) -> None:
    result = _call(ToolRegistry(LOOPBACK), "web_fetch", {"url": site.url("/hop")})
    assert not result.is_error, result.content
    assert "# Harbour report" in result.content
    assert "**TIDE-93172-QX**" in result.content
    assert "SCRIPT-TEXT" not in result.content and "color:red" not in result.content
    assert site.paths[-2:] == ["/hop", "/page.html"]  # the redirect was followed
    assert connects and set(connects) == {"127.0.0.1"}


def test_fetch_limits_and_types(site: Site) -> None:
    config = ToolsConfig(allow_addresses=("127.0.0.1",), fetch_max_bytes=1000)
    big = _call(ToolRegistry(config), "web_fetch", {"url": site.url("/big.txt")})
    assert not big.is_error and big.content.startswith("y" * 1000)
    assert "truncated" in big.content and "y" * 1001 not in big.content
    blob = _call(ToolRegistry(LOOPBACK), "web_fetch", {"url": site.url("/blob.bin")})
    assert blob.is_error and "application/octet-stream" in blob.content
    missing = _call(ToolRegistry(LOOPBACK), "web_fetch", {"url": site.url("/missing")})
    assert missing.is_error and "404" in missing.content
    ftp = _call(ToolRegistry(LOOPBACK), "web_fetch", {"url": "file:///etc/passwd"})
    assert ftp.is_error and "http and https" in ftp.content


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("http://169.254.169.254/latest/meta-data/", "cloud metadata"),
        ("http://10.0.0.1/", "private"),
        ("http://[::1]:9/", "loopback"),
    ],
)
def test_fetch_refuses_private_addresses_without_connecting(
    url: str, why: str, connects: list[str]
) -> None:
    result = _call(ToolRegistry(ToolsConfig()), "web_fetch", {"url": url})
    assert result.is_error and why in result.content
    assert connects == []


def test_fetch_checks_the_resolved_address_not_the_name(site: Site, connects: list[str]) -> None:
    url = f"http://localhost:{site.port}/page.html"
    refused = _call(ToolRegistry(ToolsConfig()), "web_fetch", {"url": url})
    assert refused.is_error and "loopback" in refused.content
    assert connects == []


@pytest.mark.parametrize(("path", "target"), [("/to-private", "10.0.0.1"),
                                              ("/to-metadata", "169.254.169.254")])  # fmt: skip
def test_redirect_to_private_address_refused(
    site: Site, connects: list[str], path: str, target: str
) -> None:
    result = _call(ToolRegistry(LOOPBACK), "web_fetch", {"url": site.url(path)})
    assert result.is_error and target in result.content
    assert set(connects) == {"127.0.0.1"}  # the allowed first hop only


def test_search_searxng(site: Site) -> None:
    config = ToolsConfig(search_url=site.url("/"))
    result = _call(ToolRegistry(config), "web_search", {"query": "kelp farming"})
    assert not result.is_error, result.content
    assert site.queries[-1] == "kelp farming"
    assert result.data[0] == {
        "title": "Result 1 for kelp farming",
        "url": site.url("/r1"),
        "snippet": "SNIPPET-1-ORCHID about kelp farming",
    }
    assert "SNIPPET-3-ORCHID" in result.content


def test_search_without_backend_is_an_error_result(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("KRONK_SEARCH_URL", "KRONK_SEARCH_KEY", "BRAVE_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    result = _call(ToolRegistry(ToolsConfig()), "web_search", {"query": "x"})
    assert result.is_error and "no backend" in result.content


def test_bad_arguments_become_error_results() -> None:
    registry = ToolRegistry(LOOPBACK)

    async def run() -> list[Any]:
        spec = await registry.find("web_fetch")
        return [await registry.call(spec, "{not json"), await registry.call(spec, "[1]")]

    bad_json, not_object = asyncio.run(run())
    assert bad_json.is_error and "not valid JSON" in bad_json.content
    assert not_object.is_error and "JSON object" in not_object.content


def test_mcp_config_file(tmp_path: Path) -> None:
    path = tmp_path / "mcp.json"
    path.write_text(json.dumps({"mcpServers": {"fx": STDIO, "web": {"url": "http://h/mcp"}}}))
    servers = load_mcp_config(path)
    assert servers["fx"].transport == "stdio" and servers["fx"].args[-1] == "stdio"
    assert servers["web"].transport == "http" and servers["web"].url == "http://h/mcp"
    with pytest.raises(InvalidRequestError, match="either command or url"):
        parse_mcp_servers({"x": {"args": []}})


def test_mcp_stdio_tools_errors_and_restart() -> None:
    config = ToolsConfig(mcp_servers=parse_mcp_servers({"fx": STDIO}), call_timeout=5.0,
                         max_output_chars=10_000)  # fmt: skip
    observed: list[tuple[str, str, float]] = []
    registry = ToolRegistry(config, observer=lambda *call: observed.append(call))

    async def run() -> dict[str, Any]:
        try:
            tools = await registry.resolve(["mcp:fx"])
            specs = {t.name: t for t in tools}
            out: dict[str, Any] = {"names": sorted(specs)}
            out["ok"] = await registry.call(specs["fx__vault_lookup"], {"name": "ada"})
            out["fail"] = await registry.call(specs["fx__fail"], {})
            out["flood"] = await registry.call(specs["fx__flood"], {})
            out["hang"] = await registry.call(specs["fx__hang"], {})
            out["crash"] = await registry.call(specs["fx__crash"], {})
            out["after"] = await registry.call(specs["fx__vault_lookup"], {"name": "bo"})
            out["starts"] = registry.connection("fx").starts
            return out
        finally:
            await registry.aclose()

    out = asyncio.run(run())
    assert out["names"] == ["fx__crash", "fx__fail", "fx__flood", "fx__hang", "fx__hold",
                            "fx__vault_lookup"]  # fmt: skip
    assert not out["ok"].is_error and out["ok"].content == vault_code("ada")
    assert out["fail"].is_error and "failed on purpose" in out["fail"].content
    assert out["flood"].is_error and "over the 10000 limit" in out["flood"].content
    assert out["hang"].is_error and "timed out" in out["hang"].content
    assert out["crash"].is_error
    # The crashed server was started again for the next call.
    assert out["after"].content == vault_code("bo") and out["starts"] >= 2
    # Metrics see each call's outcome (the server's observer is its Prometheus metrics).
    outcomes = [(tool, outcome) for tool, outcome, _ in observed]
    assert outcomes == [("fx__vault_lookup", "ok"), ("fx__fail", "error"),
                        ("fx__flood", "error"), ("fx__hang", "timeout"),
                        ("fx__crash", "error"), ("fx__vault_lookup", "ok")]  # fmt: skip
    assert observed[3][2] >= 5.0  # the hang was held for the whole call_timeout


def test_mcp_http_server_and_unknown_names() -> None:
    with mcp_http_server() as url:
        config = ToolsConfig(mcp_servers=parse_mcp_servers({"remote": {"url": url}}))
        registry = ToolRegistry(config)

        async def run() -> Any:
            try:
                with pytest.raises(InvalidRequestError, match="unknown MCP server 'nope'"):
                    await registry.resolve(["mcp:nope"])
                with pytest.raises(InvalidRequestError, match="no tool 'missing'"):
                    await registry.resolve(["mcp:remote/missing"])
                (spec,) = await registry.resolve(["mcp:remote/vault_lookup"])
                return await registry.call(spec, {"name": "cy"})
            finally:
                await registry.aclose()

        result = asyncio.run(run())
    assert not result.is_error and result.content == vault_code("cy")


def test_cli_lists_and_calls_tools(tmp_path: Path, site: Site) -> None:
    from typer.testing import CliRunner

    from kronk.cli.main import app

    home = tmp_path / "home"
    home.mkdir()
    (home / "config.yaml").write_text(
        f"tools:\n  allow_addresses: [127.0.0.1]\nmcp_servers:\n  fx: {json.dumps(STDIO)}\n"
    )
    runner = CliRunner()
    listed = runner.invoke(app, ["tools", "list", "--json", "--home", str(home)])
    assert listed.exit_code == 0, listed.output
    names = [t["name"] for t in json.loads(listed.output)["tools"]]
    assert names[:2] == ["web_search", "web_fetch"] and "fx__vault_lookup" in names
    called = runner.invoke(
        app, ["tools", "call", "fx__vault_lookup", "--args", '{"name": "dee"}', "--home", str(home)]
    )
    assert called.exit_code == 0 and called.output.strip() == vault_code("dee")
    fetched = runner.invoke(
        app,
        ["tools", "call", "web_fetch", "--args", json.dumps({"url": site.url("/notes.txt")}),
         "--home", str(home)],
    )  # fmt: skip
    assert fetched.exit_code == 0 and "KELP-4471" in fetched.output
    refused = runner.invoke(
        app, ["tools", "call", "web_fetch", "--args", '{"url": "http://10.0.0.1/"}',
              "--home", str(home)],
    )  # fmt: skip
    assert refused.exit_code == 1 and "private" in refused.output
