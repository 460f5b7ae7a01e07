"""How engine events reach an event loop: events that come while the loop is busy are
handed over in one wake-up for all of the loop's streams (not one per token per stream),
and none is lost or reordered."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from kronk import Kronk
from kronk.chat.events import TurnFinished
from kronk.engine.request import Event, TextDelta
from kronk.streams import AsyncEventStream

STREAMS = 3
STEPS = 5


@pytest.fixture(scope="module")
def tiny(tiny_llama_path: Path) -> Iterator[Kronk]:
    with Kronk(tiny_llama_path, n_ctx=128, n_seq_max=STREAMS, n_threads=2) as k:
        yield k


async def _hand_off_while_busy(kronk: Kronk) -> tuple[int, list[list[Event]]]:
    loop = asyncio.get_running_loop()
    streams = [kronk.acomplete_events(f"stream {i}", max_tokens=2) for i in range(STREAMS)]
    for stream in streams:  # real turns, read to their end: the engine is done with them
        while batch := await stream.next_batch():
            last = batch[-1]
        assert isinstance(last, TurnFinished)
    wakeups: list[Callable[..., object]] = []
    threadsafe = loop.call_soon_threadsafe

    def counted(callback: Callable[..., object], *args: Any, **kwargs: Any) -> asyncio.Handle:
        wakeups.append(callback)  # the real call still happens: this only counts it
        return threadsafe(callback, *args, **kwargs)

    sent = [[TextDelta(f"{step}.{i}") for step in range(STEPS)] for i in range(STREAMS)]

    def engine_steps() -> None:  # what the engine thread does: one event per stream a step
        for step in range(STEPS):
            for stream, events in zip(streams, sent, strict=True):
                stream._put(events[step])

    loop.call_soon_threadsafe = counted  # type: ignore[method-assign, assignment]
    try:
        worker = threading.Thread(target=engine_steps)
        worker.start()
        worker.join()  # the loop is busy (here) the whole time: nothing is drained yet
        await asyncio.sleep(0)  # one turn of the loop: the drain runs
    finally:
        loop.call_soon_threadsafe = threadsafe  # type: ignore[method-assign]
    return len(wakeups), [_arrived(s) for s in streams]


def _arrived(stream: AsyncEventStream) -> list[Event]:
    return list(stream._arrived)


def test_events_of_a_busy_spell_reach_the_loop_in_one_wakeup(tiny: Kronk) -> None:
    wakeups, arrived = asyncio.run(_hand_off_while_busy(tiny))
    assert wakeups == 1  # not STEPS * STREAMS
    for i, events in enumerate(arrived):  # every stream got all of its events, in order
        assert [e.text for e in events if isinstance(e, TextDelta)] == [
            f"{step}.{i}" for step in range(STEPS)
        ]
