"""The protocol-neutral events of one chat turn.

`kronk.chat.turn.ChatTurn` makes these from the engine's events (text split into
reasoning, content and tool calls); every protocol adapter (OpenAI chunks, Responses
events, Anthropic events, Ollama NDJSON) and the SDK's OpenAI-shaped objects are built
from them, so no protocol is ever translated from another.

A turn's events come in this order: `TurnStarted` once (when the prompt has a slot),
then any mix of `ReasoningDelta`, `ContentDelta` and tool-call events (a call's
`ToolCallStart`, then its `ToolCallArgumentsDelta`s, then `ToolCallEnd`), and one
`TurnFinished` last.

When kronk runs tools itself (`kronk.agent.loop`), one request spans several turns; the
loop passes their events on as one turn's (one `TurnStarted`, one `TurnFinished`) and
reports the calls it runs as `ServerToolCall` and `ServerToolResult` instead of the
tool-call events. Adapters that do not know these two ignore them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from kronk.engine.request import TokenLogprob, Usage
from kronk.errors import KronkError

# Why a turn ended. "end": the model finished on its own (end-of-generation token);
# "stop_sequence": one of the request's stop strings (named in `stop_sequence`);
# "max_tokens": the token limit (or the context) ran out; "tool_calls": it ended with
# calls for the client to run; "cancelled": the caller stopped it; "error": it failed.
StopReason = Literal["end", "stop_sequence", "max_tokens", "tool_calls", "cancelled", "error"]


@dataclass(frozen=True)
class TurnStarted:
    """The prompt has a slot: its size and how much of it the KV cache already held."""

    prompt_tokens: int
    cached_tokens: int


@dataclass(frozen=True)
class ContentDelta:
    """Answer text, with the log probabilities of the tokens that made it (if asked)."""

    text: str
    logprobs: list[TokenLogprob] = field(default_factory=list)


@dataclass(frozen=True)
class ReasoningDelta:
    """Reasoning ("thinking") text, shown apart from the answer."""

    text: str


@dataclass(frozen=True)
class ToolCallStart:
    index: int  # 0, 1, ... in the order the model wrote its calls
    id: str
    name: str


@dataclass(frozen=True)
class ToolCallArgumentsDelta:
    index: int
    arguments: str  # a fragment of the call's JSON arguments


@dataclass(frozen=True)
class ToolCallEnd:
    """A call is complete; `arguments` is its whole (repaired) JSON text."""

    index: int
    id: str
    name: str
    arguments: str


@dataclass(frozen=True)
class TurnUsage:
    """Token counts and timings of a finished turn."""

    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int  # prompt tokens reused from the KV cache (part of prompt_tokens)
    reasoning_tokens: int  # completion tokens spent reasoning (part of completion_tokens)
    engine: Usage  # the engine's timings (queue, prefill, generation, ...)

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True)
class TurnFinished:
    reason: StopReason
    usage: TurnUsage
    stop_sequence: str | None = None  # with reason "stop_sequence"
    error: KronkError | None = None  # with reason "error"


@dataclass(frozen=True)
class ServerToolCall:
    """The model called a tool kronk runs (built-in or MCP); it is about to run."""

    id: str
    name: str  # as the model called it: web_fetch, SERVER__TOOL
    arguments: str  # JSON text
    source: str  # "builtin" or "mcp:SERVER"
    tool: str  # the tool's own name (on its MCP server for MCP tools)
    round: int  # 1 for the calls of the first turn, 2 for the next, ...


@dataclass(frozen=True)
class ServerToolResult:
    """What a server tool gave back (also what the model reads next)."""

    id: str
    name: str
    content: str
    is_error: bool
    source: str
    tool: str
    data: Any = None  # structured output where the tool has one (search results)


ChatEvent = (
    TurnStarted
    | ContentDelta
    | ReasoningDelta
    | ToolCallStart
    | ToolCallArgumentsDelta
    | ToolCallEnd
    | TurnFinished
    | ServerToolCall
    | ServerToolResult
)

__all__ = [
    "ChatEvent",
    "ContentDelta",
    "ReasoningDelta",
    "ServerToolCall",
    "ServerToolResult",
    "StopReason",
    "ToolCallArgumentsDelta",
    "ToolCallEnd",
    "ToolCallStart",
    "TurnFinished",
    "TurnStarted",
    "TurnUsage",
]
