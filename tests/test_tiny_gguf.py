"""The tiny GGUF models are only worth having if the real llama.cpp accepts them.

These tests drive llama.cpp directly through llama-cpp-python's ctypes layer (kept
here, not in kronk, on purpose: they check the test fixtures, not kronk's binding).
Truncated files are never handed to llama.cpp here, since it may abort the process.
"""

from __future__ import annotations

import ctypes
import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import llama_cpp.llama_cpp as llama
import pytest
from gguf import GGUFReader

from support.tiny_gguf import (
    BERT_N_EMBD,
    CHATML,
    ENDOFTEXT,
    FIM_MIDDLE,
    FIM_PREFIX,
    FIM_SUFFIX,
    IM_END,
    IM_START,
    LLAMA_N_EMBD,
    TOOL_CALL_OPEN,
    GGUFParts,
    gguf_u32,
    write_not_gguf,
    write_tiny_bert,
    write_tiny_llama,
    write_truncated_copy,
)

MAX_TINY_BYTES = 4 * 1024 * 1024
CHATML_PROMPT = f"{IM_START}user\nHello world{IM_END}\n{IM_START}assistant\n"


@pytest.fixture(scope="module", autouse=True)
def _backend() -> None:
    # Idempotent; never freed here, as kronk's own binding shares the process-wide backend.
    llama.llama_backend_init()


@contextmanager
def loaded(path: Path, **context_params: Any) -> Iterator[tuple[Any, Any, Any]]:
    """(model, context, vocab) for `path`, freed on exit."""
    model = llama.llama_model_load_from_file(str(path).encode(), llama.llama_model_default_params())
    assert model, f"llama.cpp refused {path}"
    params = llama.llama_context_default_params()
    params.n_ctx = 128
    params.n_batch = params.n_ubatch = 128
    params.n_threads = params.n_threads_batch = 1
    for name, value in context_params.items():
        setattr(params, name, value)
    ctx = llama.llama_init_from_model(model, params)
    try:
        assert ctx, "llama.cpp could not create a context"
        yield model, ctx, llama.llama_model_get_vocab(model)
    finally:
        if ctx:
            llama.llama_free(ctx)
        llama.llama_model_free(model)


def tokenize(vocab: Any, text: str, *, add_special: bool, parse_special: bool) -> list[int]:
    data = text.encode()
    out = (llama.llama_token * (len(data) + 8))()
    n = llama.llama_tokenize(vocab, data, len(data), out, len(out), add_special, parse_special)
    assert n >= 0
    return list(out[:n])


def piece(vocab: Any, token: int, *, special: bool = False) -> bytes:
    buf = ctypes.create_string_buffer(64)
    n = llama.llama_token_to_piece(vocab, token, buf, len(buf), 0, special)
    assert n >= 0
    return buf.raw[:n]


def token_id(vocab: Any, text: str) -> int:
    ids = tokenize(vocab, text, add_special=False, parse_special=True)
    assert len(ids) == 1, f"{text!r} is not a single token: {ids}"
    return ids[0]


def decode(ctx: Any, tokens: list[int]) -> None:
    arr = (llama.llama_token * len(tokens))(*tokens)
    assert llama.llama_decode(ctx, llama.llama_batch_get_one(arr, len(tokens))) == 0


def test_generation_is_fast_and_files_are_small(tmp_path: Path) -> None:
    for name, write in (("llama", write_tiny_llama), ("bert", write_tiny_bert)):
        start = time.perf_counter()
        path = write(tmp_path / f"{name}.gguf")
        elapsed = time.perf_counter() - start
        size = path.stat().st_size
        print(f"tiny {name}: {size} bytes written in {elapsed * 1000:.1f} ms")
        assert 0 < size < MAX_TINY_BYTES
        assert not list(tmp_path.glob("*.partial"))


def test_llama_decodes_to_finite_spread_logits(tiny_llama_path: Path) -> None:
    with loaded(tiny_llama_path) as (model, ctx, vocab):
        assert llama.llama_model_n_embd(model) == LLAMA_N_EMBD
        n_vocab = llama.llama_vocab_n_tokens(vocab)
        tokens = tokenize(vocab, CHATML_PROMPT, add_special=True, parse_special=True)
        decode(ctx, tokens)
        logits = llama.llama_get_logits_ith(ctx, -1)[:n_vocab]
        assert all(math.isfinite(x) for x in logits)
        # Spread, not near-uniform, so greedy picks are not decided by rounding noise.
        assert max(logits) - min(logits) > 1.0

        # The KV cache carries on: one more token decodes after the prompt.
        decode(ctx, [max(range(n_vocab), key=logits.__getitem__)])


def test_llama_chatml_specials_are_single_control_tokens(tiny_llama_path: Path) -> None:
    with loaded(tiny_llama_path) as (_, _ctx, vocab):
        im_start, im_end, eot = (token_id(vocab, t) for t in (IM_START, IM_END, ENDOFTEXT))
        parsed = tokenize(vocab, CHATML_PROMPT, add_special=True, parse_special=True)
        assert parsed.count(im_start) == 2
        assert parsed.count(im_end) == 1
        # No BOS is added (add_bos_token false, as in Qwen2.5).
        assert parsed[0] == im_start

        literal = tokenize(vocab, CHATML_PROMPT, add_special=True, parse_special=False)
        assert im_start not in literal and im_end not in literal

        for special in (im_start, im_end, eot):
            assert llama.llama_vocab_is_control(vocab, special)
            assert piece(vocab, special) == b""  # control tokens render only on request
        assert piece(vocab, im_end, special=True) == IM_END.encode()

        assert llama.llama_vocab_eos(vocab) == eot
        assert llama.llama_vocab_eot(vocab) == im_end
        assert llama.llama_vocab_is_eog(vocab, im_end)
        assert llama.llama_vocab_is_eog(vocab, eot)
        assert not llama.llama_vocab_is_eog(vocab, im_start)

        # Tool-call markers parse as one token but still detokenize as text.
        tool_call = token_id(vocab, TOOL_CALL_OPEN)
        assert not llama.llama_vocab_is_control(vocab, tool_call)
        assert piece(vocab, tool_call) == TOOL_CALL_OPEN.encode()


def test_llama_bpe_merges_apply_and_bytes_round_trip(tiny_llama_path: Path) -> None:
    with loaded(tiny_llama_path) as (_, _ctx, vocab):
        assert [
            piece(vocab, t)
            for t in tokenize(vocab, "Hello world", add_special=False, parse_special=False)
        ] == [b"Hello", b" world"]

        # Text outside the merges falls back to byte tokens and still round-trips,
        # including multi-byte UTF-8 split over several tokens.
        text = "naïve ✓ 日本\n\tdef f():\n    return 1"
        tokens = tokenize(vocab, text, add_special=False, parse_special=False)
        assert b"".join(piece(vocab, t) for t in tokens) == text.encode()
        assert len(tokens) < len(text.encode())


def test_llama_fim_tokens_are_declared(tiny_llama_path: Path, tmp_path: Path) -> None:
    with loaded(tiny_llama_path) as (_, _ctx, vocab):
        assert llama.llama_vocab_fim_pre(vocab) == token_id(vocab, FIM_PREFIX)
        assert llama.llama_vocab_fim_suf(vocab) == token_id(vocab, FIM_SUFFIX)
        assert llama.llama_vocab_fim_mid(vocab) == token_id(vocab, FIM_MIDDLE)

    without = write_tiny_llama(tmp_path / "no-fim.gguf", with_fim=False)
    with loaded(without) as (_, _ctx, vocab):
        assert llama.llama_vocab_fim_pre(vocab) == llama.LLAMA_TOKEN_NULL
        assert llama.llama_vocab_fim_suf(vocab) == llama.LLAMA_TOKEN_NULL
        assert llama.llama_vocab_fim_mid(vocab) == llama.LLAMA_TOKEN_NULL


def test_llama_metadata_follows_arguments(tiny_llama_path: Path, tmp_path: Path) -> None:
    with loaded(tiny_llama_path) as (model, _ctx, _vocab):
        assert llama.llama_model_chat_template(model, None) == CHATML.encode()
        assert llama.llama_model_n_ctx_train(model) == 512

    custom = write_tiny_llama(tmp_path / "custom.gguf", n_ctx_train=96, chat_template=None)
    with loaded(custom, n_ctx=64) as (model, _ctx, _vocab):
        assert llama.llama_model_chat_template(model, None) is None
        assert llama.llama_model_n_ctx_train(model) == 96


def test_bert_gives_finite_mean_pooled_embeddings(tiny_bert_path: Path) -> None:
    with loaded(tiny_bert_path, embeddings=True) as (model, ctx, vocab):
        # Mean pooling comes from the file, not from the context parameters.
        assert llama.llama_pooling_type(ctx) == llama.LLAMA_POOLING_TYPE_MEAN
        assert llama.llama_model_n_embd(model) == BERT_N_EMBD

        def embed(text: str) -> list[float]:
            tokens = tokenize(vocab, text, add_special=True, parse_special=False)
            assert tokens[0] == llama.llama_vocab_bos(vocab)  # [CLS]
            assert tokens[-1] == llama.llama_vocab_sep(vocab)  # [SEP]
            assert llama.llama_vocab_get_text(vocab, tokens[1]) == "\u2581hello".encode()
            llama.llama_memory_clear(llama.llama_get_memory(ctx), True)
            decode(ctx, tokens)
            pooled = llama.llama_get_embeddings_seq(ctx, 0)
            assert pooled
            return list(pooled[:BERT_N_EMBD])

        first = embed("Hello world, testing embeddings!")
        second = embed("hello there")
        for vector in (first, second):
            assert all(math.isfinite(x) for x in vector)
            assert math.sqrt(sum(x * x for x in vector)) > 0.1
        assert first != second


def test_same_seed_gives_identical_bytes(tmp_path: Path) -> None:
    for name, write in (("llama", write_tiny_llama), ("bert", write_tiny_bert)):
        a = write(tmp_path / f"{name}-a.gguf", seed=7).read_bytes()
        b = write(tmp_path / f"{name}-b.gguf", seed=7).read_bytes()
        c = write(tmp_path / f"{name}-c.gguf", seed=8).read_bytes()
        assert a == b
        assert a != c


@pytest.mark.parametrize("fraction", [0.0, 0.001, 0.05, 0.5, 0.99])
def test_gguf_reader_rejects_truncated_copies(
    tiny_llama_path: Path, tiny_bert_path: Path, tmp_path: Path, fraction: float
) -> None:
    for src in (tiny_llama_path, tiny_bert_path):
        GGUFReader(src)  # the intact file reads, so the failure below is the truncation's
        dst = write_truncated_copy(src, tmp_path / f"cut-{src.name}", fraction)
        assert dst.stat().st_size == int(src.stat().st_size * fraction)
        with pytest.raises((ValueError, IndexError)):
            GGUFReader(dst)


def test_gguf_reader_rejects_non_gguf(tmp_path: Path) -> None:
    path = write_not_gguf(tmp_path / "not-a-model.gguf")
    assert path.stat().st_size > 0
    with pytest.raises(ValueError, match="magic"):
        GGUFReader(path)


def test_truncated_copy_rejects_nonsense_fraction(tiny_llama_path: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        write_truncated_copy(tiny_llama_path, tmp_path / "x.gguf", 1.0)


def test_gguf_parts_round_trip_and_edit_one_field(
    tiny_llama_path: Path, tiny_bert_path: Path, tmp_path: Path
) -> None:
    for src in (tiny_llama_path, tiny_bert_path):
        parts = GGUFParts.read(src)
        assert parts.write(tmp_path / src.name).read_bytes() == src.read_bytes()
    parts = GGUFParts.read(tiny_llama_path)
    assert len(parts.strings("tokenizer.ggml.tokens")) == len(
        GGUFReader(tiny_llama_path).fields["tokenizer.ggml.tokens"].data
    )
    parts.kv["llama.context_length"] = gguf_u32(77)
    edited = GGUFReader(parts.write(tmp_path / "edited.gguf"))
    assert edited.fields["llama.context_length"].contents() == 77
    assert [t.name for t in edited.tensors] == [t.name for t in GGUFReader(tiny_llama_path).tensors]
