"""Engine and SDK mechanics on tiny random-weight models: scheduling, limits, errors.

Random weights produce gibberish, so these tests check structure (slots, queueing,
lengths, errors, caching), never wording.
"""

from __future__ import annotations

import dataclasses
import json
import struct
import subprocess
import sys
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
    KronkError,
    UnsupportedFeatureError,
)
from kronk.engine.invariance import (
    MIN_PASS,
    chunk_size,
    kept_after_request,
    reusable_prefix,
    short_passes,
)
from kronk.engine.request import Failed, Finished, GenerationRequest, TextDelta
from kronk.errors import ModelLoadError
from kronk.llama import (
    Batch,
    ContextParams,
    LlamaContext,
    LlamaModel,
    ModelParams,
    SamplingParams,
    validate_gguf,
)
from support.tiny_gguf import GGUF_ARRAY, GGUFParts, gguf_str, gguf_string_array, gguf_u32


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


def _broken_models(src: Path, tmp_path: Path) -> dict[str, tuple[Path, str, str]]:
    """Broken variants of `src`: name -> (path, error class, text the message must have).

    Most would make llama.cpp abort the process (GGML_ASSERT, or arithmetic on a zero
    alignment); kronk must refuse them first. The last few llama.cpp refuses itself, and
    its reason must reach the message.
    """
    data = src.read_bytes()

    def raw(name: str, blob: bytes) -> Path:
        path = tmp_path / f"{name}.gguf"
        path.write_bytes(blob)
        return path

    def edit(name: str, **kv: tuple[int, bytes]) -> Path:
        parts = GGUFParts.read(src)
        parts.kv.update(kv)
        return parts.write(tmp_path / f"{name}.gguf")

    parts = GGUFParts.read(src)
    huge = GGUFParts.read(src)
    huge.tensors[1].dims = [2**40, 2**40]
    tokens = parts.strings("tokenizer.ggml.tokens")
    nested = struct.pack("<IQ", 4, 0)
    for _ in range(10_000):
        nested = struct.pack("<IQ", GGUF_ARRAY, 1) + nested
    (tmp_path / "a-directory.gguf").mkdir()
    bad = "InvalidModelFileError"
    return {
        "zero bytes": (raw("empty", b""), bad, "not a GGUF file"),
        "a directory": (tmp_path / "a-directory.gguf", bad, "not a file"),
        "bad magic": (raw("magic", b"GGUX" + data[4:]), bad, "not a GGUF file"),
        "truncated header": (raw("header", data[:200]), bad, "truncated"),
        "truncated tensor data": (raw("data", data[:-1]), bad, "truncated"),
        "absurd tensor count": (parts.write(tmp_path / "count.gguf", n_tensors=2**62), bad, ""),
        "absurd tensor size": (huge.write(tmp_path / "size.gguf"), bad, "truncated"),
        "alignment 0": (edit("align", **{"general.alignment": gguf_u32(0)}), bad, "alignment"),
        "nested arrays": (edit("nested", **{"x.nested": (GGUF_ARRAY, nested)}), bad, "nested"),
        "no layers": (edit("layers0", **{"llama.block_count": gguf_u32(0)}), bad, "block_count"),
        "too many layers": (
            edit("layers", **{"llama.block_count": gguf_u32(10**6)}),
            bad,
            "1..512",
        ),
        "too many experts": (
            edit("experts", **{"llama.expert_count": gguf_u32(5000)}),
            bad,
            "expert",
        ),
        "bad rope scaling": (
            edit("rope", **{"llama.rope.scaling.type": gguf_str("bogus")}),
            bad,
            "rope.scaling.type",
        ),
        "duplicate token": (
            edit("dup", **{"tokenizer.ggml.tokens": gguf_string_array([tokens[0], *tokens[:-1]])}),
            bad,
            "twice",
        ),
        "no tokenizer": (
            edit("novocab", **{"tokenizer.ggml.model": gguf_str("none")}),
            "ModelLoadError",
            "no tokenizer",
        ),
        "unknown architecture": (
            edit("arch", **{"general.architecture": gguf_str("nonsense")}),
            "ModelLoadError",
            "unknown model architecture: 'nonsense'",
        ),
        "wrong tensor shape": (
            edit("shape", **{"llama.attention.head_count_kv": gguf_u32(3)}),
            "ModelLoadError",
            "wrong shape",
        ),
    }


# Loads each file named on the command line; one line per file: RESULT [error class, message]
# (a crash's backtrace may land on stdout too).
_LOAD_EACH = """
import json, sys
from kronk import Kronk
for path in sys.argv[1:]:
    try:
        Kronk(path, n_ctx=64, n_seq_max=1).close()
        print("RESULT", json.dumps(["loaded", ""]), flush=True)
    except Exception as exc:
        print("RESULT", json.dumps([type(exc).__name__, str(exc)]), flush=True)
"""


def test_broken_gguf_files_raise_clear_errors_and_never_crash(
    tiny_llama_path: Path, tmp_path: Path
) -> None:
    cases = _broken_models(tiny_llama_path, tmp_path)
    # In a child process: a file that slipped through would abort it, not the test run.
    paths = [str(path) for path, _, _ in cases.values()]
    child = subprocess.run(
        [sys.executable, "-c", _LOAD_EACH, *paths], capture_output=True, text=True, timeout=300
    )
    results = [
        json.loads(line.removeprefix("RESULT "))
        for line in child.stdout.splitlines()
        if line.startswith("RESULT ")
    ]
    loaded = dict(zip(cases, results, strict=False))
    assert child.returncode == 0, f"crashed after {list(loaded)}: {child.stderr[-2000:]}"
    for name, (path, error, fragment) in cases.items():
        kind, message = loaded[name]
        assert kind == error, f"{name}: {kind}: {message}"
        assert fragment in message and path.name in message, f"{name}: {message}"


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


def test_context_parameters_reach_llama_cpp(tiny_llama_path: Path) -> None:
    model = LlamaModel.load(tiny_llama_path, ModelParams(n_gpu_layers=0, use_mmap=False))
    try:
        params = ContextParams(
            n_ctx=1024,
            n_batch=64,
            n_ubatch=32,
            n_seq_max=2,
            n_threads=1,
            n_threads_batch=2,
            type_k="f32",
            type_v="bf16",
            flash_attn="on",
        )
        ctx = LlamaContext(model, params)
        batch = Batch(ctx.n_batch, 1)
        try:
            assert (ctx.n_ctx, ctx.n_ctx_seq, ctx.n_seq_max) == (1024, 512, 2)
            assert (ctx.n_batch, ctx.n_ubatch) == (64, 32)
            assert (ctx.n_threads, ctx.n_threads_batch) == (1, 2)
            batch.add_sequence(model.vocab.tokenize("hello world"), 0, 0, output_last=True)
            ctx.decode(batch)
        finally:
            batch.close()
            ctx.close()
        # The tiny model's 16-wide heads cannot hold q8_0's 32-element blocks: llama.cpp
        # refuses, and its reason is in the error.
        with pytest.raises(ModelLoadError, match="q8_0 with block size 32 does not divide"):
            LlamaContext(model, dataclasses.replace(params, type_k="q8_0"))
        with pytest.raises(InvalidRequestError) as exc:
            LlamaContext(model, dataclasses.replace(params, type_k="q3_k"))
        assert exc.value.param == "type_k"
    finally:
        model.close()


def test_a_batch_feeds_several_sequences_and_memory_ops_edit_them(tiny_llama_path: Path) -> None:
    model = LlamaModel.load(tiny_llama_path)
    # A token in two sequences at once needs the sequences to share one KV stream.
    unified = ContextParams(n_ctx=256, n_batch=64, n_seq_max=2, n_threads=1, kv_unified=True)
    ctx = LlamaContext(model, unified)
    batch = Batch(64, n_seq_max=2)
    try:
        tokens = model.vocab.tokenize("hello world, the end")
        batch.add(tokens[0], 0, [0, 1], False)  # a shared first token, in both sequences
        last = batch.add_sequence(tokens[1:], 1, 0, output_last=True)
        ctx.decode(batch)
        assert np.isfinite(ctx.logits(last)).all()
        assert (ctx.seq_pos_max(0), ctx.seq_pos_max(1)) == (len(tokens) - 1, 0)
        ctx.seq_copy(0, 1)
        assert ctx.seq_pos_max(1) == len(tokens) - 1
        assert ctx.seq_remove(1, 2, -1)
        assert (ctx.seq_pos_min(1), ctx.seq_pos_max(1)) == (0, 1)
        ctx.seq_keep(1)
        assert (ctx.seq_pos_max(0), ctx.seq_pos_max(1)) == (-1, 1)
        ctx.clear_memory()
        assert ctx.seq_pos_max(1) == -1
    finally:
        batch.close()
        ctx.close()
    # With a KV stream per sequence llama.cpp finds no room for such a batch, and says why.
    split = LlamaContext(model, dataclasses.replace(unified, kv_unified=False))
    batch = Batch(64, n_seq_max=2)
    try:
        batch.add(tokens[0], 0, [0, 1], True)
        with pytest.raises(ContextFullError, match="coupled sequences"):
            split.decode(batch)
    finally:
        batch.close()
        split.close()
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


@pytest.mark.parametrize(
    "penalty",
    [
        {"dry_multiplier": 2.0},  # default window -1: the whole context
        {"dry_multiplier": 2.0, "dry_penalty_last_n": 64},
        {"repeat_penalty": 1.5, "repeat_last_n": -1},
        {"presence_penalty": 2.0},
        {"frequency_penalty": 2.0},
    ],
)
def test_each_repetition_penalty_changes_a_repetitive_answer(
    tiny: Kronk, penalty: dict[str, object]
) -> None:
    params = {"max_tokens": 16, "temperature": 0, "ignore_eos": True}
    plain = tiny.complete("hello world", logprobs=0, **params).choices[0]
    assert plain.logprobs is not None
    tokens = plain.logprobs.tokens
    assert len(set(tokens)) <= len(tokens) // 2  # random weights loop: something to penalise
    assert tiny.complete("hello world", **params, **penalty).choices[0].text != plain.text


def test_logit_bias_forces_a_token(tiny: Kronk) -> None:
    target = tiny.tokenize("x")[0]
    resp = tiny.complete(
        "hello", max_tokens=5, temperature=0, logit_bias={str(target): 100}, ignore_eos=True
    )
    assert resp.choices[0].text == "x" * 5


def test_a_grammar_constrains_the_output(tiny: Kronk) -> None:
    resp = tiny.complete("x", grammar='root ::= "yes" | "no"', max_tokens=10, temperature=0)
    assert resp.choices[0].text in ("yes", "no")


def test_seeded_sampling_with_a_grammar_is_reproducible(tiny: Kronk) -> None:
    params = {"temperature": 1.0, "top_k": 0, "seed": 99, "max_tokens": 10}
    grammar = 'root ::= ("yes" | "no" | " ")+'
    a = tiny.complete("x", grammar=grammar, ignore_eos=True, **params).choices[0].text
    b = tiny.complete("x", grammar=grammar, ignore_eos=True, **params).choices[0].text
    assert a == b and set(a.replace("yes", "").replace("no", "")) <= {" "}


@pytest.mark.parametrize("grammar", ["root ::= [z-a]", 'root ::= "he" [z-a]', "root ::= [\\x00]"])
def test_a_grammar_with_no_way_forward_fails_the_request_not_the_process(
    tiny: Kronk, grammar: str
) -> None:
    # llama.cpp would accept a token the grammar forbids and abort on it.
    with pytest.raises(KronkError, match="grammar allows no token"):
        tiny.complete("x", grammar=grammar, max_tokens=5, temperature=0)
    assert tiny.complete("x", max_tokens=2).choices[0].finish_reason in ("stop", "length")


def test_a_character_split_over_tokens_is_never_streamed_broken(tiny: Kronk) -> None:
    # The tiny vocab has no CJK tokens: the grammar makes the model spell these characters
    # byte by byte, so most tokens end inside a character.
    text = "日本 ✓ naïve"
    stream = tiny.complete_stream("x", grammar=f'root ::= "{text}"', max_tokens=40, temperature=0)
    chunks = [c.choices[0].text for c in stream]
    final = chunks.pop()  # the finish chunk
    assert final == "" and "".join(chunks) == text
    assert all("\ufffd" not in chunk for chunk in chunks)
    assert stream.result().usage is not None
    assert len(chunks) < stream.result().usage.completion_tokens  # some were held back


def test_a_stop_string_spanning_tokens_is_never_half_streamed(tiny: Kronk) -> None:
    text = "Hello world, the end"
    assert len(tiny.tokenize(" world,")) == 2  # the stop string spans two tokens
    stream = tiny.complete_stream(
        "x", grammar=f'root ::= "{text}"', stop=[" world,"], max_tokens=40, temperature=0
    )
    # Streamed text is final: had " w" gone out before the stop matched, it would be here.
    assert "".join(c.choices[0].text for c in stream) == "Hello"
    assert stream.result().choices[0].finish_reason == "stop"


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
        ({"top_k": 2**32}, "top_k"),  # would wrap to 0 (off) as llama.cpp's int32
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


def test_a_closed_kronk_refuses_calls_instead_of_touching_freed_memory(
    tiny_llama_path: Path,
) -> None:
    k = Kronk(tiny_llama_path, n_ctx=64, n_seq_max=1, n_threads=2)
    k.close()
    k.close()  # idempotent
    calls = {
        "chat": lambda: k.chat(ask("hi")),
        "chat_stream": lambda: k.chat_stream(ask("hi")),
        "complete": lambda: k.complete("hi"),
        "render_chat": lambda: k.render_chat(ask("hi")),
        "tokenize": lambda: k.tokenize("hello"),
        "detokenize": lambda: k.detokenize([1, 2]),
        "embed": lambda: k.embed("hi"),
        "model_info": lambda: k.model_info(),
    }
    for name, call in calls.items():
        with pytest.raises(EngineClosedError):
            call()
            pytest.fail(f"{name} worked on a closed model")
    assert k.stats().slots_busy == 0  # stats stay readable (telemetry polls them)


def test_engine_errors_reach_the_event_sink_and_close_fails_queued_work(
    tiny_llama_path: Path,
) -> None:
    k = Kronk(tiny_llama_path, n_ctx=64, n_seq_max=1, n_threads=2)
    events: list[object] = []
    done = threading.Event()

    def sink(event: object) -> None:
        events.append(event)
        if isinstance(event, Finished | Failed):
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
            if isinstance(event, Finished | Failed):
                done.set()

        tiny.engine.submit(Request([1, 2, 3], forced, max_tokens=2, render_special=render), sink)
        assert done.wait(30)
        return "".join(e.text for e in events if isinstance(e, TextDelta))

    assert text(frozenset()) == ""
    assert text(frozenset(im_start)) == "<|im_start|>" * 2


@pytest.mark.parametrize("capacity", [16, 100, 512])
def test_batch_invariant_prompt_chunks_never_leave_a_short_pass(capacity: int) -> None:
    for prompt_len in range(1, 3 * capacity + MIN_PASS):
        chunks, remaining = [], prompt_len
        while remaining:
            chunks.append(chunk_size(remaining, capacity))
            remaining -= chunks[-1]
        assert sum(chunks) == prompt_len
        assert all(0 < c <= capacity for c in chunks)
        if prompt_len >= MIN_PASS:
            assert min(chunks) >= MIN_PASS, (prompt_len, chunks)
        else:
            assert chunks == [prompt_len]


def test_batch_invariant_reuse_leaves_a_full_pass_to_compute() -> None:
    assert reusable_prefix(prompt_len=40, cached=39) == 40 - MIN_PASS
    assert reusable_prefix(prompt_len=40, cached=10) == 10
    assert reusable_prefix(prompt_len=MIN_PASS - 1, cached=5) == 0  # short prompts: fresh
    assert kept_after_request(prompt_len=40, held=72) == 40  # the generated 32 go
    assert kept_after_request(prompt_len=40, held=25) == 25  # cancelled while prefilling
    assert kept_after_request(prompt_len=MIN_PASS - 1, held=30) == 0


def test_batch_invariant_generation_passes_stay_short() -> None:
    sizes = [1, 3, 1, 1, 1, 1, 1, 1, 7]
    passes = short_passes(list("abcdefghi"), sizes)
    assert passes == [["a", "b", "c", "d", "e"], ["f", "g", "h"], ["i"]]
    size_of = dict(zip("abcdefghi", sizes, strict=True))
    assert all(sum(size_of[f] for f in p) < MIN_PASS for p in passes)
