"""The server tool entries a request's `tools` array may hold besides functions: kronk's
extension to Chat Completions and Ollama's /api/chat (docs/tools.md). Kept apart from
`kronk.server.tools` so the protocol models import no runtime."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Tag


class ServerToolParam(BaseModel):
    """A tool kronk runs itself: `{"type": "web_fetch"}`, `{"type": "web_search"}`, or
    `{"type": "mcp", "server_label": NAME, "allowed_tools": [...]}`."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["web_search", "web_fetch", "mcp"]
    server_label: str | None = None  # mcp: a server configured on kronk
    allowed_tools: list[str] | None = None
    require_approval: str | dict[str, Any] | None = None  # only "never" is accepted
    server_url: str | None = None  # refused: kronk runs only the servers it is given


def tool_kind(value: Any) -> str:
    """Which member of a `tools` entry union validates it, so a bad function tool gets
    the function tool's errors only. The tags hold a dash: error locations drop them
    (`kronk.server.errors.param_path`), so `tools[0].function.parameters` stays as is."""
    kind = value.get("type") if isinstance(value, dict) else getattr(value, "type", None)
    return "server-tool" if kind in ("web_search", "web_fetch", "mcp") else "function-tool"


ServerTool = Annotated[ServerToolParam, Tag("server-tool")]


def server_tool_entries(tools: Sequence[BaseModel] | None) -> list[dict[str, Any]]:
    """The server tool entries of a request's `tools`, as dicts."""
    return [t.model_dump(exclude_none=True) for t in tools or () if isinstance(t, ServerToolParam)]


def function_tools(tools: Sequence[BaseModel] | None) -> list[dict[str, Any]] | None:
    """The other entries (the client's functions), as dicts; None without any."""
    out = [
        t.model_dump(exclude_none=True) for t in tools or () if not isinstance(t, ServerToolParam)
    ]
    return out or None


__all__ = ["ServerTool", "ServerToolParam", "function_tools", "server_tool_entries", "tool_kind"]
