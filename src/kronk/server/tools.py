"""What the protocol routes share for server-side tools (docs/tools.md): the registry
built from the settings, which tools a request gets (the server's `--tools`, the
model's `tools:` in config.yaml, and those the request names), the `tools` grant, and
the tool loop in place of a single turn."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from fastapi import Request

from kronk.agent.config import tools_config
from kronk.agent.loop import ToolLoop
from kronk.agent.registry import ToolRegistry, ToolSpec
from kronk.errors import ConfigError, InvalidRequestError
from kronk.pool import ModelLease
from kronk.server.security import require_grant
from kronk.server.settings import ServerSettings
from kronk.server.state import ServerState

# The `tools` entries a request may send besides functions (kronk's extension for Chat
# Completions and Ollama; OpenAI's own Responses types where they exist).
SERVER_TOOL_TYPES = ("web_search", "web_fetch", "mcp")


def server_tools(settings: ServerSettings) -> ToolRegistry:
    """The registry of the settings' tools configuration (a bad one stops the start)."""
    try:
        config = tools_config(settings.tool_settings, settings.mcp_servers, settings.mcp_config)
    except InvalidRequestError as exc:
        raise ConfigError(f"bad tools configuration: {exc}") from None
    return ToolRegistry(config)


def may_get_tools(settings: ServerSettings) -> bool:
    """Whether the settings offer server tools to requests that do not name any."""
    return bool(settings.tools) or any(m.tools for m in settings.models.values())


def requested_tool_name(entry: dict[str, Any]) -> str:
    """The registry name of one server tool entry of a request: `{"type": "web_fetch"}`,
    `{"type": "mcp", "server_label": NAME, "allowed_tools": [...]}` (one name per tool
    when tools are listed: see `requested_tool_names`)."""
    kind = entry.get("type")
    if kind in ("web_search", "web_fetch"):
        return str(kind)
    if kind == "mcp":
        label = entry.get("server_label")
        if not isinstance(label, str) or not label:
            raise InvalidRequestError("an mcp tool needs a server_label", "tools")
        if entry.get("server_url"):
            raise InvalidRequestError(
                "mcp tools name a server configured on kronk (server_label); server_url is "
                "not accepted",
                "tools",
            )
        check_approval(entry.get("require_approval"))
        return f"mcp:{label}"
    raise InvalidRequestError(f"unknown tool type {kind!r}", "tools")


def check_approval(approval: Any) -> None:
    """An mcp tool's `require_approval`: only "never" (or none given) is accepted."""
    if approval not in (None, "never"):
        raise InvalidRequestError(
            "require_approval must be 'never': kronk has no approval round trip", "tools"
        )


def requested_tool_names(entries: Sequence[dict[str, Any]]) -> list[str]:
    names: list[str] = []
    for entry in entries:
        name = requested_tool_name(entry)
        allowed = entry.get("allowed_tools")
        if name.startswith("mcp:") and allowed:
            names += [f"{name}/{tool}" for tool in allowed]
        else:
            names.append(name)
    return names


def unique_tools(specs: Sequence[ToolSpec]) -> list[ToolSpec]:
    """`specs` without repeats; two different tools under one name are a 400."""
    out: dict[str, ToolSpec] = {}
    for spec in specs:
        seen = out.setdefault(spec.name, spec)
        if seen.source != spec.source or seen.remote != spec.remote:
            raise InvalidRequestError(f"two server tools are called {spec.name!r}", "tools")
    return list(out.values())


async def tools_for(
    request: Request,
    state: ServerState,
    model_id: str,
    requested: Sequence[str],
    *,
    configured: bool = True,
) -> list[ToolSpec]:
    """The server tools this request gets; with any, the caller needs the `tools` grant.
    `configured=False` leaves out the server's and the model's `tools` (for Responses
    and Anthropic requests, whose APIs name their server tools themselves)."""
    settings = state.settings
    model = settings.models.get(model_id)
    offered = [*settings.tools, *(model.tools or () if model else ())] if configured else []
    names = [*offered, *requested]
    if not names:
        return []
    require_grant(request, "tools")
    return await state.tools.resolve(list(dict.fromkeys(names)))


async def remote_mcp_tools(
    request: Request,
    state: ServerState,
    label: str,
    url: str,
    headers: Mapping[str, str] | None = None,
    allowed_tools: Sequence[str] | None = None,
) -> list[ToolSpec]:
    """The tools of an MCP server the request names by URL (Responses' `server_url`,
    Anthropic's `mcp_servers`), under `label` (the model sees `LABEL__TOOL`): a 400
    unless the settings allow remote servers (`tools.allow_remote_mcp`, and the URL
    under `tools.remote_mcp_urls`) and the server answers; needs the `tools` grant.
    Pass the result to `chat_streams(..., extra=...)`."""
    require_grant(request, "tools")
    return await state.tools.remote_tools(label, url, headers, allowed_tools)


async def chat_streams(
    request: Request,
    state: ServerState,
    lease: ModelLease,
    messages: list[dict[str, Any]],
    kwargs_list: Sequence[dict[str, Any]],
    requested: Sequence[str],
    *,
    extra: Sequence[ToolSpec] = (),
    configured: bool = True,
) -> list[Any]:
    """One event stream per choice: plain turns, or tool loops when the request gets
    server tools (those named, and `extra` ones resolved already, such as
    `remote_mcp_tools`'). On failure the lease is given back."""
    try:
        specs = await tools_for(request, state, lease.model_id, requested, configured=configured)
        specs = unique_tools([*specs, *extra])
        kronk = lease.kronk
        if not specs:
            return [kronk.achat_events(messages, **kw) for kw in kwargs_list]
        return [
            ToolLoop(lambda m, k: kronk.achat_events(m, **k), messages, kw, state.tools, specs)
            for kw in kwargs_list
        ]
    except BaseException:
        lease.release()
        raise


__all__ = [
    "SERVER_TOOL_TYPES",
    "chat_streams",
    "check_approval",
    "may_get_tools",
    "remote_mcp_tools",
    "requested_tool_names",
    "server_tools",
    "tools_for",
    "unique_tools",
]
