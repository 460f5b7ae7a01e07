"""Sliding-window attention (Gemma 3): prompt reuse must never give a wrong answer.

Gemma 3 270M attends over a 512-token window in most layers, so a sequence's cache no
longer holds positions that fell out of the window. Reusing a prefix is only valid when
the window still covers what the new tokens attend to; otherwise the engine must fall
back to a full prefill. Either way the greedy output must equal a cold engine's.
"""

from __future__ import annotations

import queue
from collections.abc import Iterator
from pathlib import Path

import pytest

from kronk.engine.engine import Engine, EngineConfig
from kronk.engine.request import Admitted, Event, Finished, GenerationRequest, TextDelta, Usage
from kronk.llama import LlamaModel, SamplingParams


@pytest.fixture(scope="module")
def gemma(gemma_path: Path) -> Iterator[LlamaModel]:
    model = LlamaModel.load(gemma_path)
    yield model
    model.close()


def generate(engine: Engine, prompt: list[int], max_tokens: int = 12) -> tuple[str, Usage]:
    events: queue.SimpleQueue[Event] = queue.SimpleQueue()
    engine.submit(
        GenerationRequest(prompt, SamplingParams(temperature=0), max_tokens=max_tokens), events.put
    )
    text = ""
    while True:
        event = events.get()
        if isinstance(event, TextDelta):
            text += event.text
        elif isinstance(event, Finished):
            return text, event.usage
        elif not isinstance(event, Admitted):  # admission comes first; then text, then the end
            raise AssertionError(event)


def cold(model: LlamaModel, prompt: list[int]) -> str:
    engine = Engine(model, EngineConfig(n_ctx=2048, n_seq_max=1, n_threads=2, prompt_cache_bytes=0))
    try:
        return generate(engine, prompt)[0]
    finally:
        engine.close()


def story(model: LlamaModel, sentences: int) -> list[int]:
    text = " ".join(
        f"On day {i} the traveller walked to village number {i}." for i in range(sentences)
    )
    return model.vocab.tokenize(text)


def test_the_model_has_a_sliding_window(gemma: LlamaModel) -> None:
    assert 0 < gemma.n_swa < 1024


def test_short_prefix_reuse_inside_the_window_is_exact(gemma: LlamaModel) -> None:
    base = story(gemma, 10)
    assert len(base) < gemma.n_swa
    extended = base + gemma.vocab.tokenize(" Then the traveller")
    engine = Engine(gemma, EngineConfig(n_ctx=2048, n_seq_max=1, n_threads=2))
    try:
        generate(engine, base)
        text, usage = generate(engine, extended)
        assert usage.cached_tokens > 0  # reused: the window still covers everything
    finally:
        engine.close()
    assert text == cold(gemma, extended)


def test_reuse_beyond_the_window_falls_back_or_stays_exact(gemma: LlamaModel) -> None:
    # A long sequence, then a prompt that shares only its beginning: the window has long
    # dropped the shared positions' neighbourhood, so the cache cannot serve the branch.
    long_prompt = story(gemma, 80)
    assert len(long_prompt) > 2 * gemma.n_swa
    branch = long_prompt[:40] + gemma.vocab.tokenize(" Suddenly a dragon appeared and")
    engine = Engine(gemma, EngineConfig(n_ctx=2048, n_seq_max=1, n_threads=2, prompt_cache_bytes=0))
    try:
        generate(engine, long_prompt)
        text, usage = generate(engine, branch)
        assert usage.cached_tokens == 0  # a full prefill, never a wrong reuse
        grown = long_prompt + gemma.vocab.tokenize(" Finally")
        grown_text, grown_usage = generate(engine, grown)
    finally:
        engine.close()
    assert text == cold(gemma, branch)
    assert grown_text == cold(gemma, grown)
    assert grown_usage.prompt_tokens == len(grown)
