"""What every protocol's routes share: the server state, leasing a model, and
running a chat turn's neutral events to completion (or into a stream)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

from fastapi import Request

from kronk.chat.events import ChatEvent
from kronk.models.store import require_capability
from kronk.pool import ModelLease
from kronk.server.sse import EventStreamResponse, unless_disconnected, with_keepalive
from kronk.server.state import ServerState
from kronk.streams import AsyncEventStream


def server_state(request: Request) -> ServerState:
    state: ServerState = request.app.state.kronk
    return state


async def acquire(request: Request, model: str, capability: str | None = None) -> ModelLease:
    """Lease `model`; with `capability`, first refuse (without loading anything) a model
    whose catalog entry says it can't do that (e.g. chat with an embedding model)."""
    pool = server_state(request).pool
    if capability is not None:
        require_capability(pool.resolve(model), capability)
    return await pool.acquire(model)


async def start_chat(
    request: Request, model: str, messages: list[dict[str, Any]], kwargs: dict[str, Any]
) -> tuple[ModelLease, AsyncEventStream]:
    """Lease `model` and start one chat turn on it (bad input raises here, the lease
    given back)."""
    lease = await acquire(request, model, "chat")
    try:
        stream = lease.kronk.achat_events(messages, **kwargs)
    except BaseException:
        lease.release()
        raise
    await start_all([stream], lease)
    return lease, stream


async def answer(
    request: Request, stream: AsyncEventStream, lease: ModelLease
) -> list[ChatEvent] | None:
    """Every event of a turn that is not streamed, then the stream closed and the lease
    given back; None if the client went away first."""
    try:
        return await unless_disconnected(request, collect(stream))
    finally:
        await stream.aclose()
        lease.release()


def streamed(
    request: Request,
    events: AsyncIterator[bytes],
    ping: bytes | None,
    streams: Sequence[AsyncEventStream],
    lease: ModelLease,
    media_type: str = "text/event-stream",
) -> EventStreamResponse:
    """A streamed response of `events`, with keep-alives, that frees the slots and the
    lease when it ends or the client goes away."""
    interval = server_state(request).settings.keepalive
    return EventStreamResponse(
        with_keepalive(events, ping, interval), closer(streams, lease), media_type=media_type
    )


async def start_all(streams: Sequence[AsyncEventStream], lease: ModelLease) -> None:
    """Prepare and submit every stream (bad input raises here, before any byte is sent);
    on failure close them all and give the lease back."""
    try:
        await asyncio.gather(*(s.start() for s in streams))
    except BaseException:
        await close_all(streams)
        lease.release()
        raise


async def close_all(streams: Sequence[AsyncEventStream]) -> None:
    for stream in streams:
        await stream.aclose()


def closer(streams: Sequence[AsyncEventStream], lease: ModelLease) -> Callable[[], Awaitable[None]]:
    """Cleanup for a streamed response: cancel what still runs, then free the model."""

    async def cleanup() -> None:
        try:
            await close_all(streams)
        finally:
            lease.release()

    return cleanup


async def collect(stream: AsyncEventStream) -> list[ChatEvent]:
    """Every event of a turn (for answers that are not streamed)."""
    events: list[ChatEvent] = []
    while batch := await stream.next_batch():
        events += batch
    return events


async def batches(stream: AsyncEventStream) -> AsyncIterator[list[ChatEvent]]:
    """A turn's events, one engine step at a time."""
    while batch := await stream.next_batch():
        yield batch


__all__ = [
    "acquire",
    "answer",
    "batches",
    "close_all",
    "closer",
    "collect",
    "server_state",
    "start_all",
    "start_chat",
    "streamed",
]
