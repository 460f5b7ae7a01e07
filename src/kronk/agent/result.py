"""What a tool call gives back: text for the model, whether it failed, and structured
data for the protocols that show it (search results, for example)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ToolResult:
    content: str
    is_error: bool = False
    data: Any = None


class ToolError(Exception):
    """A tool failed in a way the model should be told about (becomes an error result)."""


def error_result(message: str) -> ToolResult:
    return ToolResult(message, is_error=True)


__all__ = ["ToolError", "ToolResult", "error_result"]
