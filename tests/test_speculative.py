"""Speculative decoding mechanics on tiny random-weight models.

Random weights fall into loops, so n-gram drafts get accepted: that makes the rollback
paths (stop strings, max_tokens, cancellation inside a verified draft) happen for real.
Every test compares token ids with plain decoding; none checks wording.
"""

from __future__ import annotations

import json
import queue
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from kronk import InvalidRequestError, Kronk
from kronk.engine.engine import Engine, EngineConfig
from kronk.engine.request import (
    Event,
    Failed,
    Finished,
    GenerationRequest,
    RequestHandle,
    TextDelta,
    Usage,
)
from kronk.engine.speculative import (
    SpeculativeConfig,
)
from kronk.llama import LlamaModel, SamplingParams, json_schema_to_grammar
from support.tiny_gguf import write_tiny_llama

GREEDY = SamplingParams(temperature=0)
OFF = SpeculativeConfig(mode="off")
ALWAYS = SpeculativeConfig(mode="ngram", adaptive=False)  # every n-gram draft is verified
SIMPLE = SpeculativeConfig(mode="ngram-simple", adaptive=False)  # the 4-token lookup
AUTO = SpeculativeConfig()


@pytest.fixture(scope="module")
def tiny(tiny_llama_path: Path) -> Iterator[LlamaModel]:
    model = LlamaModel.load(tiny_llama_path)
    yield model
    model.close()


@pytest.fixture(scope="module")
def other_tiny(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LlamaModel]:
    """Same vocabulary, other weights: a draft model that is mostly wrong."""
    path = write_tiny_llama(tmp_path_factory.mktemp("tiny-seed-1") / "tiny-1.gguf", seed=1)
    model = LlamaModel.load(path)
    yield model
    model.close()


def make_engine(
    model: LlamaModel,
    spec: SpeculativeConfig,
    draft: LlamaModel | None = None,
    **overrides: int,
) -> Engine:
    config = {"n_ctx": 512, "n_seq_max": 1, "n_threads": 2, **overrides}
    return Engine(model, EngineConfig(**config, speculative=spec), draft_model=draft)  # type: ignore[arg-type]


@dataclass
class Result:
    tokens: list[int] = field(default_factory=list)
    text: str = ""
    usage: Usage | None = None
    reason: str = ""


def submit(
    engine: Engine, prompt: list[int], *, max_tokens: int = 48, **kwargs: object
) -> queue.SimpleQueue[Event]:
    events: queue.SimpleQueue[Event] = queue.SimpleQueue()
    request = GenerationRequest(
        prompt,
        kwargs.pop("sampling", GREEDY),  # type: ignore[arg-type]
        max_tokens=max_tokens,
        logprobs=0,  # token ids of everything generated
        **kwargs,  # type: ignore[arg-type]
    )
    engine.submit(request, events.put)
    return events


def collect(events: queue.SimpleQueue[Event]) -> Result:
    result = Result()
    while True:
        event = events.get()
        if isinstance(event, TextDelta):
            result.text += event.text
            result.tokens += [lp.token_id for lp in event.logprobs]
        elif isinstance(event, Finished):
            result.usage, result.reason = event.usage, event.reason
            return result
        elif isinstance(event, Failed):
            raise event.error


def generate(engine: Engine, prompt: list[int], **kwargs: Any) -> Result:
    return collect(submit(engine, prompt, **kwargs))


def cold(model: LlamaModel, prompt: list[int], **kwargs: Any) -> Result:
    engine = make_engine(model, OFF)
    try:
        return generate(engine, prompt, **kwargs)
    finally:
        engine.close()


def kv_matches_slots(engine: Engine) -> bool:
    """Each slot's token list is exactly what its KV cache holds: nothing rejected left."""
    ctx = engine._ctx
    assert ctx is not None
    return all(ctx.seq_pos_max(s.seq_id) + 1 == len(s.tokens) for s in engine._slots)


def prompt_of(model: LlamaModel, text: str) -> list[int]:
    return model.vocab.tokenize(text)


PROMPTS = [
    "hello world, the cat sat on the mat. hello world, the cat",
    "a b c d e f g h i j k l m n o p",
    "def add(a, b):\n    return a + b\n\ndef add(",
]


# -- exactness -------------------------------------------------------------------------


def test_greedy_output_is_token_identical_with_and_without_speculation(
    tiny: LlamaModel,
) -> None:
    drafted = accepted = 0
    for spec in (ALWAYS, SIMPLE, AUTO):
        engine = make_engine(tiny, spec)
        try:
            for text in PROMPTS:
                prompt = prompt_of(tiny, text)
                plain = cold(tiny, prompt, max_tokens=64)
                fast = generate(engine, prompt, max_tokens=64)
                assert fast.tokens == plain.tokens and fast.text == plain.text
                assert fast.usage is not None
                drafted += fast.usage.draft_tokens
                accepted += fast.usage.draft_accepted
            assert kv_matches_slots(engine)
            assert engine.stats().draft_accepted <= engine.stats().draft_tokens
        finally:
            engine.close()
    assert accepted > 0 and drafted > accepted // 2  # drafts really were verified


def test_four_slots_with_shared_prefixes_and_cache_hits_stay_identical(
    tiny: LlamaModel,
) -> None:
    shared = "system: you are a tiny model that repeats itself. " * 3
    prompts = [prompt_of(tiny, shared + tail) for tail in [*PROMPTS, "x y z x y z x"]]
    expected = [cold(tiny, p, max_tokens=40).tokens for p in prompts]
    engine = make_engine(tiny, ALWAYS, n_seq_max=4, shared_prefix_min_tokens=8)
    try:
        # The first prompt alone, so the others find the shared prefix in its slot.
        assert generate(engine, prompts[0], max_tokens=40).tokens == expected[0]
        for round_ in range(2):  # the second round finds every prompt in a slot's cache
            streams = [submit(engine, p, max_tokens=40) for p in prompts]
            results = [collect(s) for s in streams]
            assert [r.tokens for r in results] == expected
            usages = [r.usage for r in results if r.usage is not None]
            assert sum(u.draft_accepted for u in usages) > 0
            cached = sum(u.cached_tokens for u in usages)
            if round_ == 0:
                assert cached >= 3 * len(shared) // 4  # the shared prefix, copied to 3 slots
            else:
                assert all(u.cached_tokens >= len(shared) // 4 for u in usages)
            assert kv_matches_slots(engine)
    finally:
        engine.close()


def test_seeded_sampling_with_every_sampler_is_identical(tiny: LlamaModel) -> None:
    """A draft token is kept only where the request's own chain (penalties, DRY, XTC,
    logit bias, its random state) picks it, so sampled output is the target's exactly."""
    sampling = SamplingParams(
        temperature=0.9,
        seed=7,
        repeat_penalty=1.1,
        frequency_penalty=0.2,
        dry_multiplier=0.5,
        xtc_probability=0.3,
        logit_bias={5: -3.0},
        top_k=20,
    )
    prompt = prompt_of(tiny, PROMPTS[0])
    plain = cold(tiny, prompt, max_tokens=80, sampling=sampling)
    engine = make_engine(tiny, ALWAYS)
    try:
        fast = generate(engine, prompt, max_tokens=80, sampling=sampling)
    finally:
        engine.close()
    assert fast.tokens == plain.tokens


def test_a_json_schema_grammar_holds_with_speculation(tiny: LlamaModel) -> None:
    schema = {
        "type": "object",
        "properties": {"name": {"type": "string"}, "tags": {"type": "array"}},
        "required": ["name", "tags"],
    }
    sampling = SamplingParams(temperature=0, grammar=json_schema_to_grammar(schema))
    prompt = prompt_of(tiny, PROMPTS[0])
    plain = cold(tiny, prompt, max_tokens=120, sampling=sampling)
    engine = make_engine(tiny, ALWAYS)
    try:
        fast = generate(engine, prompt, max_tokens=120, sampling=sampling)
    finally:
        engine.close()
    assert fast.tokens == plain.tokens
    assert fast.text.startswith("{")
    if fast.reason == "stop":
        assert set(json.loads(fast.text)) >= {"name", "tags"}


# -- rollback --------------------------------------------------------------------------


LOOPING = "x y z x y z x"  # the tiny model answers " assistant" over and over


def test_a_stop_string_inside_a_draft_rolls_back(tiny: LlamaModel) -> None:
    prompt = prompt_of(tiny, LOOPING)
    plain = cold(tiny, prompt, max_tokens=64)
    # Ends at the 20th token, inside a draft of 16 accepted ones (drafts start once the
    # loop is 4 tokens long).
    stop = " assistant" * 20
    assert plain.text.startswith(stop)
    expected = cold(tiny, prompt, max_tokens=64, stop=[stop])
    engine = make_engine(tiny, ALWAYS)
    try:
        fast = generate(engine, prompt, max_tokens=64, stop=[stop])
        assert (fast.text, fast.reason) == (expected.text, "stop")
        assert fast.tokens == expected.tokens
        assert fast.usage is not None and fast.usage.draft_accepted > 0
        assert kv_matches_slots(engine)
        # What is left in the slot is a valid prefix: a follow-up reuses it exactly.
        follow = prompt + fast.tokens + prompt_of(tiny, " and")
        again = generate(engine, follow, max_tokens=24)
        assert again.usage is not None and again.usage.cached_tokens > len(prompt)
        assert again.tokens == cold(tiny, follow, max_tokens=24).tokens
    finally:
        engine.close()


@pytest.mark.parametrize("max_tokens", [1, 2, 7, 19])
def test_max_tokens_inside_a_draft_rolls_back(tiny: LlamaModel, max_tokens: int) -> None:
    prompt = prompt_of(tiny, PROMPTS[0])
    plain = cold(tiny, prompt, max_tokens=max_tokens)
    engine = make_engine(tiny, ALWAYS)
    try:
        fast = generate(engine, prompt, max_tokens=max_tokens)
        assert fast.tokens == plain.tokens and len(fast.tokens) == max_tokens
        assert fast.reason == "length"
        assert kv_matches_slots(engine)
        # Never drafted past the limit: every draft token fit in what was left.
        assert fast.usage is not None and fast.usage.draft_tokens <= max_tokens - 1
    finally:
        engine.close()


def test_the_context_limit_holds_with_drafts(tiny: LlamaModel) -> None:
    prompt = prompt_of(tiny, PROMPTS[0])
    plain = make_engine(tiny, OFF, n_ctx=64)
    fast = make_engine(tiny, ALWAYS, n_ctx=64)
    try:
        a = generate(plain, prompt, max_tokens=None)
        b = generate(fast, prompt, max_tokens=None)
        assert (b.tokens, b.reason) == (a.tokens, "length")
        assert kv_matches_slots(fast)
    finally:
        plain.close()
        fast.close()


def test_cancelling_in_the_middle_of_a_draft_emits_nothing_more(tiny: LlamaModel) -> None:
    prompt = prompt_of(tiny, LOOPING)
    engine = make_engine(tiny, ALWAYS)
    # Which decode step emits each token (the sink runs on the engine thread, between
    # steps' decodes): pick a token that a verified draft emits with more after it.
    steps: list[int] = []
    probe = GenerationRequest(prompt, GREEDY, max_tokens=60)
    probe_events: queue.SimpleQueue[Event] = queue.SimpleQueue()

    def record(event: Event) -> None:
        if isinstance(event, TextDelta):
            steps.append(engine._stats.steps)
        probe_events.put(event)

    engine.submit(probe, record)
    while not isinstance(probe_events.get(), Finished):
        pass
    cut = next(i for i in range(1, len(steps) - 1) if steps[i] == steps[i - 1] == steps[i + 1])
    cut += 1  # cancel on this many tokens: the draft's next ones are accepted too
    events: list[Event] = []
    handles: list[RequestHandle] = []

    def sink(event: Event) -> None:
        events.append(event)
        if sum(isinstance(e, TextDelta) for e in events) == cut:
            handles[0].cancel()

    done: queue.SimpleQueue[Event] = queue.SimpleQueue()

    def both(event: Event) -> None:
        sink(event)
        done.put(event)

    try:
        request = GenerationRequest(prompt, GREEDY, max_tokens=200)
        handles.append(engine.submit(request, both))
        while not isinstance(done.get(), Finished | Failed):
            pass
        deltas = [e for e in events if isinstance(e, TextDelta)]
        finished = events[-1]
        assert isinstance(finished, Finished) and finished.reason == "cancelled"
        assert len(deltas) == cut  # nothing after the cancel, though the draft went on
        assert finished.usage.draft_accepted > 0
        assert kv_matches_slots(engine)
        again = generate(engine, prompt, max_tokens=30)
        assert again.tokens == cold(tiny, prompt, max_tokens=30).tokens
    finally:
        engine.close()


def test_a_request_can_turn_speculation_off(tiny: LlamaModel) -> None:
    prompt = prompt_of(tiny, PROMPTS[0])
    engine = make_engine(tiny, ALWAYS)
    try:
        off = generate(engine, prompt, max_tokens=40, speculative=False)
        on = generate(engine, prompt, max_tokens=40)
    finally:
        engine.close()
    assert off.usage is not None and off.usage.draft_tokens == 0
    assert on.usage is not None and on.usage.draft_tokens > 0
    assert off.tokens == on.tokens


# -- the draft model ---------------------------------------------------------------------


def test_a_draft_model_with_another_vocabulary_is_refused(
    tiny: LlamaModel, tiny_llama_path: Path, tiny_bert_path: Path
) -> None:
    bert = LlamaModel.load(tiny_bert_path)
    try:
        with pytest.raises(InvalidRequestError, match="cannot draft for this model") as info:
            make_engine(tiny, SpeculativeConfig(mode="draft", draft_model="x"), bert)
        assert info.value.param == "draft_model"
    finally:
        bert.close()
    with pytest.raises(InvalidRequestError, match="cannot draft"):
        Kronk(tiny_llama_path, speculative="draft", draft_model=tiny_bert_path)
    with pytest.raises(InvalidRequestError, match="needs a draft model"):
        Kronk(tiny_llama_path, speculative="draft")


@pytest.mark.parametrize("slots", [1, 3])
def test_a_draft_model_drafts_and_the_output_is_the_targets(
    tiny: LlamaModel, other_tiny: LlamaModel, slots: int
) -> None:
    spec = SpeculativeConfig(mode="draft", draft_model="tiny", adaptive=False, draft_max=4)
    prompts = [prompt_of(tiny, t) for t in PROMPTS[:slots]]
    expected = [cold(tiny, p, max_tokens=40).tokens for p in prompts]
    for draft, agrees in ((tiny, True), (other_tiny, False)):
        engine = make_engine(tiny, spec, draft, n_seq_max=slots)
        try:
            results = [collect(s) for s in [submit(engine, p, max_tokens=40) for p in prompts]]
            assert [r.tokens for r in results] == expected
            stats = engine.stats()
            assert stats.draft_tokens > 0 and stats.draft_model_bytes > 0
            if agrees:  # the model drafting for itself: every greedy draft is right
                assert stats.draft_accepted == stats.draft_tokens
            assert kv_matches_slots(engine)
        finally:
            engine.close()


def test_adaptive_drafting_falls_to_zero_when_drafts_are_rejected(
    tiny: LlamaModel, other_tiny: LlamaModel
) -> None:
    spec = SpeculativeConfig(mode="draft", draft_model="other", draft_max=8)
    prompt = prompt_of(tiny, PROMPTS[1])  # where the other model never guesses right
    engine = make_engine(tiny, spec, other_tiny)
    try:
        result = generate(engine, prompt, max_tokens=400, ignore_eos=True)
    finally:
        engine.close()
    usage = result.usage
    assert usage is not None and usage.completion_tokens == 400
    assert usage.draft_tokens > 0  # it tried (a probe at the start)
    rate = usage.draft_accepted / usage.draft_tokens
    assert rate < 0.5
    # Probes only: two tokens each, ever rarer while they fail.
    assert usage.draft_tokens <= 2 * (400 // 16)


def test_a_full_draft_pass_is_timed_at_load_and_leaves_no_cells(tiny: LlamaModel) -> None:
    engine = make_engine(tiny, SpeculativeConfig(draft_max=16))
    try:
        speculator = engine._speculator
        assert speculator is not None
        assert speculator.cost.measured_sizes == [17]  # the last token and 16 drafted
        assert speculator.cost.pass_seconds(17) > 0
        assert engine._ctx is not None and engine._ctx.seq_pos_max(0) == -1
        prompt = prompt_of(tiny, PROMPTS[0])
        assert generate(engine, prompt).tokens == cold(tiny, prompt).tokens
    finally:
        engine.close()
    fixed = make_engine(tiny, SpeculativeConfig(draft_max=16, adaptive=False))
    try:
        assert fixed._speculator is not None and fixed._speculator.cost.measured_sizes == []
    finally:
        fixed.close()


# -- draft sources ---------------------------------------------------------------------


def test_shared_ngrams_draft_across_requests(tiny: LlamaModel) -> None:
    spec = SpeculativeConfig(mode="ngram", adaptive=False, shared_ngrams=10_000)
    engine = make_engine(tiny, spec)
    try:
        first = generate(engine, prompt_of(tiny, PROMPTS[2]), max_tokens=40)
        second = generate(engine, prompt_of(tiny, PROMPTS[2]), max_tokens=40)
    finally:
        engine.close()
    assert first.tokens == second.tokens
    # The second drafts from the first's output before its own history repeats itself.
    assert first.usage is not None and second.usage is not None
    assert second.usage.draft_accepted > first.usage.draft_accepted


# -- the SDK ---------------------------------------------------------------------------------


def test_the_sdk_takes_speculative_and_reports_drafts(tiny_llama_path: Path) -> None:
    text = PROMPTS[0]
    outputs = {}
    for mode in ("off", "ngram", "ngram-simple"):
        with Kronk(tiny_llama_path, n_ctx=256, n_seq_max=1, speculative=mode) as k:
            resp = k.complete(text, max_tokens=48, temperature=0)
            outputs[mode] = resp.choices[0].text
            assert resp.usage is not None
            assert (resp.usage.draft_tokens > 0) == (mode != "off")
            assert resp.usage.draft_accepted <= resp.usage.draft_tokens
            assert (k.stats().draft_tokens > 0) == (mode != "off")
            # The per-request switch, as the protocols pass it: the same text, no drafts.
            alone = k.complete(text, max_tokens=48, temperature=0, speculative=False)
            assert alone.usage is not None and alone.usage.draft_tokens == 0
            assert alone.choices[0].text == resp.choices[0].text
    assert outputs["off"] == outputs["ngram"] == outputs["ngram-simple"]
