"""The server-side tool loop, protocol-neutral.

`ToolLoop` runs a chat turn and, when the turn ends with calls of tools kronk runs,
runs them (concurrently, each within its time limit), appends the assistant's calls and
the results to the messages and starts the next turn, until the model answers, a
client-side tool is called, or the limits (rounds, total time) are reached; then one
more turn without the server tools lets the model answer with what it has.

It reads like one `AsyncEventStream` (`start`, `next_batch`, `aclose`): one
`TurnStarted`, every turn's text, client tool calls (renumbered from 0), the server
calls as `ServerToolCall` / `ServerToolResult`, and one `TurnFinished` with the usage
of all the turns. Closing it (a client that went away) cancels the calls in flight.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from kronk.agent.config import ToolsConfig
from kronk.agent.registry import ToolRegistry, ToolSpec
from kronk.agent.result import ToolResult, error_result
from kronk.chat.events import (
    ChatEvent,
    ContentDelta,
    ServerToolCall,
    ServerToolResult,
    ToolCallArgumentsDelta,
    ToolCallEnd,
    ToolCallStart,
    TurnFinished,
    TurnStarted,
    TurnUsage,
)
from kronk.errors import InvalidRequestError
from kronk.streams import AsyncEventStream

# Starts one turn: (messages, keyword arguments of `Kronk.achat_events`) -> its stream.
StartTurn = Callable[[list[dict[str, Any]], dict[str, Any]], AsyncEventStream]
# Runs one server tool call: (spec, JSON arguments) -> its result; `ToolRegistry.call`
# unless a protocol adds per-request rules (Anthropic's max_uses, domain filters).
CallTool = Callable[[ToolSpec, str], Awaitable[ToolResult]]


def merge_tools(
    client_tools: Sequence[dict[str, Any]] | None, server: Sequence[ToolSpec]
) -> list[dict[str, Any]] | None:
    """The tools the model is offered: the client's, then the server's."""
    client = list(client_tools or ())
    names = {t.get("function", {}).get("name") for t in client}
    clash = [s.name for s in server if s.name in names]
    if clash:
        raise InvalidRequestError(
            f"tool {clash[0]!r} is both a client tool and a server tool", "tools"
        )
    tools = client + [s.chat_tool() for s in server]
    return tools or None


def _sum_usage(a: TurnUsage | None, b: TurnUsage) -> TurnUsage:
    if a is None:
        return b
    engine = dataclasses.replace(
        b.engine,
        prompt_tokens=a.engine.prompt_tokens + b.engine.prompt_tokens,
        completion_tokens=a.engine.completion_tokens + b.engine.completion_tokens,
        cached_tokens=a.engine.cached_tokens + b.engine.cached_tokens,
        queue_seconds=a.engine.queue_seconds + b.engine.queue_seconds,
        time_to_first_token=a.engine.time_to_first_token,
        prompt_seconds=a.engine.prompt_seconds + b.engine.prompt_seconds,
        generation_seconds=a.engine.generation_seconds + b.engine.generation_seconds,
    )
    return TurnUsage(
        prompt_tokens=a.prompt_tokens + b.prompt_tokens,
        completion_tokens=a.completion_tokens + b.completion_tokens,
        cached_tokens=a.cached_tokens + b.cached_tokens,
        reasoning_tokens=a.reasoning_tokens + b.reasoning_tokens,
        engine=engine,
    )


class ToolLoop(AsyncEventStream):
    """An `AsyncEventStream` (so the routes' helpers take it as one turn) whose events
    span every turn of the loop."""

    def __init__(
        self,
        start_turn: StartTurn,
        messages: list[dict[str, Any]],
        kwargs: dict[str, Any],
        registry: ToolRegistry,
        server_tools: Sequence[ToolSpec],
        config: ToolsConfig | None = None,
        call_tool: CallTool | None = None,
    ) -> None:
        # The base class's state is not used: each turn has its own stream.
        self._start_turn = start_turn
        self.messages = list(messages)
        self._kwargs = dict(kwargs)
        self._client_tools = kwargs.get("tools")
        self._registry = registry
        self._call_tool = call_tool or registry.call
        self._specs = {s.name: s for s in server_tools}
        self._config = config or registry.config
        self._kwargs["tools"] = merge_tools(self._client_tools, server_tools)
        self._deadline = time.monotonic() + self._config.total_timeout
        self._stream: AsyncEventStream | None = None
        self._out: list[ChatEvent] = []
        self._done = False
        self._started = False
        self.rounds = 0  # turns that ended in server tool calls
        self._usage: TurnUsage | None = None
        self._pending_finish: TurnFinished | None = None
        self._pending_events: list[ChatEvent] = []
        self._reset_round()

    def _reset_round(self) -> None:
        self._text = ""
        self._server_index: set[int] = set()
        self._client_index: dict[int, int] = {}
        self._server_calls: list[ServerToolCall] = []
        self._client_calls = 0

    async def start(self) -> None:
        """Start the first turn (bad input raises here, before any response)."""
        if self._stream is None:
            self._stream = self._start_turn(self.messages, self._kwargs)
            await self._stream.start()

    async def next_batch(self) -> list[ChatEvent]:
        """The next events (empty at the end)."""
        await self.start()
        while not self._out and not self._done:
            await self._advance()
        out, self._out = self._out, []
        return out

    @property
    def turn(self) -> Any:
        assert self._stream is not None, "the loop has not started"
        return self._stream.turn

    async def __anext__(self) -> ChatEvent:
        while not self._pending_events:
            self._pending_events = await self.next_batch()
            if not self._pending_events:
                raise StopAsyncIteration
        return self._pending_events.pop(0)

    def __del__(self) -> None:  # each turn's stream cancels itself when collected
        pass

    async def aclose(self) -> None:
        self._done = True
        if self._stream is not None:
            await self._stream.aclose()

    async def _advance(self) -> None:
        assert self._stream is not None
        finished = self._pending_finish
        if finished is not None:  # the calls were announced: run them now
            self._pending_finish = None
            self._out += await self._run_round(finished)
            return
        batch = await self._stream.next_batch()
        for event in batch:
            self._take(event)
        if not batch and not self._done:  # a stream that ended without TurnFinished
            self._done = True

    def _take(self, event: ChatEvent) -> None:
        if isinstance(event, TurnStarted):
            if not self._started:
                self._started = True
                self._out.append(event)
        elif isinstance(event, ContentDelta):
            self._text += event.text
            self._out.append(event)
        elif isinstance(event, ToolCallStart):
            if event.name in self._specs:
                self._server_index.add(event.index)
            else:
                index = self._client_index.setdefault(event.index, len(self._client_index))
                self._out.append(dataclasses.replace(event, index=index))
        elif isinstance(event, ToolCallArgumentsDelta):
            if event.index not in self._server_index:
                index = self._client_index.get(event.index, event.index)
                self._out.append(dataclasses.replace(event, index=index))
        elif isinstance(event, ToolCallEnd):
            self._take_end(event)
        elif isinstance(event, TurnFinished):
            self._usage = _sum_usage(self._usage, event.usage)
            if event.reason == "tool_calls" and self._server_calls:
                self._pending_finish = event
            else:
                # Calls cut short (max_tokens) have repaired, possibly wrong arguments: not
                # run, but the client saw them announced and sees why they did not run.
                self._out += [
                    ServerToolResult(c.id, c.name, f"not run: the turn ended ({event.reason})"
                                     " before the call was complete", True, c.source, c.tool)
                    for c in self._server_calls
                ]  # fmt: skip
                self._finish(event)
        else:
            self._out.append(event)

    def _take_end(self, event: ToolCallEnd) -> None:
        spec = self._specs.get(event.name)
        if spec is None:
            self._client_calls += 1
            index = self._client_index.get(event.index, event.index)
            self._out.append(dataclasses.replace(event, index=index))
            return
        call = ServerToolCall(
            event.id, event.name, event.arguments, spec.source,
            spec.remote_name or spec.name, self.rounds + 1,
        )  # fmt: skip
        self._server_calls.append(call)
        self._out.append(call)

    def _finish(self, event: TurnFinished) -> None:
        assert self._usage is not None
        reason = "tool_calls" if self._client_calls else event.reason
        self._out.append(dataclasses.replace(event, reason=reason, usage=self._usage))
        self._done = True

    async def _run_round(self, finished: TurnFinished) -> list[ChatEvent]:
        """Run the round's server calls, then start the next turn."""
        calls, client_calls = self._server_calls, self._client_calls
        results = await self._run_calls(calls)
        out: list[ChatEvent] = [
            ServerToolResult(c.id, c.name, r.content, r.is_error, c.source, c.tool, r.data)
            for c, r in zip(calls, results, strict=True)
        ]
        self.rounds += 1
        self.messages.append(
            {
                "role": "assistant",
                "content": self._text or None,
                "tool_calls": [
                    {"id": c.id, "type": "function",
                     "function": {"name": c.name, "arguments": c.arguments}}
                    for c in calls
                ],
            }
        )  # fmt: skip
        for call, result in zip(calls, results, strict=True):
            content = f"Error: {result.content}" if result.is_error else result.content
            self.messages.append(
                {"role": "tool", "tool_call_id": call.id, "name": call.name, "content": content}
            )
        self._reset_round()
        if client_calls:  # the client's calls go back to it: this request ends here
            self._client_calls = client_calls
            self._out = out
            self._finish(finished)
            return []
        await self._next_turn()
        return out

    async def _next_turn(self) -> None:
        kwargs = dict(self._kwargs)
        # A named choice was for the first round: later turns are free, so the model can
        # answer. "required" with client tools holds on, so the answer still ends in a
        # client call as the client asked (agent frameworks' output tools rely on it).
        choice = kwargs.pop("tool_choice", None)
        if choice == "required" and self._client_tools:
            kwargs["tool_choice"] = choice
        if self.rounds >= self._config.max_rounds or time.monotonic() >= self._deadline:
            kwargs["tools"] = merge_tools(self._client_tools, [])  # no more server tools
        if self._stream is not None:
            await self._stream.aclose()
        self._stream = self._start_turn(self.messages, kwargs)
        await self._stream.start()

    async def _run_calls(self, calls: Sequence[ServerToolCall]) -> list[ToolResult]:
        limit = asyncio.Semaphore(self._config.max_concurrent_calls)

        async def one(call: ServerToolCall) -> ToolResult:
            async with limit:
                return await self._call_tool(self._specs[call.name], call.arguments)

        tasks = [asyncio.ensure_future(one(c)) for c in calls]
        remaining = max(0.0, self._deadline - time.monotonic())
        try:
            await asyncio.wait(tasks, timeout=remaining)
        finally:  # cancelled (the client left) or out of time: stop what still runs
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        out: list[ToolResult] = []
        for task in tasks:
            if task.cancelled():
                out.append(error_result("the request's time limit for tools ran out"))
            else:
                out.append(task.result())
        return out


__all__ = ["CallTool", "StartTurn", "ToolLoop", "merge_tools"]
