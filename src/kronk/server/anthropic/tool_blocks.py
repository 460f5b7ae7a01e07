"""The tool blocks of an Anthropic message, and their text when a conversation sends them
back.

Client calls are `tool_use` blocks (`toolu_...`). Calls kronk runs itself are shown as
Anthropic shows its own: the built-in tools as `server_tool_use` (`srvtoolu_...`)
followed by `web_search_tool_result` / `web_fetch_tool_result`, MCP tools as
`mcp_tool_use` (`mcptoolu_...`) followed by `mcp_tool_result` (docs/tools.md).

A search result's `encrypted_content` carries its snippet as plain text: kronk has
nothing to hide from its own client, and reads the snippet back from the history.
"""

from __future__ import annotations

import json
from typing import Any

from kronk.chat.events import ServerToolCall, ServerToolResult
from kronk.errors import InvalidRequestError

# The error code of a failed built-in call when the runner gave none (the loop's own
# time limit, for one).
_DEFAULT_ERROR = {"web_search": "unavailable", "web_fetch": "unavailable"}


def parse_input(arguments: str) -> dict[str, Any]:
    """A call's JSON arguments as a block's `input` (an object, whatever the model wrote)."""
    try:
        value = json.loads(arguments) if arguments.strip() else {}
    except json.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {"value": value}


def tool_use_id(call_id: str, prefix: str = "toolu_") -> str:
    """Anthropic's id for a tool call (`toolu_...`, `srvtoolu_...`, `mcptoolu_...`),
    stable for the same call."""
    return prefix + call_id.removeprefix("call_")


def _is_builtin(source: str) -> bool:
    return source == "builtin"


def call_block(call: ServerToolCall) -> dict[str, Any]:
    """The block of a server call (its `input` filled in)."""
    arguments = parse_input(call.arguments)
    if _is_builtin(call.source):
        block_id = tool_use_id(call.id, "srvtoolu_")
        return {"type": "server_tool_use", "id": block_id, "name": call.name, "input": arguments}
    return {
        "type": "mcp_tool_use",
        "id": tool_use_id(call.id, "mcptoolu_"),
        "name": call.tool,
        "server_name": call.source.removeprefix("mcp:"),
        "input": arguments,
    }


def result_block(result: ServerToolResult) -> dict[str, Any]:
    """The block of what a server call gave back."""
    if not _is_builtin(result.source):
        return {
            "type": "mcp_tool_result",
            "tool_use_id": tool_use_id(result.id, "mcptoolu_"),
            "is_error": result.is_error,
            "content": [{"type": "text", "text": result.content}],
        }
    kind = f"{result.name}_tool_result"
    block: dict[str, Any] = {"type": kind, "tool_use_id": tool_use_id(result.id, "srvtoolu_")}
    data = result.data if isinstance(result.data, dict) else {}
    if result.is_error:
        code = data.get("error_code") or _DEFAULT_ERROR.get(result.name, "unavailable")
        block["content"] = {"type": f"{kind}_error", "error_code": code}
    elif result.name == "web_search":
        block["content"] = [
            {
                "type": "web_search_result",
                "url": item["url"],
                "title": item.get("title", ""),
                "encrypted_content": item.get("snippet", ""),
                "page_age": None,
            }
            for item in result.data or ()
        ]
    else:
        block["content"] = {
            "type": "web_fetch_result",
            "url": data.get("url", ""),
            "retrieved_at": data.get("retrieved_at"),
            "content": {
                "type": "document",
                "source": {"type": "text", "media_type": "text/plain", "data": result.content},
                "title": None,
                "citations": None,
            },
        }
    return block


# -- a conversation sending them back ---------------------------------------------------


def search_results_text(results: list[dict[str, str]]) -> str:
    """What the model reads of search results (as web_search gives them: title, URL and
    snippet of each)."""
    return json.dumps(results, ensure_ascii=False) if results else "no results"


def server_result_text(kind: str, content: Any, where: str) -> str:
    """The text the model read for a `web_search_tool_result` / `web_fetch_tool_result`
    block of the history."""
    if isinstance(content, dict) and str(content.get("type", "")).endswith("_error"):
        return f"Error: {content.get('error_code', 'unavailable')}"
    try:
        if kind == "web_search_tool_result":
            results = [
                {"title": str(r.get("title", "")), "url": str(r["url"]),
                 "snippet": str(r.get("encrypted_content", ""))}
                for r in content
            ]  # fmt: skip
            return search_results_text(results)
        return str(content["content"]["source"]["data"])
    except (KeyError, TypeError, AttributeError) as exc:
        raise InvalidRequestError(f"a {kind} block of an unknown shape ({exc})", where) from None


__all__ = [
    "call_block",
    "parse_input",
    "result_block",
    "search_results_text",
    "server_result_text",
    "tool_use_id",
]
