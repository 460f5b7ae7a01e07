"""Prompt reuse across requests: the slot's own cache, KV copied from another slot
(shared system prompt), and states restored from host memory. Every reuse must give
exactly the output a cold engine gives."""

from __future__ import annotations

import queue
from collections.abc import Iterator
from pathlib import Path

import pytest

from kronk.engine.engine import Engine, EngineConfig
from kronk.engine.request import Admitted, Event, Finished, GenerationRequest, TextDelta, Usage
from kronk.llama import LlamaModel, SamplingParams

GREEDY = SamplingParams(temperature=0)


@pytest.fixture(scope="module")
def tiny_model(tiny_llama_path: Path) -> Iterator[LlamaModel]:
    model = LlamaModel.load(tiny_llama_path)
    yield model
    model.close()


def make_engine(model: LlamaModel, **overrides: int) -> Engine:
    config = {
        "n_ctx": 512,
        "n_seq_max": 2,
        "n_threads": 2,
        "prompt_cache_min_tokens": 16,
        "shared_prefix_min_tokens": 8,
        **overrides,
    }
    return Engine(model, EngineConfig(**config))  # type: ignore[arg-type]


def run(engine: Engine, prompt: list[int], max_tokens: int = 12) -> tuple[str, Usage]:
    events: queue.SimpleQueue[Event] = queue.SimpleQueue()
    request = GenerationRequest(prompt, GREEDY, max_tokens=max_tokens, ignore_eos=True)
    engine.submit(request, events.put)
    text = ""
    while True:
        event = events.get()
        if isinstance(event, TextDelta):
            text += event.text
        elif isinstance(event, Finished):
            return text, event.usage
        elif not isinstance(event, Admitted):  # admission comes first; then text, then the end
            raise AssertionError(event)


def cold(model: LlamaModel, prompt: list[int], max_tokens: int = 12) -> str:
    engine = make_engine(model, prompt_cache_bytes=0)
    try:
        return run(engine, prompt, max_tokens)[0]
    finally:
        engine.close()


def tokens(model: LlamaModel, text: str) -> list[int]:
    return model.vocab.tokenize(text, add_special=False)


def test_a_shared_prefix_is_copied_from_a_busy_slot(tiny_model: LlamaModel) -> None:
    system = tokens(tiny_model, "You are a helpful assistant who answers briefly. " * 4)
    first = system + tokens(tiny_model, "first question")
    second = system + tokens(tiny_model, "second question")
    engine = make_engine(tiny_model)
    try:
        busy: queue.SimpleQueue[Event] = queue.SimpleQueue()
        handle = engine.submit(
            GenerationRequest(first, GREEDY, max_tokens=400, ignore_eos=True), busy.put
        )
        busy.get()  # the first request holds its slot and has computed the system prompt
        text, usage = run(engine, second)
        handle.cancel()
        assert usage.cached_tokens >= len(system)
    finally:
        engine.close()
    assert text == cold(tiny_model, second)


def test_a_burst_sharing_a_new_prefix_prefills_it_once(tiny_model: LlamaModel) -> None:
    system = tokens(tiny_model, "You are a helpful assistant who answers briefly. " * 4)
    prompts = [system + tokens(tiny_model, f"question number {i}") for i in range(3)]
    engine = make_engine(tiny_model, n_seq_max=3)
    try:
        streams: list[queue.SimpleQueue[Event]] = []
        # Queued together (the engine admits nothing while its lock is held): all three
        # find free slots in one admission, and none has the system prompt yet.
        with engine._lock:
            for prompt in prompts:
                events: queue.SimpleQueue[Event] = queue.SimpleQueue()
                request = GenerationRequest(prompt, GREEDY, max_tokens=12, ignore_eos=True)
                engine.submit(request, events.put)
                streams.append(events)
        results: list[tuple[str, Usage]] = []
        for events in streams:
            text = ""
            while not isinstance(event := events.get(), Finished):
                text += event.text if isinstance(event, TextDelta) else ""
            results.append((text, event.usage))
    finally:
        engine.close()
    # The first prefills the system prompt; the others wait for it and copy it.
    assert results[0][1].cached_tokens == 0
    assert all(usage.cached_tokens >= len(system) for _, usage in results[1:])
    assert [text for text, _ in results] == [cold(tiny_model, p) for p in prompts]


def test_an_evicted_prompt_is_restored_from_host_memory(tiny_model: LlamaModel) -> None:
    conversation = tokens(tiny_model, "a long conversation about many things " * 6)
    other = tokens(tiny_model, "something else entirely " * 2)
    engine = make_engine(tiny_model, n_seq_max=1)
    try:
        first, _ = run(engine, conversation)
        run(engine, other)  # takes the only slot; the conversation goes to host memory
        assert engine.stats().prompt_cache_entries == 1
        again, usage = run(engine, conversation)
        assert engine.stats().prompt_cache_hits == 1
        assert usage.cached_tokens == len(conversation) - 1
    finally:
        engine.close()
    assert again == first == cold(tiny_model, conversation)


def test_requests_run_in_the_lowest_free_slot_with_their_prefix_copied_there(
    tiny_model: LlamaModel,
) -> None:
    prompts = [
        tokens(tiny_model, f"conversation number {i} is about things " * 4) for i in range(3)
    ]
    engine = make_engine(tiny_model, n_seq_max=3)
    try:
        streams = []
        for prompt in prompts:  # three at once: slots 0, 1, 2
            events: queue.SimpleQueue[Event] = queue.SimpleQueue()
            request = GenerationRequest(prompt, GREEDY, max_tokens=400, ignore_eos=True)
            streams.append((engine.submit(request, events.put), events))
            events.get()  # it is running
        for handle, events in streams[:2]:  # slots 0 and 1 free up; slot 2 keeps running
            handle.cancel()
            while not isinstance(events.get(), Finished):
                pass
        follow_up = prompts[1] + tokens(tiny_model, " and more")
        text, usage = run(engine, follow_up)
        streams[2][0].cancel()
    finally:
        engine.close()
    # The lowest free slot (0), not slot 1 where its prefix was: the prefix was copied.
    assert usage.slot == 0
    assert usage.cached_tokens >= len(prompts[1])
    assert text == cold(tiny_model, follow_up)


def test_short_prompts_are_not_worth_saving(tiny_model: LlamaModel) -> None:
    engine = make_engine(tiny_model, n_seq_max=1)
    try:
        run(engine, tokens(tiny_model, "short"), max_tokens=2)
        run(engine, tokens(tiny_model, "also short"), max_tokens=2)
        assert engine.stats().prompt_cache_entries == 0
    finally:
        engine.close()


def test_the_host_cache_stays_within_its_byte_limit(tiny_model: LlamaModel) -> None:
    engine = make_engine(tiny_model, n_seq_max=1, prompt_cache_bytes=1)
    try:
        run(engine, tokens(tiny_model, "a long conversation about many things " * 6))
        run(engine, tokens(tiny_model, "something else"))
        stats = engine.stats()
        assert stats.prompt_cache_bytes <= 1 and stats.prompt_cache_entries == 0
    finally:
        engine.close()


def test_a_growing_chat_prefills_only_the_new_turn(tiny_model: LlamaModel) -> None:
    engine = make_engine(tiny_model, n_seq_max=1)
    try:
        history = tokens(tiny_model, "system: be brief.")
        for turn in range(4):
            new_turn = tokens(tiny_model, f" user: question {turn}")
            history += new_turn
            answer, usage = run(engine, history, max_tokens=4)
            if turn > 0:
                # the previous answer is retokenized, so allow a few tokens of drift there
                assert usage.prompt_tokens - usage.cached_tokens <= len(new_turn) + 8
            history += tokens(tiny_model, answer)
    finally:
        engine.close()


def test_restored_conversation_matches_on_the_real_model(default_model_path: Path) -> None:
    model = LlamaModel.load(default_model_path)
    try:
        conversation = model.vocab.tokenize(
            "<|im_start|>system\nYou are a terse assistant.<|im_end|>\n"
            + (
                "<|im_start|>user\nTell me about the moon.<|im_end|>\n"
                "<|im_start|>assistant\nIt orbits Earth.<|im_end|>\n"
            )
            * 6
            + "<|im_start|>user\nAnd the sun?<|im_end|>\n<|im_start|>assistant\n",
            parse_special=True,
        )
        engine = make_engine(model, n_seq_max=1, prompt_cache_min_tokens=64)
        try:
            first, _ = run(engine, conversation, max_tokens=16)
            run(engine, model.vocab.tokenize("Hello there"), max_tokens=2)
            again, usage = run(engine, conversation, max_tokens=16)
            assert usage.cached_tokens == len(conversation) - 1
        finally:
            engine.close()
        assert again == first == cold(model, conversation, max_tokens=16)
    finally:
        model.close()
