"""The OpenAI Responses API (`/v1/responses`), built from a chat turn's neutral events,
and its token count (`/v1/responses/input_tokens`)."""

from __future__ import annotations

import asyncio
import copy
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse, Response

from kronk.agent.loop import merge_tools
from kronk.agent.registry import ToolSpec
from kronk.chat.events import (
    ChatEvent,
    ContentDelta,
    ReasoningDelta,
    ServerToolCall,
    ServerToolResult,
    ToolCallArgumentsDelta,
    ToolCallEnd,
    ToolCallStart,
    TurnFinished,
    TurnUsage,
)
from kronk.engine.request import TokenLogprob
from kronk.errors import KronkError
from kronk.server.common import acquire, answer, batches, server_state, start_all, streamed
from kronk.server.openai import responses_tools as server_items
from kronk.server.openai.errors import error_body
from kronk.server.openai.responses_params import ResponsesRequest
from kronk.server.openai.routes import KEEPALIVE, openai_route
from kronk.server.sse import (
    CLIENT_CLOSED,
    sse,
)
from kronk.server.tools import chat_streams
from kronk.streams import AsyncEventStream


@openai_route("/responses")
async def responses(body: ResponsesRequest, request: Request) -> Response:
    messages = body.messages()
    state = server_state(request)
    kwargs = body.kronk_kwargs()
    # The request's server tools (docs/tools.md), resolved before a model is leased.
    plan = await server_items.plan_tools(request, state, body)
    lease = await acquire(request, body.model, "chat")
    # Like Anthropic's, a Responses request names its server tools: `--tools` is not added.
    (stream,) = await chat_streams(
        request, state, lease, messages, [kwargs], (), extra=plan.specs, configured=False
    )
    await start_all([stream], lease)
    builder = ResponseBuilder(body, lease.model_id, plan.listed)
    if body.stream:
        events = _response_events(stream, builder, request.url.path)
        return streamed(request, events, KEEPALIVE, [stream], lease)
    events_done = await answer(request, stream, lease)
    if events_done is None:
        return Response(status_code=CLIENT_CLOSED)
    builder.start()
    builder.on_events(events_done)
    builder.finish()
    return JSONResponse(builder.response())


@openai_route("/responses/input_tokens")
async def input_tokens(body: ResponsesRequest, request: Request) -> dict[str, Any]:
    """How many tokens the request's input (instructions, input items, tools) takes; the
    server tools it names count with their schemas, as the model is shown them."""
    messages = body.messages()
    kwargs = body.kronk_kwargs()
    plan = await server_items.plan_tools(request, server_state(request), body)
    tools = merge_tools(kwargs.get("tools"), plan.specs)
    async with await acquire(request, body.model, "chat") as lease:
        count = await asyncio.to_thread(
            lease.kronk.count_chat_tokens,
            messages,
            tools=tools,
            chat_template_kwargs=kwargs.get("chat_template_kwargs"),
        )
    return {"object": "response.input_tokens", "input_tokens": count}


async def _response_events(
    stream: AsyncEventStream, builder: ResponseBuilder, path: str
) -> AsyncIterator[bytes]:
    def out(events: list[dict[str, Any]]) -> list[bytes]:
        return [sse(e, e["type"]) for e in events]

    for item in out(builder.start()):
        yield item
    try:
        async for batch in batches(stream):
            for item in out(builder.on_events(batch)):
                yield item
        events = builder.finish()
    except KronkError as exc:
        events = builder.fail(exc, path)
    for item in out(events):
        yield item


class ResponseBuilder:
    """Turns a chat turn's neutral events into a Responses API object and its streaming events.

    Output items open as their first delta arrives: reasoning, then the message, then
    each function call (keyed by the tool call's index); a call closes when it is
    complete, everything else at the end. Server tools (`responses_tools`) add an
    `mcp_list_tools` item per MCP server first, and an item per call kronk runs, which
    closes the text before it (text after it opens a new message).
    """

    def __init__(
        self,
        request: ResponsesRequest,
        model_id: str,
        listed: Sequence[tuple[str, list[ToolSpec]]] = (),
    ) -> None:
        self.request = request
        self._listed = list(listed)
        self.id = f"resp_{uuid.uuid4().hex}"
        self.model = model_id
        self.created_at = int(time.time())
        self.status = "in_progress"
        self.output: list[dict[str, Any]] = []
        self.usage: dict[str, Any] | None = None
        self.error: dict[str, Any] | None = None
        self.incomplete: dict[str, Any] | None = None
        self._seq = 0
        self._open: dict[str, dict[str, Any]] = {}  # "reasoning" | "message" | "call:N" -> item
        self.finished: TurnFinished | None = None

    # -- events --

    def _event(self, kind: str, **fields: Any) -> dict[str, Any]:
        event = {"type": kind, "sequence_number": self._seq, **fields}
        self._seq += 1
        return event

    def item_event(self, kind: str, item: dict[str, Any], **fields: Any) -> dict[str, Any]:
        """An event about one output item (its id and index)."""
        index = self.output.index(item)
        return self._event(kind, item_id=item["id"], output_index=index, **fields)

    def open_item(self, key: str) -> dict[str, Any] | None:
        return self._open.get(key)

    def start(self) -> list[dict[str, Any]]:
        snapshot = self.response()
        return [
            self._event("response.created", response=snapshot),
            self._event("response.in_progress", response=snapshot),
            *server_items.list_items(self, self._listed),
        ]

    def on_events(self, events: Sequence[ChatEvent]) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for event in events:
            if isinstance(event, ReasoningDelta):
                out += self._reasoning_delta(event.text)
            elif isinstance(event, ContentDelta):
                if event.text or event.logprobs:
                    out += self._text_delta(event.text, event.logprobs)
            elif isinstance(event, ToolCallStart):
                out += self._call_start(event)
            elif isinstance(event, ToolCallArgumentsDelta):
                out += self._call_arguments(event)
            elif isinstance(event, ToolCallEnd):
                out += self.close(f"call:{event.index}")
            elif isinstance(event, ServerToolCall):
                out += server_items.call_item(self, event)
            elif isinstance(event, ServerToolResult):
                out += server_items.result_item(self, event)
            elif isinstance(event, TurnFinished):
                self.finished = event
                self.usage = _response_usage(event.usage)
        return out

    def add_item(self, key: str, item: dict[str, Any]) -> list[dict[str, Any]]:
        self.output.append(item)
        self._open[key] = item
        index = len(self.output) - 1
        # A copy: the item grows after this event is made, and events may be sent later.
        added = copy.deepcopy(item)
        return [self._event("response.output_item.added", output_index=index, item=added)]

    def _reasoning_delta(self, text: str) -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = []
        item = self._open.get("reasoning")
        if item is None:
            events += self.add_item(
                "reasoning",
                {"id": f"rs_{uuid.uuid4().hex}", "type": "reasoning", "summary": [], "content": []},
            )
            item = self._open["reasoning"]
            item["content"].append({"type": "reasoning_text", "text": ""})
        item["content"][0]["text"] += text
        events.append(
            self._event(
                "response.reasoning_text.delta",
                item_id=item["id"],
                output_index=self.output.index(item),
                content_index=0,
                delta=text,
            )
        )
        return events

    def _text_delta(self, text: str, logprobs: Sequence[TokenLogprob]) -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = []
        item = self._open.get("message")
        if item is None:
            events += self.close("reasoning")
            events += self.add_item(
                "message",
                {
                    "id": f"msg_{uuid.uuid4().hex}",
                    "type": "message",
                    "status": "in_progress",
                    "role": "assistant",
                    "content": [],
                },
            )
            item = self._open["message"]
            part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
            item["content"].append(part)
            events.append(
                self._event(
                    "response.content_part.added",
                    item_id=item["id"],
                    output_index=self.output.index(item),
                    content_index=0,
                    part=dict(part, logprobs=[]),
                )
            )
        part = item["content"][0]
        part["text"] += text
        converted = [_response_logprob(lp) for lp in logprobs]
        part["logprobs"] += converted
        events.append(
            self._event(
                "response.output_text.delta",
                item_id=item["id"],
                output_index=self.output.index(item),
                content_index=0,
                delta=text,
                logprobs=converted,
            )
        )
        return events

    def _call_start(self, call: ToolCallStart) -> list[dict[str, Any]]:
        events = self.close("reasoning") + self.close("message")
        item = {
            "id": f"fc_{uuid.uuid4().hex}",
            "type": "function_call",
            "status": "in_progress",
            "call_id": call.id,
            "name": call.name,
            "arguments": "",
        }
        return events + self.add_item(f"call:{call.index}", item)

    def _call_arguments(self, delta: ToolCallArgumentsDelta) -> list[dict[str, Any]]:
        item = self._open.get(f"call:{delta.index}")
        if item is None or not delta.arguments:
            return []
        item["arguments"] += delta.arguments
        return [
            self._event(
                "response.function_call_arguments.delta",
                item_id=item["id"],
                output_index=self.output.index(item),
                delta=delta.arguments,
            )
        ]

    def close(self, key: str, status: str = "completed") -> list[dict[str, Any]]:
        item = self._open.pop(key, None)
        if item is None:
            return []
        index = self.output.index(item)
        events: list[dict[str, Any]] = []
        if item["type"] == "message":
            item["status"] = status
            part = item["content"][0]
            events.append(
                self._event(
                    "response.output_text.done",
                    item_id=item["id"],
                    output_index=index,
                    content_index=0,
                    text=part["text"],
                    logprobs=part["logprobs"],
                )
            )
            events.append(
                self._event(
                    "response.content_part.done",
                    item_id=item["id"],
                    output_index=index,
                    content_index=0,
                    part=dict(part),
                )
            )
        elif item["type"] == "function_call":
            item["status"] = status
            events.append(
                self._event(
                    "response.function_call_arguments.done",
                    item_id=item["id"],
                    output_index=index,
                    name=item["name"],
                    arguments=item["arguments"],
                )
            )
        elif item["type"] == "reasoning":
            events.append(
                self._event(
                    "response.reasoning_text.done",
                    item_id=item["id"],
                    output_index=index,
                    content_index=0,
                    text=item["content"][0]["text"],
                )
            )
        events.append(self._event("response.output_item.done", output_index=index, item=item))
        return events

    def finish(self) -> list[dict[str, Any]]:
        """The closing events; a turn that failed raises its error (see `fail`)."""
        if self.finished is not None and self.finished.error is not None:
            raise self.finished.error
        truncated = self.finished is not None and self.finished.reason == "max_tokens"
        status = "incomplete" if truncated else "completed"
        events: list[dict[str, Any]] = []
        for key in list(self._open):
            events += self.close(key, status)
        self.status = status
        if truncated:
            self.incomplete = {"reason": "max_output_tokens"}
        kind = "response.incomplete" if truncated else "response.completed"
        events.append(self._event(kind, response=self.response()))
        return events

    def fail(self, exc: KronkError, path: str) -> list[dict[str, Any]]:
        error = error_body(exc, path)["error"]
        self.status = "failed"
        self.error = {"code": error["code"] or error["type"], "message": error["message"]}
        return [self._event("response.failed", response=self.response())]

    # -- the response object --

    def response(self) -> dict[str, Any]:
        req = self.request
        fmt = req.text.format if req.text and req.text.format else None
        text_format: dict[str, Any] = {"type": "text"}
        if fmt is not None:
            text_format = fmt.model_dump(exclude_none=True, by_alias=True)
        tools = server_items.echoed_tools(req)
        return {
            "id": self.id,
            "object": "response",
            "created_at": self.created_at,
            "status": self.status,
            "completed_at": int(time.time()) if self.status == "completed" else None,
            "error": self.error,
            "incomplete_details": self.incomplete,
            "instructions": req.instructions,
            "max_output_tokens": req.max_output_tokens,
            "model": self.model,
            "output": [dict(item) for item in self.output],
            "parallel_tool_calls": req.parallel_tool_calls is not False,
            "previous_response_id": None,
            "reasoning": {
                "effort": req.reasoning.effort if req.reasoning else None,
                "summary": None,
            },
            "store": False,
            "temperature": req.temperature,
            "text": {"format": text_format},
            "tool_choice": req.tool_choice if req.tool_choice is not None else "auto",
            "tools": tools,
            "top_p": req.top_p,
            "truncation": "disabled",
            "usage": self.usage,
            "user": req.user,
            "metadata": req.metadata or {},
        }


def _response_usage(usage: TurnUsage) -> dict[str, Any]:
    return {
        "input_tokens": usage.prompt_tokens,
        # kronk keeps the KV of every prompt token it computes: those are cache writes.
        "input_tokens_details": {
            "cached_tokens": usage.cached_tokens,
            "cache_write_tokens": usage.prompt_tokens - usage.cached_tokens,
        },
        "output_tokens": usage.completion_tokens,
        "output_tokens_details": {"reasoning_tokens": usage.reasoning_tokens},
        "total_tokens": usage.total_tokens,
    }


def _response_logprob(lp: TokenLogprob) -> dict[str, Any]:
    return {
        "token": lp.token,
        "logprob": lp.logprob,
        "bytes": lp.bytes,
        "top_logprobs": [
            {"token": t.token, "logprob": t.logprob, "bytes": t.bytes} for t in lp.top
        ],
    }


__all__ = ["ResponseBuilder", "input_tokens", "responses"]
