"""The tools kronk can run: the built-in web_search and web_fetch, and the tools of the
configured MCP servers (named `SERVER__TOOL` for the model, so names never clash).

`ToolRegistry.call` never raises for a tool's failure: errors, timeouts, malformed
arguments and oversized output all become an error `ToolResult` the model (and the
client) sees. Only cancellation goes through.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from kronk.agent import web
from kronk.agent.config import McpServerConfig, ToolsConfig
from kronk.agent.mcp_client import McpConnection
from kronk.agent.result import ToolError, ToolResult, error_result
from kronk.errors import InvalidRequestError
from kronk.telemetry.tracing import span

BUILTINS = ("web_search", "web_fetch")
SEPARATOR = "__"
REMOTE_CONNECTIONS = 16  # connections to servers requests named by URL, kept for reuse


@dataclass(frozen=True)
class ToolSpec:
    name: str  # the name the model calls
    description: str
    input_schema: dict[str, Any]
    source: str  # "builtin" or "mcp:SERVER"
    remote_name: str = ""  # the tool's own name on its MCP server
    # A server the request named by URL (not one of the configured ones); its headers
    # may hold credentials, so it stays out of the repr.
    remote: McpServerConfig | None = field(default=None, repr=False, compare=False)

    @property
    def server(self) -> str | None:
        return self.source.removeprefix("mcp:") if self.source.startswith("mcp:") else None

    def chat_tool(self) -> dict[str, Any]:
        """The OpenAI chat form the SDK's templates take."""
        return {
            "type": "function",
            "function": {
                "name": self.name,
                "description": self.description,
                "parameters": self.input_schema,
            },
        }


_BUILTIN_SPECS = {
    "web_search": ToolSpec("web_search", web.SEARCH_DESCRIPTION, web.SEARCH_SCHEMA, "builtin"),
    "web_fetch": ToolSpec("web_fetch", web.FETCH_DESCRIPTION, web.FETCH_SCHEMA, "builtin"),
}


@dataclass
class ToolRegistry:
    config: ToolsConfig = field(default_factory=ToolsConfig)

    # Told of every call: (tool, outcome "ok" | "error" | "timeout", seconds); the server
    # sets it to its metrics.
    observer: Callable[[str, str, float], None] | None = None

    def __post_init__(self) -> None:
        self._servers = {n: McpConnection(c) for n, c in self.config.mcp_servers.items()}
        self._remote: OrderedDict[tuple[str, ...], McpConnection] = OrderedDict()

    @property
    def server_names(self) -> list[str]:
        return sorted(self._servers)

    def connection(self, server: str) -> McpConnection:
        conn = self._servers.get(server)
        if conn is None:
            known = ", ".join(self.server_names) or "none are configured"
            raise InvalidRequestError(f"unknown MCP server {server!r} ({known})", "tools")
        return conn

    async def server_tools(
        self, server: str, allowed: Sequence[str] | None = None
    ) -> list[ToolSpec]:
        """The tools of one configured MCP server (starting it), optionally only some."""
        return await self._list(self.connection(server), server, allowed, None)

    async def remote_tools(
        self,
        label: str,
        url: str,
        headers: Mapping[str, str] | None = None,
        allowed: Sequence[str] | None = None,
    ) -> list[ToolSpec]:
        """The tools of a streamable HTTP MCP server a request names by URL, under
        `label`: only where the settings allow remote servers (and the URL's prefix),
        reached through web_fetch's address check. Connections are kept for reuse, keyed
        by label, URL and headers, the least recently used closed past a bound."""
        self._check_remote(label, url)
        config = McpServerConfig(name=label, url=url, headers=dict(headers or {}))
        return await self._list(await self._remote_connection(config), label, allowed, config)

    def _check_remote(self, label: str, url: str) -> None:
        if not self.config.allow_remote_mcp:
            raise InvalidRequestError(
                "MCP servers named by URL are not allowed on this server (the "
                "tools.allow_remote_mcp setting); name a configured server by its label",
                "tools",
            )
        if not label or SEPARATOR in label or "/" in label:
            raise InvalidRequestError(f"bad MCP server label {label!r} (no '__' or '/')", "tools")
        if label in self._servers:
            raise InvalidRequestError(
                f"MCP server label {label!r} is a configured server's: give another label "
                "with a URL, or leave the URL out",
                "tools",
            )
        if not url.startswith(("http://", "https://")):
            raise InvalidRequestError(f"MCP server URL {url!r} must be http(s)", "tools")
        prefixes = self.config.remote_mcp_urls
        if prefixes and not url.startswith(prefixes):
            raise InvalidRequestError(
                f"MCP server URL {url!r} is not under an allowed prefix (tools.remote_mcp_urls)",
                "tools",
            )

    async def _remote_connection(self, config: McpServerConfig) -> McpConnection:
        assert config.url is not None
        key = (config.name, config.url, *sorted(f"{k}:{v}" for k, v in config.headers.items()))
        conn = self._remote.get(key)
        if conn is None:
            conn = McpConnection(config, guard=self.config.allowed_networks())
            self._remote[key] = conn
        self._remote.move_to_end(key)
        while len(self._remote) > REMOTE_CONNECTIONS:
            _, oldest = self._remote.popitem(last=False)
            await oldest.aclose()
        return conn

    async def _list(
        self,
        conn: McpConnection,
        server: str,
        allowed: Sequence[str] | None,
        remote: McpServerConfig | None,
    ) -> list[ToolSpec]:
        try:
            tools = await asyncio.wait_for(conn.list_tools(), self.config.call_timeout)
        except (ToolError, TimeoutError) as exc:
            raise InvalidRequestError(
                f"MCP server {server!r} is unavailable: {exc or 'it did not answer'}", "tools"
            ) from exc
        return [
            ToolSpec(
                f"{server}{SEPARATOR}{t.name}",
                t.description or "",
                dict(t.input_schema),
                f"mcp:{server}",
                t.name,
                remote,
            )
            for t in tools
            if allowed is None or t.name in allowed
        ]

    async def resolve(self, names: Sequence[str]) -> list[ToolSpec]:
        """Tool specs for `web_search`, `web_fetch`, `mcp:SERVER` (all its tools) and
        `mcp:SERVER/TOOL`; an unknown name is a 400."""
        out: dict[str, ToolSpec] = {}
        for name in names:
            if name in _BUILTIN_SPECS:
                out[name] = _BUILTIN_SPECS[name]
            elif name.startswith("mcp:"):
                server, _, tool = name[4:].partition("/")
                for spec in await self.server_tools(server, [tool] if tool else None):
                    out[spec.name] = spec
                if tool and f"{server}{SEPARATOR}{tool}" not in out:
                    raise InvalidRequestError(
                        f"MCP server {server!r} has no tool {tool!r}", "tools"
                    )
            else:
                raise InvalidRequestError(
                    f"unknown server tool {name!r} (web_search, web_fetch, mcp:SERVER)", "tools"
                )
        return list(out.values())

    async def list_all(self) -> tuple[list[ToolSpec], dict[str, str]]:
        """Every tool, and the MCP servers that could not be listed (with why)."""
        specs = list(_BUILTIN_SPECS.values())
        problems: dict[str, str] = {}
        for server in self.server_names:
            try:
                specs += await self.server_tools(server)
            except InvalidRequestError as exc:
                problems[server] = str(exc)
        return specs, problems

    async def find(self, name: str) -> ToolSpec:
        """A tool by the name the model calls (`web_fetch`, `SERVER__TOOL`)."""
        if name in _BUILTIN_SPECS:
            return _BUILTIN_SPECS[name]
        server, sep, tool = name.partition(SEPARATOR)
        if sep and server in self._servers:
            found = await self.server_tools(server, [tool])
            if found:
                return found[0]
        raise InvalidRequestError(f"unknown tool {name!r}", "name")

    async def call(self, spec: ToolSpec, arguments: str | dict[str, Any]) -> ToolResult:
        """Run one tool within the call time limit; every failure is an error result. A
        span per call (tracing on) and the observer see its outcome and time."""
        started = time.perf_counter()
        with span("kronk.tool", tool=spec.name, source=spec.source) as current:
            try:
                result = await self._call(spec, arguments, started)
            except asyncio.CancelledError:  # the client went away: counted, then passed on
                current.set_attribute("kronk.outcome", "cancelled")
                if self.observer is not None:
                    self.observer(spec.name, "cancelled", time.perf_counter() - started)
                raise
            took = time.perf_counter() - started
            timed_out = result.failure == "timeout"
            outcome = "timeout" if timed_out else "error" if result.is_error else "ok"
            current.set_attribute("kronk.outcome", outcome)
        if self.observer is not None:
            self.observer(spec.name, outcome, took)
        return result

    async def _call(
        self, spec: ToolSpec, arguments: str | dict[str, Any], started: float
    ) -> ToolResult:
        try:
            args = json.loads(arguments) if isinstance(arguments, str) else arguments
            if not isinstance(args, dict):
                return error_result("the tool's arguments must be a JSON object", "invalid_input")
        except ValueError as exc:
            return error_result(f"the tool's arguments are not valid JSON: {exc}", "invalid_input")
        try:
            result = await asyncio.wait_for(self._run(spec, args), self.config.call_timeout)
        except TimeoutError:
            took = time.perf_counter() - started
            return error_result(f"{spec.name} timed out after {took:.0f} s", "timeout")
        except ToolError as exc:
            return error_result(str(exc), exc.failure)
        except (InvalidRequestError, ValueError, TypeError, KeyError) as exc:
            return error_result(f"{spec.name} failed: {exc}")
        except Exception as exc:  # a tool must never break the request: the model is told
            return error_result(f"{spec.name} failed: {type(exc).__name__}: {exc}")
        if len(result.content) > self.config.max_output_chars:
            return error_result(
                f"{spec.name} returned {len(result.content)} characters, over the "
                f"{self.config.max_output_chars} limit",
                "too_large",
            )
        return result

    async def _run(self, spec: ToolSpec, args: dict[str, Any]) -> ToolResult:
        if spec.name == "web_fetch" and spec.source == "builtin":
            return await web.web_fetch(self.config, args.get("url", ""))
        if spec.name == "web_search" and spec.source == "builtin":
            return await web.web_search(self.config, args.get("query", ""))
        server = spec.server
        if server is None:
            raise ToolError(f"no tool {spec.name!r}")
        if spec.remote is not None:
            conn = await self._remote_connection(spec.remote)
        else:
            conn = self.connection(server)
        return await conn.call(spec.remote_name, args)

    async def aclose(self) -> None:
        """Stop every MCP server (with the kronk server)."""
        remote, self._remote = list(self._remote.values()), OrderedDict()
        await asyncio.gather(*(c.aclose() for c in [*self._servers.values(), *remote]))


__all__ = ["BUILTINS", "ToolRegistry", "ToolSpec"]
