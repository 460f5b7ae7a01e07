"""What a tool call gives back: text for the model, whether it failed, and structured
data for the protocols that show it (search results, for example)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

# Why a call failed, for the protocols that show a code (Anthropic's error_code): the
# arguments were wrong, the address or URL is not allowed, the content type is not read,
# the output is over the limit, the call ran out of time, the source could not be reached,
# or anything else.
FailureKind = Literal[
    "invalid_input", "not_allowed", "unsupported_type", "too_large", "timeout", "unreachable",
    "failed",
]  # fmt: skip


@dataclass(frozen=True)
class ToolResult:
    content: str
    is_error: bool = False
    data: Any = None
    failure: FailureKind | None = None  # set on error results


class ToolError(Exception):
    """A tool failed in a way the model should be told about (becomes an error result)."""

    def __init__(self, message: str, failure: FailureKind = "failed") -> None:
        super().__init__(message)
        self.failure: FailureKind = failure


def error_result(message: str, failure: FailureKind = "failed") -> ToolResult:
    return ToolResult(message, is_error=True, failure=failure)


__all__ = ["FailureKind", "ToolError", "ToolResult", "error_result"]
