"""The engine's per-slot state in its stats, on a tiny random-weight model: idle, then
generating while a stream holds the slot, then cached; and prefilling, from a slot's
progress through its prompt."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from kronk import Kronk
from kronk.engine.config import SlotState
from kronk.engine.request import GenerationRequest, RequestHandle
from kronk.engine.slots import Active, Slot, slot_state


def test_stats_say_what_each_slot_is_doing(tiny_llama_path: Path) -> None:
    with Kronk(tiny_llama_path, n_ctx=2048, n_seq_max=2, n_threads=2) as k:
        assert k.stats().slot_states == [SlotState("idle"), SlotState("idle")]
        stream = k.complete_stream("hello there", max_tokens=1900, ignore_eos=True)
        chunks = iter(stream)
        next(chunks)
        states = k.stats().slot_states
        generating = [s for s in states if s.state == "generating"]
        assert len(generating) == 1 and [s.state for s in states].count("idle") == 1
        gen = generating[0]
        assert gen.generated >= 1 and gen.done == gen.total > 0
        assert gen.tokens >= gen.total
        next(chunks)
        assert k.stats().slot_states[states.index(gen)].generated >= gen.generated
        stream.close()
        deadline = time.monotonic() + 30
        while k.stats().slots_busy:
            assert time.monotonic() < deadline
        after = k.stats().slot_states
        assert sorted(s.state for s in after) == ["cached", "idle"], after
        cached = next(s for s in after if s.state == "cached")
        assert cached.tokens > gen.total and cached.generated == 0


def _active(prompt: list[int], done: int, generated: int = 0) -> Active:
    handle = RequestHandle(GenerationRequest(prompt), lambda event: None, lambda h: None)
    chain: Any = None  # slot_state reads progress only
    return Active(handle, chain, 0.0, 0.0, prompt_done=done, cached=0, generated=generated)


def test_a_slot_part_way_through_its_prompt_is_prefilling() -> None:
    prompt = list(range(100))
    slot = Slot(0, tokens=prompt[:40], active=_active(prompt, 40))
    assert slot_state(slot) == SlotState("prefilling", tokens=40, done=40, total=100)
    slot.active = _active(prompt, 100, generated=7)
    slot.tokens = prompt + [1] * 6
    assert slot_state(slot) == SlotState("generating", tokens=106, done=100, total=100, generated=7)
    slot.active = None
    assert slot_state(slot) == SlotState("cached", tokens=106)
    assert slot_state(Slot(1)) == SlotState("idle")
