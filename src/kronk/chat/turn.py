"""From the engine's events to the protocol-neutral events of one turn.

`ChatTurn` runs a chat answer through the reasoning parser and then (with tools) the
tool-call parser; `TextTurn` passes a raw completion's text through as content. Both
emit `kronk.chat.events`, the one stream every protocol adapter is built from.
"""

from __future__ import annotations

import time

from kronk.chat.events import (
    ChatEvent,
    ContentDelta,
    ReasoningDelta,
    StopReason,
    ToolCallArgumentsDelta,
    ToolCallEnd,
    ToolCallStart,
    TurnFinished,
    TurnStarted,
    TurnUsage,
)
from kronk.chat.reasoning import ReasoningParser
from kronk.chat.tools import ToolCallParser
from kronk.engine.request import Admitted, Event, Failed, Finished, TextDelta, Usage
from kronk.telemetry.tracing import current_span, record_span

_ENGINE_REASONS: dict[str, StopReason] = {"length": "max_tokens", "cancelled": "cancelled"}


class TextTurn:
    """A raw completion: every piece of text is content."""

    def __init__(self) -> None:
        self.finished: TurnFinished | None = None

    @property
    def wants_stop(self) -> bool:
        return False

    def stop_early(self) -> None:  # pragma: no cover - a text turn never asks to stop
        pass

    def on_event(self, event: Event) -> list[ChatEvent]:
        if isinstance(event, Admitted):
            return [TurnStarted(event.prompt_tokens, event.cached_tokens)]
        if isinstance(event, TextDelta):
            return [ContentDelta(event.text, event.logprobs)]
        self.finished = _finished(event, None, 0)
        return [self.finished]


class ChatTurn:
    """One chat answer: reasoning, content and tool calls, parsed as they stream."""

    def __init__(
        self,
        model: str,
        *,
        starts_in_reasoning: bool,
        tool_parser: ToolCallParser | None = None,
    ) -> None:
        self.model = model
        self._reasoning = ReasoningParser(starts_in_reasoning=starts_in_reasoning)
        self._tools = tool_parser
        self._reasoning_tokens = 0
        self._stopped_early = False
        self._calls: dict[int, ToolCallStart] = {}
        self.finished: TurnFinished | None = None
        # The caller's span (tracing on): parsing time is summed and recorded under it.
        self._span = current_span()
        self._parse_seconds = 0.0

    @property
    def wants_stop(self) -> bool:
        """Whether the rest of the generation would be ignored (one call, parallel off)."""
        return self._tools is not None and self._tools.done

    def stop_early(self) -> None:
        """The stream cancels the generation because `wants_stop`: it ended with a call."""
        self._stopped_early = True

    def on_event(self, event: Event) -> list[ChatEvent]:
        if self._span is None:  # not traced: no timing
            return self._on_event(event)
        start = time.perf_counter()
        out = self._on_event(event)
        self._parse_seconds += time.perf_counter() - start
        if isinstance(event, Finished | Failed):
            record_span(
                self._span,
                "kronk.parse",
                self._parse_seconds,
                model=self.model,
                tool_calls=len(self._calls),
            )
        return out

    def _on_event(self, event: Event) -> list[ChatEvent]:
        if isinstance(event, Admitted):
            return [TurnStarted(event.prompt_tokens, event.cached_tokens)]
        if isinstance(event, Failed):
            self.finished = _finished(event, None, self._reasoning_tokens)
            return [*self._end_calls(), self.finished]
        final = not isinstance(event, TextDelta)
        if isinstance(event, TextDelta):
            if self._reasoning.in_reasoning:
                self._reasoning_tokens += 1
            split = self._reasoning.push(event.text)
        else:
            split = self._reasoning.flush()
        content, reasoning = split.content, split.reasoning
        out: list[ChatEvent] = []
        calls = []
        if self._tools is not None:
            parsed = [self._tools.push(content)]
            if final:
                parsed.append(self._tools.flush())
            content = "".join(p.content for p in parsed)
            reasoning += "".join(p.reasoning for p in parsed)
            calls = [call for p in parsed for call in p.tool_calls]
        if reasoning:
            out.append(ReasoningDelta(reasoning))
        logprobs = event.logprobs if isinstance(event, TextDelta) else []
        if content or logprobs:
            out.append(ContentDelta(content, logprobs))
        for call in calls:
            if call.name is not None:
                start = ToolCallStart(call.index, call.id or "", call.name)
                self._calls[call.index] = start
                out.append(start)
            if call.arguments:
                out.append(ToolCallArgumentsDelta(call.index, call.arguments))
        if isinstance(event, Finished):
            out += self._end_calls()
            self.finished = _finished(event, self._reason(event), self._reasoning_tokens)
            out.append(self.finished)
        return out

    def _end_calls(self) -> list[ChatEvent]:
        if self._tools is None:
            return []
        final = {c.id: c for c in self._tools.tool_calls}
        out: list[ChatEvent] = []
        for index, start in sorted(self._calls.items()):
            call = final.get(start.id)
            arguments = call.arguments if call is not None else "{}"
            out.append(ToolCallEnd(index, start.id, start.name, arguments))
        return out

    def _reason(self, event: Finished) -> StopReason:
        made_calls = bool(self._calls)
        stopped = event.reason == "stop" or (event.reason == "cancelled" and self._stopped_early)
        if made_calls and stopped:
            return "tool_calls"
        return _engine_reason(event)


def _engine_reason(event: Finished) -> StopReason:
    if event.reason == "stop":
        return "stop_sequence" if event.stop_sequence is not None else "end"
    return _ENGINE_REASONS[event.reason]


def _finished(
    event: Finished | Failed, reason: StopReason | None, reasoning_tokens: int
) -> TurnFinished:
    if isinstance(event, Failed):
        usage = Usage(0, 0, 0, 0.0, 0.0, 0.0, 0.0)
        return TurnFinished("error", _turn_usage(usage, reasoning_tokens), error=event.error)
    reason = reason or _engine_reason(event)
    stop = event.stop_sequence if reason == "stop_sequence" else None
    return TurnFinished(reason, _turn_usage(event.usage, reasoning_tokens), stop)


def _turn_usage(usage: Usage, reasoning_tokens: int) -> TurnUsage:
    return TurnUsage(
        prompt_tokens=usage.prompt_tokens,
        completion_tokens=usage.completion_tokens,
        cached_tokens=usage.cached_tokens,
        reasoning_tokens=min(reasoning_tokens, usage.completion_tokens),
        engine=usage,
    )


__all__ = ["ChatTurn", "TextTurn"]
