"""Server tools in the Responses API (docs/tools.md): which tools a request's `web_search`,
`web_fetch` and `mcp` entries give it, and the output items that show what ran:
`mcp_list_tools` for each MCP server of the request, `mcp_call` for each MCP call and
`web_search_call` for web_search (action `search`) and web_fetch (action `open_page`),
with their streaming events as OpenAI sends them."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from fastapi import Request

from kronk.agent.registry import ToolSpec
from kronk.chat.events import ServerToolCall, ServerToolResult
from kronk.errors import InvalidRequestError, UnsupportedFeatureError
from kronk.server.openai.responses_params import McpAllowedTools, ResponseMcpTool, ResponseWebTool
from kronk.server.security import require_grant
from kronk.server.state import ServerState
from kronk.server.tools import check_approval, remote_mcp_tools, requested_tool_names, unique_tools

if TYPE_CHECKING:
    from kronk.server.openai.responses import ResponseBuilder
    from kronk.server.openai.responses_params import ResponsesRequest

Events = list[dict[str, Any]]


@dataclass
class ToolPlan:
    """The server tools a request named, resolved, and each MCP server's listed tools."""

    specs: list[ToolSpec] = field(default_factory=list)
    listed: list[tuple[str, list[ToolSpec]]] = field(default_factory=list)


async def plan_tools(request: Request, state: ServerState, body: ResponsesRequest) -> ToolPlan:
    """Resolve the request's server tools before any model is leased: an unknown label,
    an unreachable server or a refused option is a 400 here."""
    entries = body.server_tools()
    names: list[str] = []
    remote: list[ToolSpec] = []
    labels: list[str] = []
    for entry in entries:
        if isinstance(entry, ResponseWebTool):
            if entry.filters and any(entry.filters.values()):
                raise UnsupportedFeatureError("web search filters are not supported", "tools")
            names.append(entry.tool)
            continue
        _check_mcp(entry, labels)
        labels.append(entry.server_label)
        if entry.server_url is not None:
            headers = dict(entry.headers or {})
            if entry.authorization:
                headers["Authorization"] = f"Bearer {entry.authorization}"
            remote += await remote_mcp_tools(
                request, state, entry.server_label, entry.server_url, headers, entry.tool_names()
            )
        else:
            allowed = entry.tool_names()
            names += requested_tool_names(
                [{"type": "mcp", "server_label": entry.server_label, "allowed_tools": allowed}]
            )
    specs: list[ToolSpec] = []
    if names:
        require_grant(request, "tools")
        specs = await state.tools.resolve(list(dict.fromkeys(names)))
    specs = unique_tools([*specs, *remote])
    listed = [(label, [s for s in specs if s.source == f"mcp:{label}"]) for label in labels]
    return ToolPlan(specs, listed)


def _check_mcp(entry: ResponseMcpTool, labels: list[str]) -> None:
    check_approval(entry.require_approval)
    if entry.connector_id is not None:
        raise UnsupportedFeatureError("kronk has no MCP connectors; use server_label", "tools")
    if isinstance(entry.allowed_tools, McpAllowedTools) and entry.allowed_tools.read_only:
        raise UnsupportedFeatureError(
            "allowed_tools.read_only is not supported; list the tools by name", "tools"
        )
    if entry.server_url is None and (entry.headers or entry.authorization):
        raise InvalidRequestError(
            "headers and authorization go with a server_url (a configured server has its own)",
            "tools",
        )
    if entry.server_label in labels:
        raise InvalidRequestError(f"server_label {entry.server_label!r} appears twice", "tools")


def echoed_tools(body: ResponsesRequest) -> Events:
    """The request's tools as the response repeats them, without credentials."""
    return [
        t.model_dump(exclude_none=True, exclude={"headers", "authorization"})
        for t in body.tools or ()
    ]


# -- output items --------------------------------------------------------------------------


def list_items(b: ResponseBuilder, listed: list[tuple[str, list[ToolSpec]]]) -> Events:
    """An `mcp_list_tools` item per MCP server of the request (they were listed before
    the response began)."""
    events: Events = []
    for label, specs in listed:
        key = f"list:{label}"
        item: dict[str, Any] = {
            "id": f"mcpl_{uuid.uuid4().hex}",
            "type": "mcp_list_tools",
            "server_label": label,
            "tools": [],
        }
        events += b.add_item(key, item)
        events.append(b.item_event("response.mcp_list_tools.in_progress", item))
        item["tools"] = [
            {"name": s.remote_name, "description": s.description, "input_schema": s.input_schema}
            for s in specs
        ]
        events.append(b.item_event("response.mcp_list_tools.completed", item))
        events += b.close(key)
    return events


def call_item(b: ResponseBuilder, call: ServerToolCall) -> Events:
    """The model called a server tool: its item opens (text before it closes)."""
    events = b.close("reasoning") + b.close("message")
    key = f"server:{call.id}"
    if call.source.startswith("mcp:"):
        item: dict[str, Any] = {
            "id": f"mcp_{uuid.uuid4().hex}",
            "type": "mcp_call",
            "status": "in_progress",
            "server_label": call.source.removeprefix("mcp:"),
            "name": call.tool,
            "arguments": "",
            "output": None,
            "error": None,
        }
        events += b.add_item(key, item)
        events.append(b.item_event("response.mcp_call.in_progress", item))
        # The loop has the arguments whole once the call is complete: one delta.
        item["arguments"] = call.arguments
        events.append(b.item_event("response.mcp_call_arguments.delta", item, delta=call.arguments))
        events.append(
            b.item_event("response.mcp_call_arguments.done", item, arguments=call.arguments)
        )
        return events
    item = {
        "id": f"ws_{uuid.uuid4().hex}",
        "type": "web_search_call",
        "status": "in_progress",
        "action": _web_action(call),
    }
    events += b.add_item(key, item)
    events.append(b.item_event("response.web_search_call.in_progress", item))
    item["status"] = "searching"
    events.append(b.item_event("response.web_search_call.searching", item))
    return events


def result_item(b: ResponseBuilder, result: ServerToolResult) -> Events:
    """A server tool ran: its item gets the outcome and closes."""
    key = f"server:{result.id}"
    item = b.open_item(key)
    if item is None:
        return []
    events: Events = []
    if item["type"] == "mcp_call":
        if result.is_error:
            item["status"] = "failed"
            text = [{"type": "text", "text": result.content}]
            item["error"] = {"type": "mcp_tool_execution_error", "content": text}
            events.append(b.item_event("response.mcp_call.failed", item))
        else:
            item["status"] = "completed"
            item["output"] = result.content
            events.append(b.item_event("response.mcp_call.completed", item))
    else:
        if result.is_error:
            item["status"] = "failed"
            item["error"] = result.content  # kronk's extension: why it failed
        else:
            item["status"] = "completed"
            if item["action"]["type"] == "search" and isinstance(result.data, list):
                item["action"]["sources"] = [
                    {"type": "url", "url": r["url"]} for r in result.data if "url" in r
                ]
            events.append(b.item_event("response.web_search_call.completed", item))
    return events + b.close(key)


def _web_action(call: ServerToolCall) -> dict[str, Any]:
    try:
        args = json.loads(call.arguments)
    except ValueError:
        args = None
    args = args if isinstance(args, dict) else {}
    if call.tool == "web_fetch":
        url = args.get("url")
        return {"type": "open_page", "url": url if isinstance(url, str) else None}
    query = args.get("query")
    return {"type": "search", "query": query if isinstance(query, str) else ""}


__all__ = [
    "ToolPlan",
    "call_item",
    "echoed_tools",
    "list_items",
    "plan_tools",
    "result_item",
]
