"""Streams of one turn: neutral events, and the OpenAI-shaped chunks made of them.

`EventStream` / `AsyncEventStream` yield `kronk.chat.events` as the engine produces
them; closing one cancels its request and returns once its slot is free. The async
stream prepares its request (template rendering, grammar building, tokenizing) in a
worker thread when it starts, so a long prompt never stalls an event loop. Events reach
an event loop through one `_Inbox` per loop, which wakes the loop once per burst (one
engine step) for all its streams, rather than once per token per stream.
`ChatStream`, `CompletionStream` and their async twins wrap an event stream with an
OpenAI builder from `kronk.openai_objects`.
"""

from __future__ import annotations

import asyncio
import queue
import threading
import weakref
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Generic, Protocol, Self, TypeVar

from kronk.chat.events import ChatEvent
from kronk.chat.turn import ChatTurn, TextTurn
from kronk.engine.engine import Engine
from kronk.engine.request import Event, Failed, Finished, GenerationRequest, RequestHandle
from kronk.openai_objects import ChatCompletionBuilder, CompletionBuilder
from kronk.types import ChatCompletion, ChatCompletionChunk, Completion

T = TypeVar("T")
R = TypeVar("R")
R_co = TypeVar("R_co", covariant=True)
Turn = ChatTurn | TextTurn
# Builds the request and its turn (renders, tokenizes): raises on bad input.
Prepare = Callable[[], tuple[GenerationRequest, Turn]]


def _is_last(event: Event) -> bool:
    return isinstance(event, Finished | Failed)


class _Cursor:
    """The bookkeeping both event streams share: pending events and early stops."""

    def __init__(self, turn: Turn) -> None:
        self.turn = turn
        self.pending: list[ChatEvent] = []
        self.done = False
        self._stopping = False

    def take(self, event: Event, handle: RequestHandle) -> None:
        self.done = _is_last(event)
        self.pending += self.turn.on_event(event)
        if self.turn.wants_stop and not self.done and not self._stopping:
            self._stopping = True  # the rest of the output would be ignored: stop it
            self.turn.stop_early()
            handle.cancel()


class EventStream:
    """The neutral events of one turn, read from the calling thread."""

    def __init__(self, engine: Engine, request: GenerationRequest, turn: Turn) -> None:
        self._cursor = _Cursor(turn)
        self._events: queue.SimpleQueue[Event] = queue.SimpleQueue()
        self._handle: RequestHandle = engine.submit(request, self._events.put)

    @property
    def turn(self) -> Turn:
        return self._cursor.turn

    def __iter__(self) -> Iterator[ChatEvent]:
        return self

    def __next__(self) -> ChatEvent:
        cursor = self._cursor
        while not cursor.pending:
            if cursor.done:
                raise StopIteration
            cursor.take(self._events.get(), self._handle)
        return cursor.pending.pop(0)

    def next_batch(self) -> list[ChatEvent]:
        """The events that arrived since the last call, waiting for at least one (empty
        at the end)."""
        cursor = self._cursor
        while not cursor.pending and not cursor.done:
            cursor.take(self._events.get(), self._handle)
            while not cursor.done and not self._events.empty():
                cursor.take(self._events.get_nowait(), self._handle)
        batch, cursor.pending = cursor.pending, []
        return batch

    def close(self) -> None:
        if self._cursor.done:
            return
        self._handle.cancel()
        while not self._cursor.done:  # the engine answers a cancel at its next step
            self._cursor.done = _is_last(self._events.get())

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def __del__(self) -> None:
        if hasattr(self, "_handle") and not self._cursor.done:
            self._handle.cancel()


class AsyncEventStream:
    """The neutral events of one turn, on an event loop. `start()` (or the first read)
    prepares the request in a worker thread and submits it; bad input raises there."""

    def __init__(self, engine: Engine, prepare: Prepare) -> None:
        self._engine = engine
        self._prepare: Prepare | None = prepare
        self._cursor: _Cursor | None = None
        self._handle: RequestHandle | None = None
        self._inbox: _Inbox | None = None
        self._arrived: list[Event] = []  # handed over by the inbox, not yet read
        # Set when events arrive. An Event, not one future: a read being cancelled (a
        # client gone mid-stream) and `aclose` may wait at the same time, and each must
        # be woken by the engine's last event.
        self._ready = asyncio.Event()

    @property
    def turn(self) -> Turn:
        assert self._cursor is not None, "the stream has not started"
        return self._cursor.turn

    async def start(self) -> None:
        if self._prepare is None:
            return
        prepare, self._prepare = self._prepare, None
        self._inbox = _Inbox.of(asyncio.get_running_loop())
        request, turn = await asyncio.to_thread(prepare)
        self._cursor = _Cursor(turn)
        self._handle = self._engine.submit(request, self._put)

    def _put(self, event: Event) -> None:  # the engine thread
        assert self._inbox is not None
        self._inbox.put(self, event)

    def _arrive(self, events: list[Event]) -> None:  # the loop, from the inbox
        self._arrived += events
        self._ready.set()

    async def _take_arrived(self) -> list[Event]:
        """Every event handed over so far, waiting for one if there is none."""
        while not self._arrived:
            self._ready.clear()
            await self._ready.wait()
        events, self._arrived = self._arrived, []
        return events

    def __aiter__(self) -> AsyncIterator[ChatEvent]:
        return self

    async def __anext__(self) -> ChatEvent:
        await self.start()
        cursor = self._cursor
        assert cursor is not None and self._handle is not None
        while not cursor.pending:
            if cursor.done:
                raise StopAsyncIteration
            await self._read(cursor, self._handle)
        return cursor.pending.pop(0)

    async def next_batch(self) -> list[ChatEvent]:
        """The events that arrived since the last call (usually one engine step's),
        waiting for at least one (empty at the end)."""
        await self.start()
        cursor = self._cursor
        assert cursor is not None and self._handle is not None
        while not cursor.pending and not cursor.done:
            await self._read(cursor, self._handle)
        batch, cursor.pending = cursor.pending, []
        return batch

    async def _read(self, cursor: _Cursor, handle: RequestHandle) -> None:
        for event in await self._take_arrived():
            cursor.take(event, handle)

    async def aclose(self) -> None:
        self._prepare = None  # never started: nothing to cancel
        cursor, handle = self._cursor, self._handle
        if cursor is None or handle is None or cursor.done:
            return
        handle.cancel()
        while not cursor.done:
            cursor.done = any(map(_is_last, await self._take_arrived()))

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.aclose()

    def __del__(self) -> None:
        cursor, handle = getattr(self, "_cursor", None), getattr(self, "_handle", None)
        if cursor is not None and handle is not None and not cursor.done:
            handle.cancel()


class _Inbox:
    """Events from the engine thread to the streams of one event loop.

    The first event of a burst schedules one drain on the loop (one self-pipe write);
    events that come before it runs join that drain. The engine emits a step's events
    for all its streams while it holds the GIL, so the loop wakes about once a step.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = weakref.ref(loop)  # held weakly: the inbox must not keep a loop alive
        self._lock = threading.Lock()
        self._items: list[tuple[AsyncEventStream, Event]] = []

    @staticmethod
    def of(loop: asyncio.AbstractEventLoop) -> _Inbox:
        with _INBOXES_LOCK:
            inbox = _INBOXES.get(loop)
            if inbox is None:
                inbox = _INBOXES[loop] = _Inbox(loop)
            return inbox

    def put(self, stream: AsyncEventStream, event: Event) -> None:
        with self._lock:
            self._items.append((stream, event))
            if len(self._items) > 1:
                return  # a drain is already scheduled
        try:
            loop = self._loop()
            if loop is None:
                raise RuntimeError("the event loop is gone")
            loop.call_soon_threadsafe(self._drain)
        except RuntimeError:  # the loop is closed: nobody will read these
            with self._lock:
                self._items.clear()
            raise

    def _drain(self) -> None:
        with self._lock:
            items, self._items = self._items, []
        by_stream: dict[AsyncEventStream, list[Event]] = {}
        for stream, event in items:
            by_stream.setdefault(stream, []).append(event)
        for stream, events in by_stream.items():
            stream._arrive(events)


_INBOXES: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Inbox] = weakref.WeakKeyDictionary()
_INBOXES_LOCK = threading.Lock()


class _Builder(Protocol[T, R_co]):
    def first_chunks(self) -> list[T]: ...

    def on_events(self, events: list[ChatEvent]) -> list[T]: ...

    def result(self) -> R_co: ...


class _OpenAIStream(Generic[T, R]):
    """OpenAI-shaped chunks of an `EventStream`."""

    def __init__(self, events: EventStream, builder: _Builder[T, R]) -> None:
        self.events = events
        self.builder = builder
        self._pending: list[T] = builder.first_chunks()

    def __iter__(self) -> Iterator[T]:
        return self

    def __next__(self) -> T:
        while not self._pending:
            batch = self.events.next_batch()
            if not batch:
                raise StopIteration
            self._pending = self.builder.on_events(batch)
        return self._pending.pop(0)

    def result(self) -> R:
        """The whole answer (after the stream has been read to its end)."""
        return self.builder.result()

    def close(self) -> None:
        self.events.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


class _AsyncOpenAIStream(Generic[T, R]):
    """OpenAI-shaped chunks of an `AsyncEventStream`."""

    def __init__(self, events: AsyncEventStream, builder: _Builder[T, R]) -> None:
        self.events = events
        self.builder = builder
        self._pending: list[T] = builder.first_chunks()

    async def start(self) -> None:
        """Prepare and submit the request now (bad input raises here)."""
        await self.events.start()

    def __aiter__(self) -> AsyncIterator[T]:
        return self

    async def __anext__(self) -> T:
        while not self._pending:
            batch = await self.events.next_batch()
            if not batch:
                raise StopAsyncIteration
            self._pending = self.builder.on_events(batch)
        return self._pending.pop(0)

    def result(self) -> R:
        return self.builder.result()

    async def aclose(self) -> None:
        await self.events.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.aclose()


class ChatStream(_OpenAIStream[ChatCompletionChunk, ChatCompletion]):
    builder: ChatCompletionBuilder


class AsyncChatStream(_AsyncOpenAIStream[ChatCompletionChunk, ChatCompletion]):
    builder: ChatCompletionBuilder


class CompletionStream(_OpenAIStream[Completion, Completion]):
    builder: CompletionBuilder


class AsyncCompletionStream(_AsyncOpenAIStream[Completion, Completion]):
    builder: CompletionBuilder


__all__ = [
    "AsyncChatStream",
    "AsyncCompletionStream",
    "AsyncEventStream",
    "ChatStream",
    "CompletionStream",
    "EventStream",
]
