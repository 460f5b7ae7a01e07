"""Ollama's replies built from a turn's neutral events (`kronk.chat.events`).

A streamed reply is NDJSON: one object per engine step with the new text (`message`
for /api/chat, `response` for /api/generate), a tool call as one object once the model
has written all of it (Ollama never streams a call's arguments), and a last object
with `done: true`, the reason, and counts and durations in nanoseconds. A reply that
is not streamed is that last object with the whole text.
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from typing import Any, Literal

from kronk.chat.events import (
    ChatEvent,
    ContentDelta,
    ReasoningDelta,
    ServerToolCall,
    ServerToolResult,
    ToolCallEnd,
    TurnFinished,
)
from kronk.errors import KronkError

Kind = Literal["chat", "generate"]
_DONE_REASONS = {"max_tokens": "length"}  # every other way to finish is Ollama's "stop"
NS = 1_000_000_000


def created_at() -> str:
    """Now, as Ollama writes times (RFC 3339, UTC)."""
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


def ndjson(data: dict[str, Any]) -> bytes:
    return json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode() + b"\n"


def nanoseconds(seconds: float) -> int:
    return max(0, round(seconds * NS))


def tool_call_json(call: ToolCallEnd) -> dict[str, Any]:
    """A call as Ollama returns it: arguments as an object, not JSON text."""
    try:
        arguments = json.loads(call.arguments) if call.arguments.strip() else {}
    except json.JSONDecodeError:  # the parser repairs calls; keep the text if it could not
        arguments = {"arguments": call.arguments}
    if not isinstance(arguments, dict):
        arguments = {"value": arguments}
    return {
        "id": call.id,
        "function": {"index": call.index, "name": call.name, "arguments": arguments},
    }


class ReplyBuilder:
    """Ollama's objects of one reply, built as the events come."""

    def __init__(
        self,
        model: str,
        kind: Kind,
        *,
        started: float,
        load_seconds: float = 0.0,
        show_thinking: bool = True,
    ) -> None:
        """`started` is the request's start (time.monotonic()); `load_seconds` the time it
        waited for the model to load; `show_thinking` False drops reasoning text."""
        self.model = model
        self.kind = kind
        self.started = started
        self.load_seconds = load_seconds
        self.show_thinking = show_thinking
        self.content: list[str] = []
        self.thinking: list[str] = []
        self.tool_calls: list[dict[str, Any]] = []
        # Tools kronk ran (docs/tools.md), by call id: kronk's extension to the message.
        self.server_tool_calls: dict[str, dict[str, Any]] = {}
        self.finished: TurnFinished | None = None

    def _object(self, text: str, thinking: str, calls: list[dict[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {"model": self.model, "created_at": created_at()}
        if self.kind == "chat":
            message: dict[str, Any] = {"role": "assistant", "content": text}
            if thinking:
                message["thinking"] = thinking
            if calls:
                message["tool_calls"] = calls
            out["message"] = message
        else:
            out["response"] = text
            if thinking:
                out["thinking"] = thinking
        return out

    def on_events(self, events: list[ChatEvent]) -> list[dict[str, Any]]:
        """The streamed objects for one engine step's events. A failed turn raises its
        error (the caller sends it as an error line)."""
        text: list[str] = []
        thinking: list[str] = []
        out: list[dict[str, Any]] = []
        for event in events:
            if isinstance(event, ContentDelta):
                text.append(event.text)
            elif isinstance(event, ReasoningDelta) and self.show_thinking:
                thinking.append(event.text)
            elif isinstance(event, ToolCallEnd):
                call = tool_call_json(event)
                self.tool_calls.append(call)
                out.append({**self._object("", "", [call]), "done": False})
            elif isinstance(event, TurnFinished):
                self.finished = event
            elif isinstance(event, ServerToolCall | ServerToolResult) and self.kind == "chat":
                out.append(self._server_tool(event))
        self.content += text
        self.thinking += thinking
        if "".join(text) or "".join(thinking):
            out.insert(0, {**self._object("".join(text), "".join(thinking), []), "done": False})
        if self.finished is not None:
            out.append(self.final(streamed=True))
        return out

    def _server_tool(self, event: ServerToolCall | ServerToolResult) -> dict[str, Any]:
        """A streamed object for a server tool's call or result."""
        info: dict[str, Any] = {"id": event.id, "name": event.name, "source": event.source}
        if isinstance(event, ServerToolCall):
            try:  # Ollama's calls carry their arguments as an object
                info["arguments"] = json.loads(event.arguments or "{}")
            except ValueError:
                info["arguments"] = event.arguments
        else:
            info.update(output=event.content, is_error=event.is_error)
        self.server_tool_calls[event.id] = {**self.server_tool_calls.get(event.id, {}), **info}
        out = self._object("", "", [])
        out["message"]["server_tool_calls"] = [info]
        return {**out, "done": False}

    def final(self, *, streamed: bool) -> dict[str, Any]:
        """The last object: the whole reply when not streamed, else only the stats."""
        finished = self.finished
        assert finished is not None, "the turn has not finished"
        if finished.reason == "error":
            raise finished.error or KronkError("generation failed")
        if streamed:
            out = self._object("", "", [])
        else:
            out = self._object("".join(self.content), "".join(self.thinking), self.tool_calls)
            if self.server_tool_calls and "message" in out:
                out["message"]["server_tool_calls"] = list(self.server_tool_calls.values())
        usage = finished.usage
        return {
            **out,
            "done": True,
            "done_reason": _DONE_REASONS.get(finished.reason, "stop"),
            "total_duration": nanoseconds(time.monotonic() - self.started),
            "load_duration": nanoseconds(self.load_seconds),
            "prompt_eval_count": usage.prompt_tokens,
            "prompt_eval_duration": nanoseconds(usage.engine.prompt_seconds),
            "eval_count": usage.completion_tokens,
            "eval_duration": nanoseconds(usage.engine.generation_seconds),
        }

    def loaded(self, reason: Literal["load", "unload"]) -> dict[str, Any]:
        """The reply to a request without a prompt, which only loads (or unloads)."""
        return {
            **self._object("", "", []),
            "done": True,
            "done_reason": reason,
            "total_duration": nanoseconds(time.monotonic() - self.started),
            "load_duration": nanoseconds(self.load_seconds),
        }


__all__ = ["ReplyBuilder", "created_at", "nanoseconds", "ndjson", "tool_call_json"]
