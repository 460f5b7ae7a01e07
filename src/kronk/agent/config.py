"""The tool runtime's settings: limits, the fetch allow-list, the search backend and the
MCP servers (the common `{"mcpServers": {...}}` JSON of Claude Desktop, Cursor and
llama.cpp)."""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from kronk.errors import InvalidRequestError

SearchKind = Literal["searxng", "brave"]


@dataclass(frozen=True)
class McpServerConfig:
    """One MCP server: a command to start (stdio) or a URL (streamable HTTP)."""

    name: str
    command: str | None = None
    args: tuple[str, ...] = ()
    env: dict[str, str] | None = None
    cwd: str | None = None
    url: str | None = None
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def transport(self) -> Literal["stdio", "http"]:
        return "stdio" if self.command is not None else "http"


@dataclass(frozen=True)
class ToolsConfig:
    # web_fetch: addresses (or networks) let through despite being private, loopback or
    # link-local; cloud metadata addresses are refused unless listed here too.
    allow_addresses: tuple[str, ...] = ()
    fetch_max_bytes: int = 2 * 1024 * 1024
    fetch_timeout: float = 15.0
    fetch_max_redirects: int = 5
    # web_search: which backend, its URL and key (else KRONK_SEARCH_URL / KRONK_SEARCH_KEY
    # or BRAVE_API_KEY from the environment).
    search_backend: SearchKind | None = None
    search_url: str | None = None
    search_key: str | None = None
    search_results: int = 5
    # Every tool call: a time limit and a size limit on what goes back to the model.
    call_timeout: float = 30.0
    max_output_chars: int = 100_000
    # The loop: rounds of server tool calls per request, and the time they may take.
    max_rounds: int = 8
    total_timeout: float = 300.0
    max_concurrent_calls: int = 4
    # MCP servers a request names by URL (Responses' `server_url`, Anthropic's
    # `mcp_servers`): refused unless allowed, and then only under these URL prefixes
    # (none: any URL); their addresses are checked as web_fetch's are.
    allow_remote_mcp: bool = False
    remote_mcp_urls: tuple[str, ...] = ()
    mcp_servers: dict[str, McpServerConfig] = field(default_factory=dict)

    def allowed_networks(self) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
        return [ipaddress.ip_network(a, strict=False) for a in self.allow_addresses]

    def search_settings(self) -> tuple[SearchKind | None, str | None, str | None]:
        """The search backend, URL and key: config first, then the environment."""
        url = self.search_url or os.environ.get("KRONK_SEARCH_URL")
        key = self.search_key or os.environ.get("KRONK_SEARCH_KEY")
        kind = self.search_backend
        if kind is None and os.environ.get("BRAVE_API_KEY") and not url:
            kind = "brave"
        if kind == "brave":
            key = key or os.environ.get("BRAVE_API_KEY")
        elif kind is None and url:
            kind = "searxng"
        return kind, url, key


def tools_config(
    section: Any = None, mcp_servers: Any = None, mcp_file: Path | None = None
) -> ToolsConfig:
    """A `ToolsConfig` from config.yaml's `tools:` section (its keys are `ToolsConfig`'s
    fields), its `mcp_servers:` map, and an `{"mcpServers": ...}` file (which wins)."""
    values: dict[str, Any] = {}
    if section is not None:
        if not isinstance(section, dict):
            raise InvalidRequestError("'tools' must be a mapping of settings")
        known = {f.name for f in dataclasses.fields(ToolsConfig)} - {"mcp_servers"}
        for raw, value in section.items():
            key = str(raw).replace("-", "_")
            if key not in known:
                raise InvalidRequestError(f"unknown tools setting {raw!r} (known: {sorted(known)})")
            values[key] = tuple(value) if key in ("allow_addresses", "remote_mcp_urls") else value
    servers = parse_mcp_servers(mcp_servers) if mcp_servers is not None else {}
    if mcp_file is not None:
        servers.update(load_mcp_config(mcp_file))
    config = ToolsConfig(**values, mcp_servers=servers)
    try:
        config.allowed_networks()
    except ValueError as exc:
        raise InvalidRequestError(f"bad tools.allow_addresses: {exc}") from exc
    return config


def parse_mcp_servers(data: Any) -> dict[str, McpServerConfig]:
    """`{"NAME": {"command", "args", "env", "cwd"} | {"url", "headers"}}` (the value of
    `mcpServers`, or of `mcp_servers:` in config.yaml)."""
    if not isinstance(data, dict):
        raise InvalidRequestError("mcpServers must be a map of server names")
    servers: dict[str, McpServerConfig] = {}
    for name, spec in data.items():
        if not isinstance(name, str) or not name or "__" in name or "/" in name:
            raise InvalidRequestError(f"bad MCP server name {name!r} (no '__' or '/')")
        if not isinstance(spec, dict):
            raise InvalidRequestError(f"MCP server {name!r}: expected a map")
        command, url = spec.get("command"), spec.get("url") or spec.get("serverUrl")
        if (command is None) == (url is None):
            raise InvalidRequestError(f"MCP server {name!r}: give either command or url")
        servers[name] = McpServerConfig(
            name=name,
            command=str(command) if command is not None else None,
            args=tuple(str(a) for a in spec.get("args") or ()),
            env={str(k): str(v) for k, v in spec["env"].items()} if spec.get("env") else None,
            cwd=str(spec["cwd"]) if spec.get("cwd") else None,
            url=str(url) if url is not None else None,
            headers={str(k): str(v) for k, v in (spec.get("headers") or {}).items()},
        )
    return servers


def load_mcp_config(path: Path) -> dict[str, McpServerConfig]:
    """Read an `{"mcpServers": {...}}` JSON file."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InvalidRequestError(f"cannot read MCP config {path}: {exc}") from exc
    if not isinstance(data, dict) or "mcpServers" not in data:
        raise InvalidRequestError(f'{path}: expected {{"mcpServers": {{...}}}}')
    return parse_mcp_servers(data["mcpServers"])


__all__ = [
    "McpServerConfig",
    "SearchKind",
    "ToolsConfig",
    "load_mcp_config",
    "parse_mcp_servers",
    "tools_config",
]
