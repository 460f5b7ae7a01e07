"""Server-sent events and disconnects, for every protocol's streams.

Framing is sse-starlette's (`ServerSentEvent.encode`). The response class is ours:
it stops, and frees the request's slot and model lease, as soon as the client goes
away, shielded so that a server shutting down still cleans up. `with_keepalive`
interleaves a protocol's keep-alive (an SSE comment for OpenAI, a `ping` event for
Anthropic, nothing for NDJSON) while a request waits in the queue or prefills.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

from fastapi import Request
from fastapi.responses import StreamingResponse
from sse_starlette import ServerSentEvent
from starlette.types import Receive, Scope, Send

T = TypeVar("T")
CLIENT_CLOSED = 499  # nginx's "client closed request": nobody reads it, the log does


def sse(data: Any, event: str | None = None) -> bytes:
    """One event whose data is `data` as compact JSON."""
    payload = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    return ServerSentEvent(data=payload, event=event, sep=_SEP).encode()


def sse_comment(text: str) -> bytes:
    return ServerSentEvent(comment=text, sep=_SEP).encode()


# Lines end in "\n", as OpenAI's and Anthropic's own streams do (sse-starlette's default
# is "\r\n", which clients accept but line-based readers of these APIs may not).
_SEP = "\n"
SSE_DONE = ServerSentEvent(data="[DONE]", sep=_SEP).encode()


async def with_keepalive(
    items: AsyncIterator[bytes], ping: bytes | None, interval: float
) -> AsyncIterator[bytes]:
    """`items`, with `ping` sent whenever `interval` seconds pass without one."""
    if ping is None:
        async for item in items:
            yield item
        return
    pending: asyncio.Future[bytes] | None = None
    try:
        while True:
            if pending is None:
                pending = asyncio.ensure_future(anext(items))
            done, _ = await asyncio.wait({pending}, timeout=interval)
            if not done:
                yield ping
                continue
            try:
                item = pending.result()
            except StopAsyncIteration:
                return
            pending = None
            yield item
    finally:
        if pending is not None and not pending.done():
            pending.cancel()
            with contextlib.suppress(BaseException):
                await pending
        with contextlib.suppress(BaseException):
            await items.aclose()  # type: ignore[attr-defined]


class EventStreamResponse(StreamingResponse):
    """A streamed response that stops, and runs `cleanup`, as soon as the client
    disconnects, rather than when the stream would have ended on its own."""

    def __init__(
        self,
        events: AsyncIterator[bytes],
        cleanup: Callable[[], Awaitable[None]],
        *,
        media_type: str = "text/event-stream",
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(
            events,
            media_type=media_type,
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no", **(headers or {})},
        )
        self._events = events
        self._cleanup = cleanup

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        pump = asyncio.ensure_future(self._pump(send))
        watch = asyncio.ensure_future(wait_for_disconnect(receive))
        try:
            await asyncio.wait({pump, watch}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (pump, watch):
                task.cancel()
            # Shielded: a server shutting down must still free the slot and the lease.
            await asyncio.shield(self._close())
        if pump.done() and not pump.cancelled() and pump.exception() is not None:
            raise pump.exception()  # type: ignore[misc]

    async def _pump(self, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
        async for chunk in self._events:
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _close(self) -> None:
        with contextlib.suppress(BaseException):
            await self._events.aclose()  # type: ignore[attr-defined]
        await self._cleanup()


async def wait_for_disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def unless_disconnected(request: Request, work: Awaitable[T]) -> T | None:
    """Await `work`, cancelling it if the client disconnects first (then None)."""
    task = asyncio.ensure_future(work)
    watch = asyncio.ensure_future(wait_for_disconnect(request.receive))
    try:
        await asyncio.wait({task, watch}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watch.cancel()
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    if task.cancelled():
        return None
    return task.result()


__all__ = [
    "CLIENT_CLOSED",
    "SSE_DONE",
    "EventStreamResponse",
    "sse",
    "sse_comment",
    "unless_disconnected",
    "wait_for_disconnect",
    "with_keepalive",
]
