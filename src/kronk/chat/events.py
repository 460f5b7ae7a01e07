"""The protocol-neutral events of one chat turn.

`kronk.chat.turn.ChatTurn` makes these from the engine's events (text split into
reasoning, content and tool calls); every protocol adapter (OpenAI chunks, Responses
events, Anthropic events, Ollama NDJSON) and the SDK's OpenAI-shaped objects are built
from them, so no protocol is ever translated from another.

A turn's events come in this order: `TurnStarted` once (when the prompt has a slot),
then any mix of `ReasoningDelta`, `ContentDelta` and tool-call events (a call's
`ToolCallStart`, then its `ToolCallArgumentsDelta`s, then `ToolCallEnd`), and one
`TurnFinished` last.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

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


ChatEvent = (
    TurnStarted
    | ContentDelta
    | ReasoningDelta
    | ToolCallStart
    | ToolCallArgumentsDelta
    | ToolCallEnd
    | TurnFinished
)

__all__ = [
    "ChatEvent",
    "ContentDelta",
    "ReasoningDelta",
    "StopReason",
    "ToolCallArgumentsDelta",
    "ToolCallEnd",
    "ToolCallStart",
    "TurnFinished",
    "TurnStarted",
    "TurnUsage",
]
