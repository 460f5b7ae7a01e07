"""Connections to the user's MCP servers (the official `mcp` SDK): started when first
needed, reused, started again if they died, stopped with `aclose()`.

The SDK's client is an async context manager whose task group belongs to the task that
entered it, so each connection has an owner task that enters it, waits to be told to
stop, and exits it; calls from request tasks go through the session meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from typing import Any

import httpx2
import mcp_types
from mcp.client import Client
from mcp.client.stdio import StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError

from kronk.agent.config import McpServerConfig
from kronk.agent.netguard import Network, guarded_transport2
from kronk.agent.result import ToolError, ToolResult

log = logging.getLogger(__name__)
STARTUP_TIMEOUT = 30.0


class McpConnection:
    """One server's connection. `guard` (the allowed networks) makes every connection to
    an HTTP server pass web_fetch's address check: for servers a request names by URL."""

    def __init__(self, config: McpServerConfig, guard: list[Network] | None = None) -> None:
        self.config = config
        self._guard = guard
        self._client: Client | None = None
        self._task: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()
        self._lock = asyncio.Lock()
        self._tools: list[mcp_types.Tool] | None = None
        self.starts = 0  # how many times the server was started (tests, status)

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done() and self._client is not None

    def _transport(self) -> Any:
        c = self.config
        if c.command is not None:
            params = StdioServerParameters(
                command=c.command, args=list(c.args), env=c.env, cwd=c.cwd
            )
            return stdio_client(params)
        assert c.url is not None
        timeout = httpx2.Timeout(30.0, read=300.0)
        if self._guard is not None:
            guarded = guarded_transport2(self._guard)
            http = httpx2.AsyncClient(
                headers=c.headers, timeout=timeout, transport=guarded, trust_env=False
            )
        else:
            http = httpx2.AsyncClient(headers=c.headers, timeout=timeout)
        return streamable_http_client(c.url, http_client=http)

    async def _own(self, ready: asyncio.Future[Client]) -> None:
        try:
            async with Client(self._transport(), cache=None) as client:
                self._client = client
                ready.set_result(client)
                await self._stop.wait()
        except BaseException as exc:  # the server died or could not start
            if not ready.done():
                ready.set_exception(exc if isinstance(exc, Exception) else RuntimeError(exc))
            if not isinstance(exc, Exception):
                raise
            log.info("MCP server %s stopped: %r", self.config.name, exc)
        finally:
            self._client = None

    async def client(self) -> Client:
        """The connected client, starting (or restarting) the server if needed."""
        async with self._lock:
            if self.running:
                assert self._client is not None
                return self._client
            await self._stop_task()
            self._stop = asyncio.Event()
            ready: asyncio.Future[Client] = asyncio.get_running_loop().create_future()
            self._task = asyncio.create_task(self._own(ready), name=f"mcp:{self.config.name}")
            self.starts += 1
            try:
                return await asyncio.wait_for(asyncio.shield(ready), STARTUP_TIMEOUT)
            except BaseException as exc:
                await self._stop_task()
                if isinstance(exc, Exception):
                    raise ToolError(
                        f"MCP server {self.config.name!r} did not start: {_reason(exc)}"
                    ) from exc
                raise

    async def list_tools(self) -> list[mcp_types.Tool]:
        if self._tools is None or not self.running:
            client = await self.client()
            tools: list[mcp_types.Tool] = []
            cursor: str | None = None
            while True:
                page = await client.list_tools(cursor=cursor)
                tools += page.tools
                cursor = page.next_cursor
                if not cursor:
                    break
            self._tools = tools
        return self._tools

    async def call(self, name: str, arguments: dict[str, Any]) -> ToolResult:
        client = await self.client()
        try:
            result = await client.call_tool(name, arguments)
        except MCPError as exc:
            if exc.error.code == mcp_types.CONNECTION_CLOSED:  # it died: start it next time
                await self.aclose()
            raise ToolError(f"MCP server {self.config.name!r}: {exc.error.message}") from exc
        except Exception as exc:
            # The connection broke (a crashed server, for one): drop it so the next
            # call starts the server again.
            await self.aclose()
            raise ToolError(f"MCP server {self.config.name!r} failed: {exc!r}") from exc
        return _result(result)

    async def _stop_task(self) -> None:
        task, self._task = self._task, None
        if task is None:
            return
        self._stop.set()
        try:
            await asyncio.wait_for(task, 10.0)
        except (TimeoutError, asyncio.CancelledError):
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
        except Exception:  # it died with an error: already logged
            pass

    async def aclose(self) -> None:
        self._tools = None
        await self._stop_task()


def _reason(exc: BaseException) -> str:
    """What went wrong, out of the task groups the SDK wraps it in."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return str(exc) or type(exc).__name__


def _result(result: mcp_types.CallToolResult) -> ToolResult:
    parts: list[str] = []
    for block in result.content:
        if isinstance(block, mcp_types.TextContent):
            parts.append(block.text)
        else:  # images, audio, resources: named, since the model reads text only
            parts.append(f"[{block.type} content]")
    if not parts and result.structured_content is not None:
        parts.append(json.dumps(result.structured_content, ensure_ascii=False))
    text = "\n".join(parts)
    return ToolResult(text, is_error=bool(result.is_error), data=result.structured_content)


__all__ = ["McpConnection"]
