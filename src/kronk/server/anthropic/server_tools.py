"""Anthropic's server tools and MCP connector on kronk's tool runtime (docs/tools.md).

A request turns them on in Anthropic's own way: `tools` entries of type
`web_search_20250305` / `web_fetch_20250910` (with `max_uses`, `allowed_domains` or
`blocked_domains`, `max_content_tokens`; `user_location` accepted and ignored) and
`mcp_servers` (a configured server by name, its URL as configured; other URLs only where
the settings allow remote MCP servers). The server's own `--tools` are not added: an
Anthropic request gets the server tools it names, as on Anthropic's API.

`ToolRunner` applies the per-request rules around each built-in call and gives failures
Anthropic's error codes; the loop itself is `kronk.agent.loop.ToolLoop`.
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from fastapi import Request

from kronk.agent.loop import ToolLoop
from kronk.agent.registry import ToolRegistry, ToolSpec
from kronk.agent.result import FailureKind, ToolResult
from kronk.errors import InvalidRequestError
from kronk.pool import ModelLease
from kronk.server.anthropic.protocol import McpServer, MessagesRequest, Tool
from kronk.server.anthropic.tool_blocks import search_results_text
from kronk.server.state import ServerState
from kronk.server.tools import remote_mcp_tools, tools_for, unique_tools

# The server tool types kronk runs, and the name each must have.
SERVER_TOOL_TYPES = {"web_search_20250305": "web_search", "web_fetch_20250910": "web_fetch"}
# max_content_tokens is approximate (as on Anthropic's API): this many characters a token.
CHARS_PER_TOKEN = 4


@dataclass(frozen=True)
class BuiltinRules:
    """What a request asked of one built-in tool."""

    max_uses: int | None = None
    allowed: tuple[str, ...] = ()  # domain or domain/path; a subdomain matches too
    blocked: tuple[str, ...] = ()
    max_content_tokens: int | None = None


@dataclass
class RequestedTools:
    """The server tools an Anthropic request names."""

    builtins: dict[str, BuiltinRules] = field(default_factory=dict)
    configured: list[str] = field(default_factory=list)  # registry names: mcp:NAME[/TOOL]
    remote: list[McpServer] = field(default_factory=list)  # servers named by URL

    def __bool__(self) -> bool:
        return bool(self.builtins or self.configured or self.remote)


def _positive(value: Any, where: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidRequestError(f"{where} must be a positive integer", where)
    return value


def _domains(value: Any, where: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(d, str) and d for d in value):
        raise InvalidRequestError(f"{where} must be a list of domain names", where)
    if any("://" in d for d in value):
        raise InvalidRequestError(f"{where}: give domains without a scheme (example.com)", where)
    return tuple(d.lower().rstrip("/") for d in value)


def _builtin(tool: Tool, where: str) -> tuple[str, BuiltinRules]:
    name = SERVER_TOOL_TYPES.get(tool.type or "")
    if name is None:
        known = ", ".join(SERVER_TOOL_TYPES)
        raise InvalidRequestError(
            f"{where}: server tool type {tool.type!r} is not supported (kronk runs {known})",
            f"{where}.type",
        )
    if tool.name != name:
        raise InvalidRequestError(f"{where}: a {tool.type} tool must be named {name!r}", where)
    allowed = _domains(tool.allowed_domains, f"{where}.allowed_domains")
    blocked = _domains(tool.blocked_domains, f"{where}.blocked_domains")
    if allowed and blocked:
        raise InvalidRequestError(
            f"{where}: give allowed_domains or blocked_domains, not both", f"{where}"
        )
    rules = BuiltinRules(
        max_uses=_positive(tool.max_uses, f"{where}.max_uses"),
        allowed=allowed,
        blocked=blocked,
        max_content_tokens=_positive(tool.max_content_tokens, f"{where}.max_content_tokens"),
    )
    return name, rules


def _configured_url(registry: ToolRegistry, name: str) -> str:
    """The URL a request gives for a configured server: its own, or `stdio:NAME` for a
    server kronk starts as a command."""
    config = registry.config.mcp_servers[name]
    return config.url if config.url is not None else f"stdio:{name}"


def requested_tools(body: MessagesRequest, registry: ToolRegistry) -> RequestedTools:
    """The request's server tools, checked (a 400 for what kronk cannot run)."""
    out = RequestedTools()
    for i, tool in enumerate(body.tools or ()):
        if tool.is_server:
            name, rules = _builtin(tool, f"tools[{i}]")
            if name in out.builtins:
                raise InvalidRequestError(f"tools[{i}]: {name} is given twice", f"tools[{i}]")
            out.builtins[name] = rules
    names: set[str] = set()
    for i, server in enumerate(body.mcp_servers or ()):
        where = f"mcp_servers[{i}]"
        if server.type != "url":
            raise InvalidRequestError(f"{where}.type must be 'url'", f"{where}.type")
        if server.name in names:
            raise InvalidRequestError(f"{where}: MCP server {server.name!r} is given twice", where)
        names.add(server.name)
        config = server.tool_configuration
        if config is not None and config.enabled is False:
            continue
        if server.name not in registry.server_names:
            if not registry.config.allow_remote_mcp:
                known = ", ".join(registry.server_names) or "none are configured"
                raise InvalidRequestError(
                    f"{where}: unknown MCP server {server.name!r} ({known}); MCP servers named "
                    "by URL are not allowed on this server",
                    f"{where}.name",
                )
            out.remote.append(server)  # checked and listed by the registry
            continue
        expected = _configured_url(registry, server.name)
        if server.url.rstrip("/") != expected.rstrip("/"):
            raise InvalidRequestError(
                f"{where}: MCP server {server.name!r} is configured with the URL {expected!r}, "
                f"not {server.url!r}",
                f"{where}.url",
            )
        allowed = config.allowed_tools if config is not None else None
        label = f"mcp:{server.name}"
        out.configured += [f"{label}/{t}" for t in allowed] if allowed else [label]
    return out


def _host_matches(url: str, rules: Sequence[str]) -> bool:
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    for rule in rules:
        domain, _, path = rule.partition("/")
        if (host == domain or host.endswith("." + domain)) and parts.path.lstrip("/").startswith(
            path
        ):
            return True
    return False


def _permitted(url: str, rules: BuiltinRules) -> bool:
    if rules.allowed:
        return _host_matches(url, rules.allowed)
    return not _host_matches(url, rules.blocked)


def _coded(code: str, message: str) -> ToolResult:
    """An error result with Anthropic's error code (what the blocks show)."""
    return ToolResult(message, is_error=True, data={"error_code": code})


# Anthropic's error codes of the built-in tools' failures, by the runtime's failure kind;
# any other kind is the last entry's code.
_FETCH_CODES: dict[FailureKind | None, str] = {
    "invalid_input": "invalid_tool_input",
    "not_allowed": "url_not_allowed",
    "unsupported_type": "unsupported_content_type",
    "too_large": "content_too_large",
    None: "url_not_accessible",
}
_SEARCH_CODES: dict[FailureKind | None, str] = {
    "invalid_input": "invalid_tool_input",
    "too_large": "request_too_large",
    None: "unavailable",
}


def error_code(tool: str, failure: FailureKind | None) -> str:
    table = _FETCH_CODES if tool == "web_fetch" else _SEARCH_CODES
    return table.get(failure, table[None])


class ToolRunner:
    """Runs a request's server tool calls (the loop's `call_tool`): the built-in ones
    under the request's rules, counted for `usage.server_tool_use`; MCP calls as they
    are."""

    def __init__(self, registry: ToolRegistry, builtins: dict[str, BuiltinRules]) -> None:
        self._registry = registry
        self._builtins = builtins
        self._calls = dict.fromkeys(builtins, 0)
        self.usage = {"web_search_requests": 0, "web_fetch_requests": 0}

    async def call(self, spec: ToolSpec, arguments: str) -> ToolResult:
        rules = self._builtins.get(spec.name) if spec.source == "builtin" else None
        if rules is None:
            return await self._registry.call(spec, arguments)
        self._calls[spec.name] += 1
        if rules.max_uses is not None and self._calls[spec.name] > rules.max_uses:
            return _coded(
                "max_uses_exceeded",
                f"{spec.name} may be used {rules.max_uses} times in this request",
            )
        try:
            args = json.loads(arguments or "{}")
        except ValueError:
            args = None
        key = "url" if spec.name == "web_fetch" else "query"
        if not isinstance(args, dict) or not isinstance(args.get(key), str) or not args[key]:
            return _coded("invalid_tool_input", f"{spec.name} needs a {key} (a string)")
        if key == "url" and not _permitted(args["url"], rules):
            return _coded("url_not_allowed", f"{args['url']} is not among the allowed domains")
        self.usage[f"{spec.name}_requests"] += 1
        result = await self._registry.call(spec, args)
        if result.is_error:
            return _coded(error_code(spec.name, result.failure), result.content)
        if spec.name == "web_search":
            return _filtered_search(result, rules)
        return _fetched(result, rules)


def _filtered_search(result: ToolResult, rules: BuiltinRules) -> ToolResult:
    if not rules.allowed and not rules.blocked:
        return result
    kept = [r for r in result.data or () if _permitted(r["url"], rules)]
    return ToolResult(search_results_text(kept), data=kept)


def _fetched(result: ToolResult, rules: BuiltinRules) -> ToolResult:
    data = dict(result.data or {})
    url = str(data.get("url", ""))
    if url and not _permitted(url, rules):  # redirected out of the allowed domains
        return _coded("url_not_allowed", f"the fetch was redirected to {url}, not allowed")
    text = result.content
    if rules.max_content_tokens is not None:
        limit = rules.max_content_tokens * CHARS_PER_TOKEN
        if len(text) > limit:
            text = text[:limit] + f"\n\n[truncated to about {rules.max_content_tokens} tokens]"
    data["retrieved_at"] = datetime.datetime.now(datetime.UTC).isoformat()
    return ToolResult(text, data=data)


def _choose(kwargs: dict[str, Any], specs: Sequence[ToolSpec]) -> None:
    """`tool_choice` naming an MCP tool by its own name: the name the model knows it by."""
    choice = kwargs.get("tool_choice")
    if not isinstance(choice, dict):
        return
    name = choice["function"]["name"]
    known = {s.name for s in specs} | {t["function"]["name"] for t in kwargs.get("tools") or ()}
    if name in known:
        return
    matches = [s for s in specs if s.remote_name == name]
    if len(matches) != 1:
        raise InvalidRequestError(
            f"tool_choice names {name!r}, which is not in tools", "tool_choice"
        )
    kwargs["tool_choice"] = {"type": "function", "function": {"name": matches[0].name}}


async def resolve(
    request: Request, state: ServerState, model_id: str, wanted: RequestedTools
) -> list[ToolSpec]:
    """The specs of the request's server tools (MCP servers started or reached; a 400
    for one that cannot be used); needs the `tools` grant."""
    names = [*wanted.builtins, *wanted.configured]
    specs = await tools_for(request, state, model_id, names, configured=False)
    for server in wanted.remote:
        token = server.authorization_token
        headers = {"Authorization": f"Bearer {token}"} if token else None
        config = server.tool_configuration
        allowed = config.allowed_tools if config is not None else None
        specs += await remote_mcp_tools(request, state, server.name, server.url, headers, allowed)
    return unique_tools(specs)


async def tool_loop(
    request: Request,
    state: ServerState,
    lease: ModelLease,
    messages: list[dict[str, Any]],
    kwargs: dict[str, Any],
    wanted: RequestedTools,
) -> tuple[ToolLoop, ToolRunner]:
    """The request's turn as a tool loop (not started). On failure the lease is given
    back."""
    try:
        specs = await resolve(request, state, lease.model_id, wanted)
        kwargs = dict(kwargs)
        _choose(kwargs, specs)
        runner = ToolRunner(state.tools, wanted.builtins)
        kronk = lease.kronk
        loop = ToolLoop(
            lambda m, k: kronk.achat_events(m, **k),
            messages,
            kwargs,
            state.tools,
            specs,
            call_tool=runner.call,
        )
    except BaseException:
        lease.release()
        raise
    return loop, runner


__all__ = [
    "RequestedTools",
    "ToolRunner",
    "error_code",
    "requested_tools",
    "resolve",
    "tool_loop",
]
