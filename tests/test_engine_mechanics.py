"""Engine and SDK mechanics on tiny random-weight models: scheduling, limits, errors.

Random weights produce gibberish, so these tests check structure (slots, queueing,
lengths, errors, caching), never wording.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from kronk import (
    ContextFullError,
    EngineBusyError,
    EngineClosedError,
    GrammarError,
    InvalidModelFileError,
    InvalidRequestError,
    Kronk,
    UnsupportedFeatureError,
)
from kronk.engine.request import Failed, Finished, GenerationRequest, TextDelta
from kronk.llama import LlamaModel, SamplingParams, validate_gguf


@pytest.fixture
def tiny(tiny_llama_path: Path) -> Iterator[Kronk]:
    with Kronk(tiny_llama_path, n_ctx=128, n_seq_max=2, n_threads=2, max_queue=4) as k:
        yield k


def ask(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


# -- model files -----------------------------------------------------------------


def test_a_file_that_is_not_gguf_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "model.gguf"
    path.write_bytes(b"<html>not found</html>" * 10)
    with pytest.raises(InvalidModelFileError, match="not a GGUF file"):
        Kronk(path)


def test_a_truncated_gguf_is_rejected_before_llama_cpp_sees_it(
    tiny_llama_path: Path, tmp_path: Path
) -> None:
    data = tiny_llama_path.read_bytes()
    for fraction in (0.01, 0.5, 0.99):
        cut = tmp_path / f"cut-{fraction}.gguf"
        cut.write_bytes(data[: int(len(data) * fraction)])
        with pytest.raises(InvalidModelFileError, match="truncated"):
            validate_gguf(cut)


def test_a_missing_file_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(InvalidModelFileError, match="not found"):
        Kronk(tmp_path / "nope.gguf")


def test_model_metadata_and_vocab(tiny_llama_path: Path) -> None:
    model = LlamaModel.load(tiny_llama_path)
    try:
        assert model.architecture == "llama"
        assert model.chat_template and "im_start" in model.chat_template
        assert model.vocab.special.has_fim
        tokens = model.vocab.tokenize("<|im_start|>hello", parse_special=True)
        assert model.vocab.detokenize(tokens, special=True) == "<|im_start|>hello"
        assert model.vocab.detokenize(model.vocab.tokenize("héllo wörld")) == "héllo wörld"
        with pytest.raises(ValueError, match="out of range"):
            model.vocab.detokenize([model.vocab.n_tokens])
    finally:
        model.close()


# -- generation mechanics --------------------------------------------------------------


def test_max_tokens_ends_with_length(tiny: Kronk) -> None:
    resp = tiny.complete("hello", max_tokens=7, temperature=0, ignore_eos=True)
    assert resp.choices[0].finish_reason == "length"
    assert resp.usage is not None and resp.usage.completion_tokens == 7


def test_generation_stops_when_the_context_is_full(tiny: Kronk) -> None:
    resp = tiny.complete("hello", temperature=0, ignore_eos=True, max_tokens=1000)
    assert resp.choices[0].finish_reason == "length"
    assert resp.usage is not None
    assert resp.usage.prompt_tokens + resp.usage.completion_tokens == tiny.engine.n_ctx


def test_more_requests_than_slots_all_finish(tiny: Kronk) -> None:
    results: list[int] = []
    lock = threading.Lock()

    def run(i: int) -> None:
        resp = tiny.complete(f"request {i}", max_tokens=5, temperature=0, ignore_eos=True)
        with lock:
            assert resp.usage is not None
            results.append(resp.usage.completion_tokens)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [5] * 6
    assert tiny.stats().slots_busy == 0


def test_a_full_queue_says_busy(tiny_llama_path: Path) -> None:
    with Kronk(tiny_llama_path, n_ctx=128, n_seq_max=1, n_threads=2, max_queue=0) as k:
        stream = k.complete_stream("a", max_tokens=100, ignore_eos=True)
        next(iter(stream))  # the request holds the only slot
        with pytest.raises(EngineBusyError):
            k.complete("b", max_tokens=1)
        stream.close()
        assert k.complete("c", max_tokens=1).choices[0].finish_reason in ("stop", "length")


def test_a_queued_request_can_be_cancelled(tiny_llama_path: Path) -> None:
    with Kronk(tiny_llama_path, n_ctx=128, n_seq_max=1, n_threads=2) as k:
        running = k.complete_stream("a", max_tokens=100, ignore_eos=True)
        next(iter(running))
        queued = k.complete_stream("b", max_tokens=100, ignore_eos=True)
        assert k.stats().queued == 1
        queued.close()
        assert k.stats().queued == 0
        running.close()
        assert k.stats().slots_busy == 0


def test_cached_prefix_is_reported_and_reused(tiny: Kronk) -> None:
    prompt = "the same long prompt " * 5
    first = tiny.complete(prompt, max_tokens=3, temperature=0, ignore_eos=True)
    second = tiny.complete(prompt, max_tokens=3, temperature=0, ignore_eos=True)
    assert first.usage is not None and second.usage is not None
    assert second.usage.prompt_tokens_details.cached_tokens == second.usage.prompt_tokens - 1
    # the cached prefix must not change the output
    assert first.choices[0].text == second.choices[0].text


def test_seeded_sampling_is_reproducible(tiny: Kronk) -> None:
    params = {
        "temperature": 1.0,
        "top_k": 0,
        "top_p": 1.0,
        "min_p": 0.0,
        "seed": 1234,
        "max_tokens": 12,
    }
    a = tiny.complete("x", ignore_eos=True, **params).choices[0].text
    b = tiny.complete("x", ignore_eos=True, **params).choices[0].text
    assert a == b


def test_every_sampler_parameter_is_accepted(tiny: Kronk) -> None:
    resp = tiny.complete(
        "x",
        max_tokens=4,
        temperature=0.7,
        top_k=20,
        top_p=0.9,
        min_p=0.02,
        typical_p=0.95,
        repeat_penalty=1.1,
        repeat_last_n=32,
        presence_penalty=0.2,
        frequency_penalty=0.2,
        dry_multiplier=0.8,
        dry_base=1.75,
        dry_allowed_length=2,
        dry_penalty_last_n=64,
        dry_sequence_breakers=["\n"],
        xtc_probability=0.5,
        xtc_threshold=0.1,
        seed=7,
        logit_bias={"5": 2.0},
        ignore_eos=True,
    )
    assert resp.usage is not None and resp.usage.completion_tokens == 4


def test_logit_bias_forces_a_token(tiny: Kronk) -> None:
    target = tiny.tokenize("x")[0]
    resp = tiny.complete(
        "hello", max_tokens=5, temperature=0, logit_bias={str(target): 100}, ignore_eos=True
    )
    assert resp.choices[0].text == "x" * 5


def test_a_grammar_constrains_the_output(tiny: Kronk) -> None:
    resp = tiny.complete("x", grammar='root ::= "yes" | "no"', max_tokens=10, temperature=0)
    assert resp.choices[0].text in ("yes", "no")


def test_chat_stream_with_random_weights_is_well_formed(tiny: Kronk) -> None:
    chunks = list(tiny.chat_stream(ask("hi"), max_tokens=6, temperature=0, ignore_eos=True))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].choices[0].finish_reason == "length"
    assert len({c.id for c in chunks}) == 1


def test_fim_without_fim_tokens_is_a_clear_error(tmp_path: Path) -> None:
    from support.tiny_gguf import write_tiny_llama

    path = write_tiny_llama(tmp_path / "nofim.gguf", with_fim=False)
    with Kronk(path, n_ctx=64, n_seq_max=1) as k:
        with pytest.raises(UnsupportedFeatureError) as exc:
            k.complete("def f():", suffix="return 1")
        assert exc.value.param == "suffix"


# -- bad input --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("params", "param"),
    [
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_tokens": -3}, "max_tokens"),
        ({"temperature": -1}, "temperature"),
        ({"top_p": 0}, "top_p"),
        ({"top_k": -1}, "top_k"),
        ({"seed": -1}, "seed"),
        ({"logit_bias": {"not-a-token": 1}}, "logit_bias"),
        ({"logit_bias": {"99999999": 1}}, "logit_bias"),
        ({"stop": ["x"] * 17}, "stop"),
        ({"n": 2}, "n"),
        ({"mirostat_tau": 5}, "mirostat_tau"),
        ({"temperature": "hot"}, "temperature"),
        ({"top_logprobs": 3}, "top_logprobs"),
        ({"logprobs": True, "top_logprobs": 50}, "top_logprobs"),
        ({"response_format": {"type": "yaml"}}, "response_format"),
    ],
)
def test_bad_parameters_raise_invalid_request(
    tiny: Kronk, params: dict[str, object], param: str
) -> None:
    with pytest.raises(InvalidRequestError) as exc:
        tiny.chat(ask("hi"), **params)
    assert exc.value.param == param


def test_an_invalid_grammar_is_a_grammar_error(tiny: Kronk) -> None:
    with pytest.raises(GrammarError):
        tiny.complete("x", grammar="root ::= [unclosed")
    assert tiny.complete("x", max_tokens=2).choices[0].finish_reason in ("stop", "length")


def test_a_prompt_longer_than_the_context_is_refused(tiny: Kronk) -> None:
    with pytest.raises(ContextFullError) as exc:
        tiny.complete("word " * 500)
    assert exc.value.n_ctx == 128 and exc.value.n_prompt > 128


def test_token_ids_outside_the_vocabulary_are_refused(tiny: Kronk) -> None:
    with pytest.raises(InvalidRequestError):
        tiny.complete([1, 2, 10**9])
    with pytest.raises(InvalidRequestError):
        tiny.detokenize([-1])


def test_engine_errors_reach_the_event_sink_and_close_fails_queued_work(
    tiny_llama_path: Path,
) -> None:
    k = Kronk(tiny_llama_path, n_ctx=64, n_seq_max=1, n_threads=2)
    events: list[object] = []
    done = threading.Event()

    def sink(event: object) -> None:
        events.append(event)
        if not isinstance(event, TextDelta):
            done.set()

    running = k.complete_stream("a", max_tokens=200, ignore_eos=True)
    next(iter(running))
    k.engine.submit(GenerationRequest([1, 2, 3], SamplingParams(temperature=0), max_tokens=3), sink)
    k.close()
    assert done.wait(10)
    assert isinstance(events[-1], Failed) and isinstance(events[-1].error, EngineClosedError)
    with pytest.raises(EngineClosedError):
        k.engine.submit(GenerationRequest([1, 2, 3]), sink)
    assert not isinstance(events[-1], Finished)


# -- embeddings ---------------------------------------------------------------------------


def test_bert_embeddings_are_normalised_and_batch_independent(tiny_bert_path: Path) -> None:
    with Kronk(tiny_bert_path) as k:
        assert k.model_info().capabilities == ["embedding"]
        texts = ["hello world", "the cat sat on the mat", "a"]
        together = k.embed(texts)
        assert [d.index for d in together.data] == [0, 1, 2]
        alone = [k.embed(t).data[0].embedding for t in texts]
        for d, single in zip(together.data, alone, strict=True):
            vec = np.array(d.embedding)
            assert np.linalg.norm(vec) == pytest.approx(1.0, abs=1e-5)
            assert np.allclose(vec, single, atol=1e-4)
        raw = k.embed("hello world", normalize=False).data[0].embedding
        assert np.linalg.norm(raw) != pytest.approx(1.0, abs=1e-3)
        assert together.usage.prompt_tokens == sum(
            len(k.tokenize(t, add_special=True)) for t in texts
        )


def test_an_embedding_model_cannot_chat(tiny_bert_path: Path) -> None:
    with Kronk(tiny_bert_path) as k:
        with pytest.raises(UnsupportedFeatureError):
            k.chat(ask("hi"))
        with pytest.raises(InvalidRequestError):
            k.embed([])
        with pytest.raises(InvalidRequestError):
            k.embed([""])
        with pytest.raises(ContextFullError):
            k.embed("word " * 2000)


def test_a_chat_model_embeds_too(tiny: Kronk) -> None:
    resp = tiny.embed(["one", "two"])
    assert len(resp.data) == 2 and len(resp.data[0].embedding) == tiny.model.n_embd


def test_async_api_on_tiny_model(tiny: Kronk) -> None:
    import asyncio

    async def main() -> tuple[str, int]:
        results = await asyncio.gather(
            *(
                tiny.acomplete(f"p{i}", max_tokens=4, temperature=0, ignore_eos=True)
                for i in range(4)
            )
        )
        emb = await tiny.aembed("hello")
        return results[0].choices[0].text, len(emb.data[0].embedding)

    text, dims = asyncio.run(main())
    assert isinstance(text, str) and dims == tiny.model.n_embd


def test_control_tokens_render_only_when_the_request_asks(tiny: Kronk) -> None:
    from kronk.engine.request import GenerationRequest as Request
    from kronk.llama import SamplingParams as Params

    im_start = tiny.tokenize("<|im_start|>", parse_special=True)
    assert len(im_start) == 1
    forced = Params(temperature=0, logit_bias={im_start[0]: 1e9})

    def text(render: frozenset[int]) -> str:
        events: list[object] = []
        done = threading.Event()

        def sink(event: object) -> None:
            events.append(event)
            if not isinstance(event, TextDelta):
                done.set()

        tiny.engine.submit(Request([1, 2, 3], forced, max_tokens=2, render_special=render), sink)
        assert done.wait(30)
        return "".join(e.text for e in events if isinstance(e, TextDelta))

    assert text(frozenset()) == ""
    assert text(frozenset(im_start)) == "<|im_start|>" * 2
