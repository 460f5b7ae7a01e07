"""`/mcp`: kronk as an MCP server (streamable HTTP), exposing the built-in web_search and
web_fetch, so Claude Code, IDEs and other MCP clients can use them. Calls go through the
server's tool registry: the same limits, address checks, spans and metrics as the tools
kronk runs for a model. The path belongs to the `tools` grant (security.md)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from fastapi import FastAPI
from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError

from kronk.agent import web
from kronk.agent.registry import ToolRegistry

PATH = "/mcp"


def _server(tools: ToolRegistry) -> MCPServer:
    mcp = MCPServer("kronk", instructions="Web search and web page fetching, run by kronk.")

    async def run(name: str, arguments: dict[str, str]) -> str:
        result = await tools.call(await tools.find(name), arguments)
        if result.is_error:
            raise ToolError(result.content)  # the client gets an error result
        return result.content

    @mcp.tool(name="web_fetch", description=web.FETCH_DESCRIPTION)
    async def web_fetch(url: str) -> str:
        return await run("web_fetch", {"url": url})

    @mcp.tool(name="web_search", description=web.SEARCH_DESCRIPTION)
    async def web_search(query: str) -> str:
        return await run("web_search", {"query": query})

    return mcp


def install_mcp(
    app: FastAPI, tools: ToolRegistry, host: str
) -> contextlib.AbstractAsyncContextManager[None]:
    """Add `/mcp` to `app`; the returned context runs its sessions (enter it in the
    lifespan)."""
    mcp = _server(tools)
    sub = mcp.streamable_http_app(streamable_http_path=PATH, host=host)
    app.router.routes.extend(sub.routes)  # the route itself, without a sub-app's lifespan

    @contextlib.asynccontextmanager
    async def sessions() -> AsyncIterator[None]:
        async with mcp.session_manager.run():
            yield

    return sessions()


__all__ = ["PATH", "install_mcp"]
