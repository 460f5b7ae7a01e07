"""Serving logic of the Anthropic Messages API: `/v1/messages` (plain and streamed) and
`/v1/messages/count_tokens`. Query strings such as `?beta=true` are accepted; both
`x-api-key` and `Authorization: Bearer` are accepted (and checked by the security
layer, when one is configured); every response carries a `request-id` header. A request
with server tools or MCP servers runs as a tool loop (server_tools.py)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from kronk.agent.loop import merge_tools
from kronk.errors import KronkError
from kronk.server.anthropic.errors import error_body, render
from kronk.server.anthropic.messages import MessageBuilder
from kronk.server.anthropic.protocol import CountTokensRequest, MessagesRequest
from kronk.server.anthropic.server_tools import requested_tools, resolve, tool_loop
from kronk.server.common import (
    acquire,
    answer,
    batches,
    server_state,
    start_all,
    start_chat,
    streamed,
)
from kronk.server.errors import protocol_route
from kronk.server.sse import (
    CLIENT_CLOSED,
    sse,
)
from kronk.streams import AsyncEventStream

router = APIRouter(route_class=protocol_route(render))
PING = sse({"type": "ping"}, "ping")


@router.post("/v1/messages", response_model=None)
async def messages(body: MessagesRequest, request: Request) -> Response:
    chat_messages = body.chat_messages()
    kwargs = body.kronk_kwargs()
    state = server_state(request)
    wanted = requested_tools(body, state.tools)
    server_usage: dict[str, int] | None = None
    stream: AsyncEventStream
    if wanted:
        lease = await acquire(request, body.model, "chat")
        stream, runner = await tool_loop(request, state, lease, chat_messages, kwargs, wanted)
        await start_all([stream], lease)
        server_usage = runner.usage if wanted.builtins else None
    else:
        lease, stream = await start_chat(request, body.model, chat_messages, kwargs)
    builder = MessageBuilder(lease.model_id, server_usage)
    if body.stream:
        return streamed(request, _message_events(stream, builder), PING, [stream], lease)
    events = await answer(request, stream, lease)
    if events is None:
        return Response(status_code=CLIENT_CLOSED)
    builder.on_events(events)
    return JSONResponse(builder.message())


async def _message_events(
    stream: AsyncEventStream, builder: MessageBuilder
) -> AsyncIterator[bytes]:
    try:
        async for batch in batches(stream):
            for event in builder.on_events(batch):
                yield sse(event, event["type"])
    except KronkError as exc:
        yield sse(error_body(exc), "error")


@router.post("/v1/messages/count_tokens")
async def count_tokens(body: CountTokensRequest, request: Request) -> dict[str, Any]:
    """The prompt's real token count: what `input_tokens + cache_read_input_tokens` of
    the same request to /v1/messages will be (of its first turn, where kronk runs server
    tools: later turns add their own)."""
    full = body.as_messages_request()
    chat_messages = full.chat_messages()
    kwargs = full.kronk_kwargs()
    state = server_state(request)
    wanted = requested_tools(full, state.tools)
    async with await acquire(request, body.model, "chat") as lease:
        # Server tools are in the first turn's prompt, as the loop offers them.
        specs = await resolve(request, state, lease.model_id, wanted) if wanted else []
        count = await asyncio.to_thread(
            lease.kronk.count_chat_tokens,
            chat_messages,
            tools=merge_tools(kwargs.get("tools"), specs),
            chat_template_kwargs=kwargs.get("chat_template_kwargs"),
        )
    return {"input_tokens": count}


class RequestIdMiddleware:
    """Adds Anthropic's `request-id` header to every response under /v1/messages."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith("/v1/messages"):
            await self.app(scope, receive, send)
            return
        request_id = f"req_{uuid.uuid4().hex}".encode()

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers.append((b"request-id", request_id))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_id)


__all__ = ["RequestIdMiddleware", "router"]
