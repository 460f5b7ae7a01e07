"""An Anthropic `message`, and its stream of events, built from a turn's neutral events.

The stream is Anthropic's: `message_start` (sent once the prompt has a slot, so its
usage holds the real `input_tokens` and `cache_read_input_tokens`), then for each
content block `content_block_start`, its deltas and `content_block_stop`, then
`message_delta` (stop reason, output tokens) and `message_stop`. Blocks are sequential:
a new kind of output (thinking, text, a tool call) closes the block before it.
A thinking block ends with a `signature_delta`, as Claude Code keeps only signed
thinking blocks in its history. A call kronk runs itself (docs/tools.md) is a block whose
input comes as one `input_json_delta`, its result a block sent whole at
`content_block_start` (tool_blocks.py).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import uuid
from collections.abc import Sequence
from typing import Any

from kronk.chat.events import (
    ChatEvent,
    ContentDelta,
    ReasoningDelta,
    ServerToolCall,
    ServerToolResult,
    StopReason,
    ToolCallArgumentsDelta,
    ToolCallEnd,
    ToolCallStart,
    TurnFinished,
    TurnStarted,
)
from kronk.server.anthropic.tool_blocks import call_block, parse_input, result_block, tool_use_id

_STOP_REASONS: dict[StopReason, str] = {
    "end": "end_turn",
    "stop_sequence": "stop_sequence",
    "max_tokens": "max_tokens",
    "tool_calls": "tool_use",
    "cancelled": "end_turn",
}

# Signs thinking blocks. Random per process: a signature says "this server wrote it";
# kronk never needs to verify one (earlier thinking is not shown to the model again).
_SIGNING_KEY = secrets.token_bytes(32)


def thinking_signature(text: str) -> str:
    digest = hmac.new(_SIGNING_KEY, text.encode("utf-8"), hashlib.sha256).digest()
    return base64.b64encode(digest).decode("ascii")


class MessageBuilder:
    """Feed it a turn's events; it returns the stream events they make (`on_events`) and
    keeps the whole message (`message()`). `server_usage`, where the request has
    web_search or web_fetch, is the count of their requests (Anthropic's
    `usage.server_tool_use`), kept up to date by whoever runs them."""

    def __init__(self, model: str, server_usage: dict[str, int] | None = None) -> None:
        self.id = f"msg_{uuid.uuid4().hex}"
        self.model = model
        self.content: list[dict[str, Any]] = []
        self._open: dict[str, Any] | None = None  # the block being written
        self._open_key: str | None = None  # "thinking" | "text" | "call:N"
        self.server_usage = server_usage
        self.usage: dict[str, Any] = {
            "input_tokens": 0,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
            "output_tokens": 0,
        }
        self.stop_reason: str | None = None
        self.stop_sequence: str | None = None
        self.finished: TurnFinished | None = None

    # -- the message --

    def message(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "type": "message",
            "role": "assistant",
            "model": self.model,
            "content": self.content,
            "stop_reason": self.stop_reason,
            "stop_sequence": self.stop_sequence,
            "usage": self._usage(),
        }

    def _usage(self) -> dict[str, Any]:
        usage = dict(self.usage)
        if self.server_usage is not None:
            usage["server_tool_use"] = dict(self.server_usage)
        return usage

    # -- events --

    def on_events(self, events: Sequence[ChatEvent]) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for event in events:
            if isinstance(event, TurnStarted):
                # Anthropic's rule: input_tokens leaves out what the cache supplied.
                self.usage["input_tokens"] = event.prompt_tokens - event.cached_tokens
                self.usage["cache_read_input_tokens"] = event.cached_tokens
                start = {**self.message(), "content": [], "stop_reason": None}
                out.append({"type": "message_start", "message": start})
            elif isinstance(event, ReasoningDelta):
                out += self._delta("thinking", event.text)
            elif isinstance(event, ContentDelta):
                if event.text:
                    out += self._delta("text", event.text)
            elif isinstance(event, ToolCallStart):
                out += self._start_call(event)
            elif isinstance(event, ToolCallArgumentsDelta):
                out += self._call_arguments(event)
            elif isinstance(event, ToolCallEnd):
                if self._open_key == f"call:{event.index}" and self._open is not None:
                    self._open["input"] = parse_input(event.arguments)
                out += self._close()
            elif isinstance(event, ServerToolCall):
                out += self._server_call(event)
            elif isinstance(event, ServerToolResult):
                out += self._open_block(f"result:{event.id}", result_block(event)) + self._close()
            elif isinstance(event, TurnFinished):
                out += self._finish(event)
        return out

    def _open_block(self, key: str, block: dict[str, Any]) -> list[dict[str, Any]]:
        events = self._close()
        self.content.append(block)
        self._open, self._open_key = block, key
        started = {
            k: ("" if k in ("text", "thinking") else v)
            for k, v in block.items()
            if not k.startswith("_")
        }
        if "input" in block:  # a call's input comes in deltas
            started["input"] = {}
        index = len(self.content) - 1
        return [*events, {"type": "content_block_start", "index": index, "content_block": started}]

    def _delta(self, kind: str, text: str) -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = []
        if self._open_key != kind:
            block: dict[str, Any] = {"type": kind, kind: ""}
            if kind == "thinking":
                block["signature"] = ""
            events += self._open_block(kind, block)
        assert self._open is not None
        self._open[kind] += text
        delta = {"type": f"{kind}_delta", kind: text}
        events.append({"type": "content_block_delta", "index": self._index(), "delta": delta})
        return events

    def _start_call(self, call: ToolCallStart) -> list[dict[str, Any]]:
        block = {"type": "tool_use", "id": tool_use_id(call.id), "name": call.name, "input": {}}
        block["_arguments"] = ""  # the JSON text so far; dropped when the block closes
        return self._open_block(f"call:{call.index}", block)

    def _server_call(self, call: ServerToolCall) -> list[dict[str, Any]]:
        """A call kronk runs: its block, the whole input as one delta, closed."""
        block = call_block(call)
        events = self._open_block(f"server:{call.id}", block)
        if block["input"]:
            arguments = json.dumps(block["input"], ensure_ascii=False)
            delta = {"type": "input_json_delta", "partial_json": arguments}
            events.append({"type": "content_block_delta", "index": self._index(), "delta": delta})
        return events + self._close()

    def _call_arguments(self, delta: ToolCallArgumentsDelta) -> list[dict[str, Any]]:
        if self._open_key != f"call:{delta.index}" or self._open is None or not delta.arguments:
            return []
        self._open["_arguments"] += delta.arguments
        json_delta = {"type": "input_json_delta", "partial_json": delta.arguments}
        return [{"type": "content_block_delta", "index": self._index(), "delta": json_delta}]

    def _close(self) -> list[dict[str, Any]]:
        block = self._open
        if block is None:
            return []
        events: list[dict[str, Any]] = []
        index = self._index()
        if block["type"] == "thinking":
            block["signature"] = thinking_signature(block["thinking"])
            delta = {"type": "signature_delta", "signature": block["signature"]}
            events.append({"type": "content_block_delta", "index": index, "delta": delta})
        elif block["type"] == "tool_use":
            arguments = block.pop("_arguments")
            if not block["input"]:
                block["input"] = parse_input(arguments)
        events.append({"type": "content_block_stop", "index": index})
        self._open = self._open_key = None
        return events

    def _index(self) -> int:
        return len(self.content) - 1

    def _finish(self, finished: TurnFinished) -> list[dict[str, Any]]:
        self.finished = finished
        if finished.error is not None:
            raise finished.error
        events = self._close()
        self.stop_reason = _STOP_REASONS[finished.reason]
        self.stop_sequence = finished.stop_sequence
        usage = finished.usage  # every turn's, where kronk ran tools between turns
        self.usage["output_tokens"] = usage.completion_tokens
        self.usage["input_tokens"] = usage.prompt_tokens - usage.cached_tokens
        self.usage["cache_read_input_tokens"] = usage.cached_tokens
        delta = {"stop_reason": self.stop_reason, "stop_sequence": self.stop_sequence}
        # Cumulative totals, which clients put in place of message_start's.
        totals = {k: v for k, v in self._usage().items() if k != "cache_creation_input_tokens"}
        events.append({"type": "message_delta", "delta": delta, "usage": totals})
        events.append({"type": "message_stop"})
        return events


__all__ = ["MessageBuilder", "thinking_signature", "tool_use_id"]
